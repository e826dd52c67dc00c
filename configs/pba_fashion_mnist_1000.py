"""Population Based Augmentation's search on Fashion-MNIST with 1,000 labels (100 per class).

  python -m experiments.pba --config=configs/pba_fashion_mnist_1000.py \
      --workdir=runs/pba_fashion_mnist_1000 --pba_out=reports/pba_fashion_mnist_1000 \
      --data_dir=../shared/data

The labelled split is that of configs/noisy_student_fashion_mnist.py's teacher (num_labelled
1,000, split_seed 0) and so is each member: the small CNN (conv 16-16-32-32, dense 128),
SGD with Nesterov momentum, lr 0.05, cosine, flip + 2 px crop as the base augmentation after
the policy. The members are evaluated on 1,000 class-balanced training images from outside
the labelled 1,000 (pba.num_eval; effcv_jax/policy_search/pba.py search_split). A population
of 8 trains 400 steps of 40 images each (16 passes over the labelled images), ready every
50 steps (2 passes; the paper: 3 epochs): 8 rounds, 7 exploit/explore rounds. Sized for a
2-core CPU; the paper trains 16 members for 200 epochs of reduced CIFAR-10.

Output: PATH.json (pba_out) with the schedule of the final best member as a
`pba(schedule=...)` spec string, per-round accuracies and the search cost.
"""

import ml_collections

from configs.noisy_student_fashion_mnist import get_config as noisy_student_config
from effcv_jax.augment import pba_policy


def get_config():
  config = noisy_student_config().teacher.copy_and_resolve_references()
  config.title = "PBA search, Fashion-MNIST, 1,000 labels"
  config.conv_backend = "xla"      # the model is vmapped over the population
  config.batch_size = 40           # per member
  config.num_steps = 400
  config.optimizer.warmup_steps = 50
  config.eval_batch_size = 500
  config.keep_checkpoints = 2
  config.pba = ml_collections.ConfigDict(dict(
      population=8,
      ops=pba_policy.SEARCH_OPS,   # the searched ops, each twice in the policy
      ready_every=50,              # steps between exploit/explore rounds (2 passes)
      num_eval=1000,               # held-out images for the members' evaluation
      exploit_fraction=0.25,       # truncation selection: bottom 25 % copy the top 25 %
      resample_probability=0.2,    # explore: resample a value, else move it 0..3 steps
      max_perturbation=3,
      init="zeros",                # the policies start with every probability and level 0
      strategy="auto",             # policies.run_policy: 'map' on CPU, 'batched' elsewhere
      fill=128.0))
  return config
