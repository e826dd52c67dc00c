"""Labels-only, FixMatch and Noisy Student on CIFAR-10 with 4,000 labels:
reports/ssl_cifar10_4000.{json,png}.

  python -m experiments.sweep --config=configs/ssl_cifar10_4000_sweep.py \
      --workdir=runs/ssl_cifar10_4000 --report=reports/ssl_cifar10_4000 \
      --data_dir=../shared/data [--only=fixmatch_seed_0,...]

Each variant is configs/ssl_cifar10.py:4000,cpu with that algorithm: the 4,000 labels of
split_seed 0 (the Noisy Student report's), the fixed class-balanced 5,000-image validation split
held out, ResNet-20, 20,000 steps of 32 labelled + 7 x 32 unlabelled images, FixMatch's weak and
strong views, SGD 0.03 Nesterov with cosine decay, evaluated with the weights' moving average
(decay 0.999). The labels-only run trains on the same labelled stream (weak view) alone. Runs
resume from their checkpoints, so a run longer than a session is finished by rerunning the
same command. Noisy Student's row is the student of
reports/noisy_student_cifar10_4000.json (ResNet-20 teacher, ResNet-32 student, the same labels
and validation split, one seed), included, not rerun; noisy_student_fixmatch_teacher's is the
student that this sweep's fixmatch_seed_0 taught (configs/noisy_student_cifar10_ssl_teacher.py,
reports/noisy_student_cifar10_4000_ssl_teacher.json), included the same way.
"""

from configs import ssl_cifar10
from effcv_jax import sweeps

ALGORITHMS = ("supervised", "fixmatch")
SEEDS = {"supervised": [0], "fixmatch": [0]}
NOISY_STUDENT = "reports/noisy_student_cifar10_4000.json:student_1"
NOISY_STUDENT_FIXMATCH = "reports/noisy_student_cifar10_4000_ssl_teacher.json:fixmatch teacher"


def get_config():
  return sweeps.sweep_of_configs(
      "CIFAR-10, 4,000 labels, ResNet-20, 20,000 steps: labels only, FixMatch and Noisy "
      "Student, validation accuracy",
      ssl_cifar10.get_config("4000,cpu,supervised"),
      {name: ssl_cifar10.get_config(f"4000,cpu,{name}") for name in ALGORITHMS},
      trainer="ssl", seeds=SEEDS,
      include_groups={"noisy_student": NOISY_STUDENT,
                      "noisy_student_fixmatch_teacher": NOISY_STUDENT_FIXMATCH})
