"""The quality of a finished GAN run's samples, measured with one of the project's trained
classifiers (`measure_quality`, run by experiments/gan_quality.py):

  frechet_distance            between the classifier's penultimate features of the real
                              evaluation images and of num_samples class-balanced samples
  real_train_frechet_distance the same distance between the real evaluation images and the
                              GAN's real training images (its labelled split): what a
                              generator that reproduced its training images would score
  classifier_accuracy_on_generated  the classifier's accuracy on the samples (their labels)
  generated_only_accuracy     the evaluation accuracy of the classifier's config trained from
                              scratch on the samples alone (train.train_or_reuse in
                              GAN_WORKDIR/generated_only_classifier_n<N>_seed<S>, resumable)

`write_quality_report` turns them into a report (PREFIX.json with the GAN's and the
classifier's settings, PREFIX_samples.png) that experiments/docs.py renders.
"""

import math
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from effcv_jax import files, sharding
from effcv_jax import task as task_lib
from effcv_jax import train as train_lib
from effcv_jax import workdir as workdir_lib
from effcv_jax.data import run_data as run_data_lib
from effcv_jax.errors import ConfigError
from effcv_jax.gan import quality
from effcv_jax.gan import run as gan_run
from effcv_jax.gan import step as step_lib

GENERATED_ONLY_DIR = "generated_only_classifier_n{num_samples}_seed{seed}"
QUALITY_JSON = "quality.json"


def generate_samples(task: step_lib.GanTask, generator_params: Any, labels: np.ndarray,
                     seed: int, batch_size: int) -> np.ndarray:
  """Float pixels (N, H, W, C) in [0, 255] of the int labels (N,), in batches of
  batch_size, batch i's noise from fold_in(PRNGKey(seed), i)."""
  sample = jax.jit(lambda key, y: step_lib.sample_pixels(task, generator_params, key, y))
  chunks = [sample(jax.random.fold_in(jax.random.PRNGKey(seed), i),
                   jnp.asarray(labels[start:start + batch_size]))
            for i, start in enumerate(range(0, len(labels), batch_size))]
  return np.concatenate(jax.device_get(chunks))


