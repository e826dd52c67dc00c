"""The resumable session shared by the trainers (supervised train.py, semi-supervised
ssl/run.py, gan/run.py): when to log, checkpoint and evaluate, the watchdog's beats, the
refusal of non-finite steps, config.json, metrics.jsonl and results.json.

The trainers own their state: `take_step()` advances it by one step and returns that step's
metrics (device arrays, with 'nonfinite' 0 or 1), `current_state()` returns it (to
checkpoint) and `evaluate()` evaluates it. `run_session` is the whole session after the
state is built or restored; `run_steps` its loop. A SIGTERM during the loop (a preemption
notice, effcv_jax/preemption.py) checkpoints the step in progress and raises
preemption.Preempted.
"""

import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from effcv_jax import files, preemption, watchdog
from effcv_jax import workdir as workdir_lib
from effcv_jax.checkpoint import Checkpointer
from effcv_jax.metrics import MetricWriter, Progress
from effcv_jax.task import NonFiniteLossError

Metrics = dict[str, jax.Array]


def run_steps(config: ml_collections.ConfigDict, start_step: int,
              take_step: Callable[[], Metrics], save: Callable[[int], None],
              run_eval: Callable[[int], dict[str, Any]], *, progress: Progress,
              writer: MetricWriter, checkpointer: Checkpointer, nonfinite_advice: str,
              stop_requested: Callable[[int], bool] = lambda step: False
              ) -> dict[str, Any] | None:
  """Runs steps start_step + 1 .. config.num_steps. The metrics of the steps since the last
  write are averaged, logged and written every config.log_every steps and before each
  checkpoint; checkpoints every config.checkpoint_every steps, evaluations every
  config.eval_every steps, both also after the last step. The watchdog beats when a step's
  outputs are computed (one step stays in flight). A non-finite step raises
  NonFiniteLossError (ending with `nonfinite_advice`) before the next checkpoint, so none
  is saved after it. When stop_requested(step) is True after a step before the last, that
  step's metrics are written, it is checkpointed (if its regular checkpoint was not) and
  preemption.Preempted is raised. Returns the last evaluation, or None when no step ran."""
  pending: list[Metrics] = []

  def flush(step: int) -> None:
    if not pending:
      return
    stacked = jax.device_get(pending)
    pending.clear()
    bad = sum(m["nonfinite"] for m in stacked)
    if bad:
      good = checkpointer.latest_step()
      kept = (f"The last good checkpoint is step {good} in {checkpointer.directory}"
              if good is not None else "No checkpoint had been saved yet")
      raise NonFiniteLossError(
          f"loss or gradients not finite in {int(bad)} of the last {len(stacked)} steps "
          f"(up to step {step}); stopped without saving. {kept}. {nonfinite_advice}")
    means = {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0] if k != "nonfinite"}
    line, rate = progress.update(step, means)
    writer.write(step, "train", {**means, "images_per_s": rate})
    logging.info(line)

  eval_result = None
  for step in range(start_step + 1, config.num_steps + 1):
    metrics = take_step()
    if pending:
      watchdog.beat_when_ready(pending[-1])  # the previous step finished; this one runs
    pending.append(metrics)
    last = step == config.num_steps
    checkpoint = step % config.checkpoint_every == 0 or last
    if step % config.log_every == 0 or checkpoint:
      flush(step)
    if checkpoint:
      save(step)
    if step % config.eval_every == 0 or last:
      eval_result = run_eval(step)
    if not last and stop_requested(step):
      if not checkpoint:
        flush(step)
        save(step)
      raise preemption.Preempted(step, checkpointer.directory)
  return eval_result


def write_results(config: ml_collections.ConfigDict, workdir: str, eval_result: dict[str, Any],
                  step: int, start_step: int, train_start: float, **facts: Any
                  ) -> dict[str, Any]:
  """The run's results: the final evaluation, its step, eval split, this session's training
  seconds (since `train_start`, a time.perf_counter()) and steps (from `start_step`), device
  count and platform, plus `facts`; written to workdir/results.json by process 0 and
  returned."""
  results = {**eval_result, "step": step, "eval_split": config.eval_split, **facts,
             "train_seconds_this_session": time.perf_counter() - train_start,
             "steps_this_session": step - start_step,
             "devices": jax.device_count(), "platform": jax.devices()[0].platform}
  if jax.process_index() == 0:
    files.write_json_atomic(os.path.join(workdir, "results.json"), results)
  return results


def run_session(config: ml_collections.ConfigDict, workdir: str, checkpointer: Checkpointer,
                start_step: int, *, take_step: Callable[[], Metrics],
                current_state: Callable[[], Any], data_iterator: Any,
                evaluate: Callable[[], dict[str, Any]], images_per_step: int,
                nonfinite_advice: str, **facts: Any) -> dict[str, Any]:
  """Trains from start_step to config.num_steps (run_steps) and returns the run's results.

  Metrics go to workdir/metrics.jsonl (and TensorBoard), truncated after start_step;
  checkpoints save current_state() and the position of `data_iterator`, the first of the
  session also writing workdir/config.json (so a run stopped by a non-finite loss leaves
  the config of its last good checkpoint); a run with no checkpoint after its steps
  (num_steps = 0) saves its initial state; each evaluation is written and logged; a run
  that had already finished is evaluated once. A SIGTERM while the steps run ends the
  session at the next step with a checkpoint of it (preemption.Preempted). The
  checkpointer (opened by the caller, which restored from it) is closed, after its
  pending saves. Returns write_results(..., **facts).
  """
  os.makedirs(workdir, exist_ok=True)
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  writer.truncate_after(start_step)
  config_written = False

  def save(step: int) -> None:
    nonlocal config_written
    if not config_written:
      workdir_lib.write_config(config, workdir)
      config_written = True
    checkpointer.save(step, current_state(), data_iterator)

  def run_eval(step: int) -> dict[str, Any]:
    result = evaluate()
    writer.write(step, "eval", result)
    logging.info("eval step %d: %s", step, result)
    return result

  train_start = time.perf_counter()
  with preemption.StopRequest() as stop:   # listens until the last save is complete
    try:
      eval_result = run_steps(
          config, start_step, take_step, save, run_eval,
          progress=Progress(config.num_steps, images_per_step, start_step), writer=writer,
          checkpointer=checkpointer, nonfinite_advice=nonfinite_advice,
          stop_requested=stop.requested)
      # Every step moves the state's step by one, and the restored state is at start_step.
      step = max(start_step, config.num_steps)
      if checkpointer.latest_step() is None:  # num_steps == 0: keep the initial state
        save(step)
    finally:
      checkpointer.close()
      writer.close()
  if eval_result is None:  # the run had already finished: evaluate the restored state
    eval_result = run_eval(step)
  return write_results(config, workdir, eval_result, step, start_step, train_start, **facts)
