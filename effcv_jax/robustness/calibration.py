"""Calibration of a classifier's probabilities: expected calibration error, NLL, Brier
score, temperature scaling and the reliability diagram.

Pure functions of logits (N, K) and integer labels (N,), NumPy or JAX arrays; results
are NumPy values and Python floats. Probabilities are softmax(logits / T).
"""

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

NUM_BINS = 15


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
  """(N, K) logits -> (N, K) float64 probabilities of softmax(logits / temperature)."""
  z = np.asarray(logits, np.float64) / temperature
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def reliability_bins(logits: Any, labels: Any, num_bins: int = NUM_BINS,
                     temperature: float = 1.0) -> dict[str, np.ndarray]:
  """The equal-width confidence bins ECE is made of.

  Each example falls in bin b when its confidence (the top softmax probability)
  lies in (b / num_bins, (b + 1) / num_bins] (the first bin also takes 0). Returns
  'count' (num_bins,) int, 'confidence' and 'accuracy' (num_bins,) float: the mean
  confidence and the fraction of correct top-1 predictions in each bin, 0 for an
  empty bin, and 'edges' (num_bins + 1,).
  """
  probs = softmax(logits, temperature)
  labels = np.asarray(labels)
  confidence = probs.max(axis=-1)
  correct = (probs.argmax(axis=-1) == labels).astype(np.float64)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  index = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
  count = np.bincount(index, minlength=num_bins)
  sum_conf = np.bincount(index, weights=confidence, minlength=num_bins)
  sum_correct = np.bincount(index, weights=correct, minlength=num_bins)
  safe = np.maximum(count, 1)
  return {"count": count, "confidence": sum_conf / safe, "accuracy": sum_correct / safe,
          "edges": edges}


def expected_calibration_error(logits: Any, labels: Any, num_bins: int = NUM_BINS,
                               temperature: float = 1.0) -> float:
  """ECE: sum over the confidence bins (`reliability_bins`) of the fraction of the N
  examples in the bin times |accuracy - mean confidence| of the bin; in [0, 1]."""
  bins = reliability_bins(logits, labels, num_bins, temperature)
  weight = bins["count"] / max(int(bins["count"].sum()), 1)
  return float(np.sum(weight * np.abs(bins["accuracy"] - bins["confidence"])))


def negative_log_likelihood(logits: Any, labels: Any, temperature: float = 1.0) -> float:
  """Mean over the N examples of -log softmax(logits / T)[label] (nats)."""
  z = np.asarray(logits, np.float64) / temperature
  z = z - z.max(axis=-1, keepdims=True)
  log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
  return float(-np.mean(log_probs[np.arange(len(z)), np.asarray(labels)]))


def brier_score(logits: Any, labels: Any, temperature: float = 1.0) -> float:
  """Multi-class Brier score: for each example the sum over the K classes of
  (probability - one-hot label)^2, averaged over the N examples; in [0, 2]."""
  probs = softmax(logits, temperature)
  one_hot = np.eye(probs.shape[-1])[np.asarray(labels)]
  return float(np.mean(np.sum((probs - one_hot) ** 2, axis=-1)))


def calibration_metrics(logits: Any, labels: Any, temperature: float = 1.0,
                        num_bins: int = NUM_BINS) -> dict[str, float]:
  """Accuracy, ECE, NLL and Brier score of softmax(logits / temperature), (N, K), (N,)."""
  labels = np.asarray(labels)
  return {"accuracy": float(np.mean(np.asarray(logits).argmax(-1) == labels)),
          "ece": expected_calibration_error(logits, labels, num_bins, temperature),
          "nll": negative_log_likelihood(logits, labels, temperature),
          "brier": brier_score(logits, labels, temperature)}


def fit_temperature(logits: Any, labels: Any, steps: int = 50) -> float:
  """The temperature T > 0 that minimises the mean NLL of softmax(logits / T) on
  validation logits (N, K) with labels (N,).

  Newton's method on log T (the NLL is smooth in it; first and second derivatives
  by jax.grad), each step halved until the NLL does not rise, from T = 1; `steps`
  iterations at most, deterministic. T > 1 softens over-confident probabilities.
  """
  z = jnp.asarray(logits, jnp.float32)
  y = jnp.asarray(labels, jnp.int32)

  def nll(log_t):
    log_probs = jax.nn.log_softmax(z * jnp.exp(-log_t), axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=-1))

  value_grad = jax.jit(jax.value_and_grad(nll))
  hessian = jax.jit(jax.grad(jax.grad(nll)))
  log_t = jnp.float32(0.0)
  value, grad = value_grad(log_t)
  for _ in range(steps):
    curvature = hessian(log_t)
    step = -grad / curvature if curvature > 1e-6 else -jnp.sign(grad) * 0.5
    step = jnp.clip(step, -1.0, 1.0)
    for _ in range(20):
      candidate = log_t + step
      new_value, new_grad = value_grad(candidate)
      if new_value <= value:
        break
      step = step / 2
    else:
      break
    converged = abs(float(candidate - log_t)) < 1e-6
    log_t, value, grad = candidate, new_value, new_grad
    if converged:
      break
  return float(jnp.exp(log_t))


def write_reliability_diagram(path: str, bins_before: dict[str, np.ndarray],
                              bins_after: dict[str, np.ndarray], title: str,
                              temperature: float, ece_before: float, ece_after: float,
                              after_note: str = "") -> None:
  """Writes a PNG at `path`: for the bins of `reliability_bins` before and after
  temperature scaling (T = `temperature`), the accuracy per confidence bin against the
  diagonal of perfect calibration, the gap to the bin's mean confidence shaded, and the
  share of examples per bin below; `after_note` is added to the right panel's title."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  figure, axes = plt.subplots(2, 2, figsize=(9, 5.6), sharex=True,
                              gridspec_kw={"height_ratios": [3, 1]})
  panels = ((bins_before, f"before (T = 1): ECE {100 * ece_before:.2f} %"),
            (bins_after, f"after (T = {temperature:.3f}{after_note}): ECE "
                         f"{100 * ece_after:.2f} %"))
  for column, (bins, label) in enumerate(panels):
    edges = bins["edges"]
    width = edges[1] - edges[0]
    centres = edges[:-1] + width / 2
    filled = bins["count"] > 0
    top, bottom = axes[0, column], axes[1, column]
    top.plot([0, 1], [0, 1], color="#888888", linestyle="--", linewidth=1)
    top.bar(centres[filled], bins["accuracy"][filled], width=width, color="#4878a8",
            edgecolor="white", label="accuracy")
    accuracy, confidence = bins["accuracy"][filled], bins["confidence"][filled]
    top.bar(centres[filled], np.abs(confidence - accuracy),
            bottom=np.minimum(confidence, accuracy), width=width, color="#c44e52",
            alpha=0.35, label="gap to mean confidence")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_title(label, fontsize=10)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    share = bins["count"] / max(int(bins["count"].sum()), 1)
    bottom.bar(centres, share, width=width, color="#55a868", edgecolor="white")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("share")
  figure.suptitle(title, fontsize=10)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
