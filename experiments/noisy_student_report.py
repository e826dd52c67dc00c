"""Noisy Student and its ablations, then a report: accuracy per iteration and per ablation.

  python -m experiments.noisy_student_report --config=configs/noisy_student_fashion_mnist.py \
      --workdir=runs/ns_fashion_mnist --report=reports/noisy_student_fashion_mnist \
      --data_dir=../shared/data

Runs the config's loop in WORKDIR/main (teacher, student_1..K), then each of
config.ablations ({name: {dotted.key: value}}) in WORKDIR/<name> with the teacher of
WORKDIR/main (not retrained) and one iteration (unless the ablation sets num_iterations:
its later students are reported as <name>/student_2, ...). Every stage resumes when the command
is rerun; `--only` limits what trains (e.g. two processes, one with --only=main, one
with --only=no_noise,hard_labels once main's teacher has finished). Writes REPORT.json (every stage's
accuracy, pseudo-label statistics, the command that trains it) and REPORT.png; a config's
`seed_groups` ({group: [variant, ...]}, the same recipe at several seeds) adds each group's
mean, standard deviation and count of its finished variants.

A stage that has no finished run under WORKDIR (another machine trained it) keeps its row
of the report already at REPORT.json when it is the same run (its `config_sha256`, or for
older rows the same overrides and step counts), marked kept_from_report: `--only=` (empty)
rewrites the report from what is finished here and there without training anything.
"""

import json
import os

from absl import app, flags, logging

from effcv_jax import config_utils, noisy_student, reports
from effcv_jax import workdir as workdir_lib
from experiments import cli

_REPORT = flags.DEFINE_string("report", None, "Report path without extension (.json, .png).")
_ONLY = flags.DEFINE_list("only", None, "Train only these: 'main' and/or ablation names (the "
                          "report lists all finished ones; ablations need main's teacher).")


# Keys of a Noisy Student config that name or group its runs without changing them.
_NOT_THE_RUN = ("title", "ablations", "seed_groups", "teacher_workdir")


def _fingerprint(config):
  """workdir.config_fingerprint of a Noisy Student config without _NOT_THE_RUN."""
  return workdir_lib.config_fingerprint(config, ignore=_NOT_THE_RUN)


def _report_row(row, overrides, command, config):
  restored = {key: row[key] for key in ("restored_from_zoo",) if key in row}
  return {"accuracy": row["accuracy"], "model": row["model"],
          "pseudo_labels": row.get("pseudo_labels"), "overrides": overrides,
          "workdir": row["workdir"], "command": command,
          "config_sha256": _fingerprint(config), **restored}


def _expected_stages(base, ablation_configs):
  """{report row name: (config, overrides)} of every stage the config defines."""
  stages = {"teacher": (base, {})}
  stages.update({f"student_{i}": (base, {}) for i in range(1, base.num_iterations + 1)})
  for name, (config, overrides) in ablation_configs.items():
    stages[name] = (config, overrides)
    stages.update({f"{name}/student_{i}": (config, overrides)
                   for i in range(2, config.num_iterations + 1)})
  return stages


def _with_reported_rows(rows, base, ablation_configs, reported, report_extra):
  """`rows` and the rows of `reported` (the report's rows as written before) for the stages
  that did not finish here and are the same run (reports.kept_row), in the config's order."""
  same_steps = (report_extra.get("teacher_steps") == base.teacher.num_steps
                and report_extra.get("student_steps") == base.student.num_steps)
  stages = _expected_stages(base, ablation_configs)
  for name, (config, overrides) in stages.items():
    if name in rows or name not in reported:
      continue
    legacy_same = same_steps and reported[name].get("overrides") == overrides
    kept = reports.kept_row(reported[name], _fingerprint(config), legacy_same)
    if kept is not None:
      rows[name] = kept
      logging.info("%s: accuracy %.4f (kept from the report)", name, kept["accuracy"])
  return {name: rows[name] for name in stages if name in rows}


def main(argv):
  del argv
  base = cli.config()
  command = cli.reproducing_command("experiments.noisy_student_report")
  main_dir = os.path.join(cli.workdir(), "main")
  if _ONLY.value is None or "main" in _ONLY.value:
    noisy_student.run(base, main_dir, cli.data_dir())
  main_rows = noisy_student.finished_rows(base, main_dir, cli.data_dir())
  if not main_rows:
    raise app.UsageError(f"the teacher in {main_dir}/teacher has not finished: run with "
                         "--only=main (or without --only) first")
  teacher = main_rows[0]
  rows = {}
  for row in main_rows:
    rows[row["stage"]] = _report_row(row, {}, f"{command} --only=main", base)
  ablation_configs = {}
  for name, overrides in base.get("ablations", {}).items():
    config = config_utils.with_overrides(base, {"num_iterations": 1, **dict(overrides)})
    with config.unlocked():
      config.teacher_workdir = teacher["workdir"]
    ablation_configs[name] = (config, dict(overrides))
    workdir = os.path.join(cli.workdir(), name)
    if _ONLY.value is None or name in _ONLY.value:
      logging.info("ablation %s in %s", name, workdir)
      noisy_student.run(config, workdir, cli.data_dir())
    ablation_rows = noisy_student.finished_rows(config, workdir, cli.data_dir())
    for row in ablation_rows[1:]:
      key = name if row["stage"] == "student_1" else f"{name}/{row['stage']}"
      rows[key] = _report_row(row, dict(overrides), f"{command} --only={name}", config)
  if os.path.exists(_REPORT.value + ".json"):
    written = workdir_lib.read_json(_REPORT.value + ".json")
    rows = _with_reported_rows(rows, base, ablation_configs, written.get("variants", {}), written)
  for row in rows.values():
    row["gain_over_teacher"] = row["accuracy"] - teacher["accuracy"]
  extra = {"command": command, "eval_split": base.teacher.eval_split,
           "num_labelled": base.teacher.num_labelled,
           "teacher_steps": base.teacher.num_steps, "student_steps": base.student.num_steps}
  if base.get("seed_groups"):
    extra["seed_groups"] = reports.seed_group_summary(
        {name: list(members) for name, members in base.seed_groups.items()}, rows)
  reports.write_bar_report(_REPORT.value, base.get("title", "Noisy Student: test accuracy"),
                           rows, extra=extra)
  print(noisy_student.format_summary({"stages": main_rows}))
  print(json.dumps({name: row["accuracy"] for name, row in rows.items()}))


if __name__ == "__main__":
  cli.run(main, shared_flags=("config", "workdir", "data_dir"),
          required=("config", "workdir", "report"))
