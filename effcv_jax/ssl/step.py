"""One jitted semi-supervised train step: views on the device, one forward pass, loss, update.

A step takes a labelled batch {'image': uint8 (B, H, W, C), 'label': int (B,)} and an
unlabelled batch {'image': uint8 (U, H, W, C), 'index': int (U,)[, 'label': int (U,)]},
U = mu * B ('index': each example's position in the unlabelled set, for FlexMatch's memory;
'label', where known, only feeds the diagnostic metric 'unlabelled_accuracy'). Inside the
step, on the device: the labelled images get the weak view, each unlabelled image a weak and a
strong view, every view with its own key from fold_in(state.rng, state.step) (a resumed run
draws the same views); the model runs once, in training mode, over the concatenation
[labelled; weak; strong] (as FixMatch does), so batch norm normalises with, and its running
statistics average, the statistics of that whole concatenated batch; then the algorithm's loss
(algorithms.py), gradients, the optimiser update (train.apply_update: a non-finite step changes
nothing) and the new batch statistics.

Mean Teacher differs: the student runs over [labelled; strong], the teacher (the EMA
parameters in the algorithm state) over the weak view in a second forward pass in training mode
(batch statistics of the weak batch, its running-statistics update discarded), and the
teacher's EMA is updated after the optimiser step. Pseudo-Label runs over [labelled; weak];
labels-only over the labelled batch alone.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from effcv_jax import augment as augment_lib
from effcv_jax import sharding
from effcv_jax import train as train_lib
from effcv_jax.ssl import algorithms
from effcv_jax.task import Task, TrainState, model_inputs


@dataclasses.dataclass(frozen=True)
class SslTask:
  """The SSL step's static settings (hashable): the algorithm's settings and the weak and strong
  views' augmentation pipelines (effcv_jax/augment spec strings, built)."""
  settings: algorithms.Settings
  weak: augment_lib.Pipeline
  strong: augment_lib.Pipeline


def build_ssl_task(config: ml_collections.ConfigDict, num_unlabelled: int) -> SslTask:
  """SslTask of config.ssl (see configs/common.py); num_unlabelled: the unlabelled set's size."""
  return SslTask(settings=algorithms.settings_from_config(config, num_unlabelled),
                 weak=augment_lib.build(config.ssl.weak_augment),
                 strong=augment_lib.build(config.ssl.strong_augment))


def view_keys(state: TrainState) -> dict[str, jax.Array]:
  """The step's keys, functions of (state.rng, state.step): 'labelled', 'weak', 'strong'
  (one per view, independent), 'dropout' (the student's) and 'teacher' (Mean Teacher's)."""
  aug_key, dropout_key = train_lib.step_keys(state)
  labelled, weak, strong, teacher = jax.random.split(aug_key, 4)
  return {"labelled": labelled, "weak": weak, "strong": strong, "dropout": dropout_key,
          "teacher": teacher}


def _view(task: Task, pipeline: augment_lib.Pipeline, key: jax.Array,
          images: jax.Array) -> jax.Array:
  """uint8 (N, H, W, C) -> the model's inputs of one augmented view (N, H', W', C')."""
  augmented, _ = pipeline(key, images.astype(jnp.float32), None)
  return model_inputs(task, augmented)


def teacher_logits(task: Task, state: TrainState, teacher_params: Any, inputs: jax.Array,
                   key: jax.Array) -> jax.Array:
  """The Mean Teacher's logits (N, K) on `inputs`, in training mode (batch statistics of
  `inputs`; the running-statistics update is dropped), cut from the gradient."""
  variables = {"params": teacher_params, "batch_stats": state.batch_stats}
  if task.freeze_batch_stats:
    logits = task.model.apply(variables, inputs, train=False)
  else:
    logits, _ = task.model.apply(variables, inputs, train=True, mutable=["batch_stats"],
                                 rngs={"dropout": key})
  return jax.lax.stop_gradient(logits)


def ssl_train_step(task: Task, ssl_task: SslTask, state: TrainState, ssl_state: dict[str, Any],
                   labelled: Mapping[str, jax.Array], unlabelled: Mapping[str, jax.Array]
                   ) -> tuple[TrainState, dict[str, Any], dict[str, jax.Array]]:
  """One semi-supervised update (see the module docstring); returns (new train state, new
  algorithm state, metrics: loss, sup_loss, unsup_loss, unsup_weight, mask_rate, accuracy
  (labelled), grad_norm, nonfinite[, learning_rate, unlabelled_accuracy, ...])."""
  settings = ssl_task.settings
  views = algorithms.VIEWS[settings.algorithm]
  keys = view_keys(state)
  empty = jnp.zeros((0, settings.num_classes), jnp.float32)
  use_teacher = settings.algorithm == "mean_teacher"
  # The student's forward pass: (name, inputs) of each part of the concatenated batch.
  parts = [("labelled", _view(task, ssl_task.weak, keys["labelled"], labelled["image"]))]
  teacher_weak = None
  if "weak" in views:
    weak_inputs = _view(task, ssl_task.weak, keys["weak"], unlabelled["image"])
    if use_teacher:
      teacher_weak = teacher_logits(task, state, ssl_state["teacher"], weak_inputs,
                                    keys["teacher"])
    else:
      parts.append(("weak", weak_inputs))
  if "strong" in views:
    parts.append(("strong", _view(task, ssl_task.strong, keys["strong"], unlabelled["image"])))
  inputs = jnp.concatenate([part for _, part in parts], axis=0)
  ends = list(itertools.accumulate(part.shape[0] for _, part in parts))

  def loss_fn(params):
    logits, batch_stats = train_lib.forward_train(task, state, params, inputs, keys["dropout"])
    chunks = dict(zip([name for name, _ in parts], jnp.split(logits, ends[:-1], axis=0)))
    outputs = algorithms.Outputs(
        logits_labelled=chunks["labelled"], labels=labelled["label"],
        logits_weak=teacher_weak if use_teacher else chunks.get("weak", empty),
        logits_strong=chunks.get("strong", empty),
        unlabelled_index=unlabelled.get("index", jnp.zeros((0,), jnp.int32)))
    loss, new_ssl_state, metrics = algorithms.ssl_loss(settings, outputs, ssl_state)
    return loss, (outputs, new_ssl_state, metrics, batch_stats)

  (loss, (outputs, new_ssl_state, ssl_metrics, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  new_state, metrics = train_lib.apply_update(task, state, loss, grads, batch_stats)
  if use_teacher:
    new_ssl_state = algorithms.update_teacher(new_ssl_state, new_state.params, settings.ema_m)
  finite = metrics["nonfinite"] == 0
  new_ssl_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                               new_ssl_state, ssl_state)
  metrics.update(ssl_metrics)
  metrics["accuracy"] = jnp.mean(jnp.argmax(outputs.logits_labelled, -1) == labelled["label"])
  if "label" in unlabelled and outputs.logits_weak.shape[0]:
    metrics["unlabelled_accuracy"] = jnp.mean(
        jnp.argmax(outputs.logits_weak, -1) == unlabelled["label"])
  return new_state, new_ssl_state, metrics


def jit_ssl_step(task: Task, ssl_task: SslTask, mesh: jax.sharding.Mesh):
  """ssl_train_step jitted: step(state, ssl_state, labelled, unlabelled) -> (state, ssl_state,
  metrics), the states replicated and donated, both batches sharded over the mesh."""
  replicated, batch = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(functools.partial(ssl_train_step, task, ssl_task),
                 in_shardings=(replicated, replicated, batch, batch),
                 out_shardings=(replicated, replicated, replicated),
                 donate_argnums=(0, 1))
