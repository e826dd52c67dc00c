"""Calibrated pseudo-labelling: the temperature fitted on the teacher's validation
predictions, the threshold that reaches a target precision on them, the precision and
recall of a selection per class and confidence bin, and a tiny Noisy Student loop using
all three."""

import json
import math
import os

import numpy as np
import pytest

from effcv_jax import noisy_student, pseudo_label
from effcv_jax.data import run_data as run_data_lib
from effcv_jax.errors import ConfigError
from effcv_jax.robustness import calibration
from tests import noisy_student_tiny


def test_temperature_fitted_on_overconfident_logits_is_the_hand_worked_optimum():
  """Logits 8 on the predicted class, 0 on the two others, right 70 times in 100: the
  NLL-optimal T makes the top probability 0.7, e^(8/T) / (e^(8/T) + 2) = 0.7, so
  T = 8 / ln(14/3); NLL falls from 0.3 * 8 + ln(1 + 2e^-8) to -(0.7 ln 0.7 + 0.3 ln 0.15)."""
  labels = np.zeros(100, np.int64)
  predicted = np.where(np.arange(100) < 70, 0, 1)
  logits = 8.0 * np.eye(3)[predicted]
  fitted = pseudo_label.fit_calibration(logits, labels)
  assert fitted["temperature"] > 1
  assert fitted["temperature"] == pytest.approx(8 / math.log(14 / 3), rel=1e-3)
  assert fitted["validation_nll_before"] == pytest.approx(0.3 * 8 + math.log(1 + 2 * math.exp(-8)))
  assert fitted["validation_nll_after"] == pytest.approx(-(0.7 * math.log(0.7)
                                                           + 0.3 * math.log(0.15)), rel=1e-4)
  assert fitted["validation_nll_after"] < fitted["validation_nll_before"]
  # Every prediction has confidence ~1 and 70 % accuracy before; 0.7 and 70 % after.
  assert fitted["validation_ece_before"] == pytest.approx(0.3, abs=1e-3)
  assert fitted["validation_ece_after"] == pytest.approx(0.0, abs=1e-3)
  assert fitted["validation_examples"] == 100


def test_selection_quality_per_class_and_bin_equals_hand_worked_values():
  predicted = np.array([0, 0, 1, 1, 0, 1])
  true_labels = np.array([0, 1, 1, 0, 0, 1])
  confidence = np.array([0.95, 0.85, 0.92, 0.55, 0.45, 0.65])
  selected = np.array([0, 1, 2, 5, 0])     # position 0 repeated by balancing counts once
  quality = pseudo_label.selection_quality(predicted, confidence, true_labels, selected, 2)
  classes = quality["classes"]
  # Class 0: selected with label 0 are positions 0 (right) and 1 (wrong); true 0: 0, 3, 4.
  assert classes["precision"] == [0.5, 1.0]
  assert classes["recall"] == pytest.approx([1 / 3, 2 / 3])
  assert classes["selected"] == [2, 2] and classes["true"] == [3, 3]
  bins = quality["confidence_bins"]
  assert bins["edges"] == pytest.approx(np.linspace(0, 1, 11))
  # Bins: 0.95, 0.92 -> 9; 0.85 -> 8; 0.65 -> 6; 0.55 -> 5; 0.45 -> 4.
  assert bins["pool"] == [0, 0, 0, 0, 1, 1, 1, 0, 1, 2]
  assert bins["selected"] == [0, 0, 0, 0, 0, 0, 1, 0, 1, 2]
  assert bins["precision"] == [None] * 6 + [1.0, None, 0.0, 1.0]
  assert bins["recall"] == [None] * 4 + [0.0, 0.0, 1.0, None, 0.0, 1.0]


def test_target_precision_threshold_equals_hand_worked_value():
  """Precision of confidence >= t: 0.5 -> 3/6, 0.6 -> 3/5, 0.7 -> 3/4, 0.8 -> 2/3, 0.9 -> 1."""
  confidence = np.array([0.9, 0.8, 0.8, 0.7, 0.6, 0.5])
  correct = np.array([True, True, False, True, False, False])
  chosen = pseudo_label.precision_threshold(confidence, correct, 0.7)
  assert chosen == pytest.approx({"threshold": 0.7, "validation_precision": 0.75,
                                  "validation_coverage": 4 / 6})
  assert pseudo_label.precision_threshold(confidence, correct, 0.8)["threshold"] == 0.9
  assert pseudo_label.precision_threshold(confidence, correct, 0.5)["threshold"] == 0.0
  with pytest.raises(ValueError, match="pseudo.target_precision=0.5"):
    pseudo_label.precision_threshold(confidence, np.zeros(6, bool), 0.5)


