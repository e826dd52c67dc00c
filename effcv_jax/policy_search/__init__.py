"""Augmentation policy search on the device: each search outputs a policy string that the
augmentation spec language (effcv_jax/augment/spec.py) accepts.

  pba.py               Population Based Augmentation (Ho et al. 2019): a population of small
                       models trained together in one vmapped, jitted program, with exploit and
                       explore; outputs a schedule of policies.
  fast_autoaugment.py  Fast AutoAugment (Lim et al. 2019): density matching with a TPE search
                       over policies scored on augmented held-out folds.
"""

# The papers' search cost on CIFAR-10, in GPU-hours (Fast AutoAugment's Table 1: AutoAugment on
# Tesla P100s, PBA on Titan XPs, Fast AutoAugment on Tesla V100s); both searches report theirs
# beside it.
PAPER_GPU_HOURS_CIFAR10 = {"AutoAugment": 5000.0, "PBA": 5.0, "Fast AutoAugment": 3.5}
PAPER_GPU_HOURS_NOTE = ("CIFAR-10, Fast AutoAugment's Table 1: AutoAugment on Tesla P100, PBA "
                        "on Titan XP, Fast AutoAugment on Tesla V100")


def papers_cost() -> dict:
  """The report fields every search writes beside its own `search_cost`."""
  return {"paper_gpu_hours_cifar10": dict(PAPER_GPU_HOURS_CIFAR10),
          "paper_gpu_hours_note": PAPER_GPU_HOURS_NOTE}
