"""Fast AutoAugment's policy search (effcv_jax/policy_search/fast_autoaugment.py), resumable.

  python -m experiments.fast_autoaugment --config=configs/fast_autoaugment_fashion_mnist_1000.py \
      --workdir=runs/fast_autoaugment_fashion_mnist_1000 \
      --faa_out=reports/fast_autoaugment_fashion_mnist_1000 --data_dir=../shared/data

Rerunning the command resumes the search where it stopped (a finished one is read back and
gives the same policy). Writes FAA_OUT.json (default WORKDIR/report.json): the policy as an
augmentation spec string (`autoaugment(policy=[...])`, usable as a config's `augment`), the
per-fold scores of the selected candidates, the clean held-out scores and the search cost in
CPU-hours next to the papers' GPU-hours. Prints the policy string.
"""

import os

import optuna
from absl import flags

from effcv_jax import files
from effcv_jax.policy_search import fast_autoaugment
from experiments import cli

_OUT = flags.DEFINE_string(
    "faa_out", None, "Report path without extension (.json is added); default "
    "WORKDIR/report.")


def main(argv):
  del argv
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  report = fast_autoaugment.run(cli.config(), cli.workdir(), cli.data_dir())
  report["command"] = cli.reproducing_command("experiments.fast_autoaugment")
  out = _OUT.value or os.path.join(cli.workdir(), "report")
  if os.path.dirname(out):
    os.makedirs(os.path.dirname(out), exist_ok=True)
  files.write_json_atomic(out + ".json", report)
  print(report["policy"])
  cost = report["search_cost"]
  print(f"search cost: {cost['cpu_hours']:.3f} CPU-hours, {cost['wall_hours']:.3f} wall hours "
        f"(papers, CIFAR-10 GPU-hours: {report['paper_gpu_hours_cifar10']})")


if __name__ == "__main__":
  cli.run(main, shared_flags=("config", "workdir", "data_dir"), required=("config", "workdir"))
