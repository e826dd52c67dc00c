"""Choosing the pseudo-labelled examples a student trains on (pure NumPy), and the
dataset of those examples with their labels."""

import dataclasses
from typing import Any

import numpy as np
from absl import logging

from effcv_jax.data.sources import Source


def rank_by_confidence(confidence: np.ndarray, seed: int = 0) -> np.ndarray:
  """Positions (N,) sorted by decreasing confidence; ties in random order (seeded)."""
  tie_breaker = np.random.default_rng(seed).random(len(confidence))
  return np.lexsort((tie_breaker, -confidence))


def balance_per_class(classes: np.ndarray, confidence: np.ndarray, per_class: int,
                      num_classes: int, seed: int = 0) -> np.ndarray:
  """Positions (C * per_class,) giving exactly `per_class` examples of each class.

  A class with at least `per_class` examples keeps its most confident ones; a
  smaller class repeats its examples in order of confidence until it has
  `per_class` (Noisy Student's duplication). A class without examples stays
  empty (logged), so the result is shorter then.
  """
  ranked = rank_by_confidence(confidence, seed)
  chosen = []
  for label in range(num_classes):
    members = ranked[classes[ranked] == label]
    if not len(members):
      logging.warning("pseudo_label: no example of class %d to balance", label)
      continue
    chosen.append(members[np.arange(per_class) % len(members)])
  return np.concatenate(chosen) if chosen else np.zeros((0,), np.int64)


def balance_stochastic(classes: np.ndarray, confidence: np.ndarray, per_class: int,
                       num_classes: int, threshold: float = 0.0, seed: int = 0) -> np.ndarray:
  """Positions (about C * per_class, with repeats): the official Noisy Student balancing
  (noisystudent filter_unlabel.py with upsampling, as its scripts run it).

  Per class: its confidence threshold is the highest of `threshold` and the multiples of
  0.01 above it that at least `per_class` of its examples reach (`threshold` itself when
  none does); each of the n_c examples at or above it is kept per_class / n_c times in
  expectation, rounded stochastically (floor, plus one with probability the fraction): a
  random subset of about per_class when n_c > per_class, every example repeated about
  per_class / n_c times when fewer. A class without examples stays empty (logged).
  classes int (N,), confidence float (N,); seed draws the roundings.
  """
  rng = np.random.default_rng(seed)
  grid = [threshold] + [k / 100 for k in range(101) if k / 100 > threshold]
  chosen = []
  for label in range(num_classes):
    members = np.flatnonzero((classes == label) & (confidence >= threshold))
    if not len(members):
      logging.warning("pseudo_label: no example of class %d to balance", label)
      continue
    member_confidence = confidence[members]
    class_threshold = threshold
    for candidate in reversed(grid):
      if np.count_nonzero(member_confidence >= candidate) >= per_class:
        class_threshold = candidate
        break
    kept = members[member_confidence >= class_threshold]
    copies = per_class / len(kept)
    counts = int(copies) + (rng.random(len(kept)) < copies - int(copies)).astype(np.int64)
    chosen.append(np.repeat(kept, counts))
  return np.concatenate(chosen) if chosen else np.zeros((0,), np.int64)


BALANCE_KINDS = ("most_confident", "stochastic")


def select(indices: np.ndarray, probs: np.ndarray, confidence: np.ndarray | None = None, *,
           threshold: float = 0.0, per_class: int | None = None, hard: bool = False,
           seed: int = 0, balance: str = "most_confident") -> tuple[np.ndarray, np.ndarray]:
  """Picks the pseudo-labelled examples to train on.

  Args:
    indices: int (N,) pool indices; probs: float (N, K) teacher probabilities;
    confidence: float (N,) (default probs.max(-1)).
    threshold: keep examples with confidence >= threshold (Noisy Student: 0.3).
    per_class: then balance to this many per predicted class; None keeps all that pass
      the threshold.
    hard: labels are one-hot argmax instead of the soft probabilities.
    seed: breaks ties in confidence when balancing, or draws the stochastic roundings.
    balance: 'most_confident' (`balance_per_class`: exactly per_class, the most
      confident, repeated in order of confidence) or 'stochastic' (`balance_stochastic`:
      the official filter_unlabel.py).
  Returns:
    selected pool indices int64 (M,) (with repeats when balancing duplicates),
    labels float32 (M, K).
  """
  probs = np.asarray(probs, np.float32)
  confidence = probs.max(axis=-1) if confidence is None else np.asarray(confidence)
  classes = probs.argmax(axis=-1)
  if balance not in BALANCE_KINDS:
    raise ValueError(f"balance must be one of {BALANCE_KINDS}, got {balance!r}")
  keep = np.flatnonzero(confidence >= threshold)
  if per_class is not None and balance == "stochastic":
    keep = keep[balance_stochastic(classes[keep], confidence[keep], per_class,
                                   probs.shape[-1], threshold, seed)]
  elif per_class is not None:
    keep = keep[balance_per_class(classes[keep], confidence[keep], per_class,
                                  probs.shape[-1], seed)]
  labels = np.eye(probs.shape[-1], dtype=np.float32)[classes[keep]] if hard else probs[keep]
  return np.asarray(indices, np.int64)[keep], labels


@dataclasses.dataclass(frozen=True)
class PseudoLabelledSource:
  """The selected pool examples with their pseudo-labels, as a random-access source.

  source[i] -> {'image': uint8 (H, W, C), 'label': int32 argmax, 'soft_label':
  float32 (K,)} for pool example indices[i] with label row labels[i].
  """
  pool_source: Source
  indices: np.ndarray     # int (M,) pool indices, repeats allowed
  labels: np.ndarray      # float32 (M, K), rows sum to 1

  def __post_init__(self):
    if len(self.indices) != len(self.labels) or np.ndim(self.labels) != 2:
      raise ValueError(f"indices {np.shape(self.indices)} and labels {np.shape(self.labels)} "
                       "must be (M,) and (M, K)")
    pool_size = len(self.pool_source)
    if len(self.indices) and not 0 <= np.min(self.indices) <= np.max(self.indices) < pool_size:
      raise ValueError(f"indices outside the pool of {len(self.pool_source)} examples")

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict[str, Any]:
    soft_label = np.asarray(self.labels[index], np.float32)
    return {"image": self.pool_source[int(self.indices[index])]["image"],
            "label": np.int32(np.argmax(soft_label)), "soft_label": soft_label}
