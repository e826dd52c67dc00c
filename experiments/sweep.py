"""Runs the variants of a sweep config one after another, then writes a report.

  python -m experiments.sweep --config=configs/augment_ablation.py --workdir=runs/augment_ablation \
      --report=reports/augment_ablation

A sweep config has `base` (a training config), `variants` ({name: {dotted.key: value}}) and
`title`. Each variant trains in WORKDIR/<name> (rerunning resumes it; finished variants are
skipped) and the report gets `<report>.json` (accuracy, examples, steps, time and the command of
every variant) and `<report>.png` (a bar chart).
"""

import json
import os

from absl import flags, logging

from effcv_jax import config_utils, preflight, reports, train
from effcv_jax.errors import ConfigError
from experiments import cli

_REPORT = flags.DEFINE_string("report", None, "Report path without extension (.json and .png).")
_ONLY = flags.DEFINE_list("only", None, "Run only these variants (the report lists all finished).")


def main(argv):
  del argv
  sweep = cli.config()
  command = cli.reproducing_command("experiments.sweep")
  configs = {}
  for name, overrides in sweep.variants.items():   # all checked before any variant trains
    try:
      configs[name] = config_utils.with_overrides(sweep.base, dict(overrides))
      preflight.check_config(configs[name])
    except (KeyError, TypeError, ConfigError) as e:
      raise type(e)(f"sweep variant {name!r}: {e}") from e
  rows = {}
  for name, overrides in sweep.variants.items():
    config = configs[name]
    workdir = os.path.join(cli.workdir(), name)
    results = train.train_or_reuse(config, workdir, cli.data_dir(),
                                   may_train=_ONLY.value is None or name in _ONLY.value)
    if results is None:
      continue
    rows[name] = {"accuracy": results["accuracy"], "num_examples": results["num_examples"],
                  "steps": results["step"], "train_seconds": results["train_seconds_this_session"],
                  "overrides": dict(overrides), "command": command}
    logging.info("variant %s: accuracy %.4f", name, results["accuracy"])
  reports.write_bar_report(_REPORT.value, sweep.title, rows, sweep.get("metric_name", "accuracy"))
  print(json.dumps({n: r["accuracy"] for n, r in rows.items()}))


if __name__ == "__main__":
  cli.run(main, shared_flags=("config", "workdir", "data_dir"),
          required=("config", "workdir", "report"))
