"""Noisy Student on SVHN, the official demo: EfficientNet-B0 (small-image variant) teacher and
student, SVHN 'extra' as the unlabelled pool.

  python -m experiments.noisy_student --config=configs/noisy_student_svhn.py \
      --workdir=runs/ns_svhn

A GPU/TPU run through TFDS (`svhn_cropped`: train 73,257 labelled, extra 531,131
unlabelled, test 26,032); prepare it once on a machine with internet
(`tfds build svhn_cropped --file_format=array_record`) and point $TFDS_DATA_DIR at it.
Settings follow google-research/noisystudent's SVHN demo (local_scripts/svhn/svhn_offline.sh
and filter_unlabel.sh, main.py's defaults, task_info.py, preprocessing.py's 32 px path);
docs/methods.md has the table of every setting, its official value, ours and its source line.
The model is B0 with the stem's stride 2 and stages 2-3 at stride 1 (`small_image`, a 4x4
final map), dropout 0.2 (B0's) and stochastic depth 0.2; batches of 128 labelled + 640
pseudo-labelled images; RMSProp at 0.016 x 128 / 256 decayed by 0.97 so that it reaches
0.0002 (--final_base_lr) at the last step, after 5 warm-up epochs; weight decay 1e-4; a
weight EMA (0.9999) that evaluates and teaches; label smoothing 0.1 on the labelled images only; RandAugment (2 ops, magnitude 5, with the small-
image translate and cutout constants 4), a 16 px grey cutout and a reflect-padded 4 px crop,
no flip; soft pseudo-labels at confidence >= 0.3, balanced stochastically to 53,113 per class.
4,000 training images are held out as the official dev set. The official teacher is a
downloaded checkpoint whose recipe the repository does not give; ours is trained with the
student's settings on the labelled images alone, with the crop only.
"""

import math

import ml_collections

from configs.common import base_config, tf_efficientnet_optimizer
from effcv_jax import config_utils

NUM_TRAIN_IMAGES = 73257 - 4000     # task_info.py: 4,000 held out as dev
LABELLED_BATCH = 128                # svhn_offline.sh --train_batch_size
UNLABELLED_RATIO = 5                # svhn_offline.sh --unlabel_ratio
TRAIN_STEPS = 109474                # main.py --train_steps default
STEPS_PER_EPOCH = NUM_TRAIN_IMAGES / LABELLED_BATCH
BASE_LR = 0.016 * LABELLED_BATCH / 256
FINAL_LR = 0.0002                   # svhn_offline.sh --final_base_lr
# main.py: with --final_base_lr the decay period is the epochs after warm-up divided by the
# number of x 0.97 decays from the base to the final rate.
DECAY_EPOCHS = ((TRAIN_STEPS * LABELLED_BATCH / NUM_TRAIN_IMAGES - 5)
                / (math.log(FINAL_LR / 0.016) / math.log(0.97)))
SMALL_IMAGE_CROP = "random_crop(padding=4, pad_mode='reflect')"
RANDAUGMENT = ("randaugment_tf(num_layers=2, magnitude=5, translate_const=4, cutout_const=4)"
               "|cutout(size=16, fill=128)")


def get_config():
  teacher = base_config()
  teacher.dataset = "tfds:svhn_cropped"
  teacher.train_split = "train"
  teacher.eval_split = "test"
  teacher.num_holdout = 4000
  teacher.num_classes = 10
  teacher.input_mean = (0.4376821, 0.4437697, 0.47280442)
  teacher.input_std = (0.19803012, 0.20101562, 0.19703614)
  teacher.model = "efficientnet_b0"
  teacher.model_kwargs.small_image = True
  teacher.model_kwargs.dropout_rate = 0.2
  teacher.model_kwargs.drop_path_rate = 0.2
  teacher.augment = SMALL_IMAGE_CROP
  teacher.label_smoothing = 0.1
  teacher.ema_decay = 0.9999        # main.py moving_average_decay: evaluation and teaching
  teacher.batch_size = LABELLED_BATCH
  teacher.eval_batch_size = 1024
  teacher.num_steps = TRAIN_STEPS
  teacher.optimizer = tf_efficientnet_optimizer(BASE_LR, 1e-4, STEPS_PER_EPOCH, DECAY_EPOCHS)
  teacher.eval_every = 10000
  teacher.checkpoint_every = 1000

  student = config_utils.with_overrides(teacher, {
      "augment": f"{RANDAUGMENT}|{SMALL_IMAGE_CROP}",
      "batch_size": LABELLED_BATCH * (1 + UNLABELLED_RATIO),
      # main.py adds ratio x the pseudo-labelled mean to the labelled mean; the train step
      # takes the mean over the whole batch, 1 / (1 + ratio) of that.
      "optimizer.grad_scale": float(1 + UNLABELLED_RATIO),
      "label_smoothing": 0.0,       # labelled_label_smoothing smooths the labelled part only
  })

  config = ml_collections.ConfigDict()
  config.teacher = teacher
  config.teacher_workdir = ""
  config.unlabelled_dataset = "tfds:svhn_cropped"
  config.unlabelled_split = "extra"
  config.student = student
  config.student_overrides = ()
  config.num_iterations = 1
  config.unlabelled_ratio = float(UNLABELLED_RATIO)
  config.labelled_label_smoothing = 0.1
  config.pseudo = ml_collections.ConfigDict(dict(
      threshold=0.3, per_class=53113, hard=False, temperature=1.0, store="soft",
      balance="stochastic", batch_size=2048, shard_size=65536, tta="",
      calibrate="", target_precision=0.0))
  return config
