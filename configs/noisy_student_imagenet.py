"""Noisy Student on ImageNet, the official recipe: an EfficientNet-B0 teacher, then students
B0, B1, ..., B7 with each size's settings from the official scripts.

  python -m experiments.noisy_student --config=configs/noisy_student_imagenet.py \
      --workdir=runs/ns_imagenet
  # with your own unlabelled collection (any TFDS dataset with 'image' features):
  python -m experiments.noisy_student --config=configs/noisy_student_imagenet.py \
      --config.unlabelled_dataset=tfds:NAME --config.unlabelled_split=train \
      --config.pseudo.per_class=130000 --workdir=runs/ns_imagenet_NAME

A pod-scale run through TFDS (`imagenet2012`, prepared by hand from the ILSVRC files;
$TFDS_DATA_DIR). Settings follow google-research/noisystudent (main.py's flags and
defaults, utils.py, local_scripts/imagenet/train_offline.sh and filter_unlabel.sh, the
EfficientNet resolutions of efficientnet_builder.py); docs/methods.md has the table of
every setting, its official value, ours and its source line. In short: a labelled batch
of 4096 plus unlabelled_ratio x 4096 pseudo-labelled images, RMSProp (decay 0.9, momentum
0.9, epsilon 1e-3) at 0.016 x 4096 / 256, 5 warm-up epochs then x 0.97 every 2.4 epochs
(x train_ratio), weight decay 1e-5, label smoothing 0.1 on the labelled images only, a weight
EMA (0.9999) that evaluates and teaches,
soft pseudo-labels over all 1,000 classes, confidence threshold 0.3, the official
stochastic per-class balancing and the official crops (host_preprocessing='efficientnet':
random crops of the full image for training, the centre res / (res + 32) of the shorter
side for evaluation and the teacher, bicubic). Per student size: resolution, unlabelled
ratio (1 for B0, 3 above), train_ratio (2 up to B4: twice the steps), RandAugment magnitude
(none for B0 and B1; 6, 12, 15, 18, 24, 27 for B2..B7), the size's dropout, stochastic
depth 0.2.

The paper's unlabelled pool is JFT-300M (130,000 images per class after balancing), which is
not public; the default pool here is the ImageNet training images themselves, labels
dropped, balanced to 1,300 per class (the size of ImageNet's classes).
"""

import ml_collections

from configs.common import base_config, tf_efficientnet_optimizer
from effcv_jax import config_utils

NUM_TRAIN_IMAGES = 1281167          # task_info.py
LABELLED_BATCH = 4096               # main.py --train_batch_size default
TRAIN_STEPS = 109474                # main.py --train_steps default: 350 epochs
STEPS_PER_EPOCH = NUM_TRAIN_IMAGES / LABELLED_BATCH
BASE_LR = 0.016 * LABELLED_BATCH / 256

# Student size -> (resolution, unlabelled_ratio, train_ratio, RandAugment magnitude or None,
# dropout): efficientnet_builder.py efficientnet_params and train_offline.sh.
STUDENTS = {
    "b0": (224, 1, 2, None, 0.2),
    "b1": (240, 3, 2, None, 0.2),
    "b2": (260, 3, 2, 6, 0.3),
    "b3": (300, 3, 2, 12, 0.3),
    "b4": (380, 3, 2, 15, 0.4),
    "b5": (456, 3, 1, 18, 0.4),
    "b6": (528, 3, 1, 24, 0.5),
    "b7": (600, 3, 1, 27, 0.5),
}


def stage_settings(resolution: int, unlabelled_ratio: float, train_ratio: int,
                   magnitude: int | None, dropout: float) -> dict:
  """The config overrides of one stage (teacher: unlabelled_ratio 0) in the official recipe.
  The host pre-processing (host_preprocessing='efficientnet') cuts the official crops at the
  stage's resolution and flips; RandAugment runs in the step."""
  augment = "" if magnitude is None else f"randaugment_tf(num_layers=2, magnitude={magnitude})"
  return {
      "model_kwargs.dropout_rate": dropout,
      "image_size": resolution,
      "augment": augment,
      "batch_size": int(LABELLED_BATCH * (1 + unlabelled_ratio)),
      "num_steps": TRAIN_STEPS * train_ratio,
      "optimizer.decay_every_steps": STEPS_PER_EPOCH * 2.4 * train_ratio,
      # main.py adds ratio x the pseudo-labelled mean to the labelled mean; the train step
      # takes the mean over the whole batch, 1 / (1 + ratio) of that.
      "optimizer.grad_scale": 1.0 + unlabelled_ratio,
  }


def get_config():
  teacher = base_config()
  teacher.dataset = "tfds:imagenet2012"
  teacher.train_split = "train"
  teacher.eval_split = "validation"
  teacher.num_classes = 1000
  # preprocessing.py on the host: train on random crops of the full images (bicubic, flip),
  # evaluate and label on the centre res / (res + 32) of the shorter side, at each stage's
  # resolution (image_size, set by stage_settings).
  teacher.host_preprocessing = "efficientnet"
  teacher.input_mean = (0.485, 0.456, 0.406)
  teacher.input_std = (0.229, 0.224, 0.225)
  teacher.model = "efficientnet_b0"
  teacher.model_kwargs.drop_path_rate = 0.2
  teacher.model_kwargs.dropout_rate = 0.2
  teacher.label_smoothing = 0.1
  teacher.ema_decay = 0.9999        # main.py moving_average_decay: evaluation and teaching
  teacher.eval_batch_size = 1000
  teacher.optimizer = tf_efficientnet_optimizer(BASE_LR, 1e-5, STEPS_PER_EPOCH)
  teacher.eval_every = 25000
  teacher.checkpoint_every = 5000
  teacher.log_every = 500
  # The teacher: main.py's defaults without unlabelled data (350 epochs, no RandAugment).
  teacher = config_utils.with_overrides(teacher, stage_settings(224, 0, 1, None, 0.2))

  student = teacher.copy_and_resolve_references()
  student.label_smoothing = 0.0     # labelled_label_smoothing smooths the labelled part only

  config = ml_collections.ConfigDict()
  config.teacher = teacher
  config.teacher_workdir = ""
  config.unlabelled_dataset = "tfds:imagenet2012"
  config.unlabelled_split = "train"
  config.student = student
  sizes = list(STUDENTS)
  config.student_overrides = tuple(
      {"model": f"efficientnet_{size}", **stage_settings(*STUDENTS[size])} for size in sizes)
  config.num_iterations = len(sizes)
  config.unlabelled_ratio = float(STUDENTS["b0"][1])
  config.unlabelled_ratios = tuple(float(STUDENTS[size][1]) for size in sizes)
  config.labelled_label_smoothing = 0.1
  config.pseudo = ml_collections.ConfigDict(dict(
      threshold=0.3, per_class=1300, hard=False, temperature=1.0, store="soft",
      balance="stochastic", batch_size=2048, shard_size=65536, tta="",
      calibrate="", target_precision=0.0))
  return config

