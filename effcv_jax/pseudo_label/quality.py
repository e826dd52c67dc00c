"""Calibrated pseudo-labels and their quality: temperature scaling of the teacher fitted on
its validation predictions, the confidence threshold that reaches a target precision on
them, and the precision and recall of a selection against the pool's true labels.

Pure functions of NumPy arrays (the temperature fit is robustness.calibration's); the
statistics they return are JSON-ready (floats, ints, lists; None where a ratio has no
examples to count).
"""

from typing import Any

import numpy as np

from effcv_jax.errors import ConfigError
from effcv_jax.robustness import calibration

# pseudo.calibrate: '' leaves the teacher's probabilities as they are.
CALIBRATION_KINDS = ("", "temperature")
# Equal-width confidence bins of the quality statistics.
QUALITY_BINS = 10


def fit_calibration(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Temperature scaling of the teacher's validation logits (N, K) with labels (N,).

  Returns {'temperature': T (NLL-optimal, calibration.fit_temperature), 'validation_examples',
  'validation_nll_before', 'validation_nll_after', 'validation_ece_before',
  'validation_ece_after'}: NLL (nats) and ECE (15 bins) at T = 1 and at T.
  """
  labels = np.asarray(labels)
  temperature = calibration.fit_temperature(logits, labels)
  before = calibration.calibration_metrics(logits, labels)
  after = calibration.calibration_metrics(logits, labels, temperature)
  return {"temperature": temperature, "validation_examples": int(len(labels)),
          "validation_nll_before": before["nll"], "validation_nll_after": after["nll"],
          "validation_ece_before": before["ece"], "validation_ece_after": after["ece"]}


def precision_threshold(confidence: np.ndarray, correct: np.ndarray, target: float
                        ) -> dict[str, float]:
  """The smallest confidence threshold whose precision on labelled predictions reaches
  `target`.

  confidence float (N,) and correct bool (N,) of validation predictions. The precision of
  a threshold t is the fraction correct among the predictions with confidence >= t; the
  candidates are the distinct confidences, and the smallest that reaches `target` is
  returned (0.0 when all N predictions together reach it, so nothing is dropped for its
  confidence). Returns {'threshold', 'validation_precision', 'validation_coverage' (the
  fraction of the N kept)}; ConfigError when not even the most confident predictions reach
  `target`.
  """
  confidence = np.asarray(confidence, np.float64)
  correct = np.asarray(correct, bool)
  order = np.argsort(confidence, kind="stable")
  sorted_confidence = confidence[order]
  correct_from = np.concatenate([np.cumsum(correct[order][::-1])[::-1], [0]])
  candidates = np.unique(sorted_confidence)
  first = np.searchsorted(sorted_confidence, candidates, side="left")
  kept = len(confidence) - first
  precision = correct_from[first] / kept
  reaching = np.flatnonzero(precision >= target)
  if not len(reaching):
    raise ConfigError(
        f"no confidence threshold reaches pseudo.target_precision={target} on the "
        f"{len(confidence)} validation predictions (best precision {precision.max():.3f}, "
        f"with confidence >= {candidates[np.argmax(precision)]:.3f}): lower "
        "pseudo.target_precision or train the teacher longer")
  chosen = reaching[0]
  return {"threshold": 0.0 if chosen == 0 else float(candidates[chosen]),
          "validation_precision": float(precision[chosen]),
          "validation_coverage": float(kept[chosen] / len(confidence))}


def _ratios(numerators: np.ndarray, denominators: np.ndarray) -> list[float | None]:
  return [float(n / d) if d else None for n, d in zip(numerators, denominators)]


def selection_quality(predicted: np.ndarray, confidence: np.ndarray, true_labels: np.ndarray,
                      selected: np.ndarray, num_classes: int,
                      num_bins: int = QUALITY_BINS) -> dict[str, Any]:
  """Precision and recall of the selected pseudo-labels, per class and per confidence bin.

  Args:
    predicted: int (N,) the pseudo-label (argmax) of every pool example.
    confidence: float (N,) its confidence (the one the threshold compares).
    true_labels: int (N,) the pool's true labels.
    selected: int (M,) positions of the selected examples (repeats count once).
    num_classes: K; num_bins: B equal-width bins, bin b holding confidences in
      (b / B, (b + 1) / B] (the first also 0).
  Returns:
    {'classes': {'precision', 'recall', 'selected', 'true'} lists of K, 'confidence_bins':
    {'edges' (B + 1), 'precision', 'recall', 'selected', 'pool' (B each)}}. Class c:
    precision = the fraction of selected examples labelled c whose true label is c, recall
    = the fraction of the pool's true-c examples selected with label c. Bin b: precision =
    the fraction of its selected examples whose label is right, recall = the fraction of
    its pool examples selected with their true label. None where nothing is counted.
  """
  predicted, true_labels = np.asarray(predicted), np.asarray(true_labels)
  in_selection = np.zeros(len(predicted), bool)
  in_selection[np.asarray(selected, np.int64)] = True
  right = in_selection & (predicted == true_labels)
  selected_per_class = np.bincount(predicted[in_selection], minlength=num_classes)
  right_per_class = np.bincount(predicted[right], minlength=num_classes)
  true_per_class = np.bincount(true_labels, minlength=num_classes)
  bins = np.clip(np.ceil(np.asarray(confidence, np.float64) * num_bins).astype(np.int64) - 1,
                 0, num_bins - 1)
  pool_per_bin = np.bincount(bins, minlength=num_bins)
  selected_per_bin = np.bincount(bins[in_selection], minlength=num_bins)
  right_per_bin = np.bincount(bins[right], minlength=num_bins)
  return {
      "classes": {"precision": _ratios(right_per_class, selected_per_class),
                  "recall": _ratios(right_per_class, true_per_class),
                  "selected": selected_per_class.tolist(), "true": true_per_class.tolist()},
      "confidence_bins": {"edges": np.linspace(0.0, 1.0, num_bins + 1).tolist(),
                          "precision": _ratios(right_per_bin, selected_per_bin),
                          "recall": _ratios(right_per_bin, pool_per_bin),
                          "selected": selected_per_bin.tolist(),
                          "pool": pool_per_bin.tolist()}}
