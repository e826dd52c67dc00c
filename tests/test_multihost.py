"""Multi-process runs: 2 CPU processes on localhost equal one process with as many devices.

Each run is tests/multihost_driver.py (train a tiny model 10 steps, restore the
final checkpoint, pseudo-label 300 digits) in fresh processes: two joined through jax.distributed (2 fake CPU devices each,
gloo collectives over loopback) and one alone with 4 devices: same global batch,
same mesh size. The processes are time-boxed: a hang fails with their logs.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from effcv_jax import distributed

DRIVER = REPO_ROOT / "tests" / "multihost_driver.py"
TIMEOUT_S = float(os.environ.get("EFFCV_MULTIHOST_TIMEOUT", 600))   # busy CI machines are slow
F16_ATOL = 2e-3      # pseudo-labels are stored as float16 log-probabilities


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, **extra: str) -> dict[str, str]:
  """The environment of a driver process: `devices` fake CPU devices, quick compiles."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("EFFCV_", "JAX_"))}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                       "--xla_backend_optimization_level=0", **extra)
  if "EFFCV_DATA_DIR" in os.environ:
    env["EFFCV_DATA_DIR"] = os.environ["EFFCV_DATA_DIR"]
  return env


def _run_all(runs: dict[str, dict[str, str]], workdirs: dict[str, str], log_dir) -> None:
  """Starts one driver per entry of `runs` (name -> environment) and waits for all,
  killing every one and failing with the logs if one fails or time runs out."""
  processes, logs = {}, {}
  for name, env in runs.items():
    logs[name] = open(log_dir / f"{name}.log", "w+")
    processes[name] = subprocess.Popen(
        [sys.executable, str(DRIVER), f"--workdir={workdirs[name]}",
         f"--out={log_dir / name}.npz"],
        cwd=REPO_ROOT, env=env, stdout=logs[name], stderr=subprocess.STDOUT)
  deadline = time.monotonic() + TIMEOUT_S
  try:
    while any(p.poll() is None for p in processes.values()):
      failed = [n for n, p in processes.items() if p.poll() not in (None, 0)]
      if failed or time.monotonic() > deadline:
        break
      time.sleep(0.5)
    failed = [n for n, p in processes.items() if p.poll() != 0]
  finally:
    for p in processes.values():
      if p.poll() is None:
        p.kill()     # SIGKILL: jax's preemption notifier catches SIGTERM
      p.wait()
  tails = []
  for name, log in logs.items():
    log.seek(0)
    lines = [l for l in log.read().splitlines() if not l.startswith(("I", "W"))]
    log.close()
    if name in failed:
      tails.append(f"--- {name} (exit {processes[name].returncode}):\n" + "\n".join(lines[-25:]))
  if failed:
    pytest.fail(f"driver processes {failed} failed or ran past {TIMEOUT_S:.0f} s "
                "(set EFFCV_MULTIHOST_TIMEOUT for slow machines):\n" + "\n".join(tails))


def _load(path) -> dict:
  with np.load(path) as npz:
    out = {k: npz[k] for k in npz.files}
  out["results"] = json.loads(str(out["results"]))
  return out


