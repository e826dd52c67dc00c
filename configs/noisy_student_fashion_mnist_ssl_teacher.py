"""Noisy Student from a semi-supervised teacher, Fashion-MNIST with 1,000 labels: the SoftMatch
run of configs/ssl_fashion_mnist_1000_sweep.py labels the other 59,000 training images and
teaches a noised student of its own size; 3 student seeds.

  # the teacher, if its run is not in runs/ yet:
  python -m experiments.sweep --config=configs/ssl_fashion_mnist_1000_sweep.py \
      --workdir=runs/ssl_fashion_mnist_1000 --report=reports/ssl_fashion_mnist_1000 \
      --data_dir=../shared/data --only=softmatch_seed_1
  python -m experiments.noisy_student_report \
      --config=configs/noisy_student_fashion_mnist_ssl_teacher.py \
      --workdir=runs/ns_fashion_mnist_ssl_teacher \
      --report=reports/noisy_student_fashion_mnist_ssl_teacher --data_dir=../shared/data
  # another run of the sweep as the teacher (here SoftMatch with four times the steps):
  python -m experiments.noisy_student_report \
      --config=configs/noisy_student_fashion_mnist_ssl_teacher.py:softmatch_24k_seed_0 \
      --workdir=runs/ns_fashion_mnist_softmatch_24k_teacher \
      --report=reports/noisy_student_fashion_mnist_softmatch_24k_teacher \
      --data_dir=../shared/data

Teacher: the sweep's `softmatch_seed_1` run, reused as it is (config.teacher_workdir; its config
must be the sweep's): the students' small CNN (conv 32-32-64-64, dense 256) trained by SoftMatch
on the same 1,000 labels and the unlabelled rest, 6,000 steps of 16 + 112 images; its weights'
moving average labels the pool. Student and pseudo-labels: configs/noisy_student_fashion_mnist.py's
(soft labels of the clean images, no threshold; the same network with dropout 0.5 and flip, crop
and RandAugment(2, 9); 6,000 steps of 128, labelled : pseudo-labelled batches 1 : 3), one
iteration. The whole pipeline sees the teacher's images and the student's: twice the training
images of one semi-supervised run. Evaluated on the official test split, which neither stage
tunes on.
"""

import ml_collections

from configs import noisy_student_fashion_mnist, ssl_fashion_mnist_1000_sweep
from effcv_jax import sweeps

TEACHER_RUN = "softmatch_seed_1"
SEEDS = (0, 1, 2)


def with_ssl_teacher(config: ml_collections.ConfigDict, sweep: ml_collections.ConfigDict,
                     run: str, sweep_workdir: str,
                     seeds: tuple[int, ...] = SEEDS) -> ml_collections.ConfigDict:
  """The Noisy Student `config` with run `run` of the semi-supervised `sweep` (trained in
  sweep_workdir/run) as its reused teacher, one iteration, and one student per seed: seed 0
  is the main run's student_1, the others ablations student_seed_S, all in the seed group
  named after the run's variant ("softmatch teacher" for softmatch_seed_1)."""
  config.teacher = sweeps.run_config(sweep, run)
  config.teacher_workdir = f"{sweep_workdir}/{run}"
  config.num_iterations = 1
  other_seeds = {f"student_seed_{seed}": seed for seed in seeds if seed}
  config.ablations = ml_collections.ConfigDict(
      {name: {"student.seed": seed} for name, seed in other_seeds.items()},
      sort_keys=False, allow_dotted_keys=True)
  with config.unlocked():
    config.seed_groups = {f"{sweeps.variant_of(run)} teacher": ["student_1", *other_seeds]}
  return config


def get_config(teacher_run: str = TEACHER_RUN):
  """The students of `teacher_run`, a run of the sweep (`softmatch_seed_1` unless the config
  string names another, e.g. `...ssl_teacher.py:softmatch_24k_seed_0`); the seed group is
  named after the run's variant."""
  config = noisy_student_fashion_mnist.get_config()
  config.title = (f"Noisy Student, Fashion-MNIST, 1,000 labels, "
                  f"{sweeps.variant_of(teacher_run)} teacher: test accuracy, 3 student seeds")
  return with_ssl_teacher(config, ssl_fashion_mnist_1000_sweep.get_config(), teacher_run,
                          "runs/ssl_fashion_mnist_1000")
