"""The static settings of a train/eval step (`Task`), the state it updates (`TrainState`),
and building both from a config.

A `Task` holds what a jitted step closes over and never changes during a run: the
model, the optimiser, the augmentation, the input normalisation and resizing. A
`TrainState` holds everything that does change (a pytree, replicated over the mesh); an
`EmaTrainState` also the moving averages of the weights (config.ema_decay > 0), which
`eval_variables` returns for evaluation, export and teaching; an AdvProp run's state
(config.adversarial.advprop) also the adversarial examples' batch statistics
(`AdvPropTrainState`, `AdvPropEmaTrainState`).
The model's inputs are always float NHWC images in [0, 255]; `model_inputs` resizes them
to task.input_size, repeats grey images to task.input_channels (inside the step, on the
accelerator) and normalises them.
"""

import dataclasses
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from effcv_jax import augment as augment_lib
from effcv_jax import ema as ema_lib
from effcv_jax import models, optim, sharding
from effcv_jax.errors import UserError

AugmentFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (a pytree; replicated over the mesh)."""
  step: jax.Array          # int32 scalar: number of updates applied
  params: Any
  batch_stats: Any         # BatchNorm running statistics ({} for models without BN)
  opt_state: Any
  rng: jax.Array           # base PRNG key; step keys are fold_in(rng, step)


@flax.struct.dataclass
class EmaTrainState(TrainState):
  """The train state of a run with config.ema_decay > 0: a TrainState that also holds the
  exponential moving averages of the weights (effcv_jax/ema.py), updated in the train step
  after the optimiser. A separate class, so that a run without EMA saves and restores the
  TrainState structure its checkpoints always had."""
  ema: Any                 # {'params': ..., 'batch_stats': ...} shaped like the model's


@flax.struct.dataclass
class AdvPropTrainState(TrainState):
  """The train state of an AdvProp run (task.adversarial_advprop, without weight averages): a
  TrainState that also holds the auxiliary batch-norm statistics, which normalise the
  adversarial images of each step and only those update (train.forward_advprop); they start
  as a copy of the main statistics. Evaluation, export and teaching never read them."""
  aux_batch_stats: Any     # shaped like batch_stats


@flax.struct.dataclass
class AdvPropEmaTrainState(EmaTrainState):
  """An AdvProp run's state with weight averages (config.ema_decay > 0): an EmaTrainState
  with AdvPropTrainState's auxiliary statistics (never averaged: `ema` averages the
  weights and the main statistics only)."""
  aux_batch_stats: Any     # shaped like batch_stats


@dataclasses.dataclass(frozen=True)
class Task:
  """The train/eval step's static settings (hashable closures, not traced): the model,
  the optimiser, the augmentation and how images become the model's inputs."""
  model: nn.Module
  tx: optax.GradientTransformation
  num_classes: int
  input_mean: tuple[float, ...]
  input_std: tuple[float, ...]
  augment: AugmentFn = lambda key, x, y: (x, y)
  label_smoothing: float = 0.0
  schedule: optax.Schedule | None = None
  input_size: int = 0                  # resize inputs to (input_size, input_size); 0 keeps them
  input_channels: int = 0              # repeat 1-channel inputs to this many; 0 keeps them
  freeze_batch_stats: bool = False     # train with the model in inference mode (see train_step)
  lr_rules: tuple = ()                 # optim.normalize_rules(...); frozen groups get no gradient
  ema_decay: float = 0.0               # > 0: the state keeps weight averages (EmaTrainState)
  # AugMix's Jensen-Shannon consistency: the supervised step trains on the clean image and
  # two views of `augment`'s final augmix stage (augment/augmix.py jsd_views), with loss
  # CE(clean) + augmix_jsd_weight * JS(clean, view 1, view 2).
  augmix_jsd: bool = False
  augmix_jsd_weight: float = 12.0
  # Adversarial training ('pgd' or 'fgsm'; '' off): the supervised step trains on
  # L-infinity adversarial versions of the augmented images (train.training_images), within
  # adversarial_epsilon pixel units, adversarial_steps steps of adversarial_step_size.
  adversarial_method: str = ""
  adversarial_epsilon: float = 8.0
  adversarial_steps: int = 7
  adversarial_step_size: float = 0.0   # 0: the method's own (train.attack_step_size)
  adversarial_random_start: bool = True
  # AdvProp (Xie et al. 2020): the step trains on the clean AND the adversarial images, loss
  # CE(clean) + CE(adversarial), the adversarial ones normalised by auxiliary batch-norm
  # statistics (train.forward_advprop; the state is an AdvPropTrainState).
  adversarial_advprop: bool = False
  # Generated images (config.gan_augment, gan/mixing.py): generated(key) -> (images, labels)
  # replaces the first images of every training batch (train.train_step); None: off.
  generated: Callable | None = None


class NonFiniteLossError(UserError, FloatingPointError):
  """The loss or gradients became NaN/inf; training stopped before saving them."""


