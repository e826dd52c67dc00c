"""A class-conditional GAN on the CIFAR-10 4,000 labels of the Noisy Student report
(configs/noisy_student_cifar10_4000.py: npz:cifar10_train.npz, 400 per class of split_seed 0,
5,000 class-balanced images held out for validation), 32x32 RGB.

  python -m experiments.gan --config=configs/gan_cifar10_4000.py \
      --workdir=runs/gan_cifar10_4000 --data_dir=../shared/data

The networks of configs/gan_fashion_mnist_1000.py at twice its width (64: the generator
starts from an 8x8x256 map; the spectrally normalised projection discriminator has 64-64-128-
128-256 channels), its hinge loss and Adam 2e-4 (beta1 0.5), 64 images a step, 20,000 steps;
the discriminator is scored on the held-out validation images.
"""

from configs import gan_fashion_mnist_1000


def get_config():
  config = gan_fashion_mnist_1000.get_config()
  config.dataset = "npz:cifar10_train.npz"
  config.num_labelled = 4000
  config.num_holdout = 5000
  config.eval_split = "holdout"
  config.gan.width = 64
  config.num_steps = 20000
  return config