def classifier_outputs(task: task_lib.Task, variables: Any, images: np.ndarray,
                       batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(penultimate features (N, F), logits (N, K)) of float images (N, H, W, C) in
  [0, 255], in batches of batch_size."""
  outputs = jax.jit(lambda images: quality.features_and_logits(task, variables, images))
  parts = [jax.device_get(outputs(jnp.asarray(images[start:start + batch_size])))
           for start in range(0, len(images), batch_size)]
  return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def measure_quality(gan_workdir: str, classifier_workdir: str, data_dir: str | None = None, *,
                    num_samples: int = 10000, train_steps: int = 0, seed: int = 0,
                    batch_size: int = 500) -> dict[str, Any]:
  """The measures of the module docstring for the finished GAN run in gan_workdir and the
  classifier run in classifier_workdir (its latest checkpoint; trained on images of the
  GAN's shape and classes); train_steps 0 trains the generated-only classifier for its
  config's num_steps. Writes and returns GAN_WORKDIR/quality.json."""
  mesh = sharding.make_mesh()
  gan_config, gan_task, generator_params, image_shape = gan_run.load_generator(gan_workdir, mesh)
  classifier_config = workdir_lib.load_config(classifier_workdir)
  if classifier_config.num_classes != gan_config.num_classes:
    raise ConfigError(f"--classifier_workdir={classifier_workdir!r} classifies "
                      f"{classifier_config.num_classes} classes, the GAN in {gan_workdir!r} "
                      f"generates {gan_config.num_classes}: use a classifier of the GAN's data")
  _, task, state, _ = workdir_lib.restore_latest(classifier_workdir, image_shape, mesh,
                                                 classifier_config)
  variables = task_lib.eval_variables(state)
  per_class = math.ceil(num_samples / gan_config.num_classes)
  labels = quality.balanced_labels(gan_config.num_classes, per_class)
  samples = generate_samples(gan_task, generator_params, labels, seed, batch_size)
  generated_features, generated_logits = classifier_outputs(task, variables, samples, batch_size)
  run_data = run_data_lib.load_run_data(gan_config, data_dir)
  real_stats = {}
  for name, source in (("eval", run_data.eval), ("train", run_data.train)):
    images, _ = gan_run.source_arrays(source)
    features, _ = classifier_outputs(task, variables, images.astype(np.float32), batch_size)
    real_stats[name] = quality.feature_statistics(features)
  distances = {
      "frechet_distance": quality.frechet_distance(
          *real_stats["eval"], *quality.feature_statistics(generated_features)),
      "real_train_frechet_distance": quality.frechet_distance(
          *real_stats["eval"], *real_stats["train"])}
  generated_only = classifier_config.copy_and_resolve_references()
  generated_only.num_steps = train_steps or classifier_config.num_steps
  generated_only.eval_every = min(generated_only.eval_every, generated_only.num_steps)
  generated_only.gan_augment = dict(workdir="", ratio=0.0)
  trained = train_lib.train_or_reuse(
      generated_only, os.path.join(gan_workdir, GENERATED_ONLY_DIR.format(
          num_samples=len(labels), seed=seed)), data_dir,
      train_sources=[quality.generated_source(samples, labels)])
  classifier_results = os.path.join(classifier_workdir, "results.json")
  results = {
      **distances,
      "classifier_accuracy_on_generated": float(np.mean(
          np.argmax(generated_logits, -1) == labels)),
      "generated_only_accuracy": trained["accuracy"],
      "generated_only_steps": generated_only.num_steps,
      "classifier_accuracy": (workdir_lib.read_json(classifier_results).get("accuracy")
                              if os.path.exists(classifier_results) else None),
      "num_samples": int(len(labels)), "num_real_eval": len(run_data.eval),
      "num_real_train": len(run_data.train), "eval_split": gan_config.eval_split,
      "gan_workdir": gan_workdir, "classifier_workdir": classifier_workdir, "seed": seed}
  if jax.process_index() == 0:
    files.write_json_atomic(os.path.join(gan_workdir, QUALITY_JSON), results)
  return results


def quality_report(results: dict[str, Any], report_prefix: str, command: str) -> dict[str, Any]:
  """The report of measure_quality's `results`: its measures under 'quality', what the GAN and
  the classifier were (dataset, labels, network, steps, loss; the classifier's own accuracy
  stays in the measures), the command, and the name of the sample grid written beside the
  JSON (report_prefix + '_samples.png')."""
  gan_config = workdir_lib.load_config(results["gan_workdir"])
  classifier_config = workdir_lib.load_config(results["classifier_workdir"])
  gan_results = gan_run.check_finished_gan(results["gan_workdir"], "--workdir")
  return {
      "title": (f"Class-conditional GAN on {gan_config.dataset}, {gan_config.num_labelled:,} "
                f"labels ({gan_config.gan.loss} loss, {gan_config.num_steps:,} steps of "
                f"{gan_config.batch_size}): sample quality measured with a "
                f"{classifier_config.model} classifier of the same labels"),
      "command": command,
      "gan": {"workdir": results["gan_workdir"], "dataset": gan_config.dataset,
              "num_labelled": gan_config.num_labelled, "loss": gan_config.gan.loss,
              "num_steps": gan_config.num_steps, "batch_size": gan_config.batch_size,
              "d_real": gan_results.get("d_real"), "d_fake": gan_results.get("d_fake")},
      "classifier": {"workdir": results["classifier_workdir"],
                     "model": classifier_config.model,
                     "num_steps": classifier_config.num_steps,
                     "batch_size": classifier_config.batch_size,
                     "augment": classifier_config.get("augment", "")},
      "quality": results,
      "samples_png": os.path.basename(report_prefix) + "_samples.png",
  }


def write_quality_report(results: dict[str, Any], report_prefix: str, command: str
                         ) -> dict[str, Any]:
  """Writes quality_report's JSON to report_prefix.json and copies the GAN run's sample grid
  to report_prefix_samples.png; returns the report."""
  report = quality_report(results, report_prefix, command)
  directory = os.path.dirname(report_prefix) or "."
  os.makedirs(directory, exist_ok=True)
  shutil.copyfile(os.path.join(results["gan_workdir"], gan_run.SAMPLES_PNG),
                  os.path.join(directory, report["samples_png"]))
  files.write_json_atomic(report_prefix + ".json", report)
  return report
