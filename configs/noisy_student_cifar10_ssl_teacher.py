"""Noisy Student from a semi-supervised teacher, CIFAR-10 with 4,000 labels: the FixMatch run of
configs/ssl_cifar10_4000_sweep.py labels the unlabelled images and teaches the Noisy Student
report's student (reports/noisy_student_cifar10_4000_ssl_teacher.{json,png}).

  # the teacher, if its run is not in runs/ yet:
  python -m experiments.sweep --config=configs/ssl_cifar10_4000_sweep.py \
      --workdir=runs/ssl_cifar10_4000 --report=reports/ssl_cifar10_4000 \
      --data_dir=../shared/data --only=fixmatch_seed_0
  python -m experiments.noisy_student_report \
      --config=configs/noisy_student_cifar10_ssl_teacher.py \
      --workdir=runs/ns_cifar10_4000_ssl_teacher \
      --report=reports/noisy_student_cifar10_4000_ssl_teacher --data_dir=../shared/data \
      [--only=main | --only=student_seed_1,student_seed_2]

Teacher: the sweep's `fixmatch_seed_0` run (ResNet-20, 20,000 steps of 32 labelled + 224
unlabelled images), reused as it is; its weights' moving average labels the 41,000 unlabelled
images. Student, pseudo-label selection and split: configs/noisy_student_cifar10_4000.py's `cpu`
loop (ResNet-32 with dropout 0.3, stochastic depth 0.2, flip, crop and RandAugment(2, 9);
12,000 steps of 128, labelled : pseudo-labelled 1 : 3; soft labels above confidence 0.3, the
3,000 most confident per class; the fixed 5,000-image validation split), one iteration. The
main run's student is seed 0; student_seed_1 and student_seed_2 repeat it at other seeds.
"""

from configs import noisy_student_cifar10_4000, ssl_cifar10_4000_sweep
from configs.noisy_student_fashion_mnist_ssl_teacher import with_ssl_teacher

TEACHER_RUN = "fixmatch_seed_0"


def get_config():
  config = noisy_student_cifar10_4000.get_config("cpu")
  config.title = ("Noisy Student, CIFAR-10, 4,000 labels, fixmatch teacher, resnet20 -> "
                  "resnet32: validation accuracy")
  return with_ssl_teacher(config, ssl_cifar10_4000_sweep.get_config(), TEACHER_RUN,
                          "runs/ssl_cifar10_4000")
