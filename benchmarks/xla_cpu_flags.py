"""The train step under XLA:CPU options, against PyTorch eager on the same machine.

  python -m benchmarks.xla_cpu_flags --turns=3 --rounds=5   # results/train_step_xla_flags.json

XLA:CPU has options that change how the element-wise work between the convolutions (batch
norm, ReLU, residual adds and their gradients) is compiled and scheduled: fusions handed to
the YNNPACK, XNNPACK or oneDNN libraries, XNNPACK graph fusion, a scheduler that runs
independent operations concurrently. Which of them speeds up the step is measured here, not
assumed. Each turn times benchmarks/train_step.py's single workload (`--part=one`: --model
with --conv, all threads, in a fresh subprocess) once per option set of --option_sets, in
the same order every turn, then PyTorch eager (--torch_variant) once, so that drift of the
machine's speed falls on all of them alike. Reported: every run's images/s and CPU use, the
median per option set, its ratio to the baseline (the first set, no options) and to
PyTorch's median. --model, --conv (default onednn), --output and the timing settings
(--steps, --rounds, --warmup, --batch_size, --malloc) are train_step.py's flags. The results
record the CPU's AVX/AMX flags.

Every run, PyTorch's included, uses this interpreter, so it needs the project's packages and
torch (benchmarks/requirements.txt) together: e.g. a venv with torch whose site-packages hold
a .pth file naming the project venv's site-packages, with EFFCV_ONEDNN_ROOT set to the project
venv (where the oneDNN wheels are). Without torch the PyTorch runs are recorded as skipped.
"""

import sys

from absl import app, flags

from benchmarks import train_step  # defines the timing flags shared with train_step.py
from benchmarks.machine import print_and_write
from benchmarks.train_step_harness import (SINGLE_THREAD_FLAGS, define_turn_flags,
                                           turns_report)

# Named XLA_FLAGS values; the first is the baseline. Each option's meaning is XLA's help text
# (`XLA_FLAGS=--helpfull` prints it).
OPTION_SETS = {
    "default": "",
    "ynn_eltwise": "--xla_cpu_experimental_ynn_fusion_type=+eltwise",
    "ynn_eltwise_reduce": "--xla_cpu_experimental_ynn_fusion_type=+eltwise,+reduce",
    "xnn_eltwise": "--xla_cpu_experimental_xnn_fusion_type=+eltwise",
    "xnn_graph_greedy":
        "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "onednn_eltwise": "--xla_cpu_experimental_onednn_fusion_type=+eltwise",
    "concurrency_scheduler": "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    # XLA's own ops on one thread; oneDNN's convolutions keep their OpenMP threads, which then
    # share the cores with no XLA worker threads.
    "xla_one_thread": SINGLE_THREAD_FLAGS,
}

flags.DEFINE_list("option_sets", list(OPTION_SETS), "Names of OPTION_SETS to time, in order; "
                  "the first is the baseline of the ratios.")
define_turn_flags("option set")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  unknown = [name for name in FLAGS.option_sets if name not in OPTION_SETS]
  if unknown or not FLAGS.option_sets:
    sys.exit(f"--option_sets: unknown {unknown or 'empty list'}; known: {', '.join(OPTION_SETS)}")
  settings = train_step.settings_from_flags()
  result = turns_report(
      "benchmarks.xla_cpu_flags", settings, FLAGS.conv,
      {name: {"XLA_FLAGS": OPTION_SETS[name]} for name in FLAGS.option_sets}, FLAGS.turns,
      FLAGS.torch_variant,
      {"option_sets": {name: OPTION_SETS[name] for name in FLAGS.option_sets}})
  print_and_write(result, FLAGS.output)


if __name__ == "__main__":
  FLAGS.set_default("output", "benchmarks/results/train_step_xla_flags.json")
  FLAGS.set_default("conv", "onednn")
  app.run(main)
