"""Runs the variants of a sweep config one after another, then writes a report.

  python -m experiments.sweep --config=configs/augment_ablation.py --workdir=runs/augment_ablation \
      --report=reports/augment_ablation

A sweep config has `base` (a training config), `variants` ({name: {dotted.key: value}}) and
`title`. Each variant trains in WORKDIR/<name> (rerunning resumes it; finished variants are
skipped) and the report gets `<report>.json` (accuracy, examples, steps, time and the command of
every variant) and `<report>.png` (a bar chart). A sweep config with a `quadrant` field (see
configs/transfer_quadrant.py) gets the transfer-quadrant analysis and figure instead.
"""

import json

from absl import flags

from effcv_jax import reports, sweeps
from effcv_jax.pretrained import quadrant
from experiments import cli

_REPORT = flags.DEFINE_string("report", None, "Report path without extension (.json and .png).")
_ONLY = flags.DEFINE_list("only", None, "Run only these variants (the report lists all finished).")


def main(argv):
  del argv
  sweep = cli.config()
  command = cli.reproducing_command("experiments.sweep")
  rows = sweeps.run_variants(sweep, cli.workdir(), cli.data_dir(), _ONLY.value, command)
  if "quadrant" in sweep:
    quadrant.write_report(_REPORT.value, sweep.title, sweep.quadrant, rows)
  else:
    reports.write_bar_report(_REPORT.value, sweep.title, rows, sweep.get("metric_name", "accuracy"))
  print(json.dumps({n: r["accuracy"] for n, r in rows.items()}))


if __name__ == "__main__":
  cli.run(main, shared_flags=("config", "workdir", "data_dir"),
          required=("config", "workdir", "report"))
