"""The Noisy Student loop on a tiny config: stages, pseudo-label selection, summary, resume."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from effcv_jax import config_utils, noisy_student, pseudo_label, sharding
from effcv_jax import task as task_lib
from effcv_jax import workdir as workdir_lib
from effcv_jax.ssl import run as ssl_run
from tests import noisy_student_tiny
from tests.fault_driver import run_until_killed


@pytest.fixture(scope="module")
def finished_loop(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("noisy_student"))
  return workdir, noisy_student.run(noisy_student_tiny.get_config(), workdir)


def test_loop_runs_every_stage_and_resumes_without_redoing_them(finished_loop):
  workdir, summary = finished_loop
  stages = [row["stage"] for row in summary["stages"]]
  assert stages == ["teacher", "student_1", "student_2"]
  assert [row["model"] for row in summary["stages"]] == ["cnn_small"] * 3
  for row in summary["stages"]:
    assert row["num_examples"] == 300 and 0.0 <= row["accuracy"] <= 1.0
  stats = summary["stages"][1]["pseudo_labels"]
  assert stats["pool"] == 1797 - 300 - 200
  _, probs, confidence = pseudo_label.load_pseudo_labels(os.path.join(workdir, "pseudo_1"))
  assert stats["selected"] == int(np.sum(confidence >= 0.15))
  assert 0.0 <= stats["pool_pseudo_label_accuracy"] <= 1.0
  with open(os.path.join(workdir, "student_2", "config.json")) as f:
    assert json.load(f)["model_kwargs"]["widths"] == [16, 16]
  assert json.load(open(os.path.join(workdir, "summary.json"))) == json.loads(json.dumps(summary))
  assert summary["complete"]
  # The report reads the finished stages back without training or labelling anything.
  assert noisy_student.finished_rows(noisy_student_tiny.get_config(), workdir) == summary["stages"]

  results_file = os.path.join(workdir, "student_2", "results.json")
  finished_at = os.path.getmtime(results_file)
  again = noisy_student.run(noisy_student_tiny.get_config(), workdir)
  assert again["stages"] == summary["stages"]
  assert os.path.getmtime(results_file) == finished_at
  assert "student_2" in noisy_student.format_summary(again)


def test_report_trains_only_the_ablation_and_records_every_stage(finished_loop, tmp_path):
  """experiments.noisy_student_report with --only=hard_labels beside a finished main run:
  the main run is read back, not retrained; the ablation reuses main's teacher; the report
  holds every stage with its gain over the teacher and the command that trains it."""
  shutil.copytree(finished_loop[0], tmp_path / "main")
  teacher_results = tmp_path / "main" / "teacher" / "results.json"
  finished_at = os.path.getmtime(teacher_results)
  report = tmp_path / "report"
  args = ["--config=tests/noisy_student_tiny.py", f"--workdir={tmp_path}", f"--report={report}"]
  process = subprocess.run(
      [sys.executable, "-m", "experiments.noisy_student_report", *args, "--only=hard_labels"],
      cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True, text=True,
      check=False)
  assert process.returncode == 0, process.stderr[-3000:]
  assert os.path.getmtime(teacher_results) == finished_at
  assert not (tmp_path / "hard_labels" / "teacher").exists()

  written = json.loads(report.with_suffix(".json").read_text())
  rows = written["variants"]
  assert list(rows) == ["teacher", "student_1", "student_2", "hard_labels"]
  main_stages = {row["stage"]: row for row in finished_loop[1]["stages"]}
  for stage in ("teacher", "student_1", "student_2"):
    assert rows[stage]["accuracy"] == main_stages[stage]["accuracy"]
  teacher_accuracy = rows["teacher"]["accuracy"]
  for name, row in rows.items():
    assert row["gain_over_teacher"] == pytest.approx(row["accuracy"] - teacher_accuracy)
  assert rows["hard_labels"]["overrides"] == {"pseudo.hard": True}
  command = "python -m experiments.noisy_student_report " + " ".join(args)
  assert written["command"] == command
  assert rows["student_2"]["command"] == command + " --only=main"
  assert rows["hard_labels"]["command"] == command + " --only=hard_labels"
  assert rows["hard_labels"]["workdir"] == str(tmp_path / "hard_labels" / "student_1")
  assert report.with_suffix(".png").stat().st_size > 0

  # Another machine holds the teacher only and the report: `--only=` (empty) trains nothing
  # and keeps the report's rows of the same runs (student_2's fingerprint is changed here:
  # a different run, dropped).
  elsewhere = tmp_path / "elsewhere"
  shutil.copytree(tmp_path / "main" / "teacher", elsewhere / "main" / "teacher")
  rows["student_2"]["config_sha256"] = "0" * 64
  report.with_suffix(".json").write_text(json.dumps(written))
  process = subprocess.run(
      [sys.executable, "-m", "experiments.noisy_student_report",
       "--config=tests/noisy_student_tiny.py", f"--workdir={elsewhere}", f"--report={report}",
       "--only="],
      cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True, text=True,
      check=False)
  assert process.returncode == 0, process.stderr[-3000:]
  assert sorted(os.listdir(elsewhere)) == ["main"]
  assert sorted(os.listdir(elsewhere / "main")) == ["teacher"]
  again = json.loads(report.with_suffix(".json").read_text())["variants"]
  assert list(again) == ["teacher", "student_1", "hard_labels"]
  assert "kept_from_report" not in again["teacher"]
  for name in ("student_1", "hard_labels"):
    assert again[name] == {**rows[name], "kept_from_report": True}


def test_a_semi_supervised_run_is_reused_as_the_teacher(tmp_path, monkeypatch):
  """A FixMatch run with a weight average, reused unchanged as the teacher
  (config.teacher_workdir, as configs/noisy_student_fashion_mnist_ssl_teacher.py reuses a
  SoftMatch run): its averaged weights label the pool and the student trains on them; its
  row is the semi-supervised run's own result."""
  config = noisy_student_tiny.get_config()
  config.teacher = config_utils.with_overrides(config.teacher, {
      "ema_decay": 0.9, "num_steps": 10, "eval_every": 10, "ssl.algorithm": "fixmatch",
      "ssl.mu": 2, "ssl.weak_augment": "random_crop(padding=1)",
      "ssl.strong_augment": "random_crop(padding=1)|cutout(size=4)"})
  teacher_dir = str(tmp_path / "fixmatch")
  teacher = ssl_run.train_ssl(config.teacher, teacher_dir)
  config.teacher_workdir = teacher_dir
  config.num_iterations = 1
  config.pseudo.threshold = 0.0
  labelled_with = []
  original_label_pool = pseudo_label.label_pool

  def recorded_label_pool(variables, *args, **kwargs):
    labelled_with.append(jax.device_get(variables))
    return original_label_pool(variables, *args, **kwargs)

  monkeypatch.setattr(pseudo_label, "label_pool", recorded_label_pool)
  summary = noisy_student.run(config, str(tmp_path / "ns"))
  assert [row["stage"] for row in summary["stages"]] == ["teacher", "student_1"]
  assert summary["stages"][0]["accuracy"] == teacher["accuracy"]
  assert summary["stages"][0]["workdir"] == teacher_dir
  assert not (tmp_path / "ns" / "teacher").exists()
  _, _, state, _ = workdir_lib.restore_latest(teacher_dir, (8, 8, 1), sharding.make_mesh())
  averages, raw = jax.device_get(state.ema), jax.device_get(task_lib.raw_variables(state))
  assert len(labelled_with) == 1
  for got, want in zip(jax.tree.leaves(labelled_with[0]), jax.tree.leaves(averages)):
    np.testing.assert_array_equal(got, want)
  assert any(not np.array_equal(a, b)
             for a, b in zip(jax.tree.leaves(averages), jax.tree.leaves(raw)))
  assert summary["stages"][1]["pseudo_labels"]["selected"] == 1797 - 300 - 200


