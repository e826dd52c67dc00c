"""Supervised training: TrainState, the jitted train/eval steps and the resumable loop.

One train step does everything on the accelerator: uint8 -> float, augmentation
(per-image random parameters), normalisation, forward, loss, update. Steps are
jitted with the batch sharded over a ('data',) mesh of all devices and the state
replicated. Per-step randomness is `fold_in(state.rng, state.step)`, so a run
resumed from a checkpoint draws the same numbers as an uninterrupted one.
"""

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from effcv_jax import augment as augment_lib
from effcv_jax.augment import tta
from effcv_jax import data as data_lib
from effcv_jax import files, losses, models, optim, sharding
from effcv_jax.pretrained import transfer
from effcv_jax.checkpoint import Checkpointer
from effcv_jax.metrics import MetricWriter, Progress

AugmentFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
StepFn = Callable[[Any, Mapping[str, jax.Array]], tuple[Any, dict[str, jax.Array]]]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (a pytree; replicated over the mesh)."""
  step: jax.Array          # int32 scalar: number of updates applied
  params: Any
  batch_stats: Any         # BatchNorm running statistics ({} for models without BN)
  opt_state: Any
  rng: jax.Array           # base PRNG key; step keys are fold_in(rng, step)


@dataclasses.dataclass(frozen=True)
class Task:
  """The static parts of a train step (hashable closures, not traced)."""
  model: nn.Module
  tx: optax.GradientTransformation
  num_classes: int
  input_mean: tuple[float, ...]
  input_std: tuple[float, ...]
  augment: AugmentFn = lambda key, x, y: (x, y)
  label_smoothing: float = 0.0
  schedule: optax.Schedule | None = None
  input_size: int = 0                  # resize inputs to (input_size, input_size); 0 keeps them
  freeze_batch_stats: bool = False     # train with the model in inference mode (see train_step)
  lr_rules: tuple = ()                 # optim.normalize_rules(...); frozen groups get no gradient


class NonFiniteLossError(FloatingPointError):
  """The loss or gradients became NaN/inf; training stopped before saving them."""


def normalize(images: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
  """(B, H, W, C) float in [0, 255] -> (x / 255 - mean) / std, per channel."""
  return (images / 255.0 - jnp.asarray(mean)) / jnp.asarray(std)


def resize(images: jax.Array, size: int) -> jax.Array:
  """(B, H, W, C) float -> (B, size, size, C), bilinear (antialiased when shrinking);
  size 0 returns the images unchanged."""
  if not size or images.shape[1:3] == (size, size):
    return images
  return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), "bilinear")


def model_inputs(task: Task, images: jax.Array) -> jax.Array:
  """Float (B, H, W, C) in [0, 255], augmented -> the model's input: resized to
  task.input_size (e.g. 32 px CIFAR to the 128 px of ImageNet weights), then normalised."""
  return normalize(resize(images, task.input_size), task.input_mean, task.input_std)


def model_input_shape(image_shape: tuple[int, ...], input_size: int = 0) -> tuple[int, ...]:
  """(H, W, C) of the data -> (H, W, C) the model sees (see `resize`)."""
  if not input_size:
    return tuple(image_shape)
  return (input_size, input_size) + tuple(image_shape[2:])


def create_train_state(task: Task, image_shape: tuple[int, ...], seed: int,
                       mesh: jax.sharding.Mesh | None = None,
                       abstract: bool = False) -> TrainState:
  """Initialises the model and optimiser; image_shape is (H, W, C). With `abstract`,
  only the shapes, dtypes and shardings (jax.ShapeDtypeStruct leaves): a template to
  restore a checkpoint into, with nothing compiled or computed."""
  def init() -> TrainState:
    init_key, state_key = jax.random.split(jax.random.PRNGKey(seed))
    variables = task.model.init(init_key, jnp.zeros((1,) + tuple(image_shape)), train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=task.tx.init(params), rng=state_key)
  out_shardings = sharding.replicated(mesh) if mesh is not None else None
  init = jax.jit(init, out_shardings=out_shardings)
  return jax.eval_shape(init) if abstract else init()


def train_step(task: Task, state: TrainState,
               batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update on batch {'image': uint8 (B, H, W, C), 'label': int (B,)[, 'soft_label' (B, K)]}.

  Targets are 'soft_label' when the batch has them (pseudo-labels, mixed with one-hot
  labelled examples), else one-hot 'label'.
  With task.freeze_batch_stats the model runs in inference mode (train=False: batch
  norm normalises with its running statistics and leaves them unchanged; dropout is
  off too), as a linear probe on a pretrained backbone wants. Parameters that
  task.lr_rules freeze get no gradient (skipping their backward pass; grad_norm
  then covers the trainable ones).
  A step whose loss or gradient norm is not finite leaves params, statistics and
  optimiser state unchanged and reports metrics['nonfinite'] = 1.
  """
  aug_key, dropout_key = step_keys(state)
  labels = (batch["soft_label"].astype(jnp.float32) if "soft_label" in batch
            else jax.nn.one_hot(batch["label"], task.num_classes))
  images, labels = task.augment(aug_key, batch["image"].astype(jnp.float32), labels)
  inputs = model_inputs(task, images)
  targets = losses.smooth_labels(labels, task.label_smoothing)

  def loss_fn(params):
    logits, batch_stats = forward_train(task, state, params, inputs, dropout_key)
    loss = jnp.mean(losses.softmax_cross_entropy(logits, targets))
    return loss, (logits, batch_stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state, metrics = apply_update(task, state, loss, grads, batch_stats)
  metrics["accuracy"] = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(labels, -1))
  return new_state, metrics


