"""Noisy Student self-training (Xie et al. 2020): teacher -> pseudo-labels -> noised student, repeated.

  1. Train a teacher on the labelled split (or reuse a finished teacher workdir).
  2. Label the unlabelled pool with it: clean images, sharded inference, shards on disk.
  3. Select: confidence threshold, per-class balancing, soft or hard labels.
  4. Train an equal-or-larger student, with noise (RandAugment, dropout, stochastic
     depth), on labelled + pseudo-labelled batches in a fixed ratio.
  5. The student becomes the teacher; repeat from 2 for `num_iterations`.

Workdir layout (every stage resumes where it stopped when the command is rerun):
  teacher/ pseudo_1/ student_1/ pseudo_2/ student_2/ ... summary.json
(pseudo_K/validation/: the teacher's pass over the validation split, for pseudo.calibrate
and pseudo.target_precision.)
"""

import dataclasses
import math
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from effcv_jax import config_utils, files, preflight, pseudo_label, sharding, train
from effcv_jax import data as data_lib
from effcv_jax import task as task_lib
from effcv_jax import workdir as workdir_lib
from effcv_jax import workdir_lock
from effcv_jax.data import run_data as run_data_lib
from effcv_jax.errors import ConfigError
from effcv_jax.preflight import Allowed, Rule, choices, integers, numbers

# The keys of a Noisy Student config beside its teacher and student configs.
SETTINGS_RULES = (
    Rule("num_iterations", integers(1), "the teacher -> student rounds"),
    Rule("unlabelled_ratio", numbers(0.0, low_open=True),
         "pseudo-labelled : labelled examples per student batch"),
    Rule("unlabelled_ratios", Allowed(
        lambda v: isinstance(v, (list, tuple)) and all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in v),
        "a tuple of numbers > 0 (empty: unlabelled_ratio for every iteration)"),
         "the unlabelled_ratio of each iteration"),
    Rule("labelled_label_smoothing", numbers(0.0, 1.0, high_open=True),
         "the label smoothing of the student's labelled examples (not of its pseudo-labels)"),
    Rule("pseudo.balance", choices(pseudo_label.BALANCE_KINDS),
         "how pseudo.per_class balances the classes"),
    Rule("pseudo.threshold", numbers(0.0), "the confidence a pseudo-label needs"),
    Rule("pseudo.per_class", integers(0), "pseudo-labels kept per class; 0 keeps all"),
    Rule("pseudo.temperature", numbers(0.0, low_open=True), "the pseudo-labels' temperature"),
    Rule("pseudo.store", choices(pseudo_label.STORE_KINDS), "what the labelling pass stores"),
    Rule("pseudo.top_k", integers(1), "the classes store='topk' keeps"),
    Rule("pseudo.batch_size", integers(1), "the labelling pass's batch"),
    Rule("pseudo.shard_size", integers(1), "the examples of one stored shard"),
    Rule("pseudo.calibrate", choices(pseudo_label.CALIBRATION_KINDS),
         "how the teacher's probabilities are calibrated on the validation split ('' not)"),
    Rule("pseudo.target_precision", numbers(0.0, 1.0, high_open=True),
         "the validation precision the chosen confidence threshold reaches (0: off)"),
)
# Evaluation splits a temperature or a threshold may be fitted on: held out from training
# and not the test split.
VALIDATION_SPLITS = ("holdout", "validation", "val")
# The subdirectory of pseudo_K/ that holds the teacher's pass over the validation split.
VALIDATION_DIR = "validation"


def uses_validation(options: ml_collections.ConfigDict) -> bool:
  """Whether the selection of config.pseudo `options` needs the teacher's validation pass."""
  return bool(options.get("calibrate", "")) or options.get("target_precision", 0.0) > 0


