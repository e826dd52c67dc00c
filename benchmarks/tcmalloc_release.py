"""The train step with tcmalloc keeping every freed buffer (TCMALLOC_RELEASE_RATE=0) against
tcmalloc's default release rate (1), and PyTorch eager, in alternating turns.

  python -m benchmarks.tcmalloc_release --turns=3 --rounds=5
      # writes benchmarks/results/train_step_tcmalloc_release.json

XLA:CPU frees its temporary buffers after every step; at its default rate tcmalloc hands part
of the freed memory back to the system, which the next step would fault in again (zeroed pages,
system time). Each turn times benchmarks/train_step.py's single workload (`--part=one`:
--model with --conv, all threads, a fresh subprocess, tcmalloc preloaded) once per release
rate, then PyTorch eager (--torch_variant, tcmalloc's default rate) once. Every run records its
minor page faults and system CPU seconds per timed step. Ratios: each rate's median images/s
over the first's (rate 0) and over PyTorch's median.
"""

from absl import app, flags

from benchmarks import train_step  # defines the timing flags shared with train_step.py
from benchmarks.machine import print_and_write
from benchmarks.train_step_harness import define_turn_flags, turns_report

RATES = {"release_rate_0": "0", "release_rate_1": "1"}
define_turn_flags("release rate")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  settings = train_step.settings_from_flags()
  if settings.malloc != "tcmalloc":
    raise app.UsageError("--malloc must be tcmalloc: the release rate is tcmalloc's")
  result = turns_report(
      "benchmarks.tcmalloc_release", settings, FLAGS.conv,
      {name: {"TCMALLOC_RELEASE_RATE": rate} for name, rate in RATES.items()}, FLAGS.turns,
      FLAGS.torch_variant, {"release_rates": RATES})
  print_and_write(result, FLAGS.output)


if __name__ == "__main__":
  FLAGS.set_default("output", "benchmarks/results/train_step_tcmalloc_release.json")
  FLAGS.set_default("conv", "onednn")
  app.run(main)
