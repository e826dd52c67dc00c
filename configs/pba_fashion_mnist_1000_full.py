"""Population Based Augmentation's search on Fashion-MNIST with 1,000 labels, over the final
training's whole length, as the paper searches (its schedule is then used as it was found).

  python -m experiments.pba --config=configs/pba_fashion_mnist_1000_full.py \
      --workdir=runs/pba_fashion_mnist_1000_full \
      --pba_out=reports/pba_fashion_mnist_1000_full --data_dir=../shared/data

configs/pba_fashion_mnist_1000.py's search (the same population of 8 small CNNs, labelled
split, held-out evaluation images, exploit and explore), but each member trains the 3,000 steps
that configs/augment_methods.py's Fashion-MNIST runs train (at 40 images a step, 120 passes
over the labelled images), with the teacher's 100 warm-up steps, and is ready every 75 steps
(3 passes, the paper's 3 epochs): 40 rounds, 39 of exploit and explore, against the short
search's 8 rounds of 400 steps whose schedule had to be stretched 7.5-fold.
"""

from configs import pba_fashion_mnist_1000


def get_config():
  config = pba_fashion_mnist_1000.get_config()
  config.title = "PBA search over the whole schedule, Fashion-MNIST, 1,000 labels"
  config.num_steps = 3000
  config.optimizer.warmup_steps = 100
  config.pba.ready_every = 75
  return config
