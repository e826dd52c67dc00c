"""What augmentation buys with 1,000 labels: Fashion-MNIST, 100 labels per class, small CNN.

  python -m experiments.sweep --config=configs/augment_ablation.py \
      --workdir=runs/augment_ablation --report=reports/augment_ablation --data_dir=../shared/data

Four variants of one run (same model, steps and optimiser), each adding one noise source:
none -> flip + crop -> + RandAugment(2, 9) -> + CutMix. Evaluated on the official 10,000-image
test split. Writes reports/augment_ablation.{json,png}.
"""

import ml_collections

from configs import fashion_mnist_supervised


def get_config():
  base = fashion_mnist_supervised.get_config()
  base.num_labelled = 1000
  base.model_kwargs.dropout_rate = 0.0
  base.num_steps = 1000
  base.eval_every = 1000
  base.checkpoint_every = 500
  flip_crop = "flip_lr|random_crop(padding=2)"
  randaugment = flip_crop + "|randaugment(num_ops=2, magnitude=9)"
  sweep = ml_collections.ConfigDict()
  sweep.title = "Fashion-MNIST, 1,000 labels, small CNN, 1,000 steps of 128: test accuracy"
  sweep.base = base
  sweep.variants = ml_collections.ConfigDict({
      "none": {"augment": ""},
      "flip_crop": {"augment": flip_crop},
      "randaugment": {"augment": randaugment},
      "randaugment_cutmix": {"augment": randaugment + "|cutmix(alpha=1.0)"},
  }, sort_keys=False)   # run and plot in the order above
  return sweep
