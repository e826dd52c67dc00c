"""The data of a training run, as its config describes it: the labelled training split,
the unlabelled pool and the evaluation set, with labels checked against num_classes and
images resized on the host to config.image_size.

config.host_preprocessing names a pre-processing that replaces that resize
(HOST_PREPROCESSING: efficientnet_preprocess's 'efficientnet', jpeg_preprocess's
'efficientnet_fast'): the training split and the unlabelled pool are then the images as stored
(for 'efficientnet_fast' typically encoded JPEGs), cut to config.image_size by
`train_record_map(config)` in the train iterator, in config.data_workers grain worker
processes (0: in this process), and `as_evaluated` gives what evaluation and a teacher's pass
read (the official centre crop).

config.eval_split 'holdout' evaluates on the class-balanced hold-out carved out of the
training split (config.num_holdout examples); any other name reads that split of
config.eval_dataset (default config.dataset).
"""

import dataclasses
from typing import Any, Callable

import ml_collections
import numpy as np
from absl import logging

from effcv_jax.data import efficientnet_preprocess, jpeg_preprocess, pipeline, sources, splits
from effcv_jax.errors import ConfigError

Source = pipeline.Source
RecordMap = Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]
# name -> (eval/pseudo-labelling source wrapper, training record map factory): the official
# pre-processing on decoded images ('efficientnet') and the same crops cut from encoded JPEGs
# with Pillow ('efficientnet_fast').
HOST_PREPROCESSING = {**efficientnet_preprocess.HOST_PREPROCESSING,
                      **jpeg_preprocess.HOST_PREPROCESSING}
# config.host_preprocessing: '' resizes on the host (resized_on_host), else a name of
# HOST_PREPROCESSING.
HOST_PREPROCESSING_KINDS = ("",) + tuple(HOST_PREPROCESSING)


@dataclasses.dataclass(frozen=True)
class RunData:
  """Sources of a run: labelled training data, unlabelled pool and evaluation set;
  image_shape is (H, W, C) of the images the model sees: after host-side resizing, or
  under config.host_preprocessing the evaluation crop's (train and unlabelled then hold
  the images as stored)."""
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


# The host pre-processings that decode the images themselves: TFDS sources keep them encoded.
ENCODED_IMAGE_KINDS = tuple(jpeg_preprocess.HOST_PREPROCESSING)


def _load(config: ml_collections.ConfigDict, spec: str, split: str,
          data_dir: str | None) -> Source:
  """sources.load_source, images kept encoded for ENCODED_IMAGE_KINDS."""
  if config.get("host_preprocessing", "") in ENCODED_IMAGE_KINDS:
    return sources.load_source(spec, split, data_dir, encoded_images=True)
  return sources.load_source(spec, split, data_dir)


def resized_on_host(config: ml_collections.ConfigDict, source: Source) -> Source:
  """`source` with its images resized on the host to config.image_size (0: as stored)."""
  size = config.get("image_size", 0)
  return pipeline.ResizedImages(source, size) if size else source


def training_images(config: ml_collections.ConfigDict, source: Source) -> Source:
  """`source` as the train iterator reads it: as stored under config.host_preprocessing
  (train_record_map cuts the images), else resized_on_host."""
  return source if config.get("host_preprocessing", "") else resized_on_host(config, source)


def as_evaluated(config: ml_collections.ConfigDict, source: Source) -> Source:
  """A source of `training_images` as evaluation and a teacher's labelling pass read it:
  under config.host_preprocessing its evaluation wrapper at config.image_size (the
  official centre crop for 'efficientnet'), else `source` itself (already resized)."""
  name = config.get("host_preprocessing", "")
  if not name:
    return source
  wrap_for_eval, _ = HOST_PREPROCESSING[name]
  return wrap_for_eval(source, config.image_size)


def train_record_map(config: ml_collections.ConfigDict) -> RecordMap | None:
  """The `record_map` of data.train_iterator for config.host_preprocessing (the
  official random crop, resize and flip to config.image_size for 'efficientnet'); None
  without host pre-processing."""
  name = config.get("host_preprocessing", "")
  if not name:
    return None
  _, make_record_map = HOST_PREPROCESSING[name]
  return make_record_map(config.image_size)


def at_image_size(config: ml_collections.ConfigDict, run_data: RunData) -> RunData:
  """`run_data`, loaded with another stage's config of the same host_preprocessing, as the
  stage `config` evaluates it: under host_preprocessing the evaluation crops and image_shape
  at config.image_size (the training images are whole for every stage); without, unchanged
  (the images were resized once for all stages)."""
  if not config.get("host_preprocessing", ""):
    return run_data
  return dataclasses.replace(
      run_data, eval=as_evaluated(config, run_data.eval.source),
      image_shape=(config.image_size, config.image_size) + tuple(run_data.image_shape[2:]))


def image_shape_of(source: Source) -> tuple[int, ...]:
  """(H, W, C) of the first image of `source`."""
  return tuple(np.shape(source[0]["image"]))


def _training_split(config: ml_collections.ConfigDict, data_dir: str | None
                    ) -> tuple[Source, splits.Split, np.ndarray]:
  """The training split of config.dataset as the train iterator reads it
  (`training_images`), its hold-out/labelled/unlabelled split and its labels."""
  full = _load(config, config.dataset, config.train_split, data_dir)
  labels = source_labels(full)
  check_labels(labels, f"{config.dataset} [{config.train_split}]", config.num_classes)
  split = splits.make_split(labels, config.get("num_holdout", 0),
                            config.get("num_labelled", -1), config.get("split_seed", 0))
  return training_images(config, full), split, labels


def _holdout(config: ml_collections.ConfigDict, full: Source, split: splits.Split) -> Source:
  if not len(split.holdout):
    raise ValueError("eval_split='holdout' needs config.num_holdout > 0")
  return as_evaluated(config, pipeline.Subset(full, split.holdout))


def load_eval_source(config: ml_collections.ConfigDict, dataset: str, split: str,
                     data_dir: str | None = None) -> Source:
  """The evaluation data alone: split `split` of `dataset` (default config.dataset),
  labels checked, as the run evaluates it (resized on the host, or `as_evaluated`). Reads
  no training data, except for split 'holdout', which is carved out of config.dataset's
  training split."""
  if split == "holdout":
    full, split, _ = _training_split(config, data_dir)
    return _holdout(config, full, split)
  spec = dataset or config.dataset
  source = _load(config, spec, split, data_dir)
  if isinstance(source, sources.ArraySource):
    check_labels(source.labels, f"{spec} [{split}]", config.num_classes)
  return as_evaluated(config, training_images(config, source))


def load_run_data(config: ml_collections.ConfigDict, data_dir: str | None = None) -> RunData:
  """Loads config.dataset and applies its hold-out / labelled / unlabelled split, and
  the evaluation set (see the module docstring); refuses labelled data of a single class
  (check_labelled_classes)."""
  full, split, labels = _training_split(config, data_dir)
  check_labelled_classes(labels[split.labelled], config)
  if config.eval_split == "holdout":
    eval_source = _holdout(config, full, split)
  else:
    eval_source = load_eval_source(config, config.get("eval_dataset", ""), config.eval_split,
                                   data_dir)
  return RunData(train=pipeline.Subset(full, split.labelled),
                 unlabelled=pipeline.Subset(full, split.unlabelled),
                 eval=eval_source, image_shape=image_shape_of(as_evaluated(config, full)))
