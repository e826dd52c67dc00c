"""A class-conditional GAN on the Fashion-MNIST 1,000 labels of the Noisy Student report
(configs/noisy_student_fashion_mnist.py: npz:fashion_mnist.npz, 100 per class of split_seed 0,
no hold-out; evaluated against the official test split), 28x28 grey.

  python -m experiments.gan --config=configs/gan_fashion_mnist_1000.py \
      --workdir=runs/gan_fashion_mnist_1000 --data_dir=../shared/data

Generator: noise and label embedding of 64, base width 32 (a 7x7x128 map upsampled twice);
discriminator: spectrally normalised convolutions of 32-32-64-64-128 with projection
conditioning; hinge loss; Adam 2e-4 (beta1 0.5, beta2 0.999) for both; 64 images a step.
"""

from configs.common import gan_base_config


def get_config():
  config = gan_base_config()
  config.dataset = "npz:fashion_mnist.npz"
  config.num_labelled = 1000
  config.eval_split = "test"
  config.batch_size = 64
  config.num_steps = 5000
  config.log_every = 100
  config.eval_every = 1000
  config.checkpoint_every = 500
  return config
