"""Supervised training: the jitted train/eval steps and the resumable loop.

One train step does everything on the accelerator: uint8 -> float, augmentation
(per-image random parameters), normalisation, forward, loss, update. Steps are
jitted with the batch sharded over a ('data',) mesh of all devices and the state
replicated. Per-step randomness is `fold_in(state.rng, state.step)`, so a run
resumed from a checkpoint draws the same numbers as an uninterrupted one.
Step settings and state: task.py; the workdir's files: workdir.py; data: data/run_data.py.
"""

import dataclasses
import functools
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from effcv_jax import data as data_lib
from effcv_jax import loop, losses, optim, preflight, sharding, watchdog
from effcv_jax import workdir as workdir_lib
from effcv_jax import workdir_lock
from effcv_jax.augment import augmix, tta
from effcv_jax.augment import base as augment_base
from effcv_jax.checkpoint import Checkpointer
from effcv_jax.data import run_data as run_data_lib
from effcv_jax.gan import mixing as gan_mixing
from effcv_jax.pretrained import transfer
from effcv_jax.robustness import adversarial
from effcv_jax.task import (Task, TrainState, eval_variables, has_ema,
                            init_task_and_state, model_inputs, predict_logits, raw_variables,
                            update_ema)

StepFn = Callable[[Any, Mapping[str, jax.Array]], tuple[Any, dict[str, jax.Array]]]


