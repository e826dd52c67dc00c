"""The quality of a finished GAN run's samples, measured with a trained classifier of the same
data (effcv_jax/gan/evaluate.py): the Fréchet distance on the classifier's penultimate
features (real evaluation images vs samples; beside it, real evaluation images vs the GAN's
real training images), the classifier's accuracy on the samples, and the accuracy of the
classifier's config trained on the samples alone.

  python -m experiments.gan_quality --workdir=runs/gan_fashion_mnist_1000 \
      --classifier_workdir=runs/augment_methods_fashion_mnist/flip_crop_seed_0 \
      --data_dir=../shared/data [--num_samples=10000] [--train_steps=0] \
      [--report=reports/gan_quality_fashion_mnist_1000]

Writes WORKDIR/quality.json; the generated-only classifier trains (resumably) in
WORKDIR/generated_only_classifier_n<N>_seed<S>. With --report=PREFIX it also writes the
report PREFIX.json (the measures, the GAN's and the classifier's settings, the command) and
PREFIX_samples.png (the GAN run's own sample grid, one row per class).
"""

import json
import os
import shutil
from typing import Any

import jax
from absl import flags

from effcv_jax import files
from effcv_jax import workdir as workdir_lib
from effcv_jax.gan import evaluate
from effcv_jax.gan import run as gan_run
from experiments import cli

_CLASSIFIER = flags.DEFINE_string("classifier_workdir", None,
                                  "workdir of a trained classifier of the GAN's data")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 10000, "generated images (class-balanced)")
_TRAIN_STEPS = flags.DEFINE_integer(
    "train_steps", 0, "steps of the generated-only classifier; 0: its config's num_steps")
_SEED = flags.DEFINE_integer("seed", 0, "the samples' noise seed")
_REPORT = flags.DEFINE_string(
    "report", None, "report prefix: writes PREFIX.json and PREFIX_samples.png")


def quality_report(results: dict[str, Any], report_prefix: str, command: str) -> dict[str, Any]:
  """The report of measure_quality's `results`: its measures under 'quality', what the GAN and
  the classifier were (dataset, labels, network, steps, loss), the command, and the name of
  the sample grid written beside the JSON (report_prefix + '_samples.png')."""
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
                     "augment": classifier_config.get("augment", ""),
                     "accuracy": results["classifier_accuracy"]},
      "quality": results,
      "samples_png": os.path.basename(report_prefix) + "_samples.png",
  }


def write_report(results: dict[str, Any], report_prefix: str, command: str) -> dict[str, Any]:
  """Writes quality_report's JSON to report_prefix.json and copies the GAN run's sample grid
  to report_prefix_samples.png; returns the report."""
  report = quality_report(results, report_prefix, command)
  directory = os.path.dirname(report_prefix) or "."
  os.makedirs(directory, exist_ok=True)
  shutil.copyfile(os.path.join(results["gan_workdir"], gan_run.SAMPLES_PNG),
                  os.path.join(directory, report["samples_png"]))
  files.write_json_atomic(report_prefix + ".json", report)
  return report


def main(argv):
  del argv
  results = evaluate.measure_quality(
      cli.workdir(), _CLASSIFIER.value, cli.data_dir(), num_samples=_NUM_SAMPLES.value,
      train_steps=_TRAIN_STEPS.value, seed=_SEED.value)
  if _REPORT.value and jax.process_index() == 0:
    write_report(results, _REPORT.value, cli.reproducing_command("experiments.gan_quality"))
  print(json.dumps(results))


if __name__ == "__main__":
  flags.mark_flag_as_required("classifier_workdir")
  cli.run(main, shared_flags=("workdir", "data_dir"), required=("workdir",))