@pytest.mark.parametrize("overrides, match", [
    ({"pseudo.calibrate": "platt"}, r"config\.pseudo\.calibrate = 'platt' is out of range"),
    ({"pseudo.target_precision": 1.0},
     r"config\.pseudo\.target_precision = 1\.0 is out of range .*\[0\.0, 1\.0\)"),
    ({"pseudo.target_precision": 0.9, "pseudo.threshold": 0.3},
     r"config\.pseudo\.target_precision = 0\.9 .* config\.pseudo\.threshold = 0\.3"),
    ({"pseudo.calibrate": "temperature", "teacher.eval_split": "test"},
     r"config\.pseudo\.calibrate = 'temperature' .*config\.teacher\.eval_split = 'test'"),
    ({"pseudo.target_precision": 0.9, "pseudo.threshold": 0.0, "teacher.eval_split": "test"},
     r"config\.pseudo\.target_precision = 0\.9 .* not a validation split"),
])
def test_settings_refuse_bad_calibration_keys(overrides, match, tmp_path):
  config = noisy_student_tiny.get_config()
  for key, value in overrides.items():
    group, name = key.split(".")
    config[group][name] = value
  with pytest.raises(ConfigError, match=match):
    noisy_student.check_settings(config, str(tmp_path))


TARGET_PRECISION = 0.6


@pytest.fixture(scope="module")
def calibrated_loop(tmp_path_factory):
  config = noisy_student_tiny.get_config()
  config.num_iterations = 1
  config.pseudo.threshold = 0.0
  config.pseudo.calibrate = "temperature"
  config.pseudo.target_precision = TARGET_PRECISION
  workdir = str(tmp_path_factory.mktemp("calibrated"))
  return config, workdir, noisy_student.run(config, workdir)


def test_loop_records_temperature_threshold_and_quality(calibrated_loop):
  config, workdir, summary = calibrated_loop
  stats = summary["stages"][1]["pseudo_labels"]
  fitted = stats["calibration"]
  assert fitted["validation_examples"] == 300     # the teacher's hold-out
  assert fitted["temperature"] > 0
  assert fitted["validation_nll_after"] <= fitted["validation_nll_before"] + 1e-6

  # The threshold is the one the calibrated validation predictions give, and it is applied
  # to the pool at the fitted temperature.
  validation_labels = run_data_lib.source_labels(noisy_student.load_data(config).eval)
  logits = pseudo_label.load_teacher_logits(os.path.join(workdir, "pseudo_1", "validation"))
  probs = calibration.softmax(logits, fitted["temperature"])
  chosen = pseudo_label.precision_threshold(probs.max(-1), probs.argmax(-1) == validation_labels,
                                            TARGET_PRECISION)
  assert stats["target_precision"]["threshold"] == pytest.approx(chosen["threshold"], abs=1e-6)
  assert stats["threshold"] == stats["target_precision"]["threshold"]
  assert stats["target_precision"]["validation_precision"] >= TARGET_PRECISION
  _, _, confidence = pseudo_label.load_pseudo_labels(os.path.join(workdir, "pseudo_1"),
                                                     fitted["temperature"])
  assert stats["selected"] == int(np.sum(confidence >= stats["threshold"]))

  quality = stats["quality"]
  assert sum(quality["classes"]["selected"]) == stats["unique_selected"]
  assert sum(quality["classes"]["true"]) == stats["pool"] == sum(quality["confidence_bins"]["pool"])
  right = round(stats["selected_pseudo_label_accuracy"] * stats["selected"])
  right_per_class = [round(p * n) for p, n in zip(quality["classes"]["precision"],
                                                  quality["classes"]["selected"]) if n]
  assert sum(right_per_class) == right

  # The summary on disk holds the same, and reading the finished stages back agrees.
  with open(os.path.join(workdir, "summary.json")) as f:
    assert json.load(f) == json.loads(json.dumps(summary))
  assert noisy_student.finished_rows(config, workdir) == summary["stages"]
