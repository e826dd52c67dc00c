"""Knowledge distillation: frozen teachers (one, or an ensemble) teach a student.

Loss (Hinton et al. 2015): on labelled examples alpha * CE(labels) + (1 - alpha) *
T^2 KL(teacher_T || student_T); on unlabelled examples the distillation term alone.
The teachers' variables are inputs of the jitted step, never differentiated: the
step takes the gradient of the student's parameters only, and the teachers run in
inference mode. Teaching modes:
  'clean'       the teachers see the clean image, the student the augmented one
                (Noisy Student's choice; teacher outputs can then be precomputed);
  'consistent'  the teachers see the student's augmented view ("function matching",
                Beyer et al. 2022), needed with Mixup / CutMix.
Teacher probabilities may come precomputed in the batch ('teacher_probs', at
temperature T), which replaces the live teachers.

Workdir of `run`: teacher/ (unless config.teacher_workdirs names finished runs),
teacher_probs/ (precomputed mode; config.teacher_probs_dir may share one between
runs with the same teachers and split), student/ (the distilled student's run).
"""

import dataclasses
import functools
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from effcv_jax import data as data_lib
from effcv_jax import losses, preflight, pseudo_label, sharding, train
from effcv_jax import task as task_lib
from effcv_jax import workdir as workdir_lib
from effcv_jax import reports, workdir_lock
from effcv_jax.data import run_data as run_data_lib
from effcv_jax.errors import ConfigError
from effcv_jax.preflight import Rule, choices, integers, numbers

TEACHING_MODES = ("clean", "consistent")
# The keys of config.distill (see `run`).
SETTINGS_RULES = (
    Rule("alpha", numbers(0.0, 1.0), "the weight of the hard-label loss on labelled examples"),
    Rule("temperature", numbers(0.0, low_open=True), "the distillation temperature"),
    Rule("teaching", choices(TEACHING_MODES), "what the teachers see"),
    Rule("ensemble", choices(("soft", "hard")), "how several teachers combine"),
    Rule("teacher_outputs", choices(("live", "precomputed")), "when the teachers run"),
    Rule("unlabelled_ratio", numbers(0.0, low_open=True),
         "unlabelled : labelled examples per batch"),
    Rule("batch_size", integers(1), "the batch of the precomputing pass"),
    Rule("shard_size", integers(1), "the examples of one stored shard"),
)


@dataclasses.dataclass(frozen=True)
class Distillation:
  """Static settings of a distillation step (hashable; not traced).

  teachers: each teacher's Task (model and input preprocessing; its optimiser is
  unused). May be () when every batch carries precomputed 'teacher_probs'.
  """
  teachers: tuple[task_lib.Task, ...] = ()
  alpha: float = 0.5            # weight of the hard-label loss on labelled examples
  temperature: float = 1.0
  teaching: str = "clean"       # 'clean' | 'consistent' (see the module docstring)
  ensemble: str = "soft"        # several teachers: 'soft' (mean probabilities) | 'hard' (votes)

  def __post_init__(self):
    if self.teaching not in TEACHING_MODES:
      raise ValueError(f"teaching must be one of {TEACHING_MODES}, not {self.teaching!r}")
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
    if not self.temperature > 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}")


def teacher_probs(distill: Distillation, teacher_variables: Sequence[Mapping[str, Any]],
                  images: jax.Array) -> jax.Array:
  """The teachers' combined probabilities at temperature T for float images (B, H, W, C)
  in [0, 255]: (B, K). Inference mode, no gradient."""
  if not distill.teachers:
    raise ValueError("no live teacher: give Distillation(teachers=...) or batches with "
                     "precomputed 'teacher_probs'")
  logits = jnp.stack([task_lib.predict_logits(task, variables, images)
                      for task, variables in zip(distill.teachers, teacher_variables)])
  return jax.lax.stop_gradient(losses.ensemble_probs(logits, distill.ensemble,
                                                     distill.temperature))


