"""Fast AutoAugment's policy search on CIFAR-10 with 4,000 labels, for configs/augment_methods.py's
CIFAR-10 runs (reports/fast_autoaugment_cifar10_4000.json).

  python -m experiments.fast_autoaugment --config=configs/fast_autoaugment_cifar10_4000.py \
      --workdir=runs/fast_autoaugment_cifar10_4000 \
      --faa_out=reports/fast_autoaugment_cifar10_4000 --data_dir=../shared/data

configs/fast_autoaugment_fashion_mnist_1000.py's search settings; the labelled split and network
are the Noisy Student teacher's (configs/noisy_student_cifar10_4000.py:cpu: the 4,000 labels of
split_seed 0 after the class-balanced 5,000-image validation hold-out, ResNet-20); the search
sees the labelled images only. K=5 class-stratified folds of 800; each fold model trains 1,000
steps of 128 (40 passes) on the other 3,200 images without augmentation (the paper's "clean"
D_M). Then, as in the paper, per fold T=2 rounds of B=200 TPE trials, keeping the N=10 best
candidates of 5 sub-policies of 2 ops each (a merged policy of 500 sub-policies); each candidate
is scored on one augmented pass over its fold's 800 held-out images, as in the paper. (Each fold
model's one evaluation on the validation split is logged, not used by the search.)
"""

from configs import fast_autoaugment_fashion_mnist_1000, noisy_student_cifar10_4000


def get_config():
  config = fast_autoaugment_fashion_mnist_1000.get_config()  # its K, T, B, N and op space
  fold = noisy_student_cifar10_4000.get_config("cpu").teacher
  fold.augment = ""               # the fold models see the clean images
  fold.num_steps = 1000
  fold.eval_every = 1000
  fold.checkpoint_every = 500
  fold.log_every = 100
  config.title = "Fast AutoAugment policy search, CIFAR-10, 4,000 labels"
  config.fold = fold
  config.search.num_draws = 1     # folds of 800: one augmented pass, as the paper
  return config
