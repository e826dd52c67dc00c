"""The Noisy Student loop on a tiny config: stages, pseudo-label selection, summary, resume."""

import json
import os

import numpy as np
import pytest

from configs import noisy_student_quickstart
from effcv_jax import config_utils, noisy_student, pseudo_label


def _tiny_config():
  config = noisy_student_quickstart.get_config()
  shared = {"dataset": "pkg:digits", "num_holdout": 300, "num_labelled": 200,
            "model_kwargs.widths": (8, 16), "model_kwargs.hidden": 32, "augment": "",
            "batch_size": 32, "eval_batch_size": 64, "num_steps": 20, "log_every": 10,
            "eval_every": 20, "checkpoint_every": 10, "input_mean": (0.5,), "input_std": (0.5,)}
  config.teacher = config_utils.with_overrides(config.teacher, shared)
  config.student = config_utils.with_overrides(
      config.student, {**shared, "augment": "randaugment(num_ops=2, magnitude=9)"})
  config.num_iterations = 2
  config.student_overrides = ({"model_kwargs.widths": (8, 16)}, {"model_kwargs.widths": (16, 16)})
  config.pseudo.batch_size = 128
  config.pseudo.shard_size = 512
  config.pseudo.threshold = 0.15       # 20-step teachers are not confident
  return config


@pytest.fixture(scope="module")
def finished_loop(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("noisy_student"))
  return workdir, noisy_student.run(_tiny_config(), workdir)


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
  assert noisy_student.finished_rows(_tiny_config(), workdir) == summary["stages"]

  results_file = os.path.join(workdir, "student_2", "results.json")
  finished_at = os.path.getmtime(results_file)
  again = noisy_student.run(_tiny_config(), workdir)
  assert again["stages"] == summary["stages"]
  assert os.path.getmtime(results_file) == finished_at
  assert "student_2" in noisy_student.format_summary(again)


def test_empty_selection_is_a_clear_error(finished_loop, tmp_path):
  config = _tiny_config()
  config.teacher_workdir = os.path.join(finished_loop[0], "teacher")   # reused, not retrained
  config.num_iterations = 1
  config.pseudo.threshold = 1.01
  with pytest.raises(ValueError, match="reaches the confidence threshold 1.01"):
    noisy_student.run(config, str(tmp_path))
