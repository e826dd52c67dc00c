"""configs/ssl_fashion_mnist_1000.py: each algorithm's variant has the Noisy Student report's
data, labels, test split and student network, passes preflight, and trains two steps on a tiny
stand-in for fashion_mnist.npz (batches sharded over the 8 fake devices of conftest.py).

FixMatch (the config's default) and SoftMatch train end to end with the config's own views; the
other algorithms' variants pass preflight here and their losses and steps are covered by
tests/test_ssl_losses.py and tests/test_ssl_step.py (a full run each would cost ~20 s of CPU
for what differs only in the loss)."""

import json

import numpy as np
import pytest

from configs import noisy_student_fashion_mnist, ssl_fashion_mnist_1000
from effcv_jax import preflight
from effcv_jax.ssl import algorithms, run

OWN_VIEWS = ("fixmatch", "softmatch")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A directory with fashion_mnist.npz: 200 random 28x28 training images (20 per class) and
  40 test images."""
  directory = tmp_path_factory.mktemp("data")
  rng = np.random.default_rng(0)
  np.savez(directory / "fashion_mnist.npz",
           x_train=rng.integers(0, 256, (200, 28, 28), dtype=np.uint8),
           y_train=np.arange(200) % 10,
           x_test=rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
           y_test=np.arange(40) % 10)
  return directory


def test_variants_share_the_noisy_student_data_and_student_network():
  student = noisy_student_fashion_mnist.get_config().student
  assert ssl_fashion_mnist_1000.VARIANTS == algorithms.ALGORITHMS
  for algorithm in ssl_fashion_mnist_1000.VARIANTS:
    config = ssl_fashion_mnist_1000.get_config(algorithm)
    preflight.check_config(config)
    for key in ("dataset", "num_labelled", "num_holdout", "split_seed", "eval_split",
                "input_mean", "input_std", "model"):
      assert config[key] == student[key], key
    assert config.num_labelled == 1000 and config.eval_split == "test"
    assert (tuple(config.model_kwargs.widths), config.model_kwargs.hidden) == ((32, 64), 256)
    assert config.ssl.algorithm == algorithm and config.ssl.mu == 7
    for key, value in algorithms.PAPER_DEFAULTS[algorithm].items():
      assert config.ssl[key] == value, (algorithm, key)
  with pytest.raises(ValueError, match="must be one of supervised, "):
    ssl_fashion_mnist_1000.get_config("mixmatch")


@pytest.mark.parametrize("algorithm", OWN_VIEWS)
def test_variant_trains_two_steps_on_tiny_data(algorithm, data_dir, tmp_path):
  config = ssl_fashion_mnist_1000.get_config(algorithm)
  config.num_labelled = 40  # 4 per class; 160 unlabelled
  config.batch_size, config.ssl.mu, config.num_steps = 8, 2, 2
  config.log_every = config.eval_every = config.checkpoint_every = 2
  results = run.train_ssl(config, str(tmp_path / "run"), str(data_dir))
  assert results["step"] == 2 and results["algorithm"] == algorithm
  assert results["eval_split"] == "test" and results["devices"] == 8
  assert np.isfinite(results["loss"]) and 0.0 <= results["accuracy"] <= 1.0
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    train = [line for line in map(json.loads, f) if line.get("split") == "train"]
  assert len(train) == 1 and np.isfinite(train[0]["loss"]) and "unsup_loss" in train[0]
