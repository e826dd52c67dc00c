"""Train step, sharding, NaN guard, checkpoints and resume, on tiny configs."""

import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_tiny
from effcv_jax import data as data_lib
from effcv_jax import preemption, sharding, train
from effcv_jax import task as task_lib
from effcv_jax import workdir as workdir_lib
from effcv_jax.checkpoint import Checkpointer
from effcv_jax.metrics import MetricWriter
from tests.fault_driver import run_until_killed


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
  task, state = task_lib.init_task_and_state(config, (8, 8, 1), mesh)
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
  task, state = task_lib.init_task_and_state(config, (8, 8, 1), mesh)
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
  task, state = task_lib.init_task_and_state(config, (8, 8, 1), mesh)
  before = jax.device_get(state)
  after, metrics = train.jit_train_step(task, mesh)(state, sharding.to_global(_batch(), mesh))
  assert float(metrics["nonfinite"]) == 1.0
  assert int(after.step) == 1
  for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(jax.device_get(after.params))):
    np.testing.assert_array_equal(a, b)


def test_checkpoint_round_trip_is_exact(tmp_path):
  config = _tiny_config()
  mesh = sharding.make_mesh()
  _, state = task_lib.init_task_and_state(config, (8, 8, 1), mesh)
  state = state.replace(step=jnp.asarray(7, jnp.int32))
  source = data_lib.load_source("pkg:digits", "train")
  iterator = data_lib.train_iterator(source, 32, seed=0)
  for _ in range(3):
    next(iterator)
  checkpointer = Checkpointer(str(tmp_path))
  checkpointer.save(7, state, iterator)
  checkpointer.wait()
  expected_next = next(iterator)["label"]
  _, fresh = task_lib.init_task_and_state(_tiny_config(seed=1), (8, 8, 1), mesh)
  fresh_iterator = data_lib.train_iterator(source, 32, seed=0)
  restored = checkpointer.restore(checkpointer.latest_step(), fresh, fresh_iterator)
  checkpointer.close()
  assert int(restored.step) == 7
  for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(jax.device_get(restored))):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(next(fresh_iterator)["label"], expected_next)


def _final_params(workdir):
  config = workdir_lib.load_config(workdir)
  _, template = task_lib.init_task_and_state(config, (8, 8, 1), sharding.make_mesh())
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


def _checkpoint_dirs(workdir):
  """(finished steps, names of unfinished saves) in workdir/checkpoints."""
  names = os.listdir(os.path.join(workdir, "checkpoints"))
  return sorted(int(n) for n in names if n.isdigit()), sorted(n for n in names if "tmp" in n)


def test_sigkill_at_three_points_then_resume_is_bit_exact(uninterrupted_run, tmp_path):
  """Killed mid-step, while a checkpoint is committed and while the last one is, then
  resumed each time: the same parameters, accuracy and metrics as never killed."""
  reference_dir, reference_results = uninterrupted_run
  workdir = str(tmp_path / "killed")
  train_command = ("experiments.train", "--config=configs/digits_tiny.py", f"--workdir={workdir}")
  # 1. Mid-run, 6 steps after the (asynchronous) save of step 20 began.
  run_until_killed("train_step:26", *train_command)
  steps, _ = _checkpoint_dirs(workdir)
  resumed_from = steps[-1]
  assert resumed_from in (10, 20)
  # 2. While the next checkpoint is committed: all its files are in a temporary
  # directory, not yet renamed. The last complete checkpoint stays the latest.
  log = run_until_killed("checkpoint_commit:1", *train_command)
  assert f"Resumed from {os.path.join(workdir, 'checkpoints')} at step {resumed_from}" in log
  steps, unfinished = _checkpoint_dirs(workdir)
  assert steps[-1] == resumed_from
  assert [n.split(".")[0] for n in unfinished] == [str(resumed_from + 10)]
  assert {"state", "data"} <= set(os.listdir(os.path.join(workdir, "checkpoints", unfinished[0])))
  # 3. While the final checkpoint (step 60) is committed.
  run_until_killed(f"checkpoint_commit:{(60 - resumed_from) // 10}", *train_command)
  steps, unfinished = _checkpoint_dirs(workdir)
  assert steps[-1] == 50 and [n.split(".")[0] for n in unfinished] == ["60"]
  assert not os.path.exists(os.path.join(workdir, "results.json"))

  results = train.train_and_evaluate(_tiny_config(), workdir)
  assert results["step"] == 60
  assert results["accuracy"] == reference_results["accuracy"]
  for a, b in zip(jax.tree.leaves(_final_params(reference_dir)), jax.tree.leaves(_final_params(workdir))):
    np.testing.assert_array_equal(a, b)
  assert _checkpoint_dirs(workdir) == ([40, 50, 60], [])   # unfinished saves removed
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in records if r["split"] == "train"] == list(range(5, 61, 5))
  assert [r["step"] for r in records if r["split"] == "eval"] == [30, 60]


