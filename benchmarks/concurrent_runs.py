"""Several training processes on one CPU machine: every one on all cores, or each on its own.

  python -m benchmarks.concurrent_runs --turns=3   # writes results/concurrent_runs.json

A researcher with more runs than machines starts several on one machine; how they share its
cores decides how many images a second the machine trains. Each turn times
benchmarks/train_step.py's single workload (`--part=one`: --model with --conv, in fresh
subprocesses started together) in three arrangements, in this order:
  alone   one process on every core (the baseline);
  shared  --processes processes at once, each free to run on every core (the OS schedules
          their thread pools over the same cores);
  pinned  the same processes, each pinned to its own cores before it starts
          (os.sched_setaffinity, which `taskset -c 0 python -m ...` does from a shell; the
          cores are split in equal contiguous parts, so --processes must divide them).
Reported per arrangement: every process's images/s and CPU use, the machine's images/s (the
sum over its processes) per turn and their median, and the medians' ratios to `alone` and to
`shared`. Processes started together compile the same program and time the same rounds, so
their rounds overlap; a process's images/s is the median over its rounds, so a round that ran
after the others had ended does not decide it. --model, --conv (default onednn), the timing
settings (--steps, --rounds, --warmup, --batch_size, --malloc) and --output are
train_step.py's flags.
"""

import os
import statistics
import subprocess

from absl import app, flags

from benchmarks import train_step  # defines the timing flags shared with train_step.py
from benchmarks.machine import command_line, machine_info, print_and_write
from benchmarks.train_step_harness import ROOT, child_command, child_env, child_result

ARRANGEMENTS = ("alone", "shared", "pinned")

flags.DEFINE_integer("processes", 2, "Processes at once in `shared` and `pinned`.")
flags.DEFINE_integer("turns", 3, "Turns (each runs every arrangement once).")
FLAGS = flags.FLAGS


def core_sets(cores: list[int], processes: int) -> list[list[int]]:
  """`cores` split into `processes` equal contiguous parts (ValueError if they do not divide)."""
  if processes < 1 or len(cores) % processes:
    raise ValueError(f"--processes={processes} does not divide the {len(cores)} cores "
                     f"this process may use ({cores})")
  size = len(cores) // processes
  return [cores[i * size:(i + 1) * size] for i in range(processes)]


def run_together(settings, affinities: list[list[int] | None]) -> list[dict]:
  """One part=one child per entry of `affinities` (its cores; None: unpinned), all started
  at once; their results (or errors) in the same order, each with its cores."""
  env, allocator = child_env(settings)
  args = ["--part=one", f"--model={settings.model}", f"--conv={settings.conv}"]
  command = child_command(settings, args)
  children = []
  for cores in affinities:
    pin = (lambda cores=cores: os.sched_setaffinity(0, cores)) if cores is not None else None
    children.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, preexec_fn=pin))
  results = []
  for cores, child in zip(affinities, children):
    stdout, stderr = child.communicate(timeout=settings.child_timeout)
    result = child_result(stdout, child.returncode, stderr, args)
    if "error" not in result:
      result.update(cores=cores if cores is not None else "all", allocator=allocator)
    results.append(result)
  return results


def turn(settings, cores: list[int], processes: int) -> dict:
  """Every arrangement once: {arrangement: {"runs": [...], "images_per_s": machine total}}."""
  plans = {"alone": [None], "shared": [None] * processes,
           "pinned": core_sets(cores, processes)}
  out = {}
  for name in ARRANGEMENTS:
    runs = run_together(settings, plans[name])
    total = (round(sum(r["images_per_s"] for r in runs), 1)
             if all("images_per_s" in r for r in runs) else None)
    out[name] = {"runs": runs, "images_per_s": total}
  return out


def summarise(turns: list[dict]) -> dict:
  """Median machine images/s per arrangement and the ratios of the medians."""
  medians = {}
  for name in ARRANGEMENTS:
    values = [t[name]["images_per_s"] for t in turns if t[name]["images_per_s"] is not None]
    medians[name] = round(statistics.median(values), 1) if values else None
  ratios = {}
  for name in ARRANGEMENTS:
    for base in ("alone", "shared"):
      if name != base and medians[name] and medians[base]:
        ratios[f"{name}_over_{base}"] = round(medians[name] / medians[base], 3)
  return {"median_images_per_s": medians, "ratios": ratios}


def main(argv):
  del argv
  settings = train_step.settings_from_flags()
  if settings.part != "all":
    raise app.UsageError("--part is train_step.py's; this benchmark runs part=one itself")
  cores = sorted(os.sched_getaffinity(0))
  core_sets(cores, FLAGS.processes)   # fails before anything runs
  load_start = os.getloadavg()
  turns = [turn(settings, cores, FLAGS.processes) for _ in range(FLAGS.turns)]
  result = {
      "command": command_line("benchmarks.concurrent_runs"), "machine": machine_info(),
      "load_average_start": load_start, "load_average_end": os.getloadavg(),
      "workload": (f"{settings.model}, conv {settings.conv}, {settings.dtype}, batch "
                   f"{settings.batch_size}, {settings.rounds} rounds of {settings.steps} steps "
                   f"after {settings.warmup} (benchmarks/train_step.py --part=one) per process; "
                   f"{FLAGS.processes} processes at once in shared and pinned, {len(cores)} cores"),
      "turns": turns, **summarise(turns)}
  print_and_write(result, settings.output)


if __name__ == "__main__":
  FLAGS.set_default("output", "benchmarks/results/concurrent_runs.json")
  FLAGS.set_default("conv", "onednn")
  app.run(main)