def _variables(out: dict) -> dict[str, np.ndarray]:
  return {k: v for k, v in out.items() if k.startswith("var")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Outputs of the two-process run (one per process), of the single-process run, and
  the two workdirs."""
  root = tmp_path_factory.mktemp("multihost")
  port = _free_port()
  coordinator = f"127.0.0.1:{port}"
  common = dict(EFFCV_COORDINATOR_ADDRESS=coordinator, EFFCV_NUM_PROCESSES="2",
                JAX_COORDINATOR_BIND_ADDRESS=coordinator)     # loopback only
  envs = {"p0": _env(2, EFFCV_PROCESS_ID="0", **common),
          "p1": _env(2, EFFCV_PROCESS_ID="1", **common),
          "single": _env(4)}
  workdirs = {"p0": str(root / "multi"), "p1": str(root / "multi"),
              "single": str(root / "single")}
  _run_all(envs, workdirs, root)
  return ({name: _load(root / f"{name}.npz") for name in envs},
          workdirs["p0"], workdirs["single"])


def test_two_processes_see_one_mesh_and_agree(runs):
  outs, _, _ = runs
  for index, name in enumerate(("p0", "p1")):
    out = outs[name]
    assert (int(out["process_index"]), int(out["process_count"])) == (index, 2)
    assert (int(out["local_device_count"]), int(out["device_count"])) == (2, 4)
    assert int(out["restored_step"]) == 10
  assert int(outs["single"]["process_count"]) == 1 and int(outs["single"]["device_count"]) == 4
  timeless = [{k: v for k, v in outs[name]["results"].items() if "seconds" not in k}
              for name in ("p0", "p1")]
  assert timeless[0] == timeless[1]
  # Every process restored the same checkpoint and merged the same pseudo-labels.
  for key, value in _variables(outs["p0"]).items():
    np.testing.assert_array_equal(value, outs["p1"][key], err_msg=key)
  for key in ("indices", "probs", "confidence"):
    np.testing.assert_array_equal(outs["p0"][key], outs["p1"][key])


def test_two_process_training_equals_single_process(runs):
  outs, multi_dir, single_dir = runs
  multi, single = outs["p0"], outs["single"]
  assert _variables(multi).keys() == _variables(single).keys()
  for key, value in _variables(single).items():
    np.testing.assert_allclose(multi[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
  for key in ("step", "num_examples", "eval_split"):
    assert multi["results"][key] == single["results"][key]
  assert multi["results"]["num_examples"] == 300
  assert multi["results"]["accuracy"] == pytest.approx(single["results"]["accuracy"], abs=1e-9)
  assert multi["results"]["loss"] == pytest.approx(single["results"]["loss"], rel=1e-5)
  # The same global batch at every step (the per-step training loss), logged once.
  records = {}
  for name, workdir in (("multi", multi_dir), ("single", single_dir)):
    with open(os.path.join(workdir, "train", "metrics.jsonl")) as f:
      records[name] = [json.loads(line) for line in f]
  assert [r["step"] for r in records["multi"]] == [r["step"] for r in records["single"]]
  assert [r["step"] for r in records["multi"] if r["split"] == "train"] == list(range(1, 11))
  for got, want in zip(records["multi"], records["single"]):
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5), got["step"]


def test_checkpoints_and_pseudo_label_parts_are_written_once(runs):
  _, multi_dir, _ = runs
  checkpoints = os.path.join(multi_dir, "train", "checkpoints")
  assert sorted(os.listdir(checkpoints), key=int) == ["5", "10"]
  data_state = [f for f in os.listdir(os.path.join(checkpoints, "10", "data")) if "process" in f]
  assert sorted(data_state) == ["process_0-of-2.json", "process_1-of-2.json"]
  with open(os.path.join(multi_dir, "train", "results.json")) as f:
    assert json.load(f)["step"] == 10
  pseudo = sorted(os.listdir(os.path.join(multi_dir, "pseudo")))
  assert pseudo == sorted([f"shard_{s:05d}.p{p}of2.npz" for s in range(3) for p in range(2)]
                          + ["manifest.p0of2.json", "manifest.p1of2.json"])


def test_two_process_pseudo_labels_equal_single_process(runs):
  outs, _, _ = runs
  multi, single = outs["p0"], outs["single"]
  np.testing.assert_array_equal(multi["indices"], np.arange(300))
  np.testing.assert_array_equal(multi["indices"], single["indices"])
  np.testing.assert_allclose(multi["probs"], single["probs"], atol=F16_ATOL)
  np.testing.assert_array_equal(multi["probs"].argmax(1), single["probs"].argmax(1))
  np.testing.assert_allclose(multi["confidence"], single["confidence"], rtol=1e-5)


@pytest.mark.parametrize("settings, message", [
    (dict(num_processes=2, process_id=2, coordinator_address="h:1"), "not below the number"),
    (dict(num_processes=2, process_id=0), "need a coordinator"),
    (dict(num_processes=2, coordinator_address="h:1"), "need this process's id"),
    (dict(process_id=1, coordinator_address="h:1"), "no number of processes"),
    (dict(num_processes=2, process_id=0, coordinator_address="h"), "not HOST:PORT"),
    (dict(num_processes=0), "at least 1"),
    (dict(mode="sometimes"), "not one of"),
])
def test_inconsistent_settings_are_refused(settings, message):
  with pytest.raises(ValueError, match=message):
    distributed.resolve(environ={}, **settings)


def test_settings_from_environment_and_single_process():
  environ = {distributed.COORDINATOR_ENV: "10.0.0.1:8476", distributed.NUM_PROCESSES_ENV: "4",
             distributed.PROCESS_ID_ENV: "3"}
  assert distributed.resolve(environ=environ) == distributed.Settings("10.0.0.1:8476", 4, 3)
  assert distributed.resolve(process_id=1, environ=environ).process_id == 1    # flags win
  assert distributed.resolve(mode="off", environ=environ) is None
  assert distributed.resolve(environ={}) is None
  assert distributed.resolve(num_processes=1, environ={}) is None
  assert distributed.resolve(mode="auto", environ={}) == distributed.Settings(
      None, None, None, auto=True)
  with pytest.raises(ValueError, match="EFFCV_NUM_PROCESSES='two' is not an integer"):
    distributed.resolve(environ={distributed.NUM_PROCESSES_ENV: "two"})


def test_sigterm_to_one_process_stops_both_at_one_checkpointed_step(tmp_path):
  """A preemption notice (SIGTERM) reaching one process of two: JAX's preemption sync
  manager picks a step, both processes checkpoint that step once and exit with status 75."""
  coordinator = f"127.0.0.1:{_free_port()}"
  common = dict(EFFCV_COORDINATOR_ADDRESS=coordinator, EFFCV_NUM_PROCESSES="2",
                JAX_COORDINATOR_BIND_ADDRESS=coordinator)
  workdir = tmp_path / "run"
  processes, logs, outputs = [], [], []
  for process_id in range(2):
    logs.append(tmp_path / f"p{process_id}.log")
    outputs.append(open(logs[-1], "w"))
    processes.append(subprocess.Popen(
        [sys.executable, "-m", "experiments.train", "--config=configs/digits_tiny.py",
         f"--workdir={workdir}", "--config.num_steps=1000000",
         "--config.checkpoint_every=1000000"],
        cwd=REPO_ROOT, env=_env(2, EFFCV_PROCESS_ID=str(process_id), **common),
        stdout=outputs[-1], stderr=subprocess.STDOUT))
  deadline = time.monotonic() + TIMEOUT_S
  try:
    while "step 20/" not in logs[0].read_text():
      assert time.monotonic() < deadline and all(p.poll() is None for p in processes), (
          logs[0].read_text()[-3000:])
      time.sleep(0.2)
    processes[1].terminate()
    for p in processes:
      p.wait(timeout=max(1.0, deadline - time.monotonic()))
  finally:
    for p, output in zip(processes, outputs):
      if p.poll() is None:
        p.kill()
        p.wait()
      output.close()
  stopped = [[l for l in log.read_text().splitlines() if l.startswith("STOPPED")]
             for log in logs]
  assert [p.returncode for p in processes] == [75, 75], stopped
  steps = {int(lines[0].split("after step ")[1].split(",")[0]) for lines in stopped}
  assert len(steps) == 1 and steps.pop() > 20
  saved = sorted(os.listdir(workdir / "checkpoints"))
  assert len(saved) == 1 and f"after step {saved[0]}," in stopped[0][0]
