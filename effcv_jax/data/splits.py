"""Deterministic, class-balanced splits of a labelled dataset.

Semi-supervised benchmarks (CIFAR-10-4000, Fashion-MNIST-1000) take a fixed number
of labels per class from the training set, keep the rest as unlabelled data and,
where no test split is available, hold out a class-balanced validation set first.
All splits are functions of (labels, counts, seed) only.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Split:
  """Indices into one source split: validation hold-out, labelled, unlabelled."""
  holdout: np.ndarray
  labelled: np.ndarray
  unlabelled: np.ndarray


def balanced_take(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
  """Sorted indices of `count` examples, `count / num_classes` from each class.

  `count` must divide by the number of classes and every class must have enough
  examples; raises ValueError otherwise.
  """
  classes = np.unique(labels)
  if count % len(classes):
    raise ValueError(f"{count} does not divide into {len(classes)} balanced classes")
  per_class = count // len(classes)
  chosen = []
  for c in classes:
    members = np.flatnonzero(labels == c)
    if len(members) < per_class:
      raise ValueError(f"class {c} has {len(members)} examples, need {per_class}")
    chosen.append(rng.permutation(members)[:per_class])
  return np.sort(np.concatenate(chosen))


def _take(labels: np.ndarray, count: int, rng: np.random.Generator, name: str,
          available: str) -> np.ndarray:
  """balanced_take with an error that names the config key to change."""
  try:
    return balanced_take(labels, count, rng)
  except ValueError as e:
    raise ValueError(f"{name}={count}: {e} ({available}: {len(labels)} examples, "
                     f"{len(np.unique(labels))} classes); set {name} to a multiple of the class "
                     "count that every class can supply") from e


def make_split(labels: np.ndarray, num_holdout: int = 0, num_labelled: int = -1,
               seed: int = 0) -> Split:
  """Class-balanced hold-out, then class-balanced labelled subset; rest unlabelled.

  labels: (N,) int. num_holdout: validation size (0 for none). num_labelled:
  labelled size from what remains (-1 for all of it, leaving nothing unlabelled).
  Raises ValueError naming num_holdout or num_labelled if it cannot be met.
  """
  rng = np.random.default_rng(seed)
  all_idx = np.arange(len(labels))
  holdout = (_take(labels, num_holdout, rng, "num_holdout", "the training split")
             if num_holdout > 0 else np.zeros((0,), np.int64))
  rest = np.setdiff1d(all_idx, holdout)
  if num_labelled < 0:
    return Split(holdout, rest, np.zeros((0,), np.int64))
  labelled = rest[_take(labels[rest], num_labelled, rng, "num_labelled",
                        "the training split after the hold-out")]
  return Split(holdout, labelled, np.setdiff1d(rest, labelled))
