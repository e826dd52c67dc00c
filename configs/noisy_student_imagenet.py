"""Noisy Student on ImageNet: EfficientNet teacher, larger EfficientNet students.

  python -m experiments.noisy_student --config=configs/noisy_student_imagenet.py \
      --workdir=runs/ns_imagenet
  # with your own unlabelled collection (any TFDS dataset with 'image' features):
  python -m experiments.noisy_student --config=configs/noisy_student_imagenet.py \
      --config.unlabelled_dataset=tfds:NAME --config.unlabelled_split=train \
      --config.pseudo.per_class=130000 --workdir=runs/ns_imagenet_NAME

A pod-scale run through TFDS (`imagenet2012`, prepared by hand from the ILSVRC files;
$TFDS_DATA_DIR). Images are resized on the host (shorter side 256, centre crop) and the
model sees input_size (224 for B0). The paper (Xie et al. 2020) trains an EfficientNet-B7
teacher and an L2 student on 300M JFT images, which are not public; the default pool
here is the ImageNet training images themselves, labels dropped, so point
unlabelled_dataset at a large collection to reproduce the paper's setting. From the
paper: soft pseudo-labels on clean images, confidence threshold 0.3, per-class
balancing (130K per class on JFT; 1,300 here, the size of ImageNet's classes),
RandAugment with 2 ops at magnitude 27 (of 30), dropout 0.5 and stochastic depth
(survival 0.8) on the student, the student larger than the teacher at each iteration
(B0 -> B1 -> B2 here, via student_overrides). Optimiser and schedule are this
project's (SGD, Nesterov, cosine, 0.1 per 256 images).
"""

import ml_collections

from configs.common import base_config

RANDAUGMENT = "flip_lr|random_resized_crop|randaugment(num_ops=2, magnitude=27, max_magnitude=30)"


def get_config():
  teacher = base_config()
  teacher.dataset = "tfds:imagenet2012"
  teacher.train_split = "train"
  teacher.eval_split = "validation"
  teacher.num_classes = 1000
  teacher.image_size = 256
  teacher.input_size = 224
  teacher.input_mean = (0.485, 0.456, 0.406)
  teacher.input_std = (0.229, 0.224, 0.225)
  teacher.model = "efficientnet_b0"
  teacher.model_kwargs.drop_path_rate = 0.2
  teacher.augment = "flip_lr|random_resized_crop"
  teacher.label_smoothing = 0.1
  teacher.batch_size = 1024
  teacher.eval_batch_size = 1000
  teacher.num_steps = 437500                  # 350 epochs of 1.28M images
  teacher.optimizer.lr = 0.4
  teacher.optimizer.weight_decay = 4e-5
  teacher.optimizer.warmup_steps = 6250       # 5 epochs
  teacher.eval_every = 25000
  teacher.checkpoint_every = 5000
  teacher.log_every = 500

  student = teacher.copy_and_resolve_references()
  student.augment = RANDAUGMENT
  student.model_kwargs.dropout_rate = 0.5
  student.model_kwargs.drop_path_rate = 0.2
  student.label_smoothing = 0.0

  config = ml_collections.ConfigDict()
  config.teacher = teacher
  config.teacher_workdir = ""
  config.unlabelled_dataset = "tfds:imagenet2012"
  config.unlabelled_split = "train"
  config.student = student
  # Equal-or-larger students: iteration i trains efficientnet_b<i>.
  config.student_overrides = ({"model": "efficientnet_b1"}, {"model": "efficientnet_b2"})
  config.num_iterations = 2
  config.unlabelled_ratio = 3.0
  config.pseudo = ml_collections.ConfigDict(dict(
      threshold=0.3, per_class=1300, hard=False, temperature=1.0, store="topk", top_k=10,
      batch_size=2048, shard_size=65536, tta=""))
  return config