def has_ema(state: TrainState) -> bool:
  """Whether `state` keeps moving averages of its weights (an EmaTrainState)."""
  return isinstance(state, EmaTrainState)


def has_aux_batch_stats(state: TrainState) -> bool:
  """Whether `state` keeps AdvProp's auxiliary batch statistics (aux_batch_stats)."""
  return isinstance(state, (AdvPropTrainState, AdvPropEmaTrainState))


def raw_variables(state: TrainState) -> dict[str, Any]:
  """The trained weights {'params', 'batch_stats'} of `state` (never the averages)."""
  return {"params": state.params, "batch_stats": state.batch_stats}


def eval_variables(state: TrainState) -> dict[str, Any]:
  """The weights a run is evaluated, exported, and used as a teacher or pretrained model
  with: the moving averages {'params', 'batch_stats'} when `state` keeps them, else the
  trained weights."""
  return state.ema if has_ema(state) else raw_variables(state)


def with_fresh_ema(state: TrainState) -> TrainState:
  """`state` with its moving averages (if it keeps them) reset to its current weights, as
  when a run starts from imported ones."""
  if not has_ema(state):
    return state
  return state.replace(ema=jax.tree.map(jnp.copy, raw_variables(state)))


def with_fresh_aux_batch_stats(state: TrainState) -> TrainState:
  """`state` with its auxiliary batch statistics (if it keeps them: AdvProp) reset to a copy
  of its main ones, as at initialisation or when a run starts from imported weights."""
  if not has_aux_batch_stats(state):
    return state
  return state.replace(aux_batch_stats=jax.tree.map(jnp.copy, state.batch_stats))


def update_ema(task: Task, old: TrainState, new: TrainState) -> TrainState:
  """`new` (the state after the optimiser step from `old`) with its moving averages moved
  towards its weights by ema.update at the decay of update number old.step + 1; `new`
  unchanged when the run keeps no averages."""
  if not has_ema(old):
    return new
  decay = ema_lib.decay_at(task.ema_decay, old.step + 1)
  return new.replace(ema=ema_lib.update(old.ema, raw_variables(new), decay))


def normalize(images: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
  """(B, H, W, C) float in [0, 255] -> (x / 255 - mean) / std, per channel."""
  return (images / 255.0 - jnp.asarray(mean)) / jnp.asarray(std)


def resize(images: jax.Array, size: int) -> jax.Array:
  """(B, H, W, C) float -> (B, size, size, C), bilinear (antialiased when shrinking);
  size 0 returns the images unchanged."""
  if not size or images.shape[1:3] == (size, size):
    return images
  return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), "bilinear")


def repeat_channels(images: jax.Array, channels: int) -> jax.Array:
  """(B, H, W, 1) grey -> (B, H, W, channels), the grey value in every channel; images
  with more than one channel, or channels 0, are returned unchanged."""
  if not channels or images.shape[-1] != 1:
    return images
  return jnp.repeat(images, channels, axis=-1)


def model_inputs(task: Task, images: jax.Array) -> jax.Array:
  """Float (B, H, W, C) in [0, 255], augmented -> the model's input: resized to
  task.input_size (e.g. 32 px CIFAR to the 128 px of ImageNet weights), grey repeated to
  task.input_channels (e.g. Fashion-MNIST into an RGB model), then normalised."""
  images = repeat_channels(resize(images, task.input_size), task.input_channels)
  return normalize(images, task.input_mean, task.input_std)


def model_input_shape(image_shape: tuple[int, ...], input_size: int = 0,
                      input_channels: int = 0) -> tuple[int, ...]:
  """(H, W, C) of the data -> (H, W, C) the model sees (see `resize`, `repeat_channels`)."""
  height, width, channels = tuple(image_shape)
  if input_size:
    height = width = input_size
  if input_channels and channels == 1:
    channels = input_channels
  return (height, width, channels)


def predict_logits(task: Task, variables: Any, images: jax.Array) -> jax.Array:
  """Inference-mode float32 logits (B, K) for float images (B, H, W, C) in [0, 255] (a
  model computing in bfloat16 has its logits cast up)."""
  return task.model.apply(variables, model_inputs(task, images), train=False).astype(jnp.float32)


