"""A long training run, summarised: how far it got, how fast, and whether its numbers equal a
published report's (the evidence that a change to a hot path, such as the oneDNN
convolutions, neither hangs a long run nor moves a number).

    python -m experiments.noisy_student --config=configs/noisy_student_cifar10_4000.py \
        --workdir=runs/ns_cifar10_4000 --data_dir=../shared/data      # (stopped at any point)
    python -m benchmarks.long_run --workdir=runs/ns_cifar10_4000 \
        --report=reports/noisy_student_cifar10_4000.json \
        --output=benchmarks/results/long_run_cifar10_4000.json

Reads only the workdir's files: per stage (teacher, student_1, ...) the last logged step,
the configured steps, the logged images/s, the evaluation result if the stage finished and,
for a report, the same stage's published accuracy.
"""

import json
import pathlib
import statistics

from absl import app, flags

from benchmarks.machine import command_line, machine_info, print_and_write
from effcv_jax import metrics

flags.DEFINE_string("workdir", None, "Noisy Student workdir.", required=True)
flags.DEFINE_string("report", "", "reports/*.json to compare finished stages with.")
flags.DEFINE_string("output", "", "Results file ('' prints only).")
flags.DEFINE_string("note", "", "What the files cannot say (e.g. why the run was stopped).")
FLAGS = flags.FLAGS


def stage_summary(stage_dir: pathlib.Path) -> dict:
  """Steps logged, configured steps, images/s (median, min) and the results if finished."""
  config_path = stage_dir / "config.json"   # written with a stage's first checkpoint
  config = json.loads(config_path.read_text()) if config_path.exists() else {}
  records = metrics.read_records(str(stage_dir))
  train = [r for r in records if r["split"] == "train"]
  rates = [r["images_per_s"] for r in train if "images_per_s" in r]
  results_path = stage_dir / "results.json"
  results = json.loads(results_path.read_text()) if results_path.exists() else None
  return {"model": config.get("model"), "conv_backend": config.get("conv_backend", "auto"),
          "num_steps": config.get("num_steps"), "last_logged_step": train[-1]["step"] if train else 0,
          "images_per_s_median": round(statistics.median(rates), 1) if rates else None,
          "images_per_s_min": round(min(rates), 1) if rates else None,
          "finished": results is not None and results.get("step") == config.get("num_steps"),
          "accuracy": results.get("accuracy") if results else None,
          "train_seconds": round(results["train_seconds_this_session"], 1) if results else None}


def pseudo_label_summary(pseudo_dir: pathlib.Path) -> dict:
  """Shards written by the labelling pass (complete ones have a manifest entry)."""
  manifests = sorted(pseudo_dir.glob("manifest.*.json"))
  return {"shards": len(sorted(pseudo_dir.glob("shard_*.npz"))), "manifests": len(manifests)}


def main(argv):
  del argv
  workdir = pathlib.Path(FLAGS.workdir)
  stages = {}
  for stage_dir in sorted(workdir.iterdir()):
    if (stage_dir / "metrics.jsonl").exists():
      stages[stage_dir.name] = stage_summary(stage_dir)
    elif stage_dir.name.startswith("pseudo_"):
      stages[stage_dir.name] = pseudo_label_summary(stage_dir)
  if FLAGS.report:
    report = json.loads(pathlib.Path(FLAGS.report).read_text())
    for name, variant in report.get("variants", {}).items():
      if name in stages and stages[name].get("finished"):
        stages[name]["report_accuracy"] = variant["accuracy"]
        stages[name]["equals_report"] = stages[name]["accuracy"] == variant["accuracy"]
  result = {"command": command_line("benchmarks.long_run"),
            "machine": machine_info(), "workdir": str(workdir), "report": FLAGS.report,
            "note": FLAGS.note, "stages": stages}
  print_and_write(result, FLAGS.output)


if __name__ == "__main__":
  app.run(main)
