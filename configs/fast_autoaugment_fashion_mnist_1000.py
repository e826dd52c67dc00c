"""Fast AutoAugment's policy search on Fashion-MNIST with 1,000 labels (100 per class), sized
for a 2-core CPU: the whole search in about half an hour of process CPU time.

  python -m experiments.fast_autoaugment --config=configs/fast_autoaugment_fashion_mnist_1000.py \
      --workdir=runs/fast_autoaugment_fashion_mnist_1000 \
      --faa_out=reports/fast_autoaugment_fashion_mnist_1000 --data_dir=../shared/data

The labelled split is the Noisy Student teacher's (configs/noisy_student_fashion_mnist.py:
num_labelled=1000, split_seed 0) and so is the small CNN (conv 16-16-32-32, dense 128). K=5
class-stratified folds of 200; each fold model trains 400 steps of 128 on the other 800 images
without augmentation (the paper's "clean" D_M). Then, as in the paper, per fold T=2 rounds of
B=200 TPE trials, keeping the N=10 best candidates of 5 sub-policies of 2 ops each; the merged
policy has 5 * 2 * 10 * 5 = 500 sub-policies. Each candidate is scored on 2 augmented copies of
its fold's 200 held-out images (the paper scores one pass over its larger held-out folds).
Cutout and SamplePairing, in the paper's 16 ops, are not policy ops here: the search space is
the other 14.
"""

import ml_collections

from configs import noisy_student_fashion_mnist
from effcv_jax.policy_search import fast_autoaugment


def get_config():
  fold = noisy_student_fashion_mnist.get_config().teacher
  fold.augment = ""               # the fold models see the clean images
  fold.num_steps = 400
  fold.eval_every = 400
  fold.checkpoint_every = 200
  fold.log_every = 100

  search = fast_autoaugment.default_search()
  search.num_folds = 5
  search.num_rounds = 2
  search.num_trials = 200
  search.num_selected = 10
  search.num_draws = 2

  config = ml_collections.ConfigDict()
  config.title = "Fast AutoAugment policy search, Fashion-MNIST, 1,000 labels"
  config.fold = fold
  config.search = search
  return config
