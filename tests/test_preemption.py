"""Stopping on SIGTERM: the loop's checkpoint of the step in progress, the signal listener.

The whole path (a SIGTERM to a training process, status 75, bit-exact resume) is in
tests/test_train.py; two processes stopping together in tests/test_multihost.py.
"""

import os
import signal
import threading
import types

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from effcv_jax import loop, preemption
from effcv_jax.metrics import MetricWriter, Progress


def _run_steps(tmp_path, stop_from_step):
  """Ten steps (written every 2, checkpoints every 5) asked to stop from `stop_from_step`;
  (saved steps, written steps, evaluated steps, the Preempted raised or None)."""
  config = ml_collections.ConfigDict(
      dict(num_steps=10, log_every=2, checkpoint_every=5, eval_every=100))
  saved, evaluated = [], []
  writer = MetricWriter(str(tmp_path), enabled=False)
  written = []
  writer.write = lambda step, split, metrics: written.append(step)
  checkpointer = types.SimpleNamespace(directory="/runs/x/checkpoints", latest_step=lambda: None)
  try:
    loop.run_steps(config, 0, lambda: {"loss": jnp.float32(1.0), "nonfinite": jnp.int32(0)},
                   saved.append, lambda step: evaluated.append(step) or {},
                   progress=Progress(10, 8), writer=writer, checkpointer=checkpointer,
                   nonfinite_advice="", stop_requested=lambda step: step >= stop_from_step)
  except preemption.Preempted as stopped:
    return saved, written, evaluated, stopped
  return saved, written, evaluated, None


def test_a_stop_between_checkpoints_writes_and_saves_that_step(tmp_path):
  saved, written, evaluated, stopped = _run_steps(tmp_path, 3)
  assert saved == [3] and written == [2, 3] and evaluated == []
  assert stopped.step == 3 and stopped.checkpoint_dir == "/runs/x/checkpoints"
  assert "after step 3, saved as checkpoint 3 in /runs/x/checkpoints" in str(stopped)


def test_a_stop_at_a_regular_checkpoint_saves_it_once(tmp_path):
  saved, written, _, stopped = _run_steps(tmp_path, 5)
  assert saved == [5] and written == [2, 4, 5] and stopped.step == 5


def test_a_stop_at_the_last_step_finishes_the_run(tmp_path):
  saved, written, evaluated, stopped = _run_steps(tmp_path, 10)
  assert stopped is None and saved == [5, 10] and evaluated == [10]


def test_the_listener_hears_sigterm_only_while_entered():
  # Off the main thread no handler is installed and the SIGTERM below would end pytest.
  assert threading.current_thread() is threading.main_thread()
  before = signal.getsignal(signal.SIGTERM)
  with preemption.StopRequest() as stop:
    assert signal.getsignal(signal.SIGTERM) is not before
    assert not stop.requested(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested(2)
    os.kill(os.getpid(), signal.SIGTERM)     # a second notice changes nothing
    assert stop.requested(3)
  assert signal.getsignal(signal.SIGTERM) is before


def test_a_listener_off_the_main_thread_never_stops():
  answers = []

  def listen():
    with preemption.StopRequest() as stop:
      answers.append(stop.requested(1))
  thread = threading.Thread(target=listen)
  thread.start()
  thread.join()
  assert answers == [False]


@pytest.mark.parametrize("enabled", [True, False])
def test_several_processes_ask_jax_only_with_its_preemption_service(monkeypatch, enabled):
  asked = []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(preemption.multihost_utils, "reached_preemption_sync_point",
                      lambda step: asked.append(step) or step == 7)
  before = signal.getsignal(signal.SIGTERM)
  default = jax.config.jax_enable_preemption_service
  jax.config.update("jax_enable_preemption_service", enabled)
  try:
    with preemption.StopRequest() as stop:
      assert signal.getsignal(signal.SIGTERM) is before    # JAX's notifier keeps SIGTERM
      assert [stop.requested(6), stop.requested(7)] == [False, enabled]
  finally:
    jax.config.update("jax_enable_preemption_service", default)
  assert asked == ([6, 7] if enabled else [])
