"""Semi-supervised Fashion-MNIST with the Noisy Student report's 1,000 labels, test split and
student network (configs/noisy_student_fashion_mnist.py): one variant per algorithm of
effcv_jax/ssl, chosen by the config argument (default fixmatch).

  python -m experiments.ssl --config=configs/ssl_fashion_mnist_1000.py:softmatch \
      --workdir=runs/ssl_fashion_mnist_1000/softmatch --data_dir=../shared/data
  # every variant, each in its own workdir:
  for a in supervised pseudo_label mean_teacher uda fixmatch flexmatch freematch softmatch; do
    python -m experiments.ssl --config=configs/ssl_fashion_mnist_1000.py:$a \
        --workdir=runs/ssl_fashion_mnist_1000/$a --data_dir=../shared/data
  done

Data as the Noisy Student report's: npz:fashion_mnist.npz, the class-balanced 1,000 labels of
split_seed 0 (100 per class; no hold-out, so the same labelled examples), every other
training image unlabelled, evaluated on the official 10,000-image test split. Network: its
student's small CNN (conv 32-32-64-64, dense 256), without the student's dropout (the
algorithms' noise is the strong view; --config.model_kwargs.dropout_rate=0.5 restores it).
Views: the report's flip + crop (padding 2) as the weak view; + FixMatch's RandAugment (2 ops,
random magnitude in [1, 10], each applied with p 0.5) and a 14 px cutout (half the side, as
FixMatch's 16 px on 32) as the strong one. Each algorithm's settings are its PAPER_DEFAULTS
(USB's); optimiser as USB's classic CV (SGD 0.03, Nesterov momentum 0.9, weight decay 5e-4,
cosine decay), evaluated with its weights' moving average (decay 0.999, as USB); 16 labelled
+ 7 x 16 unlabelled images a step, 6,000 steps (each run's time: train_seconds in
reports/ssl_fashion_mnist_1000.json).
"""

from configs import noisy_student_fashion_mnist
from effcv_jax.ssl.algorithms import ALGORITHMS, PAPER_DEFAULTS

# The config argument's values: one variant per algorithm.
VARIANTS = ALGORITHMS
WEAK_AUGMENT = noisy_student_fashion_mnist.FLIP_CROP
STRONG_AUGMENT = (WEAK_AUGMENT + "|randaugment(num_ops=2, magnitude=10, magnitude_min=1, "
                  "p=0.5)|cutout(size=14, fill=127)")


def get_config(algorithm: str = "fixmatch"):
  """The run of `algorithm` (one of VARIANTS)."""
  algorithm = algorithm.strip()
  if algorithm not in VARIANTS:
    raise ValueError(f"the config argument must be one of {', '.join(VARIANTS)}, got "
                     f"{algorithm!r}")
  config = noisy_student_fashion_mnist.get_config().student
  config.model_kwargs.dropout_rate = 0.0
  config.augment = ""  # the SSL step gives labelled images the weak view
  config.ssl.algorithm = algorithm
  config.ssl.update(PAPER_DEFAULTS[algorithm])
  config.ssl.update(dict(mu=7, weak_augment=WEAK_AUGMENT, strong_augment=STRONG_AUGMENT))
  config.batch_size = 16
  config.num_steps = 6000
  config.optimizer.update(dict(name="sgd", lr=0.03, momentum=0.9, nesterov=True,
                               weight_decay=5e-4, schedule="cosine", warmup_steps=0))
  config.ema_decay = 0.999
  config.log_every = 100
  config.eval_every = 1500
  config.checkpoint_every = 500
  return config
