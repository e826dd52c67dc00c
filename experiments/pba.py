"""Population Based Augmentation's policy search (effcv_jax/policy_search/pba.py).

  python -m experiments.pba --config=configs/pba_fashion_mnist_1000.py \
      --workdir=runs/pba_fashion_mnist_1000 --pba_out=reports/pba_fashion_mnist_1000

Trains the population in WORKDIR (checkpointed after every round; rerunning resumes), then
writes PBA_OUT.json: the searched schedule as a `pba(schedule=...)` spec string (the final
best member's, with the policies it inherited), each round's best member's policy, the
per-round held-out accuracies of every member, the final best member's accuracy, and the
search's cost in CPU-hours and wall hours next to the papers' GPU-hours on CIFAR-10.
"""

import json
import os

from absl import flags

from effcv_jax import files
from effcv_jax.policy_search import pba
from experiments import cli

_PBA_OUT = flags.DEFINE_string("pba_out", None, "Report path without extension (.json).")


def main(argv):
  del argv
  config = cli.config()
  report = pba.run_search(config, cli.workdir(), cli.data_dir())
  report = {"title": config.get("title", "PBA search"),
            "command": cli.reproducing_command("experiments.pba"), **report}
  path = _PBA_OUT.value + ".json"
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  files.write_json_atomic(path, report)
  print(json.dumps({"schedule_spec": report["schedule_spec"],
                    "final_best_accuracy": report["final_best_accuracy"],
                    "search_cost": report["search_cost"]}))


if __name__ == "__main__":
  cli.run(main, shared_flags=("config", "workdir", "data_dir"),
          required=("config", "workdir", "pba_out"))
