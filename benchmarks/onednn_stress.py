"""The oneDNN stress matrix: how often concurrent convolutions go wrong, per kernel ISA,
calling threads and workload, for the library of a given checkout.

    python -m benchmarks.onednn_stress --label=fixed --repeats=5 --seconds=60
    # the same driver against another checkout's library (e.g. one without the fix):
    cp tests/onednn_stress_driver.py ../old/tests/ && python -m benchmarks.onednn_stress \
        --label=unfixed --library_root=../old --repeats=3

Each run is one process of tests/onednn_stress_driver.py (`--mode`, `--threads`,
`--seconds`) with ONEDNN_MAX_CPU_ISA set, so oneDNN generates that ISA's kernels. A run
ends OK (every result equal to the single-threaded one), CORRUPT (a result differed),
HANG (no call completed for --hang_seconds) or with a signal (a crash). The results file
keeps one entry per label; rerunning a label replaces it.
"""

import datetime
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from absl import app, flags

from benchmarks.machine import command_line, cpu_flags, machine_info

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

flags.DEFINE_string("label", "fixed", "Name of this set of runs in the results file.")
flags.DEFINE_string("library_root", str(REPO_ROOT),
                    "Checkout whose tests/onednn_stress_driver.py and library are run.")
flags.DEFINE_list("isas", ["AVX2", "AVX512_CORE"], "ONEDNN_MAX_CPU_ISA values.")
flags.DEFINE_list("threads", ["1", "2"], "Calling threads.")
flags.DEFINE_list("modes", ["convs", "resnet"], "Driver workloads.")
flags.DEFINE_integer("repeats", 3, "Runs per (isa, threads, mode).")
flags.DEFINE_float("seconds", 60, "Length of each run.")
flags.DEFINE_float("hang_seconds", 120, "No completed call for this long is a hang.")
flags.DEFINE_string("output", "benchmarks/results/onednn_stress.json", "Results file.")
FLAGS = flags.FLAGS

_ISA_CPU_FLAG = {"AVX2": "avx2", "AVX512_CORE": "avx512f", "AVX512_CORE_BF16": "avx512_bf16",
                 "AVX512_CORE_AMX": "amx_tile"}


def one_run(driver: pathlib.Path, isa: str, threads: int, mode: str) -> dict:
  """Runs the driver once; its outcome, the driver's last line and the wall time."""
  env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa, "EFFCV_CONV": "onednn"}
  start = time.monotonic()
  result = subprocess.run(
      [sys.executable, str(driver), f"--mode={mode}", f"--threads={threads}",
       f"--seconds={FLAGS.seconds}", f"--hang_seconds={FLAGS.hang_seconds}"],
      env=env, capture_output=True, text=True,
      timeout=FLAGS.seconds + FLAGS.hang_seconds + 600)
  lines = [l for l in result.stdout.splitlines() if l.startswith("STRESS")]
  last = lines[-1] if lines else ""
  if result.returncode < 0:
    outcome = f"signal {signal.Signals(-result.returncode).name}"
  else:
    outcome = last.split()[1] if last else f"exit {result.returncode}"
  calls = int(last.split("calls=")[1].split()[0]) if "calls=" in last else None
  return {"isa": isa, "threads": threads, "mode": mode, "outcome": outcome, "calls": calls,
          "driver_line": last or result.stderr[-500:], "wall_s": round(time.monotonic() - start, 1)}


def main(argv):
  del argv
  driver = pathlib.Path(FLAGS.library_root).resolve() / "tests" / "onednn_stress_driver.py"
  if not driver.exists():
    raise SystemExit(f"{driver} not found: copy tests/onednn_stress_driver.py there first")
  flags_here = cpu_flags()
  runs = []
  for isa in FLAGS.isas:
    if _ISA_CPU_FLAG.get(isa, "") not in flags_here:
      print(f"skipping {isa}: this CPU lacks {_ISA_CPU_FLAG.get(isa)}", flush=True)
      continue
    for threads in map(int, FLAGS.threads):
      for mode in FLAGS.modes:
        for repeat in range(FLAGS.repeats):
          run = one_run(driver, isa, threads, mode)
          runs.append(run)
          print(f"{isa} threads={threads} {mode} #{repeat}: {run['outcome']} "
                f"calls={run['calls']} ({run['wall_s']} s)", flush=True)
  summary: dict[str, dict] = {}
  for run in runs:
    key = f"{run['isa']} threads={run['threads']} {run['mode']}"
    entry = summary.setdefault(key, {"runs": 0, "ok": 0, "outcomes": []})
    entry["runs"] += 1
    entry["ok"] += run["outcome"] == "OK"
    entry["outcomes"].append(run["outcome"])
  output = pathlib.Path(FLAGS.output)
  results = json.loads(output.read_text()) if output.exists() else {}
  results[FLAGS.label] = {
      "command": command_line("benchmarks.onednn_stress"),
      "library_root_commit": subprocess.run(
          ["git", "-C", str(driver.parents[1]), "rev-parse", "HEAD"], capture_output=True,
          text=True).stdout.strip(),
      "date": datetime.date.today().isoformat(),
      "machine": machine_info(),   # its cpu_isa_flags: the AVX/AMX flags of this CPU
      "settings": {"seconds": FLAGS.seconds, "hang_seconds": FLAGS.hang_seconds,
                   "repeats": FLAGS.repeats},
      "summary": summary, "runs": runs}
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(json.dumps(results, indent=1) + "\n")
  print(f"wrote {output}")


if __name__ == "__main__":
  app.run(main)
