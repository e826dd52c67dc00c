"""A PBA search config small enough for tests: 8 members, 6 steps of 8 packaged digits each,
ready every 2 steps (3 rounds), searching 3 ops (a smaller program to
compile). Used in-process by tests/test_pba.py and as a --config file
by its one-device subprocess."""

from configs import pba_fashion_mnist_1000
from effcv_jax import config_utils


def get_config():
  return config_utils.with_overrides(pba_fashion_mnist_1000.get_config(), {
      "dataset": "pkg:digits", "num_labelled": 80, "pba.num_eval": 40, "pba.population": 8,
      "pba.ready_every": 2, "pba.ops": ("Rotate", "Invert", "Equalize"), "pba.init": "uniform", "num_steps": 6, "batch_size": 8,
      "eval_batch_size": 40, "model_kwargs.widths": (4, 8), "model_kwargs.hidden": 16,
      "augment": "flip_lr", "optimizer.warmup_steps": 0, "input_mean": (0.5,),
      "input_std": (0.5,)})
