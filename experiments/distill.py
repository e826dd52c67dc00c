"""Distillation runs and their report: students with and without a teacher, same budget.

  python -m experiments.distill --config=configs/distill_cifar10_resnet56_to_resnet20.py \
      --workdir=runs/distill_cifar10 --report=reports/distill --data_dir=../shared/data

The config holds `teacher`, `student`, `distill` (see effcv_jax/distill.py) and `runs`:
{name: {"mode": "distill" | "labels_only", dotted.key: value, ...}}. The teacher is
trained (or imported) once in WORKDIR/teacher and its outputs computed once in
WORKDIR/teacher_probs; each run trains in WORKDIR/<name> (rerunning resumes; finished
runs are skipped). Writes REPORT.json (accuracy, steps, time and command of each run,
and the teacher's) and REPORT.png. A run that neither trains now (--only) nor finished in
WORKDIR keeps its row of the REPORT.json written before when it is the same run (same config
fingerprint, or for older rows the same mode, overrides and steps; marked kept_from_report):
runs/ does not move with the repository, its report does.
"""

import json
import os

from absl import flags, logging

from effcv_jax import config_utils, distill, reports, train
from effcv_jax import workdir as workdir_lib
from effcv_jax.errors import ConfigError
from experiments import cli

_REPORT = flags.DEFINE_string("report", None, "Report path without extension (.json, .png).")
_ONLY = flags.DEFINE_list("only", None, "Run only these runs (the report lists all finished).")


def main(argv):
  del argv
  base = cli.config()
  command = cli.reproducing_command("experiments.distill")
  configs = {}
  for name, run_spec in base.runs.items():   # all checked before the teacher trains
    try:
      configs[name] = config_utils.with_overrides(
          base, {k: v for k, v in run_spec.items() if k != "mode"})
      distill.check_settings(configs[name])
    except (KeyError, TypeError, ConfigError) as e:
      raise type(e)(f"distill run {name!r}: {e}") from e
  teacher_dir = os.path.join(cli.workdir(), "teacher")
  teacher = train.train_or_reuse(base.teacher, teacher_dir, cli.data_dir())
  reported = reports.written_rows(_REPORT.value)
  rows = {}
  for name, run_spec in base.runs.items():
    overrides = {k: v for k, v in run_spec.items() if k != "mode"}
    config = configs[name]
    with config.unlocked():
      config.teacher_workdirs = (teacher_dir,)
      config.teacher_probs_dir = (config.get("teacher_probs_dir")
                                  or os.path.join(cli.workdir(), "teacher_probs"))
    workdir = os.path.join(cli.workdir(), name)
    student_dir = workdir if run_spec["mode"] == "labels_only" else os.path.join(workdir, "student")
    results = workdir_lib.finished_results(student_dir, config.student.num_steps)
    if results is None and (_ONLY.value is None or name in _ONLY.value):
      logging.info("run %s (%s) in %s", name, run_spec["mode"], workdir)
      if run_spec["mode"] == "labels_only":
        results = train.train_and_evaluate(config.student, workdir, cli.data_dir())
      else:
        results = distill.run(config, workdir, cli.data_dir())["student"]
    if results is None:
      kept = (distill.kept_report_row(reported.get(name), run_spec, config)
              if _ONLY.value is not None and name not in _ONLY.value else None)
      if kept is not None:
        rows[name] = kept
        logging.info("run %s: accuracy %.4f (kept from the report)", name, kept["accuracy"])
      continue
    rows[name] = {"accuracy": results["accuracy"], "num_examples": results["num_examples"],
                  "model": config.student.model, "mode": run_spec["mode"],
                  "steps": results["step"], "batch_size": config.student.batch_size,
                  "train_seconds": results["train_seconds_this_session"],
                  "overrides": overrides, "config_sha256": distill.run_fingerprint(config),
                  "command": command}
    logging.info("run %s: accuracy %.4f", name, results["accuracy"])
  extra = {"teacher": {"model": base.teacher.model, "accuracy": teacher["accuracy"],
                       "workdir": teacher_dir},
           "distill": base.distill.to_dict(), "eval_split": base.student.eval_split,
           "num_labelled": base.student.num_labelled}
  reports.write_bar_report(_REPORT.value, base.get("title", "distillation: validation accuracy"),
                           rows, extra=extra)
  print(json.dumps({"teacher": teacher["accuracy"],
                    **{n: r["accuracy"] for n, r in rows.items()}}))


if __name__ == "__main__":
  cli.run(main, shared_flags=("config", "workdir", "data_dir"),
          required=("config", "workdir", "report"))