def test_sigterm_checkpoints_the_step_in_progress_then_resume_is_bit_exact(uninterrupted_run,
                                                                           tmp_path):
  """A SIGTERM (a preemption notice) arriving as step 26 of 60 starts: the run checkpoints
  step 26, off the every-10 schedule, and exits with status 75 and one STOPPED line; rerun,
  it ends with the parameters, accuracy and evaluations of a run never stopped."""
  reference_dir, reference_results = uninterrupted_run
  workdir = str(tmp_path / "stopped")
  # The 27th call of the step function is step 26: preflight calls it once.
  log = run_until_killed("train_step:27:SIGTERM", "experiments.train",
                         "--config=configs/digits_tiny.py", f"--workdir={workdir}",
                         returncode=preemption.EXIT_CODE)
  checkpoints = os.path.join(workdir, "checkpoints")
  assert (f"STOPPED: stopped on SIGTERM after step 26, saved as checkpoint 26 in {checkpoints}; "
          "rerun the same command to resume from it") in log
  assert "Traceback" not in log
  assert _checkpoint_dirs(workdir) == ([10, 20, 26], [])
  assert not os.path.exists(os.path.join(workdir, "results.json"))

  results = train.train_and_evaluate(_tiny_config(), workdir)
  assert results["step"] == 60 and results["steps_this_session"] == 34
  assert results["accuracy"] == reference_results["accuracy"]
  for a, b in zip(jax.tree.leaves(_final_params(reference_dir)), jax.tree.leaves(_final_params(workdir))):
    np.testing.assert_array_equal(a, b)
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  # Step 26's line averages steps 26 alone; step 30's, steps 27-30.
  assert [r["step"] for r in records if r["split"] == "train"] == [5, 10, 15, 20, 25, 26] + list(
      range(30, 61, 5))
  assert [r["step"] for r in records if r["split"] == "eval"] == [30, 60]


def test_nan_loss_stops_run_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(_tiny_config(num_steps=20), workdir)
  good = _final_params(workdir)
  nan_config = _tiny_config(num_steps=40, input_std=(0.0,))
  workdir_lib.write_config(nan_config, workdir)    # a resume must match config.json
  with pytest.raises(task_lib.NonFiniteLossError, match="last good checkpoint is step 20"):
    train.train_and_evaluate(nan_config, workdir)
  assert Checkpointer(workdir).latest_step() == 20
  for a, b in zip(jax.tree.leaves(good), jax.tree.leaves(_final_params(workdir))):
    np.testing.assert_array_equal(a, b)


def test_resume_refuses_a_different_model(tmp_path):
  workdir = str(tmp_path)
  workdir_lib.save_or_check_config(_tiny_config(), workdir)
  with pytest.raises(ValueError, match="different"):
    workdir_lib.save_or_check_config(_tiny_config(model="resnet20"), workdir)


def test_metric_log_drops_lines_after_the_resumed_step_and_a_torn_line(tmp_path):
  writer = MetricWriter(str(tmp_path))
  for step in (5, 10, 15):
    writer.write(step, "train", {"loss": 1.0 / step})
  with open(writer.path, "a") as f:
    f.write('{"step": 20, "split": "tr')    # a process killed mid-write
  writer.truncate_after(10)
  writer.close()
  records = [json.loads(line) for line in open(writer.path)]
  assert [(r["step"], r["loss"]) for r in records] == [(5, 0.2), (10, 0.1)]


def test_workdir_of_an_older_version_without_new_config_keys_resumes_bit_exact(
    uninterrupted_run, tmp_path):
  """A config.json written before conv_backend and watchdog existed: the run resumes with
  their defaults ('auto', the Watchdog's limits) and ends bit-identical to the reference."""
  reference_dir, _ = uninterrupted_run
  workdir = str(tmp_path)
  old_config = _tiny_config(num_steps=60, keep_checkpoints=10)
  del old_config["conv_backend"]
  del old_config["watchdog"]
  train.train_and_evaluate(old_config, workdir)
  for step in ("30", "40", "50", "60"):   # as if the run had died right after step 20
    subprocess.run(["rm", "-rf", os.path.join(workdir, "checkpoints", step)], check=True)
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert "conv_backend" not in saved and "watchdog" not in saved
  loaded = workdir_lib.load_config(workdir)
  assert task_lib.build_model(loaded).conv_backend == "auto"
  assert workdir_lib.watchdog_limits(loaded) == dict(
      stall_factor=20.0, min_stall_seconds=300.0, startup_seconds=1800.0)
  results = train.train_and_evaluate(_tiny_config(num_steps=60, keep_checkpoints=10), workdir)
  assert results["step"] == 60
  for a, b in zip(jax.tree.leaves(_final_params(reference_dir)),
                  jax.tree.leaves(_final_params(workdir))):
    np.testing.assert_array_equal(a, b)
  assert workdir_lib.describe_checkpoints(workdir).startswith("last intact checkpoint: step 60")


def test_conv_backend_is_a_config_field_that_effcv_conv_overrides():
  from configs import noisy_student_quickstart
  from experiments import cli
  config = _tiny_config(conv_backend="lax")
  assert task_lib.build_model(config).conv_backend == "lax"
  assert workdir_lib.watchdog_limits(_tiny_config(watchdog=dict(min_stall_seconds=3)))[
      "min_stall_seconds"] == 3.0
  assert cli.override_conv_backend(config, environ={}).conv_backend == "lax"
  assert cli.override_conv_backend(config, environ={"EFFCV_CONV": "xla"}).conv_backend == "xla"
  suite = noisy_student_quickstart.get_config()
  cli.override_conv_backend(suite, environ={"EFFCV_CONV": "xla"})
  assert suite.teacher.conv_backend == "xla" and suite.student.conv_backend == "xla"
  with pytest.raises(ValueError, match="EFFCV_CONV"):
    cli.override_conv_backend(config, environ={"EFFCV_CONV": "cudnn"})


def test_describe_checkpoints_reads_only_complete_checkpoints(tmp_path):
  workdir = str(tmp_path)
  assert workdir_lib.describe_checkpoints(workdir).startswith("no checkpoint saved yet")
  os.makedirs(os.path.join(workdir, "checkpoints", "10"))
  os.makedirs(os.path.join(workdir, "checkpoints", "20.orbax-checkpoint-tmp-123"))
  assert workdir_lib.complete_checkpoint_steps(workdir) == [10]
  assert workdir_lib.describe_checkpoints(workdir).startswith("last intact checkpoint: step 10")
