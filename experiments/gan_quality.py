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

import jax
from absl import flags

from effcv_jax.gan import evaluate
from experiments import cli

_CLASSIFIER = flags.DEFINE_string("classifier_workdir", None,
                                  "workdir of a trained classifier of the GAN's data")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 10000, "generated images (class-balanced)")
_TRAIN_STEPS = flags.DEFINE_integer(
    "train_steps", 0, "steps of the generated-only classifier; 0: its config's num_steps")
_SEED = flags.DEFINE_integer("seed", 0, "the samples' noise seed")
_REPORT = flags.DEFINE_string(
    "report", None, "report prefix: writes PREFIX.json and PREFIX_samples.png")


def main(argv):
  del argv
  results = evaluate.measure_quality(
      cli.workdir(), _CLASSIFIER.value, cli.data_dir(), num_samples=_NUM_SAMPLES.value,
      train_steps=_TRAIN_STEPS.value, seed=_SEED.value)
  if _REPORT.value and jax.process_index() == 0:
    evaluate.write_quality_report(results, _REPORT.value,
                                  cli.reproducing_command("experiments.gan_quality"))
  print(json.dumps(results))


if __name__ == "__main__":
  flags.mark_flag_as_required("classifier_workdir")
  cli.run(main, shared_flags=("workdir", "data_dir"), required=("workdir",))
