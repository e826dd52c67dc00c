"""Train step, sharding, NaN guard, checkpoints and resume, on tiny configs."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_tiny
from effcv_jax import data as data_lib
from effcv_jax import sharding, train
from effcv_jax.checkpoint import Checkpointer
from tests.conftest import REPO_ROOT


def _tiny_config(**overrides):
  config = digits_tiny.get_config()
  for key, value in overrides.items():
    config[key] = value
  return config


def _batch(seed=0, n=32):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8),
          "label": rng.integers(0, 10, n).astype(np.int32)}


def _run_steps(config, mesh, batches):
  task, state = train.init_task_and_state(config, (8, 8, 1), mesh)
  step = train.jit_train_step(task, mesh)
  for batch in batches:
    state, metrics = step(state, sharding.to_global(batch, mesh))
  return jax.device_get(state), jax.device_get(metrics)


def test_sharded_step_equals_single_device_step():
  assert jax.device_count() == 8
  config = _tiny_config(augment="flip_lr|random_crop(padding=1)")
  batches = [_batch(i) for i in range(3)]
  single, single_metrics = _run_steps(config, sharding.make_mesh(jax.devices()[:1]), batches)
  sharded, sharded_metrics = _run_steps(config, sharding.make_mesh(), batches)
  assert int(sharded.step) == 3
  for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(single.batch_stats), jax.tree.leaves(sharded.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(single_metrics["loss"], sharded_metrics["loss"], rtol=1e-5)


def test_training_reduces_loss_and_weight_decay_skips_biases():
  config = _tiny_config(augment="")
  mesh = sharding.make_mesh(jax.devices()[:1])
  task, state = train.init_task_and_state(config, (8, 8, 1), mesh)
  step = train.jit_train_step(task, mesh)
  batch = sharding.to_global(_batch(0), mesh)
  losses = []
  for _ in range(20):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0]
  # One SGD step from zero gradients: only kernels (ndim > 1) decay.
  from effcv_jax import optim
  mask = optim.weight_decay_mask(state.params)
  assert mask["head"]["kernel"] and not mask["head"]["bias"] and not mask["bn0_0"]["scale"]


def test_nonfinite_step_leaves_state_unchanged():
  config = _tiny_config(input_std=(0.0,))    # inputs become inf -> loss NaN
  mesh = sharding.make_mesh(jax.devices()[:1])
  task, state = train.init_task_and_state(config, (8, 8, 1), mesh)
  before = jax.device_get(state)
  after, metrics = train.jit_train_step(task, mesh)(state, sharding.to_global(_batch(), mesh))
  assert float(metrics["nonfinite"]) == 1.0
  assert int(after.step) == 1
  for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(jax.device_get(after.params))):
    np.testing.assert_array_equal(a, b)


def test_checkpoint_round_trip_is_exact(tmp_path):
  config = _tiny_config()
  mesh = sharding.make_mesh()
  _, state = train.init_task_and_state(config, (8, 8, 1), mesh)
  state = state.replace(step=jnp.asarray(7, jnp.int32))
  source = data_lib.load_source("pkg:digits", "train")
  iterator = data_lib.train_iterator(source, 32, seed=0)
  for _ in range(3):
    next(iterator)
  checkpointer = Checkpointer(str(tmp_path))
  checkpointer.save(7, state, iterator)
  checkpointer.wait()
  expected_next = next(iterator)["label"]
  _, fresh = train.init_task_and_state(_tiny_config(seed=1), (8, 8, 1), mesh)
  fresh_iterator = data_lib.train_iterator(source, 32, seed=0)
  restored = checkpointer.restore(checkpointer.latest_step(), fresh, fresh_iterator)
  checkpointer.close()
  assert int(restored.step) == 7
  for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(jax.device_get(restored))):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(next(fresh_iterator)["label"], expected_next)


def _final_params(workdir):
  config = train.load_config(workdir)
  _, template = train.init_task_and_state(config, (8, 8, 1), sharding.make_mesh())
  checkpointer = Checkpointer(workdir)
  state = checkpointer.restore(checkpointer.latest_step(), template)
  checkpointer.close()
  return jax.device_get(state.params)


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  results = train.train_and_evaluate(_tiny_config(), workdir)
  return workdir, results


def test_run_writes_metrics_results_and_learns(uninterrupted_run):
  workdir, results = uninterrupted_run
  assert results["num_examples"] == 300 and results["step"] == 60
  assert results["accuracy"] > 0.5
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train_steps = [r["step"] for r in records if r["split"] == "train"]
  assert train_steps == list(range(5, 61, 5))
  assert all(r["images_per_s"] > 0 for r in records if r["split"] == "train")
  assert [r["step"] for r in records if r["split"] == "eval"] == [30, 60]
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["40", "50", "60"]


def test_resume_from_older_checkpoint_is_bit_exact(uninterrupted_run, tmp_path):
  reference_dir, _ = uninterrupted_run
  workdir = str(tmp_path)
  train.train_and_evaluate(_tiny_config(num_steps=60, keep_checkpoints=10), workdir)
  for step in ("30", "40", "50", "60"):   # as if the run had died right after step 20
    subprocess.run(["rm", "-rf", os.path.join(workdir, "checkpoints", step)], check=True)
  results = train.train_and_evaluate(_tiny_config(num_steps=60, keep_checkpoints=10), workdir)
  assert results["step"] == 60
  reference, resumed = _final_params(reference_dir), _final_params(workdir)
  for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in records if r["split"] == "train"] == list(range(5, 61, 5))


def test_sigkill_mid_run_then_rerun_resumes_and_matches(uninterrupted_run, tmp_path):
  reference_dir, reference_results = uninterrupted_run
  workdir = str(tmp_path / "killed")
  command = [sys.executable, "-m", "experiments.train", "--config=configs/digits_tiny.py",
             f"--workdir={workdir}"]
  process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  checkpoints = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 120
  while time.time() < deadline and process.poll() is None:
    if os.path.isdir(checkpoints) and any(d.isdigit() and int(d) >= 20 for d in os.listdir(checkpoints)):
      break
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  killed_at = max(int(d) for d in os.listdir(checkpoints) if d.isdigit())
  assert 20 <= killed_at < 60, "the run finished before it could be killed"
  rerun = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
  assert "Resumed from" in rerun.stderr
  results = json.loads(rerun.stdout.strip().splitlines()[-1])
  assert results["step"] == 60
  assert results["accuracy"] == pytest.approx(reference_results["accuracy"], abs=1e-6)
  for a, b in zip(jax.tree.leaves(_final_params(reference_dir)), jax.tree.leaves(_final_params(workdir))):
    np.testing.assert_array_equal(a, b)


def test_nan_loss_stops_run_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(_tiny_config(num_steps=20), workdir)
  good = _final_params(workdir)
  with pytest.raises(train.NonFiniteLossError, match="last good checkpoint is step 20"):
    train.train_and_evaluate(_tiny_config(num_steps=40, input_std=(0.0,)), workdir)
  assert Checkpointer(workdir).latest_step() == 20
  for a, b in zip(jax.tree.leaves(good), jax.tree.leaves(_final_params(workdir))):
    np.testing.assert_array_equal(a, b)


def test_resume_refuses_a_different_model(tmp_path):
  workdir = str(tmp_path)
  train.save_or_check_config(_tiny_config(), workdir)
  with pytest.raises(ValueError, match="different"):
    train.save_or_check_config(_tiny_config(model="resnet20"), workdir)
