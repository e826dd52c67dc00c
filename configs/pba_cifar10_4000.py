"""Population Based Augmentation's search on CIFAR-10 with 4,000 labels, for configs/
augment_methods.py's CIFAR-10 runs (reports/pba_cifar10_4000.json).

  python -m experiments.pba --config=configs/pba_cifar10_4000.py \
      --workdir=runs/pba_cifar10_4000 --pba_out=reports/pba_cifar10_4000 \
      --data_dir=../shared/data

configs/pba_fashion_mnist_1000.py's search (a population of 8 small CNNs, conv 16-16-32-32 and
dense 128, trained in one vmapped program; SGD Nesterov lr 0.05, cosine; exploit and explore)
on the labelled split of the Noisy Student teacher (configs/noisy_student_cifar10_4000.py:cpu:
4,000 labels of split_seed 0 after the 5,000-image validation hold-out, which the search never
sees); the members are evaluated on 1,000 class-balanced images of the unlabelled rest, with
flip + 4 px crop after the policy. Each member trains 4,200 steps of 40 images (42 passes over
the labelled images; the paper: 16 WideResNet-40-2 for 200 epochs of this reduced CIFAR-10)
and is ready every 300 steps (3 passes, the paper's 3 epochs): 14 rounds. The final runs
stretch its schedule to their 6,000 steps of 128 (policy_search_eval.stretched_schedule).
"""

from configs import noisy_student_cifar10_4000, pba_fashion_mnist_1000


def get_config():
  config = noisy_student_cifar10_4000.get_config("cpu").teacher.copy_and_resolve_references()
  search = pba_fashion_mnist_1000.get_config()
  config.title = "PBA search, CIFAR-10, 4,000 labels"
  for key in ("conv_backend", "batch_size", "eval_batch_size", "keep_checkpoints", "model",
              "model_kwargs", "pba"):
    config[key] = search[key]
  config.optimizer.lr = search.optimizer.lr
  config.optimizer.warmup_steps = 200
  config.num_steps = 4200
  config.pba.ready_every = 300
  return config
