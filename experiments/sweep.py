"""Runs the variants of a sweep config one after another, then writes a report.

  python -m experiments.sweep --config=configs/augment_ablation.py --workdir=runs/augment_ablation \
      --report=reports/augment_ablation

A sweep config has `base` (a training config), `variants` ({name: {dotted.key: value}}) and
`title`. Each variant trains in WORKDIR/<name> (rerunning resumes it; finished variants are
skipped) and the report gets `<report>.json` (accuracy, examples, steps, images seen, time and
the command of every variant) and `<report>.png` (a bar chart). A sweep config with a
`quadrant` field (see configs/transfer_quadrant.py) gets the transfer-quadrant analysis and
figure instead.

Seeds: `--seeds=0,1,2` (or the config's `seeds` field, see effcv_jax/sweeps.py) runs every
variant once per seed, as <name>_seed_<k>; the report's `seed_groups` hold each variant's mean,
sample standard deviation and seed count, and the chart draws them as error bars. A config's
`include_groups` ({label: 'reports/NAME.json:GROUP'}) adds a seed group of another report
(e.g. another trainer's runs of the same data), marked with its source.

Moving machines: a variant whose workdir holds no finished run (runs/ stayed behind) keeps its
row of the report already at --report when it is the same run (the same config fingerprint),
marked kept_from_report, unless --only names it; so a long sweep can be finished over several
machines, each adding its variants to the committed report.
"""

import json

from absl import flags

from effcv_jax import reports, sweeps
from effcv_jax.pretrained import quadrant
from experiments import cli

_REPORT = flags.DEFINE_string("report", None, "Report path without extension (.json and .png).")
_ONLY = flags.DEFINE_list("only", None, "Run only these variants (the report lists all finished).")
_SEEDS = flags.DEFINE_list("seeds", None, "Run every variant with each of these seeds "
                           "(config.seed); overrides the config's `seeds` field.")


def main(argv):
  del argv
  seeds = [int(seed) for seed in _SEEDS.value] if _SEEDS.value else None
  sweep, groups = sweeps.with_seeds(cli.config(), seeds)
  command = cli.reproducing_command("experiments.sweep")
  reported = reports.written_rows(_REPORT.value)
  rows = sweeps.run_variants(sweep, cli.workdir(), cli.data_dir(), _ONLY.value, command,
                             reported)
  if "quadrant" in sweep:
    quadrant.write_report(_REPORT.value, sweep.title, sweep.quadrant, rows)
  else:
    extra = {"command": command}
    if groups or sweep.get("include_groups"):
      extra["seed_groups"] = {**reports.seed_group_summary(groups, rows),
                              **reports.included_groups(dict(sweep.get("include_groups", {})))}
    reports.write_bar_report(_REPORT.value, sweep.title, rows,
                             sweep.get("metric_name", "accuracy"), extra)
  print(json.dumps({n: r["accuracy"] for n, r in rows.items()}))


if __name__ == "__main__":
  cli.run(main, shared_flags=("config", "workdir", "data_dir"),
          required=("config", "workdir", "report"))
