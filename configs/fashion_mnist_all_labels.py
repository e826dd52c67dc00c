"""The ceiling of the 1,000-label Fashion-MNIST reports: their student network trained on all
60,000 labels (reports/fashion_mnist_all_labels.{json,png}).

  python -m experiments.sweep --config=configs/fashion_mnist_all_labels.py \
      --workdir=runs/fashion_mnist_all_labels --report=reports/fashion_mnist_all_labels \
      --data_dir=../shared/data

The network, schedule and test split of the semi-supervised and Noisy Student reports (the small
CNN, conv 32-32-64-64 and dense 256; 6,000 steps of 128, 13 passes over the labels; the official
10,000-image test split), with every training label:
  student_noise  the Noisy Student student's noise (flip, crop, RandAugment(2, 9), dropout 0.5),
                 configs/noisy_student_fashion_mnist.py's student with true labels for its
                 pseudo-labels;
  flip_crop      flip and crop only, no dropout (the semi-supervised runs' weak view).
One seed each: a reference for what 1,000 labels and 59,000 unlabelled images can reach with this
network and budget, not a result of its own.
"""

import ml_collections

from configs import noisy_student_fashion_mnist


def get_config():
  base = noisy_student_fashion_mnist.get_config().student
  base.num_labelled = -1
  sweep = ml_collections.ConfigDict()
  sweep.title = ("Fashion-MNIST, all 60,000 labels, small CNN, 6,000 steps of 128: "
                 "test accuracy")
  sweep.base = base
  sweep.variants = ml_collections.ConfigDict({
      "student_noise": {},
      "flip_crop": {"augment": noisy_student_fashion_mnist.FLIP_CROP,
                    "model_kwargs.dropout_rate": 0.0},
  }, sort_keys=False, allow_dotted_keys=True)
  return sweep
