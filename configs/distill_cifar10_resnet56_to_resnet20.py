"""Distillation on CIFAR-10 with 5,000 labels: the published ResNet-56 teaches a ResNet-20.

  python -m experiments.distill --config=configs/distill_cifar10_resnet56_to_resnet20.py \
      --workdir=runs/distill_cifar10 --report=reports/distill --data_dir=../shared/data

Teacher: the CIFAR-10 ResNet-56 of the data directory (weights/cifar10_resnet56_torch_names.npz,
93.6 % published test accuracy), imported, not trained (configs/cifar10_resnet56_pretrained.py).
Students, all from scratch, the same steps and batch size (the same CPU budget per
step; the teacher's outputs are computed once, on clean images, before training):
  labels_only          ResNet-20 on the 5,000 labels (cross-entropy only);
  distilled            ResNet-20 on the 5,000 labels + the other 40,000 training images as
                       unlabelled data (distillation term only), batches 1 : 3;
  labels_only_resnet8, distilled_resnet8: the same for a ResNet-8 (78k parameters, 3.5x
                       fewer than ResNet-20, 11x fewer than the teacher): compression.
Validation: the class-balanced 5,000 held out of CIFAR-10 train (split_seed 0). Caveat: the
published teacher was trained on all 50,000 training images, the hold-out included, so its
own hold-out accuracy (about 100 %) is not a test accuracy; the students never see the
hold-out. `:STEPS` sets the students' steps (default 800).
"""

import ml_collections

from configs import cifar10_resnet56_pretrained, cifar10_supervised


def get_config(steps: str = "800"):
  teacher = cifar10_resnet56_pretrained.get_config("56")

  student = cifar10_supervised.get_config("cpu")
  student.num_labelled = 5000
  student.model = "resnet20"
  student.num_steps = int(steps)
  student.batch_size = 64
  student.optimizer.lr = 0.05
  student.optimizer.weight_decay = 5e-4
  student.optimizer.warmup_steps = 50
  student.eval_every = student.num_steps
  student.checkpoint_every = 250
  student.log_every = 50

  config = ml_collections.ConfigDict()
  config.teacher = teacher
  config.title = "CIFAR-10, 5,000 labels: students of the same budget, validation accuracy"
  config.teacher_workdirs = ()       # finished runs to use as teachers instead (an ensemble)
  config.teacher_probs_dir = ""      # default WORKDIR/teacher_probs
  config.student = student
  config.distill = ml_collections.ConfigDict(dict(
      alpha=0.5,                     # labelled examples: alpha CE + (1 - alpha) T^2 KL
      temperature=4.0,
      teaching="clean",              # 'clean' | 'consistent'
      ensemble="soft",               # several teachers: 'soft' | 'hard'
      teacher_outputs="precomputed", # 'precomputed' (once, clean images) | 'live'
      use_unlabelled=True,
      unlabelled_ratio=3.0,          # unlabelled : labelled examples per batch
      batch_size=500, shard_size=5000))

  # Runs of experiments.distill: {name: {"mode": "distill" | "labels_only", overrides}}.
  config.runs = ml_collections.ConfigDict({
      "labels_only": {"mode": "labels_only"},
      "distilled": {"mode": "distill"},
      "labels_only_resnet8": {"mode": "labels_only", "student.model": "resnet8"},
      "distilled_resnet8": {"mode": "distill", "student.model": "resnet8"},
  }, sort_keys=False, allow_dotted_keys=True)
  return config
