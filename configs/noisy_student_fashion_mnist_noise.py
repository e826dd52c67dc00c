"""Noisy Student on Fashion-MNIST, 1,000 labels: the student's RandAugment, torchvision-style
against the official Noisy Student one (`randaugment_tf`), 3 student seeds each.

  python -m experiments.noisy_student_report --config=configs/noisy_student_fashion_mnist_noise.py \
      --workdir=runs/ns_fashion_mnist --report=reports/noisy_student_fashion_mnist_noise \
      --data_dir=../shared/data

The main run is configs/noisy_student_fashion_mnist.py's (same workdir: its teacher and its
first student, seed 0, are reused). Every variant is one student trained from that teacher's
pseudo-labels with `student.seed` changed (initialisation, batch order, augmentation and
dropout draws): the seeds measure the student's spread, not the teacher's. The report's
`seed_groups` gives each noise's mean, standard deviation and seed count.

The official policy is the reference's 32 px path scaled to 28 px: RandAugment with 2 layers at
magnitude 5 (the official SVHN demo's) with translate_const = cutout_const = 28 // 8 = 3, then a
grey (128) cutout of 14 x 14 (16 x 16 at 32 px), then flip and crop as in the main run (Fashion-
MNIST's clothes flip; the reference's CIFAR path flips too). The torchvision-style policy is the
main run's: flip, crop, RandAugment(2 ops, magnitude 9 of max_magnitude 10).
"""

import ml_collections

from configs import noisy_student_fashion_mnist

RANDAUGMENT_TF = ("randaugment_tf(num_layers=2, magnitude=5, translate_const=3, cutout_const=3)"
                  f"|cutout(size=14, fill=128)|{noisy_student_fashion_mnist.FLIP_CROP}")
SEEDS = (0, 1, 2)


def _variant(noise: str, seed: int) -> str:
  return f"{noise}_seed_{seed}"


def get_config():
  config = noisy_student_fashion_mnist.get_config()
  config.title = "Noisy Student, Fashion-MNIST, 1,000 labels: student noise, 3 seeds"
  ablations = {}
  for seed in SEEDS:
    if seed:  # seed 0 of the torchvision-style policy is the main run's student_1
      ablations[_variant("randaugment", seed)] = {"student.seed": seed}
    ablations[_variant("randaugment_tf", seed)] = {"student.seed": seed,
                                                   "student.augment": RANDAUGMENT_TF}
  with config.unlocked():
    config.ablations = ml_collections.ConfigDict(ablations, sort_keys=False,
                                                 allow_dotted_keys=True)
    config.seed_groups = {
        "randaugment (torchvision-style)": ["student_1"] + [
            _variant("randaugment", s) for s in SEEDS if s],
        "randaugment_tf (official)": [_variant("randaugment_tf", s) for s in SEEDS],
    }
  return config