def train_step(task: Task, state: TrainState,
               batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update on batch {'image': uint8 (B, H, W, C), 'label': int (B,)[, 'soft_label' (B, K)]}.

  Targets are 'soft_label' when the batch has them (pseudo-labels, mixed with one-hot
  labelled examples), else one-hot 'label'. With task.generated (config.gan_augment) the
  first images and targets are replaced by generated ones (gan/mixing.py mix_generated).
  The images trained on are task.augment's, or with task.augmix_jsd the clean image and two
  AugMix views (loss CE(clean) + weight * JS, metrics 'ce_loss' and 'jsd_loss'), or with
  task.adversarial_method their adversarial versions (training_images, training_loss), or
  with task.adversarial_advprop both the augmented images and their adversarial versions,
  the latter through auxiliary batch statistics (AdvProp: forward_advprop; loss CE(clean) +
  CE(adversarial), metrics 'clean_loss' and 'adversarial_loss', accuracy on the clean ones).
  With task.freeze_batch_stats the model runs in inference mode (train=False: batch
  norm normalises with its running statistics and leaves them unchanged; dropout is
  off too), as a linear probe on a pretrained backbone wants. Parameters that
  task.lr_rules freeze get no gradient (skipping their backward pass; grad_norm
  then covers the trainable ones).
  A step whose loss or gradient norm is not finite leaves params, statistics,
  optimiser state and weight averages unchanged and reports metrics['nonfinite'] = 1.
  A model computing in bfloat16 (config.dtype) has its logits cast to float32 before
  the softmax and loss (forward_train). An augmentation that mixes by the model's
  saliency (PuzzleMix: task.augment.needs_saliency) gets input_gradient_saliency; one
  that follows a schedule (PBA's: task.augment.needs_step) gets state.step.
  """
  aug_key, dropout_key = step_keys(state)
  labels = (batch["soft_label"].astype(jnp.float32) if "soft_label" in batch
            else jax.nn.one_hot(batch["label"], task.num_classes))
  images = batch["image"].astype(jnp.float32)
  if task.generated is not None:
    images, labels = gan_mixing.mix_generated(task.generated, jax.random.fold_in(aug_key, 2),
                                              images, labels)
  images, labels = training_images(task, state, aug_key, images, labels,
                                   jax.random.fold_in(dropout_key, 1))
  inputs = model_inputs(task, images)
  targets = losses.smooth_labels(labels, task.label_smoothing)

  def loss_fn(params):
    if task.adversarial_advprop:
      logits, batch_stats, aux_batch_stats = forward_advprop(task, state, params, inputs,
                                                             dropout_key)
    else:
      logits, batch_stats = forward_train(task, state, params, inputs, dropout_key)
      aux_batch_stats = None
    loss, parts, logits = training_loss(task, logits, targets)
    return loss, (logits, batch_stats, aux_batch_stats, parts)

  (loss, (logits, batch_stats, aux_batch_stats, parts)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  new_state, metrics = apply_update(task, state, loss, grads, batch_stats, aux_batch_stats)
  metrics["accuracy"] = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(labels, -1))
  return new_state, metrics | parts


def training_images(task: Task, state: TrainState, aug_key: jax.Array, images: jax.Array,
                    labels: jax.Array, saliency_key: jax.Array | None = None
                    ) -> tuple[jax.Array, jax.Array]:
  """The images the step trains on and their labels (B, K), from float images (B, H, W, C):
  task.augment's (given the current model's input_gradient_saliency, under saliency_key's
  dropout, when the spec needs it: PuzzleMix); with task.augmix_jsd the clean image and its two AugMix views stacked
  (3B, H, W, C) (augment/augmix.py jsd_views); with task.adversarial_method the augmented
  images' adversarial versions (robustness/adversarial.py linf_attack on the labels' argmax,
  from the step's current weights in inference mode, random start keyed by the step); with
  task.adversarial_advprop too, the augmented images and their adversarial versions stacked
  (2B, H, W, C), the attack normalising by the auxiliary statistics (attack_variables)."""
  if task.augmix_jsd:
    clean, view_1, view_2, labels = augmix.jsd_views(task.augment, aug_key, images, labels)
    return jnp.concatenate([clean, view_1, view_2]), labels
  augment_kwargs = {}
  if getattr(task.augment, "needs_saliency", False):
    augment_kwargs["saliency_fn"] = input_gradient_saliency(task, state, saliency_key)
  if getattr(task.augment, "needs_step", False):
    augment_kwargs["step"] = state.step
  images, labels = task.augment(aug_key, images, labels, **augment_kwargs)
  if not task.adversarial_method:
    return images, labels
  attacked = jax.lax.stop_gradient(adversarial.linf_attack(
      task, attack_variables(task, state), images, jnp.argmax(labels, -1),
      jax.random.fold_in(aug_key, 1), jnp.float32(task.adversarial_epsilon),
      jnp.float32(attack_step_size(task)), task.adversarial_steps,
      task.adversarial_random_start))
  if task.adversarial_advprop:
    return jnp.concatenate([images, attacked]), labels
  return attacked, labels


def attack_variables(task: Task, state: TrainState) -> dict[str, Any]:
  """The variables the training attack differentiates in inference mode: the trained
  weights with, for AdvProp, the auxiliary batch statistics (the adversarial images' own, as
  the paper generates them with the auxiliary batch norms), else the main ones."""
  if task.adversarial_advprop:
    return {"params": state.params, "batch_stats": state.aux_batch_stats}
  return raw_variables(state)


def attack_step_size(task: Task) -> float:
  """The adversarial-training attack's step in pixel units: task.adversarial_step_size, or
  when it is 0 the method's own: epsilon for FGSM, adversarial.PGD_STEP_FACTOR * epsilon /
  steps for PGD (as the robustness suite's attacks)."""
  if task.adversarial_step_size:
    return task.adversarial_step_size
  if task.adversarial_method == "fgsm":
    return task.adversarial_epsilon
  return adversarial.PGD_STEP_FACTOR * task.adversarial_epsilon / task.adversarial_steps


def training_loss(task: Task, logits: jax.Array, targets: jax.Array
                  ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
  """(loss, extra metrics, the logits of the training images proper) of the step's logits
  and targets (B, K): the mean cross-entropy; with task.augmix_jsd (logits (3B, K) of the
  clean image and two views) CE(clean) + task.augmix_jsd_weight * mean JS(the three),
  reporting both parts ('ce_loss', 'jsd_loss') and the clean logits; with
  task.adversarial_advprop (logits (2B, K) of the clean and the adversarial images)
  CE(clean) + CE(adversarial), the paper's equal weights, reporting both parts
  ('clean_loss', 'adversarial_loss') and the clean logits."""
  if task.adversarial_advprop:
    clean, attacked = jnp.split(logits, 2)
    clean_loss = jnp.mean(losses.softmax_cross_entropy(clean, targets))
    adversarial_loss = jnp.mean(losses.softmax_cross_entropy(attacked, targets))
    return (clean_loss + adversarial_loss,
            {"clean_loss": clean_loss, "adversarial_loss": adversarial_loss}, clean)
  if not task.augmix_jsd:
    return jnp.mean(losses.softmax_cross_entropy(logits, targets)), {}, logits
  views = jnp.split(logits, 3)
  cross_entropy = jnp.mean(losses.softmax_cross_entropy(views[0], targets))
  divergence = jnp.mean(losses.jensen_shannon_divergence(views))
  return (cross_entropy + task.augmix_jsd_weight * divergence,
          {"ce_loss": cross_entropy, "jsd_loss": divergence}, views[0])


def input_gradient_saliency(task: Task, state: TrainState,
                            dropout_key: jax.Array) -> augment_base.SaliencyFn:
  """The saliency PuzzleMix mixes by, under the current params: saliency_fn(images (B, H, W, C)
  float in [0, 255], labels (B, K)) -> float32 (B, H, W), the L2 norm over channels of the
  gradient of the summed cross-entropy with respect to the pixels. The forward pass is the
  step's (training mode, forward_train); its batch-statistics update is discarded."""
  def saliency_fn(images: jax.Array, labels: jax.Array) -> jax.Array:
    def loss_of(images):
      logits, _ = forward_train(task, state, state.params, model_inputs(task, images),
                                dropout_key)
      return jnp.sum(losses.softmax_cross_entropy(logits, labels))
    gradient = jax.grad(loss_of)(images)
    return jnp.sqrt(jnp.sum(jnp.square(gradient), axis=-1))
  return saliency_fn


def step_keys(state: TrainState) -> tuple[jax.Array, jax.Array]:
  """(augmentation key, dropout key) of the step `state.step`: the same after a resume."""
  aug_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
  return aug_key, dropout_key


def forward_train(task: Task, state: TrainState, params: Any, inputs: jax.Array,
                  dropout_key: jax.Array, batch_stats: Any = None) -> tuple[jax.Array, Any]:
  """Training-mode float32 logits (B, K) of normalised `inputs` and the updated batch
  statistics: `batch_stats` updated, by default state.batch_stats.

  Differentiable in `params`; frozen groups (task.lr_rules) are cut from the gradient.
  With task.freeze_batch_stats the model runs in inference mode and the statistics
  come back unchanged. A model computing in bfloat16 has its logits cast to float32.
  """
  batch_stats = state.batch_stats if batch_stats is None else batch_stats
  variables = {"params": optim.stop_frozen_gradients(params, task.lr_rules),
               "batch_stats": batch_stats}
  if task.freeze_batch_stats:
    logits = task.model.apply(variables, inputs, train=False)
    return logits.astype(jnp.float32), batch_stats
  logits, new_vars = task.model.apply(variables, inputs, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": dropout_key})
  return logits.astype(jnp.float32), new_vars.get("batch_stats", {})


def forward_advprop(task: Task, state: TrainState, params: Any, inputs: jax.Array,
                    dropout_key: jax.Array) -> tuple[jax.Array, Any, Any]:
  """AdvProp's training forward pass (Xie et al. 2020) over normalised inputs (2B, H, W, C):
  the clean images then their adversarial versions (training_images). Returns the float32
  logits (2B, K) in that order, the main batch statistics updated by the clean half only and
  the auxiliary ones (state.aux_batch_stats) updated by the adversarial half only.

  Each half runs as its own training-mode pass (forward_train), so batch norm normalises the
  clean images by their own batch moments and the adversarial images by theirs, and each
  moves its own running statistics. The batch norms' scale and offset are shared by the two
  passes: the paper's auxiliary batch norm also has its own affine parameters, which here would
  take a second set of batch-norm layers in every model and parameters that the trained model
  never uses; the shared affine keeps the models, their parameter trees and exports unchanged
  for any model with batch norm, while the statistics (what the adversarial examples' shifted
  distribution disturbs) stay separate. The two halves draw different dropout keys.
  """
  clean, attacked = jnp.split(inputs, 2)
  clean_logits, batch_stats = forward_train(task, state, params, clean, dropout_key)
  attacked_logits, aux_batch_stats = forward_train(
      task, state, params, attacked, jax.random.fold_in(dropout_key, 2), state.aux_batch_stats)
  return jnp.concatenate([clean_logits, attacked_logits]), batch_stats, aux_batch_stats


def backward_residual_bytes(task: Task, state: TrainState,
                            inputs_shape: tuple[int, ...]) -> int:
  """Bytes of the arrays that the training forward pass (forward_train) of normalised inputs
  of shape `inputs_shape` (B, H, W, C) keeps for its backward pass (the activations, and the
  weights the backward pass reads): what model.remat shrinks. From shapes only (the leaves
  of the VJP's closure under jax.eval_shape): nothing is compiled or allocated, and `state`
  may be abstract (create_train_state(abstract=True))."""
  inputs = jax.ShapeDtypeStruct(tuple(inputs_shape), jnp.float32)

  def residuals(state, inputs):
    def logits(params):
      return forward_train(task, state, params, inputs, jax.random.PRNGKey(0))[0]
    return jax.vjp(logits, state.params)[1]

  leaves = jax.tree.leaves(jax.eval_shape(residuals, state, inputs))
  return sum(leaf.size * leaf.dtype.itemsize for leaf in leaves)


def apply_update(task: Task, state: TrainState, loss: jax.Array, grads: Any, batch_stats: Any,
                 aux_batch_stats: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """The optimiser step with the new batch statistics (and AdvProp's new auxiliary ones,
  when given), then (when the state keeps them) the weight averages' update
  (task.update_ema); all skipped (state unchanged, metrics['nonfinite'] = 1) when the
  loss or gradient norm is not finite; returns (state at step + 1, metrics)."""
  updates, opt_state = task.tx.update(grads, state.opt_state, state.params)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  stepped = state.replace(params=optax.apply_updates(state.params, updates),
                          batch_stats=batch_stats, opt_state=opt_state)
  if aux_batch_stats is not None:
    stepped = stepped.replace(aux_batch_stats=aux_batch_stats)
  updated = update_ema(task, state, stepped)
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
  metrics = {"loss": loss, "grad_norm": grad_norm,
             "nonfinite": 1.0 - finite.astype(jnp.float32)}
  if task.schedule is not None:
    metrics["learning_rate"] = task.schedule(state.step)
  return new_state.replace(step=state.step + 1), metrics


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


def with_generated(generate: gan_mixing.GenerateFn):
  """make_step(task, mesh) of the supervised step with task.generated = generate (its
  batches mixed with generated images, config.gan_augment)."""
  def make_step(task: Task, mesh: jax.sharding.Mesh):
    return jit_train_step(dataclasses.replace(task, generated=generate), mesh)
  return make_step


def jit_eval_step(task: Task, mesh: jax.sharding.Mesh, tta_views: str = ""):
  """eval_step jitted with replicated variables and a sharded batch."""
  return jax.jit(functools.partial(eval_step, task, tta_views=tta_views),
                 in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def evaluate(eval_fn, variables: Mapping[str, Any], batches: Iterable[dict[str, np.ndarray]],
             mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Accuracy, mean loss and example count over padded batches (each example once).
  Beats the running watchdogs (effcv_jax/watchdog.py) after each batch."""
  totals = None
  for batch in batches:
    if totals is not None:
      watchdog.beat_when_ready(totals)   # the batches before this one are evaluated
    sums = eval_fn(variables, sharding.to_global(batch, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {"accuracy": float(totals["correct"]) / max(count, 1.0),
          "loss": float(totals["loss"]) / max(count, 1.0),
          "num_examples": int(round(count))}


def evaluate_state(eval_fn, state: TrainState, eval_source: data_lib.pipeline.Source,
                   eval_batch_size: int, mesh: jax.sharding.Mesh) -> dict[str, float]:
  """`evaluate` of the weights `state` is evaluated with (task.eval_variables) on
  eval_source in padded batches of eval_batch_size; when the state keeps weight averages,
  also the trained weights' accuracy and loss as accuracy_raw and loss_raw."""
  result = evaluate(eval_fn, eval_variables(state),
                    data_lib.eval_batches(eval_source, eval_batch_size), mesh)
  if has_ema(state):
    raw = evaluate(eval_fn, raw_variables(state),
                   data_lib.eval_batches(eval_source, eval_batch_size), mesh)
    result.update(accuracy_raw=raw["accuracy"], loss_raw=raw["loss"])
  return result


def train_or_reuse(config: ml_collections.ConfigDict, workdir: str, data_dir: str | None = None,
                   *, may_train: bool = True, **train_kwargs) -> dict[str, Any] | None:
  """The results of the run in `workdir` if it reached config.num_steps; else trains
  (or resumes) it with train_and_evaluate(**train_kwargs), or returns None when
  not `may_train` (e.g. a sweep told to run only some of its variants)."""
  done = workdir_lib.finished_results(workdir, config.num_steps)
  if done is not None:
    logging.info("%s: finished earlier (accuracy %.4f)", workdir, done["accuracy"])
    return done
  return train_and_evaluate(config, workdir, data_dir, **train_kwargs) if may_train else None


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
  With config.ema_decay > 0 the evaluations (and results.json's accuracy and loss) are
  those of the weight averages, with the trained weights' as accuracy_raw and loss_raw.
  Bad input (a config key with an impossible value or a config that does not fit the
  data, checked by effcv_jax/preflight.py with the steps traced on the real shapes; a
  config that differs from the workdir's run in a key that must match, see
  workdir.check_config; a batch size the devices do not divide, missing or malformed
  data, unfitting pretrained weights or checkpoints) raises before anything in
  `workdir` is written. The session holds the workdir's lock (workdir_lock.py): a
  second process fails at once with WorkdirLockedError. config.json is
  (re)written with the first checkpoint of this session, so a run stopped by a
  non-finite loss leaves the config of its last good checkpoint. A watchdog
  (config.watchdog) ends a run whose steps stop completing with exit status 75.
  """
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  workdir_lib.check_config(config, workdir)
  preflight.check_config(config)
  gan_mixing.check_gan_augment(config)
  # Locked after the checks that refuse a command (a refused command creates nothing);
  # the workdir is read again under the lock, which another process may have held.
  with workdir_lock.hold(workdir):
    workdir_lib.check_config(config, workdir)
    with watchdog.Watchdog("train", **workdir_lib.watchdog_limits(config), dump_dir=workdir,
                           describe_state=lambda: workdir_lib.describe_checkpoints(workdir)):
      return _train_session(config, workdir, data_dir, mesh, train_sources, train_weights,
                            make_step)


def _train_session(config, workdir, data_dir, mesh, train_sources, train_weights, make_step):
  """train_and_evaluate after its checks, inside its watchdog."""
  run_data = run_data_lib.load_run_data(config, data_dir)
  if make_step is None and gan_mixing.enabled(config):
    make_step = with_generated(gan_mixing.load_generate_fn(config, run_data.image_shape, mesh))
  preflight.check_run(config, run_data, mesh, make_step=make_step or jit_train_step,
                      make_eval_step=jit_eval_step, train_sources=train_sources)
  checkpointer = Checkpointer(workdir, config.get("keep_checkpoints", 3), remove_unfinished=True)
  start_step = checkpointer.latest_step() or 0
  try:
    # A fresh run reads and checks its pretrained weights before the model is compiled.
    pretrained = (transfer.pretrained_variables(config, run_data.image_shape, mesh, data_dir)
                  if not start_step and transfer.enabled(config) else None)
    # A resumed run restores into a template: the initial values are never computed.
    task, state = init_task_and_state(config, run_data.image_shape, mesh,
                                      abstract=bool(start_step))
    train_iter = data_lib.train_iterator(train_sources or run_data.train, config.batch_size,
                                         config.seed, weights=train_weights,
                                         record_map=run_data_lib.train_record_map(config),
                                         num_workers=config.get("data_workers", 0))
    if start_step:
      state = checkpointer.restore(start_step, state, train_iter)
      logging.info("Resumed from %s at step %d", checkpointer.directory, start_step)
    elif pretrained is not None:
      state = transfer.start_from_pretrained(task, state, pretrained, mesh)
  except BaseException:
    checkpointer.close()
    raise
  step_fn = (make_step or jit_train_step)(task, mesh)
  eval_fn = jit_eval_step(task, mesh)
  eval_batch_size = sharding.padded_batch_size(config.eval_batch_size, mesh)

  def take_step() -> dict[str, jax.Array]:
    nonlocal state
    state, metrics = step_fn(state, sharding.to_global(next(train_iter), mesh))
    return metrics

  return loop.run_session(
      config, workdir, checkpointer, start_step, take_step=take_step,
      current_state=lambda: state, data_iterator=train_iter,
      evaluate=lambda: evaluate_state(eval_fn, state, run_data.eval, eval_batch_size, mesh),
      images_per_step=config.batch_size,
      nonfinite_advice="Lower the learning rate or enable optimizer.grad_clip_norm.")
