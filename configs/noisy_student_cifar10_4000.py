"""Noisy Student on CIFAR-10 with 4,000 labels; 5,000 validation images held out.

  python -m experiments.noisy_student --config=configs/noisy_student_cifar10_4000.py \
      --workdir=runs/ns_cifar10_4000 --data_dir=../shared/data
  # the same loop at a GPU budget (WRN-28-2 teacher, WRN-28-2 / WRN-28-4 students):
  python -m experiments.noisy_student --config=configs/noisy_student_cifar10_4000.py:gpu \
      --workdir=runs/ns_cifar10_4000_gpu --data_dir=../shared/data

From cifar10_train.npz: a class-balanced 5,000 held out for validation (split_seed 0),
4,000 labels (400 per class), the other 41,000 images unlabelled. The teacher is trained
on the labels with flip + crop; it labels the pool (soft labels, clean images); pseudo-
labels below confidence 0.3 are dropped and each class keeps its 3,000 most confident
(filled up by repetition). The student, one size larger, learns from labelled :
pseudo-labelled = 1 : 3 batches noised with RandAugment(2, 9), flip + crop, dropout and
stochastic depth. `cpu` (default): ResNet-20 teacher, ResNet-32 student; expected result
and runtime: reports/noisy_student_cifar10_4000.json. It resumes where it stopped.

Ablations for experiments.noisy_student_report (WORKDIR/<name>, the teacher of WORKDIR/main):
`randaugment_tf`, the student noised with the official Noisy Student RandAugment instead of
the torchvision-style one: the reference's 32 px path as in its SVHN demo (2 layers at
magnitude 5, translate and cutout constants 4, then a 16 px grey cutout;
configs/noisy_student_svhn.py), then flip + crop as the main student; `no_noise`, the student
without noise (no augmentation, dropout or stochastic depth; as the Fashion-MNIST report's
no_noise), which separates self-training from the noise in the robustness reports.
"""

import ml_collections

from configs import cifar10_supervised, noisy_student_svhn

FLIP_CROP = "flip_lr|random_crop(padding=4)"
RANDAUGMENT = FLIP_CROP + "|randaugment(num_ops=2, magnitude=9)"
RANDAUGMENT_TF = f"{noisy_student_svhn.RANDAUGMENT}|{FLIP_CROP}"


def get_config(budget: str = "cpu"):
  if budget not in ("cpu", "gpu"):
    raise ValueError(f"budget must be 'cpu' or 'gpu', got {budget!r}")
  teacher = cifar10_supervised.get_config("cpu")
  teacher.num_labelled = 4000
  teacher.optimizer.weight_decay = 5e-4
  teacher.optimizer.warmup_steps = 200
  teacher.checkpoint_every = 250
  if budget == "cpu":
    teacher.model, student_model = "resnet20", "resnet32"
    teacher.num_steps, student_steps = 6000, 12000
  else:
    teacher.model, student_model = "wrn28_2", "wrn28_4"
    teacher.num_steps, student_steps = 50000, 200000
  teacher.eval_every = teacher.num_steps // 4

  student = teacher.copy_and_resolve_references()
  student.model = student_model
  student.model_kwargs.dropout_rate = 0.3
  student.model_kwargs.drop_path_rate = 0.2
  student.augment = RANDAUGMENT
  student.num_steps = student_steps
  student.eval_every = student_steps // 4

  config = ml_collections.ConfigDict()
  config.title = f"CIFAR-10, 4,000 labels, {teacher.model} -> {student_model}: validation accuracy"
  config.teacher = teacher
  config.teacher_workdir = ""
  config.student = student
  config.student_overrides = ()
  config.num_iterations = 1
  config.unlabelled_ratio = 3.0
  config.pseudo = ml_collections.ConfigDict(dict(
      threshold=0.3, per_class=3000, hard=False, temperature=1.0, store="soft",
      batch_size=1000, shard_size=10000, tta="",
      calibrate="", target_precision=0.0))
  config.ablations = ml_collections.ConfigDict(
      {"randaugment_tf": {"student.augment": RANDAUGMENT_TF},
       "no_noise": {"student.augment": "", "student.model_kwargs.dropout_rate": 0.0,
                    "student.model_kwargs.drop_path_rate": 0.0}},
      allow_dotted_keys=True)
  return config
