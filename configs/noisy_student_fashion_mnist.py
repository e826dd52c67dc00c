"""Noisy Student on Fashion-MNIST with 1,000 labels (100 per class); official test split.

  python -m experiments.noisy_student --config=configs/noisy_student_fashion_mnist.py \
      --workdir=runs/ns_fashion_mnist/main --data_dir=../shared/data

The ablations of the paper (no noise, hard labels, no filtering/balancing, equal-size
student), each a one-iteration variant of this config that reuses its teacher, and the
report reports/noisy_student_fashion_mnist.{json,png}:

  python -m experiments.noisy_student_report --config=configs/noisy_student_fashion_mnist.py \
      --workdir=runs/ns_fashion_mnist --report=reports/noisy_student_fashion_mnist \
      --data_dir=../shared/data

Teacher: a small CNN (conv 16-16-32-32, dense 128) on the 1,000 labels with flip + crop.
It labels the other 59,000 training images (soft labels, clean images). Student: a
larger CNN (conv 32-32-64-64, dense 256) on labelled : pseudo-labelled = 1 : 3 batches,
noised with RandAugment(2, 9), flip + crop and dropout 0.5. Pseudo-labels below
confidence 0.3 are dropped and each class keeps its 4,000 most confident (classes with
fewer are filled up by repetition), as the paper does on ImageNet. Iteration 2: the
first student labels the pool again and teaches a second student of the same size.
The `long_*` ablations train the student five times longer (6,000 steps), equal-size or
larger (or wider still: `long_wide_student`), noised or not; `long_equal_student` runs a
second iteration too. Run one with `--only=long_equal_student` (one core: about 35 min per
equal-size student, 95 min for the larger one, 2.5 h for the wide one).
"""

import ml_collections

from configs.common import base_config

FLIP_CROP = "flip_lr|random_crop(padding=2)"
RANDAUGMENT = FLIP_CROP + "|randaugment(num_ops=2, magnitude=9)"
_NO_NOISE = {"student.augment": "", "student.model_kwargs.dropout_rate": 0.0}
_EQUAL = {"student.model_kwargs.widths": (16, 32), "student.model_kwargs.hidden": 128}
_LONG = {"student.num_steps": 6000, "student.eval_every": 1500,
         "student.checkpoint_every": 500}


def get_config():
  teacher = base_config()
  teacher.dataset = "npz:fashion_mnist.npz"
  teacher.num_labelled = 1000
  teacher.eval_split = "test"
  teacher.input_mean = (0.2860,)
  teacher.input_std = (0.3530,)
  teacher.model = "cnn_small"
  teacher.model_kwargs.widths = (16, 32)
  teacher.model_kwargs.hidden = 128
  teacher.model_kwargs.dropout_rate = 0.0
  teacher.augment = FLIP_CROP
  teacher.batch_size = 128
  teacher.num_steps = 1500
  teacher.optimizer.lr = 0.05
  teacher.optimizer.warmup_steps = 100
  teacher.log_every = 100
  teacher.eval_every = 1500
  teacher.checkpoint_every = 500

  student = teacher.copy_and_resolve_references()
  student.model_kwargs.widths = (32, 64)
  student.model_kwargs.hidden = 256
  student.model_kwargs.dropout_rate = 0.5
  student.augment = RANDAUGMENT
  student.num_steps = 1200
  student.eval_every = 1200

  config = ml_collections.ConfigDict()
  config.title = "Noisy Student, Fashion-MNIST, 1,000 labels: test accuracy"
  config.teacher = teacher
  config.teacher_workdir = ""
  config.student = student
  config.student_overrides = ()
  config.num_iterations = 2           # student_1 teaches student_2 (same size)
  config.unlabelled_ratio = 3.0
  config.pseudo = ml_collections.ConfigDict(dict(
      threshold=0.3, per_class=4000, hard=False, temperature=1.0, store="soft",
      batch_size=1000, shard_size=10000, tta=""))

  # Ablations for experiments.noisy_student_report: {name: {dotted.key: value}}, each
  # run in WORKDIR/<name> with the teacher of WORKDIR/main.
  config.ablations = ml_collections.ConfigDict({
      "no_noise": dict(_NO_NOISE),
      "hard_labels": {"pseudo.hard": True},
      "no_filter_no_balance": {"pseudo.threshold": 0.0, "pseudo.per_class": 0},
      "equal_student": dict(_EQUAL),
      # Five times the student budget (6,000 steps: about 13 passes over the 40,000
      # selected pseudo-labels), noised and not: noise needs a student trained long
      # enough to fit through it.
      # Two iterations: the first student labels the pool again for a second one.
      "long_equal_student": {**_LONG, **_EQUAL, "num_iterations": 2},
      "long_equal_student_no_noise": {**_LONG, **_EQUAL, **_NO_NOISE},
      "long_student": dict(_LONG),
      "long_student_no_noise": {**_LONG, **_NO_NOISE},
      # A wider noised student (CNN 48-96, dense 384; about 2.3x the larger student's
      # compute): a larger student gained 0.8 over the equal one, and noise helped it more.
      "long_wide_student": {**_LONG, "student.model_kwargs.widths": (48, 96),
                            "student.model_kwargs.hidden": 384},
      # The larger student's test loss rose over its last 1,500 steps (0.431 -> 0.450)
      # while accuracy stalled: it starts to fit the pseudo-labels' errors. More input
      # noise (a 14x14 cutout after RandAugment), or more pseudo-labelled data (the whole
      # pool, unfiltered and unbalanced: the paper's filtering ablation at this length).
      "long_student_cutout": {**_LONG, "student.augment": RANDAUGMENT + "|cutout(size=14)"},
      "long_student_no_filter_no_balance": {**_LONG, "pseudo.threshold": 0.0,
                                            "pseudo.per_class": 0},
  }, sort_keys=False, allow_dotted_keys=True)
  return config