def distill_step(task: task_lib.Task, distill: Distillation, state: task_lib.TrainState,
                 teacher_variables: Sequence[Mapping[str, Any]],
                 batch: Mapping[str, jax.Array]
                 ) -> tuple[task_lib.TrainState, dict[str, jax.Array]]:
  """One student update.

  batch: 'image' uint8 (B, H, W, C); 'label' int (B,) (ignored where unlabelled);
  'labelled' bool (B,) (default: all labelled); optionally 'teacher_probs' float
  (B, K) at temperature T, which replaces the live teachers. teacher_variables: one
  {'params', 'batch_stats'} per teacher (unused with precomputed probabilities).
  Only state.params is differentiated; the teachers' variables come back untouched.
  """
  aug_key, dropout_key = train.step_keys(state)
  clean = batch["image"].astype(jnp.float32)
  labelled = (batch["labelled"].astype(jnp.float32) if "labelled" in batch
              else jnp.ones(clean.shape[:1], jnp.float32))
  labels = jax.nn.one_hot(batch["label"], task.num_classes) * labelled[:, None]
  images, labels = task.augment(aug_key, clean, labels)
  if "teacher_probs" in batch:
    targets = jax.lax.stop_gradient(batch["teacher_probs"].astype(jnp.float32))
  else:
    targets = teacher_probs(distill, teacher_variables,
                            clean if distill.teaching == "clean" else images)
  inputs = task_lib.model_inputs(task, images)
  hard_targets = losses.smooth_labels(labels, task.label_smoothing) * labelled[:, None]

  def loss_fn(params):
    logits, batch_stats = train.forward_train(task, state, params, inputs, dropout_key)
    loss, parts = losses.distillation_objective(
        logits, targets, hard_targets, labelled, alpha=distill.alpha,
        temperature=distill.temperature)
    return loss, (logits, batch_stats, parts)

  (loss, (logits, batch_stats, parts)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  new_state, metrics = train.apply_update(task, state, loss, grads, batch_stats)
  predicted = jnp.argmax(logits, -1)
  metrics.update(parts)
  metrics["accuracy"] = losses.masked_mean(
      (predicted == jnp.argmax(labels, -1)).astype(jnp.float32), labelled)
  metrics["teacher_agreement"] = jnp.mean(predicted == jnp.argmax(targets, -1))
  return new_state, metrics


def jit_distill_step(task: task_lib.Task, distill: Distillation, mesh: jax.sharding.Mesh):
  """distill_step jitted: state and teachers replicated, batch sharded, old state donated."""
  replicated = sharding.replicated(mesh)
  return jax.jit(functools.partial(distill_step, task, distill),
                 in_shardings=(replicated, replicated, sharding.batch_sharding(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=0)


# --------------------------------------------------------------------------
# Data: labelled and unlabelled records with the keys the step reads.


@dataclasses.dataclass(frozen=True)
class DistillRecords:
  """source[i] as {'image', 'label', 'labelled'[, 'teacher_probs']} for one batch stream.

  Unlabelled records get label -1 (their true label, if the source has one, is
  hidden from training); `teacher_probs` (N, K) float are precomputed teacher
  probabilities aligned with the source.
  """
  source: data_lib.pipeline.Source
  labelled: bool
  teacher_probs: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = self.source[index]
    out = {"image": record["image"],
           "label": np.int32(record["label"] if self.labelled else -1),
           "labelled": np.bool_(self.labelled)}
    if self.teacher_probs is not None:
      out["teacher_probs"] = np.asarray(self.teacher_probs[index], np.float32)
    return out


# --------------------------------------------------------------------------
# A whole run: teachers (trained, imported or reused), optional precomputed
# outputs, the student.


def load_teachers(teacher_dirs: Sequence[str], image_shape: tuple[int, ...],
                  mesh: jax.sharding.Mesh) -> tuple[list[task_lib.Task], list[dict[str, Any]]]:
  """Each finished training run's task and replicated {'params', 'batch_stats'}: its
  evaluation weights (the weight averages of a run with ema_decay > 0)."""
  tasks, variables = [], []
  for directory in teacher_dirs:
    _, task, state, step = workdir_lib.restore_latest(directory, image_shape, mesh)
    logging.info("teacher %s at step %d", directory, step)
    tasks.append(task)
    variables.append(task_lib.eval_variables(state))
  return tasks, variables


def precompute_teacher_probs(teacher_dirs: Sequence[str], source: data_lib.pipeline.Source,
                             out_dir: str, image_shape: tuple[int, ...],
                             options: ml_collections.ConfigDict,
                             mesh: jax.sharding.Mesh) -> np.ndarray:
  """The teachers' combined probabilities (N, K) at options.temperature on clean images.

  Each teacher labels `source` with the sharded, resumable pseudo-label pass
  (out_dir/teacher_<m>); the probabilities are re-tempered to T and combined by
  options.ensemble.
  """
  tasks, variables = load_teachers(teacher_dirs, image_shape, mesh)
  per_teacher = []
  for m, (task, teacher_vars) in enumerate(zip(tasks, variables)):
    teacher_dir = os.path.join(out_dir, f"teacher_{m}")
    pseudo_label.label_pool(teacher_vars, task, source, teacher_dir, mesh=mesh,
                            batch_size=options.batch_size, shard_size=options.shard_size,
                            store="soft")
    _, probs, _ = pseudo_label.load_pseudo_labels(teacher_dir, options.temperature)
    per_teacher.append(probs)
  log_probs = np.log(np.maximum(np.stack(per_teacher), 1e-30))
  return np.asarray(losses.ensemble_probs(jnp.asarray(log_probs), options.ensemble, 1.0))


def check_settings(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError before anything trains if a key of config.distill (SETTINGS_RULES),
  of the teacher's config (unless config.teacher_workdirs names finished teachers) or of
  the student's config has an impossible value (preflight.check_config), if precomputed
  teacher outputs are asked to see augmented images, or if the teacher and the student
  have different class counts. Pure: reads no data, writes nothing."""
  options = config.distill
  preflight.check_rules(options, SETTINGS_RULES, "distill.")
  if options.teacher_outputs == "precomputed" and options.teaching != "clean":
    raise ConfigError("config.distill.teacher_outputs = 'precomputed' sees clean images only: "
                      "set config.distill.teaching = 'clean' or config.distill.teacher_outputs "
                      f"= 'live' (teaching is {options.teaching!r})")
  if not config.get("teacher_workdirs", ()):
    try:
      preflight.check_config(config.teacher, "teacher.")
    except ConfigError as e:
      raise ConfigError(f"teacher: {e}") from e
    if config.teacher.num_classes != config.student.num_classes:
      raise ConfigError(f"config.student.num_classes = {config.student.num_classes}, "
                        f"config.teacher.num_classes = {config.teacher.num_classes}: the "
                        "student learns the teacher's classes; make them equal")
  try:
    preflight.check_config(config.student, "student.")
  except ConfigError as e:
    raise ConfigError(f"student: {e}") from e
  preflight.refuse_supervised_only_keys(config.student, "student.", "the distillation step")


def run(config: ml_collections.ConfigDict, workdir: str,
        data_dir: str | None = None) -> dict[str, Any]:
  """Distils config.teacher (or the runs in config.teacher_workdirs) into config.student.

  The student's data split (config.student: dataset, num_holdout, num_labelled) gives
  the labelled examples and, with config.distill.use_unlabelled, the unlabelled
  pool mixed in at config.distill.unlabelled_ratio. Returns {'teachers': [...],
  'student': results}; rerunning resumes.

  Before anything runs, every setting is checked (check_settings), each of
  config.teacher_workdirs must hold a finished run
  (check_teacher_workdirs), which is only read, and the teacher/ and student/ runs
  already in `workdir` must accept their configs (workdir.check_config). The run holds
  the lock of `workdir` (workdir_lock.py).
  """
  check_settings(config)
  check_teacher_workdirs(config)
  if not config.get("teacher_workdirs", ()):
    workdir_lib.check_config(config.teacher, os.path.join(workdir, "teacher"))
  workdir_lib.check_config(config.student, os.path.join(workdir, "student"))
  with workdir_lock.hold(workdir):
    return _run_locked(config, workdir, data_dir)


def check_teacher_workdirs(config: ml_collections.ConfigDict) -> None:
  """Raises unless every directory of config.teacher_workdirs holds a finished training
  run (workdir.check_finished_run: never trained further, never written) with the
  student's num_classes. The teachers may differ from config.teacher and from each
  other (an ensemble): config.teacher describes only a teacher trained in the workdir."""
  for directory in config.get("teacher_workdirs", ()):
    workdir_lib.check_finished_run(directory, "teacher_workdirs")
    num_classes = workdir_lib.load_config(directory).get("num_classes")
    if num_classes != config.student.num_classes:
      raise ConfigError(
          f"teacher_workdirs entry {directory!r} holds a teacher of num_classes={num_classes}, "
          f"the student has student.num_classes={config.student.num_classes}: distillation "
          "needs the same classes; use a teacher trained on the student's classes")


def _run_locked(config: ml_collections.ConfigDict, workdir: str,
                data_dir: str | None) -> dict[str, Any]:
  """run after its checks, under the workdir's lock. The student's data and its supervised
  step traced on them (preflight.check_run) are checked before the teacher trains; the
  distillation step itself is traced when the student's stage starts."""
  options = config.distill
  student_config = config.student
  mesh = sharding.make_mesh()
  run_data = run_data_lib.load_run_data(student_config, data_dir)
  use_unlabelled = options.use_unlabelled
  if use_unlabelled and not len(run_data.unlabelled):
    raise ConfigError("distill.use_unlabelled needs an unlabelled pool: set student.num_labelled "
                     "below the size of the training split (after the hold-out)")
  try:
    preflight.check_run(student_config, run_data, mesh, make_step=train.jit_train_step,
                        make_eval_step=train.jit_eval_step, key_prefix="student.")
  except ConfigError as e:
    raise ConfigError(f"student: {e}") from e
  teacher_dirs = list(config.get("teacher_workdirs", ()))
  teachers = []
  if not teacher_dirs:
    teacher_dirs = [os.path.join(workdir, "teacher")]
    teachers.append(train.train_or_reuse(config.teacher, teacher_dirs[0], data_dir))

  labelled_probs = unlabelled_probs = None
  if options.teacher_outputs == "precomputed":
    probs_dir = config.get("teacher_probs_dir", "") or os.path.join(workdir, "teacher_probs")
    # The teachers see the images as evaluated (the centre crop under host_preprocessing).
    labelled_probs = precompute_teacher_probs(
        teacher_dirs, run_data_lib.as_evaluated(student_config, run_data.train),
        os.path.join(probs_dir, "labelled"), run_data.image_shape, options, mesh)
    if use_unlabelled:
      unlabelled_probs = precompute_teacher_probs(
          teacher_dirs, run_data_lib.as_evaluated(student_config, run_data.unlabelled),
          os.path.join(probs_dir, "unlabelled"), run_data.image_shape, options, mesh)
    teacher_tasks, teacher_vars = (), ()
  elif options.teacher_outputs == "live":
    teacher_tasks, teacher_vars = load_teachers(teacher_dirs, run_data.image_shape, mesh)
  else:
    raise ConfigError(f"distill.teacher_outputs must be 'live' or 'precomputed', "
                     f"not {options.teacher_outputs!r}")

  distill = Distillation(teachers=tuple(teacher_tasks), alpha=options.alpha,
                         temperature=options.temperature, teaching=options.teaching,
                         ensemble=options.ensemble)
  sources = [DistillRecords(run_data.train, True, labelled_probs)]
  weights = [1.0]
  if use_unlabelled:
    sources.append(DistillRecords(run_data.unlabelled, False, unlabelled_probs))
    weights.append(options.unlabelled_ratio)

  def make_step(task, mesh):
    step = jit_distill_step(task, distill, mesh)
    return lambda state, batch: step(state, teacher_vars, batch)

  student = train.train_and_evaluate(student_config, os.path.join(workdir, "student"), data_dir,
                                     train_sources=sources, train_weights=weights,
                                     make_step=make_step)
  return {"teacher_workdirs": teacher_dirs, "teachers": teachers, "student": student}


# Keys of a distillation config that name its runs or say where the teachers and their
# outputs lie, without changing the student a run trains.
_NOT_THE_RUN = ("title", "runs", "teacher_workdirs", "teacher_probs_dir")


def run_fingerprint(config: ml_collections.ConfigDict) -> str:
  """workdir.config_fingerprint of one run's config (the `runs` entry's overrides applied)
  without _NOT_THE_RUN: equal for the same teacher, student and distillation settings."""
  return workdir_lib.config_fingerprint(config, ignore=_NOT_THE_RUN)


def kept_report_row(reported: Mapping[str, Any] | None, run_spec: Mapping[str, Any],
                    config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The row a report written before holds for the run `run_spec` ({"mode", overrides}) of
  `config` (its overrides applied), marked kept_from_report, if it is the same run: the same
  run_fingerprint, or for a row written before rows had one the same mode, overrides and
  student steps. None otherwise (reports.kept_row)."""
  overrides = {k: v for k, v in run_spec.items() if k != "mode"}
  legacy_same = bool(reported) and (reported.get("mode") == run_spec["mode"]
                                    and reported.get("overrides") == overrides
                                    and reported.get("steps") == config.student.num_steps)
  return reports.kept_row(reported, run_fingerprint(config), legacy_same)
