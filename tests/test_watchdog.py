"""The watchdog: its limit follows the loop's pace, it stays quiet while beats come, and a
stall ends the process with the message, both kinds of stacks and its exit status."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import pytest

from effcv_jax import watchdog


def test_limit_is_the_larger_of_the_floor_and_a_multiple_of_the_median_step():
  dog = watchdog.Watchdog("train", stall_factor=10, min_stall_seconds=2, startup_seconds=30)
  assert dog.limit_seconds() == 30                  # before the first step: startup
  dog.beat()
  assert dog.limit_seconds() == 2                   # no interval yet: the floor
  for _ in range(3):
    time.sleep(0.3)
    dog.beat()
  assert 3.0 <= dog.limit_seconds() <= 3.0 + 10 * 0.2   # 10 x ~0.3 s
  with pytest.raises(ValueError, match="must be positive"):
    watchdog.Watchdog("train", stall_factor=0)


def test_quiet_while_beats_come_and_reports_a_stall_once():
  stalls = []
  with watchdog.Watchdog("train", stall_factor=3, min_stall_seconds=0.4, startup_seconds=5,
                         describe_state=lambda: "last checkpoint 7",
                         on_stall=stalls.append):
    for _ in range(10):
      time.sleep(0.05)
      watchdog.beat()                               # the module-level beat reaches it
    assert not stalls
    time.sleep(1.5)
  assert len(stalls) == 1
  assert "WATCHDOG train: no step completed for" in stalls[0]
  assert "after 10 steps" in stalls[0] and "last checkpoint 7" in stalls[0]
  assert "Resume with: " in stalls[0]


def _busy_step(x):
  """A jitted step of some tens of milliseconds that JAX dispatches asynchronously."""
  return jax.lax.fori_loop(0, 30, lambda i, a: jnp.tanh(a @ a), x)


def test_beats_mark_finished_steps_not_dispatched_ones():
  """A loop that beats at dispatch runs ahead of the device and its first wait for results
  outlasts a limit its steps never did (the stall is false); beat_when_ready on the
  previous step's outputs keeps the beats at the pace the steps finish."""
  step = jax.jit(_busy_step)
  x = jnp.ones((384, 384), jnp.float32) / 384
  step(x).block_until_ready()
  started = time.perf_counter()
  step(x).block_until_ready()
  one_step = time.perf_counter() - started
  num_steps = max(10, int(2.0 / one_step))            # about 2 s of queued work
  limits = dict(stall_factor=20, min_stall_seconds=max(0.5, 5 * one_step), startup_seconds=60)

  def run(beat_at_dispatch):
    stalls, y, previous = [], x, None
    with watchdog.Watchdog("train", **limits, on_stall=stalls.append):
      for _ in range(num_steps):
        y = step(y)
        if beat_at_dispatch:
          watchdog.beat()
        elif previous is not None:
          watchdog.beat_when_ready(previous)
        previous = y
      jax.device_get(y)                             # a metrics flush
      time.sleep(0.3)                               # let the watching thread look once more
    return stalls

  assert run(beat_at_dispatch=False) == []
  assert len(run(beat_at_dispatch=True)) == 1


def test_a_state_that_cannot_be_described_still_gives_the_message():
  stalls = []
  with watchdog.Watchdog("evaluate", min_stall_seconds=0.1, startup_seconds=0.2,
                         describe_state=lambda: 1 / 0, on_stall=stalls.append):
    time.sleep(0.8)
  assert "state unknown (ZeroDivisionError" in stalls[0]


def test_a_stalled_process_exits_with_stacks_and_its_status(tmp_path):
  """A thread that blocks forever: the process ends on its own, non-zero, with the
  Python stacks of every thread (the blocked frame named) and the native thread list."""
  script = textwrap.dedent(f"""
      import sys, threading, time
      sys.path.insert(0, {os.getcwd()!r})
      from effcv_jax import watchdog
      def blocked_forever():
        threading.Event().wait()
      with watchdog.Watchdog("train", min_stall_seconds=1, startup_seconds=1,
                             describe_state=lambda: "last intact checkpoint: step 3",
                             dump_dir={str(tmp_path)!r}):
        watchdog.beat()
        blocked_forever()
      """)
  start = time.monotonic()
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == watchdog.EXIT_CODE, result.stderr[-2000:]
  assert time.monotonic() - start < 200
  first = result.stderr.splitlines()[0]
  assert first.startswith("WATCHDOG train: no step completed for")
  assert "last intact checkpoint: step 3" in first and "Resume with: python -c" in first
  assert "blocked_forever" in result.stderr         # the Python stack of the stuck thread
  assert "== Native stacks ==" in result.stderr
  if shutil.which("gdb") and "gdb unavailable" not in result.stderr:
    # gdb's stacks of every thread, the main thread (printed last) too: with the test's 8
    # devices they exceed a pipe's 64 KiB, which gdb could not write while this process
    # was stopped under it.
    native = result.stderr.split("== Native stacks ==", 1)[1]
    main_thread = native.split("\nThread 1 (", 1)
    assert len(main_thread) == 2 and "_start ()" in main_thread[1], native[-2000:]
  dumps = list(tmp_path.glob("watchdog-*.txt"))
  assert len(dumps) == 1 and "blocked_forever" in dumps[0].read_text()


def test_a_stopped_process_is_paused_not_stalled():
  """Ctrl-Z / SIGSTOP for longer than the limit, then SIGCONT: the run goes on and says how
  long it was paused (without the discount the watcher, resuming mid-step, would report a
  stall); a busy process whose watcher overran is not taken for a paused one."""
  script = textwrap.dedent(f"""
      import sys, time
      sys.path.insert(0, {os.getcwd()!r})
      from effcv_jax import watchdog
      with watchdog.Watchdog("train", stall_factor=3, min_stall_seconds=3.0,
                             startup_seconds=30, pause_seconds=1.0):
        print("started", flush=True)
        for _ in range(15):                    # steps of 0.2 s of CPU time
          started = time.process_time()
          while time.process_time() - started < 0.2:
            pass
          watchdog.beat()
      print("finished", flush=True)
      """)
  child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  assert child.stdout.readline().strip() == "started"
  time.sleep(0.5)
  child.send_signal(signal.SIGSTOP)
  time.sleep(6.0)                                   # well past the 3 s limit
  child.send_signal(signal.SIGCONT)
  out, err = child.communicate(timeout=120)
  assert child.returncode == 0 and "finished" in out, err[-2000:]
  assert "watchdog train: the process was paused for" in err and "WATCHDOG" not in err

  # pylint: disable=protected-access
  dog = watchdog.Watchdog("train", min_stall_seconds=10, pause_seconds=1.0)
  last = dog._last = time.monotonic() - 20.0        # a beat 20 s ago, a round begun 15 s ago
  dog._discount_pause(last + 5.0, overrun=5.0, cpu_seconds=4.0)   # busy: the CPU was used
  assert dog._last == last and dog.paused_seconds == 0.0
  dog._discount_pause(last + 5.0, overrun=5.0, cpu_seconds=0.2)   # stopped
  assert dog._last == last + 5.0 and dog.paused_seconds == 5.0
  dog._last = time.monotonic()                      # a beat after the pause ended: kept
  dog._discount_pause(last + 5.0, overrun=5.0, cpu_seconds=0.2)
  assert dog._last > last + 15.0