def step_keys(state: TrainState) -> tuple[jax.Array, jax.Array]:
  """(augmentation key, dropout key) of the step `state.step`: the same after a resume."""
  aug_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
  return aug_key, dropout_key


def forward_train(task: Task, state: TrainState, params: Any, inputs: jax.Array,
                  dropout_key: jax.Array) -> tuple[jax.Array, Any]:
  """Training-mode logits (B, K) of normalised `inputs` and the updated batch statistics.

  Differentiable in `params`; frozen groups (task.lr_rules) are cut from the gradient.
  With task.freeze_batch_stats the model runs in inference mode and the statistics
  come back unchanged.
  """
  variables = {"params": optim.stop_frozen_gradients(params, task.lr_rules),
               "batch_stats": state.batch_stats}
  if task.freeze_batch_stats:
    return task.model.apply(variables, inputs, train=False), state.batch_stats
  logits, new_vars = task.model.apply(variables, inputs, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": dropout_key})
  return logits, new_vars.get("batch_stats", {})


def apply_update(task: Task, state: TrainState, loss: jax.Array, grads: Any, batch_stats: Any
                 ) -> tuple[TrainState, dict[str, jax.Array]]:
  """The optimiser step, skipped (state unchanged, metrics['nonfinite'] = 1) when the loss
  or gradient norm is not finite; returns (state at step + 1, metrics)."""
  updates, opt_state = task.tx.update(grads, state.opt_state, state.params)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updated = state.replace(params=optax.apply_updates(state.params, updates),
                          batch_stats=batch_stats, opt_state=opt_state)
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
  metrics = {"loss": loss, "grad_norm": grad_norm,
             "nonfinite": 1.0 - finite.astype(jnp.float32)}
  if task.schedule is not None:
    metrics["learning_rate"] = task.schedule(state.step)
  return new_state.replace(step=state.step + 1), metrics


def predict_logits(task: Task, variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
  """Inference-mode logits (B, K) for float images (B, H, W, C) in [0, 255]."""
  return task.model.apply(variables, model_inputs(task, images), train=False)


def eval_step(task: Task, variables: Mapping[str, Any], batch: Mapping[str, jax.Array],
              tta_views: str = "") -> dict[str, jax.Array]:
  """Sums over the real (mask == True) examples of a padded batch: correct, loss, count.

  tta_views: '' for the plain forward pass, else test-time augmentation views (a
  preset such as 'flip' or a views string, see augment/tta.py) whose softmax
  probabilities are averaged.
  """
  images = batch["image"].astype(jnp.float32)
  if tta_views:
    probs = tta.predict_probs(lambda x: predict_logits(task, variables, x), images, tta_views)
    log_probs = jnp.log(jnp.maximum(probs, 1e-30))
  else:
    log_probs = jax.nn.log_softmax(predict_logits(task, variables, images).astype(jnp.float32))
  mask = batch["mask"].astype(jnp.float32)
  labels = jax.nn.one_hot(batch["label"], task.num_classes)
  return {
      "correct": jnp.sum(mask * (jnp.argmax(log_probs, -1) == batch["label"])),
      "loss": jnp.sum(mask * -jnp.sum(labels * log_probs, -1)),
      "count": jnp.sum(mask),
  }


def jit_train_step(task: Task, mesh: jax.sharding.Mesh):
  """train_step jitted with replicated state, sharded batch; the old state is donated."""
  return jax.jit(functools.partial(train_step, task),
                 in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                 out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)),
                 donate_argnums=0)