def create_train_state(task: Task, image_shape: tuple[int, ...], seed: int,
                       mesh: jax.sharding.Mesh | None = None,
                       abstract: bool = False) -> TrainState:
  """Initialises the model and optimiser (and, with task.ema_decay > 0, the weight averages
  as copies of the initial weights: an EmaTrainState; with task.adversarial_advprop, the
  auxiliary batch statistics as a copy of the main ones: an AdvProp state); image_shape is
  (H, W, C). With
  `abstract`, only the shapes, dtypes and shardings (jax.ShapeDtypeStruct leaves): a
  template to restore a checkpoint into, with nothing compiled or computed."""
  def init() -> TrainState:
    init_key, state_key = jax.random.split(jax.random.PRNGKey(seed))
    variables = task.model.init(init_key, jnp.zeros((1,) + tuple(image_shape)), train=False)
    params = variables["params"]
    fields = dict(step=jnp.zeros((), jnp.int32), params=params,
                  batch_stats=variables.get("batch_stats", {}),
                  opt_state=task.tx.init(params), rng=state_key)
    if task.adversarial_advprop:
      fields["aux_batch_stats"] = None
    state_class = {(False, False): TrainState, (True, False): EmaTrainState,
                   (False, True): AdvPropTrainState, (True, True): AdvPropEmaTrainState}[
                       (task.ema_decay > 0, task.adversarial_advprop)]
    if task.ema_decay > 0:
      fields["ema"] = None
    return with_fresh_aux_batch_stats(with_fresh_ema(state_class(**fields)))
  out_shardings = sharding.replicated(mesh) if mesh is not None else None
  init = jax.jit(init, out_shardings=out_shardings)
  return jax.eval_shape(init) if abstract else init()


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
  """config.model with config.num_classes outputs and config.model_kwargs, its
  convolutions on config.conv_backend ('auto' when the config predates the field),
  computing in config.dtype ('float32' when the config predates it), its residual blocks
  rematerialised with config.remat (False when the config predates it)."""
  model_kwargs = dict(config.get("model_kwargs", {}))
  for key in ("conv_backend", "dtype", "remat"):
    if key in model_kwargs:
      raise ValueError(f"model_kwargs.{key} is not read: set the config field {key} "
                       f"(--config.{key}={model_kwargs[key]}) instead")
  return models.build(config.model, config.num_classes,
                      conv_backend=config.get("conv_backend", "auto"),
                      dtype=config.get("dtype", "float32"),
                      remat=config.get("remat", False), **model_kwargs)


def build_task(config: ml_collections.ConfigDict
               ) -> tuple[Task, Callable[[Any], optax.GradientTransformation]]:
  """The model, schedule and augmentation of `config`; the optimiser needs params.

  Returns (task without optimiser, make_tx(params) -> optax transformation).
  """
  model = build_model(config)
  opt = config.optimizer
  schedule = optim.schedule_from_config(opt, config.num_steps)
  lr_rules = optim.normalize_rules(opt.get("lr_rules", ()))

  def make_tx(params):
    return optim.optimizer_from_config(params, opt, schedule)

  task = Task(model=model, tx=optax.identity(), num_classes=config.num_classes,
              input_mean=tuple(config.input_mean), input_std=tuple(config.input_std),
              augment=augment_lib.build(config.get("augment", "")),
              label_smoothing=config.get("label_smoothing", 0.0), schedule=schedule,
              input_size=config.get("input_size", 0),
              input_channels=config.get("input_channels", 0),
              freeze_batch_stats=config.get("freeze_batch_stats", False), lr_rules=lr_rules,
              ema_decay=float(config.get("ema_decay", 0.0)),
              augmix_jsd=bool(config.get("augmix", {}).get("jsd", False)),
              augmix_jsd_weight=float(config.get("augmix", {}).get("jsd_weight", 12.0)),
              **adversarial_training_settings(config.get("adversarial", {})))
  return task, make_tx


def adversarial_training_settings(group: Any) -> dict[str, Any]:
  """Task's adversarial_* fields from a config's `adversarial` group (method '', 'pgd' or
  'fgsm'; epsilon, steps, step_size, random_start and advprop; an absent group or key: off
  or the default). FGSM takes one step; a step_size of 0 is the method's own
  (train.attack_step_size)."""
  method = group.get("method", "")
  if not method:
    return {}
  return {"adversarial_method": method, "adversarial_epsilon": float(group.get("epsilon", 8.0)),
          "adversarial_steps": 1 if method == "fgsm" else int(group.get("steps", 7)),
          "adversarial_step_size": float(group.get("step_size", 0.0)),
          "adversarial_random_start": bool(group.get("random_start", True)),
          "adversarial_advprop": bool(group.get("advprop", False))}


def init_task_and_state(config: ml_collections.ConfigDict, image_shape: tuple[int, ...],
                        mesh: jax.sharding.Mesh,
                        abstract: bool = False) -> tuple[Task, TrainState]:
  """Builds the task (with its optimiser) and a freshly initialised, replicated state
  (with `abstract`, its shapes and shardings only, see create_train_state).

  image_shape: (H, W, C) of the data; the model is built for config.input_size and
  config.input_channels if set.
  """
  task, make_tx = build_task(config)
  image_shape = model_input_shape(image_shape, task.input_size, task.input_channels)
  variables = jax.eval_shape(lambda: task.model.init(
      jax.random.PRNGKey(0), jnp.zeros((1,) + tuple(image_shape)), train=False))
  task = dataclasses.replace(task, tx=make_tx(variables["params"]))
  return task, create_train_state(task, image_shape, config.seed, mesh, abstract)
