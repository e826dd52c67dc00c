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
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from effcv_jax import config_utils, metrics, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the variants' workdirs.")
_REPORT = flags.DEFINE_string("report", None, "Report path without extension (.json and .png).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Local data directory; default $EFFCV_DATA_DIR.")
_ONLY = flags.DEFINE_list("only", None, "Run only these variants (the report lists all finished).")
flags.mark_flags_as_required(["config", "workdir", "report"])


def write_report(path, title, rows, metric_name):
  """Writes path.json ({title, rows}) and path.png (a bar chart of accuracy per variant)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path + ".json", "w") as f:
    json.dump({"title": title, "metric": metric_name, "variants": rows}, f, indent=2)
  names = list(rows)
  values = [100 * rows[n]["accuracy"] for n in names]
  figure, axis = plt.subplots(figsize=(1.6 * len(names) + 2, 3.6))
  bars = axis.bar(names, values, color="#4878a8")
  axis.bar_label(bars, labels=[f"{v:.1f}" for v in values])
  axis.set_ylabel(f"{metric_name} (%)")
  axis.set_ylim(max(0.0, min(values) - 10), min(100.0, max(values) + 8))
  axis.set_title(title, fontsize=10)
  figure.tight_layout()
  figure.savefig(path + ".png", dpi=120)
  plt.close(figure)


def main(argv):
  del argv
  metrics.quiet_library_logs()
  sweep = _CONFIG.value
  command = " ".join(["python -m experiments.sweep"] + [shlex.quote(a) for a in sys.argv[1:]])
  rows = {}
  for name, overrides in sweep.variants.items():
    config = config_utils.with_overrides(sweep.base, dict(overrides))
    workdir = os.path.join(_WORKDIR.value, name)
    results = train.finished_results(workdir, config.num_steps)
    if results is None and (_ONLY.value is None or name in _ONLY.value):
      logging.info("variant %s: training in %s", name, workdir)
      results = train.train_and_evaluate(config, workdir, _DATA_DIR.value)
    if results is None:
      continue
    rows[name] = {"accuracy": results["accuracy"], "num_examples": results["num_examples"],
                  "steps": results["step"], "train_seconds": results["train_seconds_this_session"],
                  "overrides": dict(overrides), "command": command}
    logging.info("variant %s: accuracy %.4f", name, results["accuracy"])
  write_report(_REPORT.value, sweep.title, rows, sweep.get("metric_name", "accuracy"))
  print(json.dumps({n: r["accuracy"] for n, r in rows.items()}))


if __name__ == "__main__":
  app.run(main)
