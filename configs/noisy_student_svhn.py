"""Noisy Student on SVHN: EfficientNet-B0 teacher and student, SVHN 'extra' as the pool.

  python -m experiments.noisy_student --config=configs/noisy_student_svhn.py \
      --workdir=runs/ns_svhn

A GPU/TPU run through TFDS (`svhn_cropped`: train 73,257 labelled, extra 531,131
unlabelled, test 26,032); prepare it once on a machine with internet
(`tfds build svhn_cropped --file_format=array_record`) and point $TFDS_DATA_DIR at it.
The paper's recipe (Xie et al. 2020, section 3 and the official repository's SVHN
example): soft pseudo-labels from a teacher that sees clean images, confidence
threshold 0.3, per-class balancing, an unlabelled : labelled batch ratio of 5, and a
student noised with RandAugment (2 ops, magnitude 5 of 10), dropout 0.5 on the
classifier and stochastic depth (survival 0.8 at the last block). `stem_stride=1`
keeps a 2x2 final feature map on 32x32 digits. Optimiser, steps and learning rates
are this project's choices (SGD with Nesterov momentum, cosine schedule).
"""

import ml_collections

from configs.common import base_config


def get_config():
  teacher = base_config()
  teacher.dataset = "tfds:svhn_cropped"
  teacher.train_split = "train"
  teacher.eval_split = "test"
  teacher.num_classes = 10
  teacher.input_mean = (0.4377, 0.4438, 0.4728)
  teacher.input_std = (0.1980, 0.2010, 0.1970)
  teacher.model = "efficientnet_b0"
  teacher.model_kwargs.stem_stride = 1
  teacher.model_kwargs.dropout_rate = 0.2
  teacher.model_kwargs.drop_path_rate = 0.2
  teacher.augment = "random_crop(padding=4)|randaugment(num_ops=2, magnitude=5)"
  teacher.batch_size = 512
  teacher.eval_batch_size = 1024
  teacher.num_steps = 20000
  teacher.optimizer.lr = 0.2
  teacher.optimizer.weight_decay = 5e-4
  teacher.optimizer.warmup_steps = 1000
  teacher.eval_every = 5000
  teacher.checkpoint_every = 1000

  student = teacher.copy_and_resolve_references()
  student.model_kwargs.dropout_rate = 0.5
  student.num_steps = 60000
  student.eval_every = 10000

  config = ml_collections.ConfigDict()
  config.teacher = teacher
  config.teacher_workdir = ""
  config.unlabelled_dataset = "tfds:svhn_cropped"
  config.unlabelled_split = "extra"
  config.student = student
  config.student_overrides = ()
  config.num_iterations = 2
  config.unlabelled_ratio = 5.0
  config.pseudo = ml_collections.ConfigDict(dict(
      threshold=0.3, per_class=50000, hard=False, temperature=1.0, store="soft",
      batch_size=2048, shard_size=65536, tta=""))
  return config
