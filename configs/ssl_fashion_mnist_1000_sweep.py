"""Every semi-supervised algorithm on Fashion-MNIST with 1,000 labels, against Noisy Student:
reports/ssl_fashion_mnist_1000.{json,png}.

  python -m experiments.sweep --config=configs/ssl_fashion_mnist_1000_sweep.py \
      --workdir=runs/ssl_fashion_mnist_1000 --report=reports/ssl_fashion_mnist_1000 \
      --data_dir=../shared/data [--only=fixmatch_seed_0,...]

Each variant is configs/ssl_fashion_mnist_1000.py with that algorithm (the same 1,000 labels,
network, views, optimiser, 6,000 steps of 16 labelled + 112 unlabelled images, evaluated on the
official test split with the weights' moving average); SEEDS gives the labels-only baseline,
FixMatch and the curriculum method that did best at seed 0 three seeds, every other algorithm one
(config.seed: initialisation, batch order and augmentation draws; the labelled examples are
split_seed's, the same in every run). LONGER adds runs of an algorithm with a longer
schedule (24,000 steps, the cosine decay stretched to them, 8 evaluations): softmatch_24k, the
best algorithm (three seeds), and FixMatch against labels only at that length (fixmatch_24k,
supervised_24k, one seed each). Noisy Student's row is the seed group of
reports/noisy_student_fashion_mnist_noise.json with the same labels, test split and student
network (its students train 6,000 steps of 128 images on labelled and pseudo-labelled data, from
one teacher); it is included, not rerun, as are noisy_student_softmatch_teacher and
noisy_student_softmatch_24k_teacher, the same students taught by this sweep's softmatch_seed_1
and softmatch_24k_seed_0 runs (reports/noisy_student_fashion_mnist_ssl_teacher.json,
reports/noisy_student_fashion_mnist_softmatch_24k_teacher.json).
"""

from configs import ssl_fashion_mnist_1000
from effcv_jax import sweeps

ALGORITHMS = ssl_fashion_mnist_1000.VARIANTS
# The curriculum method with three seeds: SoftMatch, the best of FlexMatch, FreeMatch and
# SoftMatch at seed 0 (86.85, 87.27 and 87.50 %, reports/ssl_fashion_mnist_1000.json); and its
# 24,000-step run, the only one at 90 % after its seed 0 (90.01 %), to see whether that holds.
SEEDS = {"supervised": [0, 1, 2], "fixmatch": [0, 1, 2], "softmatch": [0, 1, 2],
         "softmatch_24k": [0, 1, 2]}
# Longer schedules ({variant: (algorithm, steps)}): whether the best algorithm's accuracy,
# still rising when its 6,000 steps end, reaches the 90 % with four times the images,
# and whether FixMatch's lead over labels only (1.5 points at 6,000 steps, its mask rate still
# rising) grows with them.
LONGER = {"softmatch_24k": ("softmatch", 24000), "fixmatch_24k": ("fixmatch", 24000),
          "supervised_24k": ("supervised", 24000)}
NOISY_STUDENT = ("reports/noisy_student_fashion_mnist_noise.json:"
                 "randaugment (torchvision-style)")
# Noisy Student taught by this sweep's softmatch_seed_1 (configs/noisy_student_fashion_mnist_
# ssl_teacher.py): three student seeds.
NOISY_STUDENT_SOFTMATCH = ("reports/noisy_student_fashion_mnist_ssl_teacher.json:"
                           "softmatch teacher")
# The same students taught by softmatch_24k_seed_0 (the config's `:softmatch_24k_seed_0`).
NOISY_STUDENT_SOFTMATCH_24K = ("reports/noisy_student_fashion_mnist_softmatch_24k_teacher.json:"
                               "softmatch_24k teacher")


def get_config():
  configs = {name: ssl_fashion_mnist_1000.get_config(name) for name in ALGORITHMS}
  for name, (algorithm, steps) in LONGER.items():
    configs[name] = ssl_fashion_mnist_1000.get_config(algorithm)
    configs[name].num_steps, configs[name].eval_every = steps, steps // 8
  return sweeps.sweep_of_configs(
      "Fashion-MNIST, 1,000 labels, small CNN, 6,000 steps (*_24k 24,000): "
      "semi-supervised algorithms and Noisy Student, test accuracy",
      ssl_fashion_mnist_1000.get_config("supervised"), configs,
      trainer="ssl", seeds=SEEDS,
      include_groups={"noisy_student": NOISY_STUDENT,
                      "noisy_student_softmatch_teacher": NOISY_STUDENT_SOFTMATCH,
                      "noisy_student_softmatch_24k_teacher": NOISY_STUDENT_SOFTMATCH_24K})
