"""The train step of two checkouts, timed in alternating turns: did a change make it slower?

    git worktree add ../before 0e4bd22
    python -m benchmarks.train_step_ab --before=../before --rounds_ab=3 \
        --output=benchmarks/results/train_step_onednn_fix.json

Each turn runs `python -m benchmarks.train_step --part=all` (one model, one convolution, all
threads, no PyTorch) in the `--before` checkout, then in this one, so drift of the machine's
speed falls on both sides alike. Reports every turn's images/s and CPU use and the medians.
"""

import json
import pathlib
import statistics
import subprocess
import sys
import tempfile

from absl import app, flags

from benchmarks.machine import command_line, machine_info, print_and_write

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

flags.DEFINE_string("before", None, "The other checkout (e.g. a worktree of an older commit).",
                    required=True)
flags.DEFINE_integer("rounds_ab", 3, "Alternating turns (each side runs once per turn).")
flags.DEFINE_string("model", "resnet20", "Workload of benchmarks/train_step.py.")
flags.DEFINE_string("conv", "onednn", "Convolution name of benchmarks/train_step.py.")
flags.DEFINE_integer("steps", 5, "Steps per timed round of each run.")
flags.DEFINE_integer("rounds", 5, "Timed rounds of each run.")
flags.DEFINE_string("output", "", "Results file ('' prints only).")
FLAGS = flags.FLAGS


def commit_of(checkout: pathlib.Path) -> str:
  return subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                        capture_output=True, text=True).stdout.strip()


def one_run(checkout: pathlib.Path) -> dict:
  """One benchmarks.train_step run in `checkout`: its step entry's speed and CPU use."""
  with tempfile.TemporaryDirectory() as scratch:
    output = pathlib.Path(scratch) / "step.json"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.train_step", f"--models={FLAGS.model}",
         f"--convs={FLAGS.conv}", "--threadings=all", "--notorch", "--noconv_layer",
         "--compile_parts=", "--nocompare_malloc", f"--rounds={FLAGS.rounds}",
         f"--steps={FLAGS.steps}", f"--output={output}"],
        cwd=checkout, check=True, capture_output=True, text=True, timeout=3600)
    result = json.loads(output.read_text())
  step = result["step"][0]
  return {"images_per_s": step["images_per_s"], "cpu_over_wall": step["cpu_over_wall"],
          "load_average_start": result["load_average_start"][0]}


def main(argv):
  del argv
  sides = {"before": pathlib.Path(FLAGS.before).resolve(), "after": REPO_ROOT}
  runs: dict[str, list[dict]] = {"before": [], "after": []}
  for turn in range(FLAGS.rounds_ab):
    for name, checkout in sides.items():
      runs[name].append(one_run(checkout))
      print(f"turn {turn} {name}: {runs[name][-1]}", flush=True)
  medians = {name: statistics.median(r["images_per_s"] for r in side)
             for name, side in runs.items()}
  result = {
      "command": command_line("benchmarks.train_step_ab"),
      "machine": machine_info(),
      "workload": f"{FLAGS.model}, conv {FLAGS.conv}, all threads, batch 128 (train_step's default)",
      "commits": {name: commit_of(checkout) for name, checkout in sides.items()},
      "runs": runs, "median_images_per_s": medians,
      "after_over_before": round(medians["after"] / medians["before"], 3)}
  print_and_write(result, FLAGS.output)


if __name__ == "__main__":
  app.run(main)
