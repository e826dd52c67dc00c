"""The training loop's watchdog end to end: a step that never finishes ends the run with
the WATCHDOG line (last intact checkpoint, resume command), the Python and native stacks
and exit status 75; the checkpoint survives and rerunning the command resumes from it.

The hang is real: experiments/train.py's test hook ($EFFCV_TEST_BLOCK_AT_STEP) makes the
jitted step call back into Python and block forever at that step, so the step never
completes, as a deadlocked convolution or collective would not.
"""

import json
import os
import pathlib
import subprocess
import sys

from effcv_jax import watchdog

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 40
CHECKPOINT_EVERY = 10
BLOCK_AT_STEP = 25


def _train(workdir: pathlib.Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
  command = [sys.executable, "-m", "experiments.train", "--config=configs/digits_tiny.py",
             f"--workdir={workdir}", f"--config.num_steps={NUM_STEPS}",
             f"--config.checkpoint_every={CHECKPOINT_EVERY}", "--config.eval_every=1000",
             # A floor well above a checkpoint save on a busy machine, far below forever.
             "--config.watchdog.min_stall_seconds=15",
             "--config.watchdog.startup_seconds=900"]
  env = {k: v for k, v in os.environ.items() if k != "EFFCV_TEST_BLOCK_AT_STEP"}
  env.update(extra_env)
  return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                        timeout=1200)


def test_hung_step_ends_the_run_with_stacks_and_the_rerun_resumes(tmp_path):
  workdir = tmp_path / "run"
  hung = _train(workdir, {"EFFCV_TEST_BLOCK_AT_STEP": str(BLOCK_AT_STEP)})
  assert hung.returncode == watchdog.EXIT_CODE, hung.stderr[-3000:]
  lines = [l for l in hung.stderr.splitlines() if l.startswith("WATCHDOG train:")]
  assert len(lines) == 1, hung.stderr[-3000:]
  line = lines[0]
  last_intact = (BLOCK_AT_STEP - 1) // CHECKPOINT_EVERY * CHECKPOINT_EVERY
  assert "no step completed for" in line
  assert f"step {last_intact}" in line, line
  assert "Resume with: python -m experiments.train" in line and str(workdir) in line

  dumps = list(workdir.glob("watchdog-*.txt"))
  assert len(dumps) == 1
  dump = dumps[0].read_text()
  assert dump.startswith(line)
  assert "== Python stacks (all threads) ==" in dump and "== Native stacks ==" in dump
  # The Python stacks show where the loop waits: inside the blocked step's callback.
  assert "train_and_evaluate" in dump

  # Nothing was written after the stall: the checkpoints end at the last intact one and no
  # results claim the run finished.
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps[-1] == last_intact, steps
  assert not (workdir / "results.json").exists()

  resumed = _train(workdir, {})
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"at step {last_intact}" in resumed.stderr      # "Resumed from ... at step N"
  results = json.loads((workdir / "results.json").read_text())
  assert results["step"] == NUM_STEPS
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_steps = [r["step"] for r in records if r["split"] == "train"]
  assert train_steps == sorted(set(train_steps))        # each logged step once, in order
