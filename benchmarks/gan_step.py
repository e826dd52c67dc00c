"""The GAN step (effcv_jax/gan/step.py) per convolution backend: images per second.

  python -m benchmarks.gan_step   # writes benchmarks/results/gan_step.json

One step is a discriminator update (real and generated batches; with the 'wgan_gp' loss also
the gradient penalty, a second-order derivative through the discriminator's convolutions)
and a generator update. The networks are configs/gan_fashion_mnist_1000.py's (28x28 grey,
batch 64) on random images. Backends (models/conv.py): 'onednn' runs every convolution,
the generator's transposed ones and every derivative order included, as oneDNN calls;
'lax' is XLA's own convolutions and gradients (what the GAN ran before it took a
conv_backend). Each (backend, loss) is timed over --steps steps, the variants alternating
in every round; medians of wall-clock and process CPU seconds per step.
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("backends", ["onednn", "lax"], "Convolution backends (models/conv.py).")
flags.DEFINE_list("losses", ["hinge", "wgan_gp"], "GAN losses.")
flags.DEFINE_integer("rounds", 3, "Timed rounds (medians reported).")
flags.DEFINE_integer("steps", 5, "Steps per variant and round.")
flags.DEFINE_string("output", "benchmarks/results/gan_step.json", "Results file ('': none).")


def _variant(backend: str, loss: str):
  """(jitted step, state, batch) of the GAN config on `backend` with `loss`, compiled."""
  from configs import gan_fashion_mnist_1000  # pylint: disable=import-outside-toplevel
  from effcv_jax.gan import step as gan_step  # pylint: disable=import-outside-toplevel
  config = gan_fashion_mnist_1000.get_config()
  config.conv_backend, config.gan.loss = backend, loss
  shape = (28, 28, 1)
  task = gan_step.build_gan_task(config, shape)
  state = gan_step.init_gan_state(task, shape, seed=0)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (config.batch_size,) + shape), jnp.uint8),
           "label": jnp.asarray(np.arange(config.batch_size) % 10, jnp.int32)}
  step = jax.jit(functools.partial(gan_step.gan_step, task))
  state, _ = step(state, batch)
  jax.block_until_ready(state)
  return step, state, batch


def _time(step, state, batch, steps: int):
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    state, _ = step(state, batch)
  jax.block_until_ready(state)
  return state, (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def main(argv):
  del argv
  from benchmarks import machine  # pylint: disable=import-outside-toplevel
  load_start = os.getloadavg()
  variants = {f"{b}_{l}": _variant(b, l) for b in FLAGS.backends for l in FLAGS.losses}
  states = {name: v[1] for name, v in variants.items()}
  wall = {name: [] for name in variants}
  cpu = {name: [] for name in variants}
  for _ in range(FLAGS.rounds):
    for name, (step, _, batch) in variants.items():
      states[name], w, c = _time(step, states[name], batch, FLAGS.steps)
      wall[name].append(round(w * 1000, 1))
      cpu[name].append(round(c * 1000, 1))
  batch_size = next(iter(variants.values()))[2]["image"].shape[0]
  median_ms = {name: statistics.median(times) for name, times in wall.items()}
  result = {
      "command": machine.command_line("benchmarks.gan_step"),
      "machine": machine.machine_info(),
      "load_average_start": list(load_start),
      "definition": ("one GAN step (discriminator then generator update) of "
                     "configs/gan_fashion_mnist_1000.py's networks, 28x28x1, batch "
                     f"{batch_size}; medians over rounds, variants alternating"),
      "settings": {"rounds": FLAGS.rounds, "steps": FLAGS.steps, "batch": batch_size},
      "ms_per_step_per_round": wall,
      "cpu_ms_per_step_per_round": cpu,
      "median_ms_per_step": median_ms,
      "median_images_per_s": {name: round(batch_size * 1000 / ms, 1)
                              for name, ms in median_ms.items()},
      "speedup_over_lax": {f"{b}_{l}": round(median_ms[f"lax_{l}"] / median_ms[f"{b}_{l}"], 2)
                           for b in FLAGS.backends for l in FLAGS.losses
                           if b != "lax" and f"lax_{l}" in median_ms},
      "load_average_end": list(os.getloadavg()),
  }
  machine.print_and_write(result, FLAGS.output)


if __name__ == "__main__":
  sys.exit(app.run(main))
