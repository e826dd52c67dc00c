"""Stress for the oneDNN convolutions: many concurrent executions, each result checked.

    python tests/onednn_stress_driver.py --mode=convs --threads=2 --seconds=60
    python tests/onednn_stress_driver.py --mode=resnet --seconds=60
    ONEDNN_MAX_CPU_ISA=AVX2 python tests/onednn_stress_driver.py ...   # AVX2 kernels

Modes:
  convs   one jitted program with the forward pass, input gradient and kernel gradient of
          every 3x3 convolution shape of the CIFAR ResNets (16/32/64 channels, strides 1 and
          2, the 3-channel stem), called in a loop from --threads Python threads at once (and
          XLA runs the independent custom calls of each call concurrently on its own pool).
  resnet  jitted ResNet-20 train steps (forward, backward, SGD update) in a loop from
          --threads Python threads.
Every result is compared with the one computed before the loop by a single thread: a
difference is reported as corruption. No progress for --hang_seconds is reported as a hang.
The last line is `STRESS OK ...`, `STRESS CORRUPT ...` or `STRESS HANG ...` (exit 0, 3, 4);
a crash ends the process with a signal. The driver runs against the library of the checkout
it lies in; EFFCV_CONV=onednn (set by default) picks oneDNN in older checkouts, whose models
read the backend from that variable instead of their `conv_backend` field.
"""

import argparse
import os
import sys
import threading
import time

os.environ.setdefault("EFFCV_CONV", "onednn")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from effcv_jax import models  # noqa: E402
from effcv_jax.models import onednn_conv  # noqa: E402

# (batch, height, width, in channels, out channels, stride) of ResNet-20's 3x3 convolutions.
CONV_SHAPES = ((32, 32, 32, 3, 16, 1), (32, 32, 32, 16, 16, 1), (32, 32, 32, 16, 32, 2),
               (32, 16, 16, 32, 32, 1), (32, 16, 16, 32, 64, 2), (32, 8, 8, 64, 64, 1))


def conv_program():
  """(jitted f(), its inputs): f returns every shape's output and both gradients."""
  key = jax.random.PRNGKey(0)
  xs, ws = [], []
  for i, (b, h, w, ci, co, _) in enumerate(CONV_SHAPES):
    kx, kw = jax.random.split(jax.random.fold_in(key, i))
    xs.append(jax.random.normal(kx, (b, h, w, ci)))
    ws.append(jax.random.normal(kw, (3, 3, ci, co)) * 0.1)

  def loss(ws, xs):
    total, outputs = 0.0, []
    for (_, _, _, _, _, s), x, w in zip(CONV_SHAPES, xs, ws):
      y = onednn_conv.conv2d(x, w, (s, s), ((1, 1), (1, 1)))
      outputs.append(y)
      total = total + jnp.sum(jnp.tanh(y))
    return total, outputs

  grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
  return (lambda: grad(ws, xs)), None


def resnet_program():
  """(jitted step(params, stats) -> (params, stats, loss), initial (params, stats))."""
  try:
    model = models.build("resnet20", 10, conv_backend="onednn")
  except TypeError:   # an older checkout: the backend comes from $EFFCV_CONV
    model = models.build("resnet20", 10)
  images = jax.random.normal(jax.random.PRNGKey(1), (64, 32, 32, 3))
  labels = jax.random.randint(jax.random.PRNGKey(2), (64,), 0, 10)
  variables = model.init(jax.random.PRNGKey(0), images[:1], train=False)

  def loss_fn(params, stats):
    logits, new = model.apply({"params": params, "batch_stats": stats}, images, train=True,
                              mutable=["batch_stats"])
    onehot = jax.nn.one_hot(labels, 10)
    return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), -1)), new["batch_stats"]

  @jax.jit
  def step(params, stats):
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
    params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
    return params, stats, loss

  state = (variables["params"], variables["batch_stats"])
  return (lambda: step(*state)), state


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--mode", choices=("convs", "resnet"), default="convs")
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--seconds", type=float, default=60.0)
  parser.add_argument("--hang_seconds", type=float, default=60.0)
  args = parser.parse_args()

  reason = onednn_conv.unavailable_reason()
  if reason is not None:
    print(f"STRESS SKIP oneDNN unavailable: {reason}", flush=True)
    return 5
  run, _ = conv_program() if args.mode == "convs" else resnet_program()
  reference = [np.asarray(a) for a in jax.tree.leaves(run())]
  counts = [0] * args.threads
  errors: list[str] = []
  last_progress = [time.monotonic()]
  stop = threading.Event()

  def worker(index: int) -> None:
    while not stop.is_set():
      result = jax.tree.leaves(run())
      for got, want in zip(result, reference):
        got = np.asarray(got)
        if not np.array_equal(got, want):
          worst = float(np.max(np.abs(got - want)))
          errors.append(f"thread {index} call {counts[index]}: max |difference| {worst:.3g}")
          stop.set()
          return
      counts[index] += 1
      last_progress[0] = time.monotonic()

  threads = [threading.Thread(target=worker, args=(i,), daemon=True)
             for i in range(args.threads)]
  start = time.monotonic()
  for t in threads:
    t.start()
  isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "default")
  while time.monotonic() - start < args.seconds and not stop.is_set():
    time.sleep(0.5)
    if time.monotonic() - last_progress[0] > args.hang_seconds:
      print(f"STRESS HANG mode={args.mode} isa={isa} threads={args.threads} after "
            f"{sum(counts)} calls, {time.monotonic() - start:.0f} s", flush=True)
      os._exit(4)
  stop.set()
  for t in threads:
    t.join(timeout=args.hang_seconds)
  elapsed = time.monotonic() - start
  summary = (f"mode={args.mode} isa={isa} threads={args.threads} calls={sum(counts)} "
             f"seconds={elapsed:.0f}")
  if errors:
    print(f"STRESS CORRUPT {summary}: {errors[0]}", flush=True)
    os._exit(3)
  print(f"STRESS OK {summary}", flush=True)
  os._exit(0)


if __name__ == "__main__":
  main()