def jit_eval_step(task: Task, mesh: jax.sharding.Mesh, tta_views: str = ""):
  """eval_step jitted with replicated variables and a sharded batch."""
  return jax.jit(functools.partial(eval_step, task, tta_views=tta_views),
                 in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def evaluate(eval_fn, variables: Mapping[str, Any], batches: Iterable[dict[str, np.ndarray]],
             mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Accuracy, mean loss and example count over padded batches (each example once)."""
  totals = None
  for batch in batches:
    sums = eval_fn(variables, sharding.to_global(batch, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {"accuracy": float(totals["correct"]) / max(count, 1.0),
          "loss": float(totals["loss"]) / max(count, 1.0),
          "num_examples": int(round(count))}


# --------------------------------------------------------------------------
# Building a run from a config.


def build_task(config: ml_collections.ConfigDict) -> tuple[Task, Callable[[Any], optax.GradientTransformation]]:
  """The model, schedule and augmentation of `config`; the optimiser needs params.

  Returns (task without optimiser, make_tx(params) -> optax transformation).
  """
  model = models.build(config.model, config.num_classes, **config.get("model_kwargs", {}))
  opt = config.optimizer
  schedule = optim.make_schedule(opt.schedule, opt.lr, config.num_steps,
                                 opt.get("warmup_steps", 0))

  lr_rules = optim.normalize_rules(opt.get("lr_rules", ()))

  def make_tx(params):
    return optim.build_optimizer(
        params, name=opt.name, schedule=schedule, weight_decay=opt.get("weight_decay", 0.0),
        momentum=opt.get("momentum", 0.9), nesterov=opt.get("nesterov", False),
        grad_clip_norm=opt.get("grad_clip_norm", None), lr_rules=lr_rules)

  task = Task(model=model, tx=optax.identity(), num_classes=config.num_classes,
              input_mean=tuple(config.input_mean), input_std=tuple(config.input_std),
              augment=augment_lib.build(config.get("augment", "")),
              label_smoothing=config.get("label_smoothing", 0.0), schedule=schedule,
              input_size=config.get("input_size", 0),
              freeze_batch_stats=config.get("freeze_batch_stats", False), lr_rules=lr_rules)
  return task, make_tx


def init_task_and_state(config: ml_collections.ConfigDict, image_shape: tuple[int, ...],
                        mesh: jax.sharding.Mesh,
                        abstract: bool = False) -> tuple[Task, TrainState]:
  """Builds the task (with its optimiser) and a freshly initialised, replicated state
  (with `abstract`, its shapes and shardings only, see create_train_state).

  image_shape: (H, W, C) of the data; the model is built for config.input_size if set.
  """
  task, make_tx = build_task(config)
  image_shape = model_input_shape(image_shape, task.input_size)
  variables = jax.eval_shape(lambda: task.model.init(
      jax.random.PRNGKey(0), jnp.zeros((1,) + tuple(image_shape)), train=False))
  task = dataclasses.replace(task, tx=make_tx(variables["params"]))
  return task, create_train_state(task, image_shape, config.seed, mesh, abstract)


def pretrained_variables(config: ml_collections.ConfigDict, image_shape: tuple[int, ...],
                         mesh: jax.sharding.Mesh, data_dir: str | None = None) -> Any:
  """The variables config.init_from gives the model (pretrained.transfer), checked
  against the model's shapes; image_shape is (H, W, C) of the data. Logs the new ones."""
  variables, new_paths = transfer.initial_variables(
      config, model_input_shape(image_shape, config.get("input_size", 0)), data_dir, mesh)
  logging.info("Initialised from %s %s; new parameters: %s", config.init_from.kind,
               config.init_from.path, ", ".join(new_paths) or "none")
  return variables


def start_from_pretrained(config: ml_collections.ConfigDict, task: Task, state: TrainState,
                          image_shape: tuple[int, ...], mesh: jax.sharding.Mesh,
                          data_dir: str | None = None, variables: Any = None) -> TrainState:
  """`state` with params and batch_stats from config.init_from (or `variables`, as
  `pretrained_variables` returns them), a fresh optimiser state, the same step and rng."""
  if variables is None:
    variables = pretrained_variables(config, image_shape, mesh, data_dir)

  def place(state, variables):
    return state.replace(params=variables["params"],
                         batch_stats=variables.get("batch_stats", {}),
                         opt_state=task.tx.init(variables["params"]))
  return jax.jit(place, out_shardings=sharding.replicated(mesh))(state, variables)


@dataclasses.dataclass(frozen=True)
class RunData:
  """Sources of a run: labelled training data, unlabelled pool and evaluation set."""
  train: data_lib.pipeline.Source
  unlabelled: data_lib.pipeline.Source
  eval: data_lib.pipeline.Source
  image_shape: tuple[int, ...]


def _check_labels(labels: np.ndarray, where: str, num_classes: int) -> None:
  """Raises DataError if a label is outside 0..num_classes-1."""
  if len(labels) and labels.max() >= num_classes:
    raise data_lib.DataError(
        f"{where} has label {labels.max()} but config.num_classes = {num_classes}: set "
        f"num_classes to at least {labels.max() + 1} (--config.num_classes="
        f"{labels.max() + 1}) or fix the labels (class indices 0..num_classes-1)")


def sized(config: ml_collections.ConfigDict,
          source: data_lib.pipeline.Source) -> data_lib.pipeline.Source:
  """`source` with its images resized on the host to config.image_size (0: as stored)."""
  size = config.get("image_size", 0)
  return data_lib.pipeline.ResizedImages(source, size) if size else source


def load_run_data(config: ml_collections.ConfigDict, data_dir: str | None = None) -> RunData:
  """Loads config.dataset and applies its hold-out / labelled / unlabelled split.

  config.eval_split 'holdout' evaluates on the class-balanced hold-out carved out
  of the training split (config.num_holdout examples); any other name reads that
  split of config.eval_dataset (default config.dataset).
  """
  full = data_lib.load_source(config.dataset, config.train_split, data_dir)
  labels = (full.labels if isinstance(full, data_lib.ArraySource)
            else np.array([full[i]["label"] for i in range(len(full))]))
  _check_labels(labels, f"{config.dataset} [{config.train_split}]", config.num_classes)
  split = data_lib.make_split(labels, config.get("num_holdout", 0),
                              config.get("num_labelled", -1), config.get("split_seed", 0))
  full = sized(config, full)
  if config.eval_split == "holdout":
    if not len(split.holdout):
      raise ValueError("eval_split='holdout' needs config.num_holdout > 0")
    eval_source = data_lib.Subset(full, split.holdout)
  else:
    eval_spec = config.get("eval_dataset", "") or config.dataset
    eval_source = data_lib.load_source(eval_spec, config.eval_split, data_dir)
    if isinstance(eval_source, data_lib.ArraySource):
      _check_labels(eval_source.labels, f"{eval_spec} [{config.eval_split}]", config.num_classes)
    eval_source = sized(config, eval_source)
  image_shape = tuple(np.shape(full[0]["image"]))
  return RunData(train=data_lib.Subset(full, split.labelled),
                 unlabelled=data_lib.Subset(full, split.unlabelled),
                 eval=eval_source, image_shape=image_shape)


_IDENTITY_KEYS = ("model", "model_kwargs", "num_classes", "dataset")


def check_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a config whose model, model_kwargs, num_classes or dataset differ from those
  of the run already in `workdir` (its config.json); writes nothing."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  current = json.loads(config.to_json())
  changed = [k for k in _IDENTITY_KEYS if saved.get(k) != current.get(k)]
  if changed:
    details = "; ".join(f"{k}: {saved.get(k)!r} there, {current.get(k)!r} now" for k in changed)
    raise ValueError(f"{workdir} holds a run with a different {', '.join(changed)} ({details}), "
                     "whose checkpoints this config cannot resume. Use a new --workdir, or "
                     f"the config the run was started with ({path}).")


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes workdir/config.json atomically (process 0)."""
  path = os.path.join(workdir, "config.json")
  if jax.process_index() == 0:
    files.write_text_atomic(path, config.to_json(indent=2))


def save_or_check_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes workdir/config.json; on resume refuses a config that changes the model."""
  check_config(config, workdir)
  write_config(config, workdir)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was started with."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a training workdir?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def finished_results(workdir: str, num_steps: int) -> dict[str, Any] | None:
  """results.json of a training run in `workdir` that reached num_steps, else None."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    results = json.load(f)
  return results if results.get("step") == num_steps else None


def restore_latest(workdir: str, image_shape: tuple[int, ...], mesh: jax.sharding.Mesh
                   ) -> tuple[ml_collections.ConfigDict, Task, TrainState, int]:
  """(config, task, state, step) of the latest checkpoint of the training run in `workdir`."""
  config = load_config(workdir)
  task, template = init_task_and_state(config, image_shape, mesh, abstract=True)
  checkpointer = Checkpointer(workdir)
  step = checkpointer.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}")
  state = checkpointer.restore(step, template)
  checkpointer.close()
  return config, task, state, step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       data_dir: str | None = None, *,
                       train_sources: Sequence[data_lib.pipeline.Source] | None = None,
                       train_weights: Sequence[float] | None = None,
                       make_step: Callable[[Task, jax.sharding.Mesh], StepFn] | None = None,
                       ) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns final metrics.

  By default trains on the config's labelled split; `train_sources` (with mixing
  `train_weights`) replaces it, e.g. labelled + pseudo-labelled data for a student.
  `make_step(task, mesh)` replaces the supervised `jit_train_step` (e.g. a
  distillation step with its teachers bound); it returns step(state, batch).
  Writes workdir/{config.json, metrics.jsonl, tensorboard/, checkpoints/, results.json}.
  Bad input (another model or class count than the workdir's run, a batch size the
  devices do not divide, missing or malformed data, unfitting pretrained weights or
  checkpoints) raises before anything in `workdir` is written; config.json is
  (re)written with the first checkpoint of this session, so a run stopped by a
  non-finite loss leaves the config of its last good checkpoint.
  """
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  check_config(config, workdir)
  run_data = load_run_data(config, data_dir)
  checkpointer = Checkpointer(workdir, config.get("keep_checkpoints", 3), remove_unfinished=True)
  start_step = checkpointer.latest_step() or 0
  try:
    # A fresh run reads and checks its pretrained weights before the model is compiled.
    pretrained = (pretrained_variables(config, run_data.image_shape, mesh, data_dir)
                  if not start_step and transfer.enabled(config) else None)
    # A resumed run restores into a template: the initial values are never computed.
    task, state = init_task_and_state(config, run_data.image_shape, mesh,
                                      abstract=bool(start_step))
    train_iter = data_lib.train_iterator(train_sources or run_data.train, config.batch_size,
                                         config.seed, weights=train_weights)
    if start_step:
      state = checkpointer.restore(start_step, state, train_iter)
      logging.info("Resumed from %s at step %d", checkpointer.directory, start_step)
    elif pretrained is not None:
      state = start_from_pretrained(config, task, state, run_data.image_shape, mesh, data_dir,
                                    variables=pretrained)
  except BaseException:
    checkpointer.close()
    raise
  os.makedirs(workdir, exist_ok=True)
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  writer.truncate_after(start_step)
  config_written = False

  def save_checkpoint(step: int, state: TrainState) -> None:
    nonlocal config_written
    if not config_written:
      write_config(config, workdir)
      config_written = True
    checkpointer.save(step, state, train_iter)

  step_fn = (make_step or jit_train_step)(task, mesh)
  eval_fn = jit_eval_step(task, mesh)
  eval_batch_size = sharding.padded_batch_size(config.eval_batch_size, mesh)

  def run_eval(step: int) -> dict[str, float]:
    result = evaluate(eval_fn, {"params": state.params, "batch_stats": state.batch_stats},
                      data_lib.eval_batches(run_data.eval, eval_batch_size), mesh)
    writer.write(step, "eval", result)
    logging.info("eval step %d: %s", step, result)
    return result

  progress = Progress(config.num_steps, config.batch_size, start_step)
  pending: list[dict[str, jax.Array]] = []

  def flush_metrics(step: int) -> None:
    if not pending:
      return
    stacked = jax.device_get(pending)
    pending.clear()
    bad = sum(m["nonfinite"] for m in stacked)
    if bad:
      good = checkpointer.latest_step()
      kept = (f"The last good checkpoint is step {good} in {checkpointer.directory}"
              if good is not None else "No checkpoint had been saved yet")
      raise NonFiniteLossError(
          f"loss or gradients not finite in {int(bad)} of the last {len(stacked)} steps "
          f"(up to step {step}); stopped without saving. {kept}. Lower the learning "
          "rate or enable optimizer.grad_clip_norm.")
    means = {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0] if k != "nonfinite"}
    line, rate = progress.update(step, means)
    writer.write(step, "train", {**means, "images_per_s": rate})
    logging.info(line)

  train_start = time.perf_counter()
  eval_result = None
  try:
    for step in range(start_step + 1, config.num_steps + 1):
      batch = sharding.to_global(next(train_iter), mesh)
      state, metrics = step_fn(state, batch)
      pending.append(metrics)
      last = step == config.num_steps
      if step % config.log_every == 0 or last:
        flush_metrics(step)
      if step % config.checkpoint_every == 0 or last:
        flush_metrics(step)
        save_checkpoint(step, state)
      if step % config.eval_every == 0 or last:
        eval_result = run_eval(step)
    if checkpointer.latest_step() is None:  # num_steps == 0: keep the initial (e.g. imported) state
      save_checkpoint(int(state.step), state)
  finally:
    checkpointer.close()
    writer.close()

  if eval_result is None:  # the run had already finished: evaluate the restored state
    eval_result = run_eval(int(state.step))
  results = {**eval_result, "step": int(state.step), "eval_split": config.eval_split,
             "train_seconds_this_session": time.perf_counter() - train_start,
             "devices": jax.device_count(), "platform": jax.devices()[0].platform}
  if jax.process_index() == 0:
    files.write_json_atomic(os.path.join(workdir, "results.json"), results)
  return results
