"""Semi-supervised CIFAR-10 with 40, 250 or 4,000 labels: FixMatch by default, any algorithm of
effcv_jax/ssl by config.ssl.algorithm.

  python -m experiments.ssl --config=configs/ssl_cifar10.py:4000 \
      --workdir=runs/ssl_cifar10_4000_cpu --data_dir=../shared/data
  # another algorithm with its papers' settings (effcv_jax/ssl/algorithms.py PAPER_DEFAULTS):
  python -m experiments.ssl --config=configs/ssl_cifar10.py:250,cpu,flexmatch \
      --workdir=runs/ssl_cifar10_250_flexmatch --data_dir=../shared/data
  # USB's classic-CV protocol (a GPU/TPU run): WRN-28-2, 2^20 steps of 64 labelled + 7 x 64
  # unlabelled images, SGD 0.03 Nesterov, weight decay 5e-4, cosine decay
  python -m experiments.ssl --config=configs/ssl_cifar10.py:40,gpu --workdir=runs/ssl_c10_40

From cifar10_train.npz: the fixed class-balanced 5,000 validation images of split_seed 0 are
held out, then `labels` class-balanced labelled examples (split_seed 0: for 4,000 labels the
same ones as configs/noisy_student_cifar10_4000.py); every other training image is unlabelled.
The views are FixMatch's (configs/common.py SSL_WEAK_AUGMENT, SSL_STRONG_AUGMENT). Evaluated, as
USB, with the weights' moving average (decay 0.999). Difference from USB: its cosine decay is
lr * cos(7 pi k / 16 K) (ours decays to 0). `cpu` (default): ResNet-20, 32 labelled + 7 x 32
unlabelled images per step, a checkpoint every 250 steps (a FixMatch run spans sessions; the
train times are in reports/ssl_cifar10_4000.json).
"""

from configs import cifar10_supervised
from effcv_jax.ssl.algorithms import PAPER_DEFAULTS

LABELS = (40, 250, 4000)


def get_config(setting: str = "4000,cpu,fixmatch"):
  """setting: 'LABELS[,BUDGET[,ALGORITHM]]', LABELS in 40, 250, 4000, BUDGET 'cpu' or 'gpu'."""
  parts = [part.strip() for part in setting.split(",")]
  labels, budget, algorithm = (parts + ["cpu", "fixmatch"][len(parts) - 1:])[:3]
  if int(labels) not in LABELS or budget not in ("cpu", "gpu"):
    raise ValueError(f"setting must be LABELS[,BUDGET[,ALGORITHM]] with LABELS in {LABELS} and "
                     f"BUDGET 'cpu' or 'gpu', got {setting!r}")
  config = cifar10_supervised.get_config("cpu")
  config.num_labelled = int(labels)
  config.augment = ""  # the SSL step gives labelled images the weak view
  config.ssl.algorithm = algorithm
  config.ssl.update(PAPER_DEFAULTS[algorithm])
  config.ssl.mu = 7
  config.optimizer.update(dict(name="sgd", momentum=0.9, nesterov=True, weight_decay=5e-4,
                               schedule="cosine", warmup_steps=0))
  config.ema_decay = 0.999
  if budget == "gpu":
    config.model = "wrn28_2"
    config.batch_size = 64
    config.num_steps = 2 ** 20
    config.optimizer.lr = 0.03
    config.eval_every = config.checkpoint_every = 5000
  else:
    config.model = "resnet20"
    config.batch_size = 32
    config.num_steps = 20000
    config.optimizer.lr = 0.03
    config.eval_every = 1000
    config.checkpoint_every = 250
  config.log_every = 100
  return config
