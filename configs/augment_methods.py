"""Every augmentation method of the library side by side, labels only, 3 seeds each, on two
tasks (`:fashion_mnist`, the default, and `:cifar10`):

  python -m experiments.sweep --config=configs/augment_methods.py:fashion_mnist \
      --workdir=runs/augment_methods_fashion_mnist \
      --report=reports/augment_methods_fashion_mnist_1000 --data_dir=../shared/data
  python -m experiments.sweep --config=configs/augment_methods.py:cifar10 \
      --workdir=runs/augment_methods_cifar10 \
      --report=reports/augment_methods_cifar10_4000 --data_dir=../shared/data
  # one method's seeds: --only=$(python -m configs.augment_methods fashion_mnist cutmix)

Tasks (the supervised runs of the Noisy Student reports, same labels and splits):
  fashion_mnist  1,000 labels (100 per class, split_seed 0), the small CNN of
                 configs/noisy_student_fashion_mnist.py's teacher, official test split,
                 3,000 steps of 128 (384 epochs; the teacher's 1,500 and the older
                 augment_ablation's 1,000 left the mixing methods under-trained);
  cifar10        4,000 labels, 5,000 class-balanced validation images held out (split_seed
                 0), configs/noisy_student_cifar10_4000.py's ResNet-20 teacher run (6,000
                 steps of 128), plus AlexNet and VGG-11-BN (32 px layouts) with flip + crop;
                 AlexNet, which has no batch norm, at its paper's learning rate 0.01 (at the
                 ResNet's 0.1 it falls to chance within the warm-up).
Methods (each after the task's flip + crop unless it replaces it; one setting each, the
papers' CIFAR ones, not tuned here):
  none              no augmentation;
  flip_crop         flip + crop alone (the task's teacher);
  randaugment       RandAugment(2, 9), torchvision-style;
  cutmix, mixup     alpha 1 (Yun et al. 2019; Zhang et al. 2018 on CIFAR-10);
  puzzlemix         the paper's CIFAR settings (alpha 1, 4x4 blocks, beta 1.2, gamma 0.5,
                    eta 0.2, transport), saliency from the current model's input gradient;
                    its boundary cost averages over 4-pixel cells on CIFAR-10's 8-pixel
                    blocks and over whole 7-pixel blocks on Fashion-MNIST's 28 pixels (4
                    does not divide 7: PUZZLEMIX_CELLS);
  saliencymix       alpha 1; fmix: alpha 1, decay power 3;
  gan               a quarter of every batch generated (config.gan_augment) by the class-
                    conditional GAN of configs/gan_fashion_mnist_1000.py or
                    gan_cifar10_4000.py trained on the same labels, at GAN_WORKDIRS (train it
                    first: experiments/gan.py);
  fast_autoaugment  the policy Fast AutoAugment searched on the task's labels
                    (FAST_AUTOAUGMENT_REPORTS: configs/fast_autoaugment_fashion_mnist_1000.py,
                    fast_autoaugment_cifar10_4000.py);
  pba               the schedule PBA searched on the task's labels (PBA_REPORTS), its
                    start steps stretched from the search's length to the run's;
  pba_full          (fashion_mnist only) the schedule of PBA's search over the run's whole
                    length (configs/pba_fashion_mnist_1000_full.py, PBA_FULL_REPORT), used
                    as found;
  autoaugment       (cifar10 only) the published AutoAugment CIFAR-10 policy (searched by
                    AutoAugment on 4,000 CIFAR-10 labels, this task's size).
Policies go before flip + crop (the order the searches used), mixing methods after it.
"""

import sys

import ml_collections

from configs import noisy_student_cifar10_4000, noisy_student_fashion_mnist
from configs import policy_search_eval_fashion_mnist_1000 as policy_search_eval
from effcv_jax import sweeps