def test_empty_selection_is_a_clear_error(finished_loop, tmp_path):
  config = noisy_student_tiny.get_config()
  config.teacher_workdir = os.path.join(finished_loop[0], "teacher")   # reused, not retrained
  config.num_iterations = 1
  config.pseudo.threshold = 1.01
  with pytest.raises(ValueError, match="reaches the confidence threshold 1.01"):
    noisy_student.run(config, str(tmp_path))


def test_sigkill_in_every_stage_then_resume_is_bit_exact(finished_loop, tmp_path):
  """Killed in the teacher's training, while its checkpoint is committed, while a
  pseudo-label shard is written and while the student's checkpoint is committed,
  rerun each time: the same teacher, pseudo-labels and student as never killed."""
  reference_dir, reference = finished_loop
  workdir = str(tmp_path / "killed")
  command = ("experiments.noisy_student", "--config=tests/noisy_student_tiny.py",
             "--config.num_iterations=1", f"--workdir={workdir}")
  teacher_checkpoints = os.path.join(workdir, "teacher", "checkpoints")
  run_until_killed("train_step:15", *command)
  assert not os.path.exists(os.path.join(workdir, "teacher", "results.json"))
  run_until_killed("checkpoint_commit:1", *command)
  assert any("tmp" in name for name in os.listdir(teacher_checkpoints))
  assert not os.path.exists(os.path.join(workdir, "teacher", "results.json"))
  # The teacher finishes; the pass writes shard 0 and dies writing shard 1 (of 3).
  run_until_killed("shard_write:2", *command)
  assert os.path.exists(os.path.join(workdir, "teacher", "results.json"))
  assert sorted(os.listdir(os.path.join(workdir, "pseudo_1"))) == [
      "shard_00000.p0of1.npz", "shard_00001.p0of1.npz.tmp"]
  shard_0_written = os.stat(os.path.join(workdir, "pseudo_1", "shard_00000.p0of1.npz")).st_mtime_ns
  # The pass resumes at shard 1 and finishes; the student dies committing step 10.
  log = run_until_killed("checkpoint_commit:1", *command)
  assert "1 skipped" in log
  assert os.stat(os.path.join(workdir, "pseudo_1", "shard_00000.p0of1.npz")).st_mtime_ns == shard_0_written
  assert not [n for n in os.listdir(os.path.join(workdir, "student_1", "checkpoints")) if n.isdigit()]

  config = noisy_student_tiny.get_config()
  config.num_iterations = 1
  summary = noisy_student.run(config, workdir)
  assert summary["complete"]
  for row, want in zip(summary["stages"], reference["stages"][:2]):
    assert row["accuracy"] == want["accuracy"] and row.get("pseudo_labels") == want.get("pseudo_labels")
  for got, want in zip(pseudo_label.load_pseudo_labels(os.path.join(workdir, "pseudo_1")),
                       pseudo_label.load_pseudo_labels(os.path.join(reference_dir, "pseudo_1"))):
    np.testing.assert_array_equal(got, want)
  for stage in ("teacher", "student_1"):
    got, want = (workdir_lib.restore_latest(os.path.join(d, stage), (8, 8, 1), sharding.make_mesh())[2]
                 for d in (workdir, reference_dir))
    for a, b in zip(jax.tree.leaves(jax.device_get(got.params)),
                    jax.tree.leaves(jax.device_get(want.params))):
      np.testing.assert_array_equal(a, b)