def check_calibration_settings(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the key when pseudo.target_precision is combined with a
  nonzero pseudo.threshold (the target chooses the threshold), or when pseudo.calibrate or
  pseudo.target_precision would fit on an evaluation split that is not a validation split
  (VALIDATION_SPLITS: teacher.eval_split='test' would fit on the test split)."""
  options = config.pseudo
  target = options.get("target_precision", 0.0)
  if target > 0 and options.threshold > 0:
    raise ConfigError(
        f"config.pseudo.target_precision = {target!r} chooses the confidence threshold on the "
        f"validation split, and config.pseudo.threshold = {options.threshold!r} sets one too: "
        "set --config.pseudo.threshold=0 to use the target, or "
        "--config.pseudo.target_precision=0 to keep the fixed threshold")
  if not uses_validation(options):
    return
  eval_split = config.teacher.eval_split
  if eval_split in VALIDATION_SPLITS:
    return
  key, value = (("calibrate", options.calibrate) if options.get("calibrate", "")
                else ("target_precision", target))
  raise ConfigError(
      f"config.pseudo.{key} = {value!r} fits on the teacher's evaluation split, and "
      f"config.teacher.eval_split = {eval_split!r} is not a validation split (one of "
      f"{VALIDATION_SPLITS}); fitting on the test split is not allowed: set "
      "--config.teacher.eval_split=holdout with --config.teacher.num_holdout > 0 (and the "
      f"student's the same), or --config.pseudo.{key} back to its default")


def student_config(config: ml_collections.ConfigDict, iteration: int) -> ml_collections.ConfigDict:
  """config.student with the overrides of `iteration` (1-based) from config.student_overrides."""
  overrides = config.student_overrides
  chosen = overrides[min(iteration, len(overrides)) - 1] if len(overrides) else {}
  return config_utils.with_overrides(config.student, dict(chosen))


def unlabelled_ratio(config: ml_collections.ConfigDict, iteration: int) -> float:
  """Pseudo-labelled : labelled examples per batch of student `iteration` (1-based):
  config.unlabelled_ratios[iteration - 1] (the last entry for later iterations) when that
  tuple is set (the official scripts' per-size ratios), else config.unlabelled_ratio."""
  ratios = config.get("unlabelled_ratios", ())
  if not len(ratios):
    return config.unlabelled_ratio
  return float(ratios[min(iteration, len(ratios)) - 1])


def pseudo_label_stage(teacher_dir: str, pool: data_lib.pipeline.Source, out_dir: str,
                       options: ml_collections.ConfigDict,
                       true_labels: np.ndarray | None = None,
                       validation: data_lib.pipeline.Source | None = None,
                       validation_labels: np.ndarray | None = None,
                       ) -> tuple[pseudo_label.PseudoLabelledSource, dict[str, Any]]:
  """Labels `pool` (images as the student trains on them, run_data.training_images) with the
  teacher in `teacher_dir`, which sees them as it was evaluated (run_data.as_evaluated with
  its own config: the official centre crop at its image_size under host_preprocessing),
  and selects the student's examples from `pool`.

  Returns the pseudo-labelled source and statistics (see `select_stage`). The teacher is
  its run's evaluation weights (task.eval_variables: the weight averages of a run with
  ema_decay > 0, as the official recipe's teacher is). The pass runs under a watchdog
  with the teacher's config.watchdog limits.

  When the options use the validation split (`uses_validation`), the teacher also labels
  `validation` (its images as this teacher evaluates them, run_data.at_image_size; labels
  `validation_labels` (V,)) into out_dir/validation (store 'soft', the pool's TTA views).
  """
  mesh = sharding.make_mesh()
  teacher_config = workdir_lib.load_config(teacher_dir)
  teacher_pool = run_data_lib.as_evaluated(teacher_config, pool)
  _, task, state, _ = workdir_lib.restore_latest(
      teacher_dir, run_data_lib.image_shape_of(teacher_pool), mesh, teacher_config)
  variables = task_lib.eval_variables(state)   # the weight averages when the run kept them
  pseudo_label.label_pool(variables, task, teacher_pool, out_dir, mesh=mesh,
                          batch_size=options.batch_size, shard_size=options.shard_size,
                          store=options.store, top_k=options.get("top_k", 5),
                          views=options.get("tta", "") or None,
                          watchdog_limits=workdir_lib.watchdog_limits(teacher_config))
  if uses_validation(options):
    pseudo_label.label_pool(variables, task, validation, os.path.join(out_dir, VALIDATION_DIR),
                            mesh=mesh, batch_size=options.batch_size,
                            shard_size=options.shard_size, store="soft",
                            views=options.get("tta", "") or None,
                            watchdog_limits=workdir_lib.watchdog_limits(teacher_config))
  return select_stage(pool, out_dir, options, true_labels, validation_labels)


def select_stage(pool: data_lib.pipeline.Source, out_dir: str,
                 options: ml_collections.ConfigDict, true_labels: np.ndarray | None = None,
                 validation_labels: np.ndarray | None = None,
                 ) -> tuple[pseudo_label.PseudoLabelledSource, dict[str, Any]]:
  """Selects from the finished pass in `out_dir` (threshold, balancing, soft or hard).

  With pseudo.calibrate='temperature' the teacher's logits are divided by the temperature
  fitted on its validation pass (out_dir/validation, labels `validation_labels` (V,)),
  then by pseudo.temperature, before the soft labels and the threshold. With
  pseudo.target_precision > 0 the threshold is the smallest whose precision on the
  validation predictions (at that same temperature) reaches it.

  Returns the pseudo-labelled source and statistics: the threshold used, how many were
  kept, per class, the calibration ('calibration': temperature, validation NLL and ECE
  before and after) and the chosen threshold ('target_precision') when set, and, when
  the pool's true labels are known, how often the pseudo-labels are right and their
  precision and recall per class and confidence bin ('quality', selection_quality).
  """
  stats: dict[str, Any] = {}
  temperature, threshold = options.temperature, options.threshold
  if uses_validation(options):
    validation_logits = pseudo_label.load_teacher_logits(os.path.join(out_dir, VALIDATION_DIR))
    if options.get("calibrate", ""):
      stats["calibration"] = pseudo_label.fit_calibration(validation_logits, validation_labels)
      temperature = options.temperature * stats["calibration"]["temperature"]
    if options.get("target_precision", 0.0) > 0:
      validation_probs = pseudo_label.softmax(validation_logits / np.float32(temperature))
      stats["target_precision"] = {"target": options.target_precision,
                                   **pseudo_label.precision_threshold(
                                       validation_probs.max(-1),
                                       validation_probs.argmax(-1) == validation_labels,
                                       options.target_precision)}
      threshold = stats["target_precision"]["threshold"]
  indices, probs, confidence = pseudo_label.load_pseudo_labels(out_dir, temperature)
  per_class = options.per_class if options.per_class > 0 else None
  chosen, labels = pseudo_label.select(indices, probs, confidence, threshold=threshold,
                                       per_class=per_class, hard=options.hard,
                                       seed=options.get("seed", 0),
                                       balance=options.get("balance", "most_confident"))
  if not len(chosen):
    raise ConfigError(f"no pseudo-label in {out_dir} reaches the confidence threshold "
                     f"{threshold} (max confidence {confidence.max():.3f}); "
                     "lower pseudo.threshold or train the teacher longer")
  stats.update({"threshold": float(threshold), "pool": int(len(indices)),
                "selected": int(len(chosen)), "unique_selected": int(len(np.unique(chosen))),
                "per_class": np.bincount(labels.argmax(-1), minlength=probs.shape[-1]).tolist()})
  if true_labels is not None:
    stats["pool_pseudo_label_accuracy"] = float(np.mean(probs.argmax(-1) == true_labels[indices]))
    stats["selected_pseudo_label_accuracy"] = float(
        np.mean(labels.argmax(-1) == true_labels[chosen])) if len(chosen) else 0.0
    stats["quality"] = pseudo_label.selection_quality(
        probs.argmax(-1), confidence, true_labels[indices], chosen, probs.shape[-1])
  return pseudo_label.PseudoLabelledSource(pool, chosen, labels), stats


def _pool_labels(pool: data_lib.pipeline.Source) -> np.ndarray | None:
  """The pool's true labels when it is a labelled dataset split used as unlabelled (diagnostics)."""
  if isinstance(pool, data_lib.Subset) and isinstance(pool.source, data_lib.ArraySource):
    return pool.source.labels[pool.indices]
  return None


def _validation_labels(config: ml_collections.ConfigDict,
                       run_data: run_data_lib.RunData) -> np.ndarray | None:
  """The labels (V,) of the run's evaluation split when config.pseudo uses it as the
  validation split (`uses_validation`), else None."""
  if not uses_validation(config.pseudo):
    return None
  known = _pool_labels(run_data.eval)
  return known if known is not None else run_data_lib.source_labels(run_data.eval)


def check_settings(config: ml_collections.ConfigDict,
                   workdir: str) -> list[ml_collections.ConfigDict]:
  """The student config of every iteration. Raises before any stage runs if a key of the
  Noisy Student settings (SETTINGS_RULES), of the teacher's or of a student's config has an
  impossible value (preflight.check_config; ConfigError 'teacher: ...' / 'student N: ...'),
  if a student config cannot be built (a typo in student_overrides), has another class
  count or host_preprocessing than the teacher, or, unless it finished earlier, has a batch
  size the devices do not divide."""
  preflight.check_rules(config, SETTINGS_RULES)
  check_calibration_settings(config)
  try:
    preflight.check_config(config.teacher, "teacher.")
  except ConfigError as e:
    raise ConfigError(f"teacher: {e}") from e
  mesh = sharding.make_mesh()
  students = []
  for iteration in range(1, config.num_iterations + 1):
    try:
      student = student_config(config, iteration)
    except (KeyError, TypeError) as e:
      raise type(e)(f"student_overrides of iteration {iteration}: {e}") from e
    try:
      preflight.check_config(student, "student.")
    except ConfigError as e:
      raise ConfigError(f"student {iteration}{_overrides_note(config, iteration)}: {e}") from e
    if student.get("host_preprocessing", "") != config.teacher.get("host_preprocessing", ""):
      raise ConfigError(
          f"student {iteration} has host_preprocessing="
          f"{student.get('host_preprocessing', '')!r}, the teacher "
          f"{config.teacher.get('host_preprocessing', '')!r}: the stages share the labelled "
          "split and the unlabelled pool, read once with the teacher's setting; set "
          "config.student.host_preprocessing (and any student_overrides entry) to the "
          "teacher's")
    if student.num_classes != config.teacher.num_classes:
      raise ValueError(f"student {iteration} has num_classes={student.num_classes}, the "
                       f"teacher {config.teacher.num_classes}: pseudo-labels need the same "
                       "classes")
    student_dir = os.path.join(workdir, f"student_{iteration}")
    if workdir_lib.finished_results(student_dir, student.num_steps) is None:
      try:
        sharding.check_batch_size(student.batch_size, mesh)
      except ConfigError as e:
        raise ConfigError(f"student {iteration}: {e}") from e
    students.append(student)
  return students


def _overrides_note(config: ml_collections.ConfigDict, iteration: int) -> str:
  """' (config.student with student_overrides[i] = {...})' for an iteration with overrides."""
  overrides = config.student_overrides
  if not len(overrides):
    return ""
  index = min(iteration, len(overrides)) - 1
  return f" (config.student with student_overrides[{index}] = {dict(overrides[index])})"


def check_stages(config: ml_collections.ConfigDict, workdir: str,
                 run_data: run_data_lib.RunData,
                 students: list[ml_collections.ConfigDict]) -> None:
  """Traces the train and eval steps of the teacher and of every student that has not
  finished on the run's data at its image_size (preflight.check_run, run_data.at_image_size;
  a student's batches carry 'soft_label' as its labelled + pseudo-labelled mix does), before
  any stage trains. Raises ConfigError 'teacher: ...' or 'student N: ...'; computes and
  writes nothing."""
  mesh = sharding.make_mesh()
  stages = [("teacher", config.teacher, _teacher_dir(config, workdir), None, "teacher.")]
  for iteration, student in enumerate(students, start=1):
    labelled = [_labelled_source(config, run_data, student)]
    stages.append((f"student {iteration}", student,
                   os.path.join(workdir, f"student_{iteration}"), labelled, "student."))
  for name, stage_config, stage_dir, sources, key_prefix in stages:
    if workdir_lib.finished_results(stage_dir, stage_config.num_steps) is not None:
      continue
    try:
      preflight.check_run(stage_config, run_data_lib.at_image_size(stage_config, run_data),
                          mesh, make_step=train.jit_train_step,
                          make_eval_step=train.jit_eval_step, train_sources=sources,
                          key_prefix=key_prefix)
    except ConfigError as e:
      raise ConfigError(f"{name}: {e}") from e


def check_pool(config: ml_collections.ConfigDict, run_data: run_data_lib.RunData,
               students: list[ml_collections.ConfigDict]) -> None:
  """Raises if the unlabelled pool is empty or smaller than the pseudo-labelled share of
  one student batch (every batch would repeat the same few examples)."""
  pool, teacher = len(run_data.unlabelled), config.teacher
  pool_spec = config.get("unlabelled_dataset", "")
  if pool_spec:
    sizes = f"unlabelled_dataset {pool_spec} [{config.get('unlabelled_split', 'train')}]"
    fix = "use a larger unlabelled_dataset or unlabelled_split"
  else:
    sizes = (f"{pool + len(run_data.train)} training examples after the hold-out "
             f"(num_holdout={teacher.get('num_holdout', 0)}), of which "
             f"{len(run_data.train)} labelled (teacher.num_labelled={teacher.num_labelled})")
    fix = ("label fewer examples (teacher.num_labelled) or hold out fewer, or use a larger "
           "dataset")
  if not pool:
    raise ValueError(f"the unlabelled pool is empty ({sizes}): "
                     + ("use an unlabelled_split with examples" if pool_spec else
                        "set teacher.num_labelled below the size of the training split after "
                        "the hold-out"))
  shares = [(math.ceil(student.batch_size * ratio / (1.0 + ratio)), student.batch_size, ratio)
            for iteration, student in enumerate(students, start=1)
            for ratio in [unlabelled_ratio(config, iteration)]]
  share, batch_size, ratio = max(shares, default=(0, 0, config.unlabelled_ratio))
  if pool < share:
    raise ValueError(
        f"the unlabelled pool has {pool} examples, fewer than the {share} pseudo-labelled "
        f"examples of one student batch (student batch_size={batch_size}, "
        f"unlabelled_ratio={ratio}; {sizes}): {fix}, or lower unlabelled_ratio")


def load_data(config: ml_collections.ConfigDict,
              data_dir: str | None = None) -> run_data_lib.RunData:
  """The teacher's split of config.teacher.dataset; the unlabelled pool is the rest of its
  training split, or config.unlabelled_split of config.unlabelled_dataset when set (SVHN
  'extra', a large image collection for ImageNet)."""
  run_data = run_data_lib.load_run_data(config.teacher, data_dir)
  pool_spec = config.get("unlabelled_dataset", "")
  if not pool_spec:
    return run_data
  pool = run_data_lib.training_images(config.teacher, data_lib.load_source(
      pool_spec, config.get("unlabelled_split", "train"), data_dir))
  pool_shape = (run_data_lib.image_shape_of(run_data_lib.as_evaluated(config.teacher, pool))
                if len(pool) else run_data.image_shape)
  if pool_shape != tuple(run_data.image_shape):
    raise ValueError(f"unlabelled images {pool_spec} have shape {pool_shape}, the labelled "
                     f"ones {tuple(run_data.image_shape)}: resize them to one shape")
  return dataclasses.replace(run_data, unlabelled=pool)


def run(config: ml_collections.ConfigDict, workdir: str, data_dir: str | None = None) -> dict[str, Any]:
  """The whole loop; returns and writes workdir/summary.json (accuracy of every stage).

  Before any stage runs: a reused teacher (config.teacher_workdir) must be a finished
  run of config.teacher (workdir.check_reused_teacher) and is only read; every stage
  workdir that holds a run must accept its stage's config (workdir.check_config). The
  loop holds the lock of `workdir` (workdir_lock.py); each stage's training also
  locks its own directory.
  """
  reused_teacher = reused_teacher_results(config)
  students = check_settings(config, workdir)
  run_data = load_data(config, data_dir)
  check_pool(config, run_data, students)
  check_stage_workdirs(config, workdir, students)
  check_stages(config, workdir, run_data, students)
  with workdir_lock.hold(workdir):
    return _run_stages(config, workdir, data_dir, run_data, reused_teacher)


def _run_stages(config, workdir, data_dir, run_data, reused_teacher):
  """run after its checks, under the workdir's lock."""
  os.makedirs(workdir, exist_ok=True)
  teacher_dir = _teacher_dir(config, workdir)
  teacher = reused_teacher or train.train_or_reuse(config.teacher, teacher_dir, data_dir)
  rows = [_stage_row("teacher", config.teacher.model, teacher, teacher_dir)]
  write_summary(config, workdir, rows)
  true_labels = _pool_labels(run_data.unlabelled)
  validation_labels = _validation_labels(config, run_data)
  current_teacher = teacher_dir
  for iteration in range(1, config.num_iterations + 1):
    validation = None if validation_labels is None else run_data_lib.at_image_size(
        workdir_lib.load_config(current_teacher), run_data).eval
    pseudo_source, stats = pseudo_label_stage(
        current_teacher, run_data.unlabelled, os.path.join(workdir, f"pseudo_{iteration}"),
        config.pseudo, true_labels, validation, validation_labels)
    logging.info("iteration %d pseudo-labels: %s", iteration, stats)
    student = student_config(config, iteration)
    labelled = _labelled_source(config, run_data, student)
    student_dir = os.path.join(workdir, f"student_{iteration}")
    results = train.train_or_reuse(student, student_dir, data_dir,
                                   train_sources=[labelled, pseudo_source],
                                   train_weights=[1.0, unlabelled_ratio(config, iteration)])
    rows.append(_stage_row(f"student_{iteration}", student.model, results, student_dir, stats))
    write_summary(config, workdir, rows)
    current_teacher = student_dir
  return write_summary(config, workdir, rows)


def _labelled_source(config: ml_collections.ConfigDict, run_data: run_data_lib.RunData,
                     student: ml_collections.ConfigDict) -> data_lib.WithSoftLabels:
  """The student's labelled examples with soft labels, smoothed by
  config.labelled_label_smoothing (Noisy Student smooths the labelled examples only; the
  student's own label_smoothing would smooth its pseudo-labels too)."""
  return data_lib.WithSoftLabels(run_data.train, student.num_classes,
                                 config.get("labelled_label_smoothing", 0.0))


def _teacher_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The teacher's workdir: config.teacher_workdir if set, else workdir/teacher."""
  return config.get("teacher_workdir", "") or os.path.join(workdir, "teacher")


def reused_teacher_results(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """results.json of the finished run config.teacher_workdir names (checked against
  config.teacher by workdir.check_reused_teacher), None when the loop trains its own."""
  teacher_workdir = config.get("teacher_workdir", "")
  if not teacher_workdir:
    return None
  return workdir_lib.check_reused_teacher(config.teacher, teacher_workdir)


def check_stage_workdirs(config: ml_collections.ConfigDict, workdir: str,
                         students: list[ml_collections.ConfigDict]) -> None:
  """Refuses (workdir.check_config) a config whose teacher or students differ from the
  runs their stage directories already hold, before any stage runs."""
  if not config.get("teacher_workdir", ""):
    workdir_lib.check_config(config.teacher, os.path.join(workdir, "teacher"))
  for iteration, student in enumerate(students, start=1):
    workdir_lib.check_config(student, os.path.join(workdir, f"student_{iteration}"))


def _stage_row(stage: str, model: str, results: dict[str, Any], workdir: str,
               pseudo_labels: dict[str, Any] | None = None) -> dict[str, Any]:
  """One row of the summary: a finished stage's accuracy and where it ran (and the zoo entry
  it was restored from, for a run made by zoo.restore_run)."""
  row = {"stage": stage, "model": model, "accuracy": results["accuracy"],
         "num_examples": results["num_examples"], "workdir": workdir}
  if "restored_from_zoo" in results:
    row["restored_from_zoo"] = results["restored_from_zoo"]
  return row if pseudo_labels is None else {**row, "pseudo_labels": pseudo_labels}


def finished_rows(config: ml_collections.ConfigDict, workdir: str,
                  data_dir: str | None = None) -> list[dict[str, Any]]:
  """The summary rows of the stages of `workdir` that have finished (teacher, student_1,
  ...), read from their results without training or labelling anything; [] if the
  teacher has not finished. A reused teacher (config.teacher_workdir) that does not fit
  config.teacher raises, as in `run`."""
  teacher_dir = _teacher_dir(config, workdir)
  teacher = (reused_teacher_results(config)
             or workdir_lib.finished_results(teacher_dir, config.teacher.num_steps))
  if teacher is None:
    return []
  rows = [_stage_row("teacher", config.teacher.model, teacher, teacher_dir)]
  run_data = None
  for iteration in range(1, config.num_iterations + 1):
    student = student_config(config, iteration)
    student_dir = os.path.join(workdir, f"student_{iteration}")
    results = workdir_lib.finished_results(student_dir, student.num_steps)
    if results is None:
      break
    run_data = run_data or load_data(config, data_dir)
    _, stats = select_stage(run_data.unlabelled, os.path.join(workdir, f"pseudo_{iteration}"),
                            config.pseudo, _pool_labels(run_data.unlabelled),
                            _validation_labels(config, run_data))
    rows.append(_stage_row(f"student_{iteration}", student.model, results, student_dir, stats))
  return rows


def write_summary(config: ml_collections.ConfigDict, workdir: str,
                  rows: list[dict[str, Any]]) -> dict[str, Any]:
  """Writes workdir/summary.json (atomically, process 0) after every finished stage:
  {'eval_split', 'complete': all iterations done, 'stages': rows}; returns it."""
  summary = {"eval_split": config.teacher.eval_split,
             "complete": len(rows) == config.num_iterations + 1, "stages": rows}
  if jax.process_index() == 0:
    files.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
  return summary


def format_summary(summary: dict[str, Any]) -> str:
  """A plain-text table: stage, model, accuracy, gain over the teacher."""
  teacher_accuracy = summary["stages"][0]["accuracy"]
  lines = [f"{'stage':<12} {'model':<14} {'accuracy':>9} {'vs teacher':>11}"]
  for row in summary["stages"]:
    gain = 100 * (row["accuracy"] - teacher_accuracy)
    lines.append(f"{row['stage']:<12} {row['model']:<14} {100 * row['accuracy']:>8.2f}% {gain:>+10.2f}")
  return "\n".join(lines)
