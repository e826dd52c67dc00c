"""Noisy Student self-training (Xie et al. 2020): teacher -> pseudo-labels -> noised student, repeated.

  1. Train a teacher on the labelled split (or reuse a finished teacher workdir).
  2. Label the unlabelled pool with it: clean images, sharded inference, shards on disk.
  3. Select: confidence threshold, per-class balancing, soft or hard labels.
  4. Train an equal-or-larger student, with noise (RandAugment, dropout, stochastic
     depth), on labelled + pseudo-labelled batches in a fixed ratio.
  5. The student becomes the teacher; repeat from 2 for `num_iterations`.

Workdir layout (every stage resumes where it stopped when the command is rerun):
  teacher/ pseudo_1/ student_1/ pseudo_2/ student_2/ ... summary.json
"""

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from effcv_jax import config_utils, pseudo_label, sharding, train
from effcv_jax import data as data_lib


def train_stage(config: ml_collections.ConfigDict, workdir: str, data_dir: str | None,
                **sources) -> dict[str, Any]:
  """Trains (or resumes, or skips if finished) one model; returns its results."""
  done = train.finished_results(workdir, config.num_steps)
  if done is not None:
    logging.info("%s: finished earlier (accuracy %.4f)", workdir, done["accuracy"])
    return done
  return train.train_and_evaluate(config, workdir, data_dir, **sources)


def student_config(config: ml_collections.ConfigDict, iteration: int) -> ml_collections.ConfigDict:
  """config.student with the overrides of `iteration` (1-based) from config.student_overrides."""
  overrides = config.student_overrides
  chosen = overrides[min(iteration, len(overrides)) - 1] if len(overrides) else {}
  return config_utils.with_overrides(config.student, dict(chosen))


def pseudo_label_stage(teacher_dir: str, pool: data_lib.pipeline.Source, out_dir: str,
                       image_shape: tuple[int, ...], options: ml_collections.ConfigDict,
                       true_labels: np.ndarray | None = None,
                       ) -> tuple[pseudo_label.PseudoLabelledSource, dict[str, Any]]:
  """Labels `pool` with the teacher in `teacher_dir` and selects the student's examples.

  Returns the pseudo-labelled source and statistics (how many were kept, per class,
  and, when the pool's true labels are known, how often the pseudo-labels are right).
  """
  mesh = sharding.make_mesh()
  _, task, state, _ = train.restore_latest(teacher_dir, image_shape, mesh)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  pseudo_label.label_pool(variables, task, pool, out_dir, mesh=mesh,
                          batch_size=options.batch_size, shard_size=options.shard_size,
                          store=options.store, top_k=options.get("top_k", 5),
                          views=options.get("tta", "") or None)
  indices, probs, confidence = pseudo_label.load_pseudo_labels(out_dir, options.temperature)
  per_class = options.per_class if options.per_class > 0 else None
  chosen, labels = pseudo_label.select(indices, probs, confidence, threshold=options.threshold,
                                       per_class=per_class, hard=options.hard,
                                       seed=options.get("seed", 0))
  if not len(chosen):
    raise ValueError(f"no pseudo-label of the teacher in {teacher_dir} reaches the confidence "
                     f"threshold {options.threshold} (max confidence {confidence.max():.3f}); "
                     "lower pseudo.threshold or train the teacher longer")
  stats = {"pool": int(len(indices)), "selected": int(len(chosen)),
           "unique_selected": int(len(np.unique(chosen))),
           "per_class": np.bincount(labels.argmax(-1), minlength=probs.shape[-1]).tolist()}
  if true_labels is not None:
    stats["pool_pseudo_label_accuracy"] = float(np.mean(probs.argmax(-1) == true_labels[indices]))
    stats["selected_pseudo_label_accuracy"] = float(
        np.mean(labels.argmax(-1) == true_labels[chosen])) if len(chosen) else 0.0
  return pseudo_label.PseudoLabelledSource(pool, chosen, labels), stats


def _pool_labels(pool: data_lib.pipeline.Source) -> np.ndarray | None:
  """The pool's true labels when it is a labelled dataset split used as unlabelled (diagnostics)."""
  if isinstance(pool, data_lib.Subset) and isinstance(pool.source, data_lib.ArraySource):
    return pool.source.labels[pool.indices]
  return None


def run(config: ml_collections.ConfigDict, workdir: str, data_dir: str | None = None) -> dict[str, Any]:
  """The whole loop; returns and writes workdir/summary.json (accuracy of every stage)."""
  os.makedirs(workdir, exist_ok=True)
  run_data = train.load_run_data(config.teacher, data_dir)
  if not len(run_data.unlabelled):
    raise ValueError("the unlabelled pool is empty: set teacher.num_labelled below the size of "
                     "the training split (after the hold-out)")
  teacher_dir = config.get("teacher_workdir", "") or os.path.join(workdir, "teacher")
  teacher = train_stage(config.teacher, teacher_dir, data_dir)
  rows = [{"stage": "teacher", "model": config.teacher.model, "accuracy": teacher["accuracy"],
           "num_examples": teacher["num_examples"], "workdir": teacher_dir}]
  true_labels = _pool_labels(run_data.unlabelled)
  current_teacher = teacher_dir
  for iteration in range(1, config.num_iterations + 1):
    pseudo_source, stats = pseudo_label_stage(
        current_teacher, run_data.unlabelled, os.path.join(workdir, f"pseudo_{iteration}"),
        run_data.image_shape, config.pseudo, true_labels)
    logging.info("iteration %d pseudo-labels: %s", iteration, stats)
    student = student_config(config, iteration)
    labelled = data_lib.WithSoftLabels(run_data.train, student.num_classes)
    student_dir = os.path.join(workdir, f"student_{iteration}")
    results = train_stage(student, student_dir, data_dir, train_sources=[labelled, pseudo_source],
                          train_weights=[1.0, config.unlabelled_ratio])
    rows.append({"stage": f"student_{iteration}", "model": student.model,
                 "accuracy": results["accuracy"], "num_examples": results["num_examples"],
                 "workdir": student_dir, "pseudo_labels": stats})
    current_teacher = student_dir
  summary = {"eval_split": config.teacher.eval_split, "stages": rows}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary


def format_summary(summary: dict[str, Any]) -> str:
  """A plain-text table: stage, model, accuracy, gain over the teacher."""
  teacher_accuracy = summary["stages"][0]["accuracy"]
  lines = [f"{'stage':<12} {'model':<14} {'accuracy':>9} {'vs teacher':>11}"]
  for row in summary["stages"]:
    gain = 100 * (row["accuracy"] - teacher_accuracy)
    lines.append(f"{row['stage']:<12} {row['model']:<14} {100 * row['accuracy']:>8.2f}% {gain:>+10.2f}")
  return "\n".join(lines)
