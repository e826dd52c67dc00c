"""The searched augmentation policies against hand-made ones, on the task they were searched
for: Fashion-MNIST with 1,000 labels, the Noisy Student teacher's run
(configs/noisy_student_fashion_mnist.py: the same labels, small CNN, optimiser and 1,500 steps
of 128), evaluated on the official test split; 3 seeds each.

  python -m experiments.sweep --config=configs/policy_search_eval_fashion_mnist_1000.py \
      --workdir=runs/policy_search_eval --report=reports/policy_search_eval_fashion_mnist_1000 \
      --data_dir=../shared/data

Variants (each the policy, then the teacher's flip + 2 px crop, the order PBA searched with):
  flip_crop          the teacher's augmentation alone;
  randaugment        RandAugment(2, 9) (torchvision-style ops, magnitude 9 of 10);
  fast_autoaugment   the policy of reports/fast_autoaugment_fashion_mnist_1000.json;
  pba                the schedule of reports/pba_fashion_mnist_1000.json, its steps stretched
                     from the search's length to this run's (PBA's schedules are defined over
                     the training run: the paper searches and retrains for the same number of
                     epochs; here the search was shorter, so its step boundaries are scaled).
The policies are read from the search reports (one source), so a new search changes them.
Neither search saw the test split (Fast AutoAugment scores held-out folds of the 1,000 labels,
PBA's members a held-out set of unlabelled training images).
"""

import json
import os

import ml_collections

from configs import noisy_student_fashion_mnist
from effcv_jax.augment import pba_policy, spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_AUTOAUGMENT_REPORT = "reports/fast_autoaugment_fashion_mnist_1000.json"
PBA_REPORT = "reports/pba_fashion_mnist_1000.json"
RANDAUGMENT = "randaugment(num_ops=2, magnitude=9)"
SEEDS = [0, 1, 2]


def report(path: str) -> dict:
  with open(os.path.join(REPO, path)) as f:
    return json.load(f)


def stretched_schedule(schedule_spec: str, search_steps: int, num_steps: int) -> str:
  """A `pba(schedule=...)` spec with every start step scaled by num_steps / search_steps."""
  name, kwargs = spec.parse_op(schedule_spec)
  if name != "pba" or "schedule" not in kwargs:
    return schedule_spec          # one policy: nothing to stretch
  return pba_policy.schedule_spec(
      [(round(start * num_steps / search_steps), entries)
       for start, entries in kwargs["schedule"]])


def get_config():
  base = noisy_student_fashion_mnist.get_config().teacher
  flip_crop = base.augment
  pba = report(PBA_REPORT)
  policies = {
      "flip_crop": "",
      "randaugment": RANDAUGMENT,
      "fast_autoaugment": report(FAST_AUTOAUGMENT_REPORT)["policy"],
      "pba": stretched_schedule(pba["schedule_spec"], pba["num_steps"], base.num_steps),
  }
  sweep = ml_collections.ConfigDict()
  sweep.title = ("Fashion-MNIST, 1,000 labels, small CNN, 1,500 steps of 128: searched "
                 "policies against hand-made ones, test accuracy")
  sweep.base = base
  sweep.variants = ml_collections.ConfigDict(
      {name: {"augment": f"{policy}|{flip_crop}" if policy else flip_crop}
       for name, policy in policies.items()}, sort_keys=False)
  sweep.seeds = SEEDS
  return sweep
