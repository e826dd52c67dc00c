"""The data of a training run, as its config describes it: the labelled training split,
the unlabelled pool and the evaluation set, with labels checked against num_classes and
images resized on the host to config.image_size.

config.eval_split 'holdout' evaluates on the class-balanced hold-out carved out of the
training split (config.num_holdout examples); any other name reads that split of
config.eval_dataset (default config.dataset).
"""

import dataclasses

import ml_collections
import numpy as np
from absl import logging

from effcv_jax.data import pipeline, sources, splits
from effcv_jax.errors import ConfigError

Source = pipeline.Source


@dataclasses.dataclass(frozen=True)
class RunData:
  """Sources of a run: labelled training data, unlabelled pool and evaluation set;
  image_shape is (H, W, C) of the training images after host-side resizing."""
  train: Source
  unlabelled: Source
  eval: Source
  image_shape: tuple[int, ...]


def check_labels(labels: np.ndarray, where: str, num_classes: int) -> None:
  """Raises DataError if a label is outside 0..num_classes-1."""
  if len(labels) and labels.max() >= num_classes:
    raise sources.DataError(
        f"{where} has label {labels.max()} but config.num_classes = {num_classes}: set "
        f"num_classes to at least {labels.max() + 1} (--config.num_classes="
        f"{labels.max() + 1}) or fix the labels (class indices 0..num_classes-1)")


def check_labelled_classes(labels: np.ndarray, config: ml_collections.ConfigDict) -> None:
  """Refuses a labelled training split whose labels use a single class (a classifier
  trained on it learns nothing, yet scores 100 % on data of that class): raises
  ConfigError naming dataset and num_labelled. Logs a warning naming the classes of
  0..num_classes-1 that never occur (the model cannot learn them)."""
  if not len(labels):
    return
  present = np.unique(labels)
  where = (f"dataset {config.dataset!r} [{config.train_split}] with "
           f"num_holdout={config.get('num_holdout', 0)}, "
           f"num_labelled={config.get('num_labelled', -1)}")
  if len(present) == 1:
    raise ConfigError(
        f"the labelled training split ({where}: {len(labels)} examples) has only class "
        f"{present[0]}: a classifier trained on it learns nothing. Check the labels of the "
        "dataset (config.dataset, config.train_split) or the split (config.num_labelled)")
  missing = sorted(set(range(config.num_classes)) - set(present.tolist()))
  if missing:
    logging.warning("the labelled training split (%s: %d examples) has no example of "
                    "class(es) %s of num_classes=%d: the model cannot learn them", where,
                    len(labels), missing, config.num_classes)


def source_labels(source: Source) -> np.ndarray:
  """The labels (N,) of a source, read without decoding images where it stores arrays."""
  if isinstance(source, sources.ArraySource):
    return source.labels
  return np.array([source[i]["label"] for i in range(len(source))])


def resized_on_host(config: ml_collections.ConfigDict, source: Source) -> Source:
  """`source` with its images resized on the host to config.image_size (0: as stored)."""
  size = config.get("image_size", 0)
  return pipeline.ResizedImages(source, size) if size else source


def image_shape_of(source: Source) -> tuple[int, ...]:
  """(H, W, C) of the first image of `source`."""
  return tuple(np.shape(source[0]["image"]))


def _training_split(config: ml_collections.ConfigDict, data_dir: str | None
                    ) -> tuple[Source, splits.Split, np.ndarray]:
  """The resized training split of config.dataset, its hold-out/labelled/unlabelled split
  and its labels."""
  full = sources.load_source(config.dataset, config.train_split, data_dir)
  labels = source_labels(full)
  check_labels(labels, f"{config.dataset} [{config.train_split}]", config.num_classes)
  split = splits.make_split(labels, config.get("num_holdout", 0),
                            config.get("num_labelled", -1), config.get("split_seed", 0))
  return resized_on_host(config, full), split, labels


def _holdout(full: Source, split: splits.Split) -> Source:
  if not len(split.holdout):
    raise ValueError("eval_split='holdout' needs config.num_holdout > 0")
  return pipeline.Subset(full, split.holdout)


def load_eval_source(config: ml_collections.ConfigDict, dataset: str, split: str,
                     data_dir: str | None = None) -> Source:
  """The evaluation data alone: split `split` of `dataset` (default config.dataset),
  labels checked, resized on the host like the run's data. Reads no training data,
  except for split 'holdout', which is carved out of config.dataset's training split."""
  if split == "holdout":
    full, split, _ = _training_split(config, data_dir)
    return _holdout(full, split)
  spec = dataset or config.dataset
  source = sources.load_source(spec, split, data_dir)
  if isinstance(source, sources.ArraySource):
    check_labels(source.labels, f"{spec} [{split}]", config.num_classes)
  return resized_on_host(config, source)


def load_run_data(config: ml_collections.ConfigDict, data_dir: str | None = None) -> RunData:
  """Loads config.dataset and applies its hold-out / labelled / unlabelled split, and
  the evaluation set (see the module docstring); refuses labelled data of a single class
  (check_labelled_classes)."""
  full, split, labels = _training_split(config, data_dir)
  check_labelled_classes(labels[split.labelled], config)
  if config.eval_split == "holdout":
    eval_source = _holdout(full, split)
  else:
    eval_source = load_eval_source(config, config.get("eval_dataset", ""), config.eval_split,
                                   data_dir)
  return RunData(train=pipeline.Subset(full, split.labelled),
                 unlabelled=pipeline.Subset(full, split.unlabelled),
                 eval=eval_source, image_shape=image_shape_of(full))
