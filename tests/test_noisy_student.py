"""The Noisy Student loop on a tiny config: stages, pseudo-label selection, summary, resume."""

import json
import os

import jax
import numpy as np
import pytest

from effcv_jax import noisy_student, pseudo_label, sharding, train
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
    got, want = (train.restore_latest(os.path.join(d, stage), (8, 8, 1), sharding.make_mesh())[2]
                 for d in (workdir, reference_dir))
    for a, b in zip(jax.tree.leaves(jax.device_get(got.params)),
                    jax.tree.leaves(jax.device_get(want.params))):
      np.testing.assert_array_equal(a, b)