SEEDS = [0, 1, 2]
TASKS = ("fashion_mnist", "cifar10")
TASK_TITLES = {"fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
FASHION_MNIST_STEPS = 3000
# Where the gan method's generator was trained (experiments/gan.py --workdir).
GAN_WORKDIRS = {"fashion_mnist": "runs/gan_fashion_mnist_1000",
                "cifar10": "runs/gan_cifar10_4000"}
GAN_RATIO = 0.25
# Fast AutoAugment's search on each task's labels (configs/fast_autoaugment_fashion_mnist_1000.py,
# fast_autoaugment_cifar10_4000.py).
FAST_AUTOAUGMENT_REPORTS = {"fashion_mnist": policy_search_eval.FAST_AUTOAUGMENT_REPORT,
                            "cifar10": "reports/fast_autoaugment_cifar10_4000.json"}
# PBA's search on each task's labels (configs/pba_fashion_mnist_1000.py, pba_cifar10_4000.py).
PBA_REPORTS = {"fashion_mnist": policy_search_eval.PBA_REPORT,
               "cifar10": "reports/pba_cifar10_4000.json"}
# PBA's search over the Fashion-MNIST runs' 3,000 steps (configs/pba_fashion_mnist_1000_full.py).
PBA_FULL_REPORT = "reports/pba_fashion_mnist_1000_full.json"
# PuzzleMix's neighbour_size (the side of the cells its boundary cost averages over) per
# task: it must divide the block side (image side / grid).
PUZZLEMIX_CELLS = {"fashion_mnist": 7, "cifar10": 4}
MIXING = {
    "cutmix": "cutmix(alpha=1.0)",
    "mixup": "mixup(alpha=1.0)",
    "puzzlemix": ("puzzlemix(alpha=1.0, grid=4, beta=1.2, gamma=0.5, eta=0.2, transport=True, "
                  "neighbour_size={cells})"),
    "saliencymix": "saliencymix(alpha=1.0)",
    "fmix": "fmix(alpha=1.0, decay_power=3.0)",
}
# Krizhevsky et al. 2012's learning rate; the rest of the base's SGD is kept (momentum 0.9,
# weight decay 5e-4, as in the paper, with Nesterov and the cosine decay).
ALEXNET_LR = 0.01
ARCHITECTURES = {"alexnet": {"model": "alexnet", "model_kwargs.small_image": True,
                             "optimizer.lr": ALEXNET_LR},
                 "vgg11_bn": {"model": "vgg11_bn", "model_kwargs.small_image": True}}


def _base(task: str) -> ml_collections.ConfigDict:
  if task == "fashion_mnist":
    base = noisy_student_fashion_mnist.get_config().teacher
    base.num_steps = FASHION_MNIST_STEPS
    base.eval_every = FASHION_MNIST_STEPS
    return base
  return noisy_student_cifar10_4000.get_config("cpu").teacher


def _policies(task: str, base: ml_collections.ConfigDict) -> dict[str, str]:
  """{method: its policy op}, the ops that go before flip + crop."""
  policies = {"randaugment": policy_search_eval.RANDAUGMENT}
  if task == "cifar10":
    policies["autoaugment"] = "autoaugment(policy='cifar10')"
  policies["fast_autoaugment"] = policy_search_eval.report(
      FAST_AUTOAUGMENT_REPORTS[task])["policy"]
  pba = policy_search_eval.report(PBA_REPORTS[task])
  policies["pba"] = policy_search_eval.stretched_schedule(
      pba["schedule_spec"], pba["num_steps"], base.num_steps)
  if task == "fashion_mnist":
    pba_full = policy_search_eval.report(PBA_FULL_REPORT)
    policies["pba_full"] = policy_search_eval.stretched_schedule(
        pba_full["schedule_spec"], pba_full["num_steps"], base.num_steps)
  return policies


def method_variants(task: str, base: ml_collections.ConfigDict) -> dict[str, dict]:
  """{variant name: overrides of the task's base}, in the order they run and plot."""
  flip_crop = base.augment
  variants = {"none": {"augment": ""}, "flip_crop": {}}
  variants.update({name: {"augment": f"{policy}|{flip_crop}"}
                   for name, policy in _policies(task, base).items()})
  variants.update({name: {"augment": f"{flip_crop}|{op}".format(cells=PUZZLEMIX_CELLS[task])}
                   for name, op in MIXING.items()})
  variants["gan"] = {"gan_augment.workdir": GAN_WORKDIRS[task], "gan_augment.ratio": GAN_RATIO}
  if task == "cifar10":
    variants.update({f"{name}_flip_crop": overrides for name, overrides in ARCHITECTURES.items()})
  return variants


def get_config(task: str = "fashion_mnist"):
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
  base = _base(task)
  sweep = ml_collections.ConfigDict()
  labels = f"{base.num_labelled:,} labels"
  split = "test" if base.eval_split == "test" else "validation"
  sweep.title = (f"{TASK_TITLES[task]}, {labels}, {base.model}, {base.num_steps:,} steps of "
                 f"{base.batch_size}: augmentation methods, {split} accuracy")
  sweep.base = base
  sweep.variants = ml_collections.ConfigDict(method_variants(task, base), sort_keys=False,
                                             allow_dotted_keys=True)
  sweep.seeds = SEEDS
  return sweep


if __name__ == "__main__":
  # `python -m configs.augment_methods TASK METHOD`: that method's runs (one per seed),
  # comma-separated (for --only).
  task, method = sys.argv[1], sys.argv[2]
  methods = list(get_config(task).variants)
  if method not in methods:
    raise SystemExit(f"no method {method!r} for {task}: {methods}")
  print(",".join(sweeps.seed_variant(method, seed) for seed in SEEDS))
