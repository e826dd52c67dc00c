"""CIFAR-10 with 4,000 labels: ResNet-20 beside AlexNet and VGG-11-BN (their 32 px layouts).

  python -m experiments.sweep --config=configs/cifar10_4000_architectures.py \
      --workdir=runs/cifar10_4000_architectures --report=reports/cifar10_4000_architectures \
      --data_dir=../shared/data

The supervised task of configs/noisy_student_cifar10_4000.py (its `cpu` teacher): 4,000
class-balanced labels of npz:cifar10_train.npz, validated on the fixed class-balanced 5,000
held out (split_seed 0); flip + 4 px crop; SGD momentum 0.9, lr 0.1 with 200 warm-up steps and
cosine decay, weight decay 5e-4, 6,000 steps of 128. One recipe for every variant, not tuned
per model:
  resnet20        ResNet-20 (0.27 M parameters), the Noisy Student teacher's run;
  alexnet_cifar   AlexNet, 32 px layout (models/alexnet.py: 5x5/1 first convolution, no batch
                  norm, dropout 0.5 before fc6 and fc7; 28.7 M parameters);
  vgg11_bn_cifar  VGG-11 with batch norm, 32 px layout (models/vgg.py: one linear classifier on
                  the 1x1x512 map, no dropout; 9.2 M parameters).
Writes reports/cifar10_4000_architectures.{json,png}.
"""

import ml_collections

from configs import noisy_student_cifar10_4000


def get_config():
  sweep = ml_collections.ConfigDict()
  sweep.base = noisy_student_cifar10_4000.get_config("cpu").teacher
  sweep.title = (f"CIFAR-10, 4,000 labels, {sweep.base.num_steps:,} steps of "
                 f"{sweep.base.batch_size}: validation accuracy by architecture")
  sweep.variants = ml_collections.ConfigDict({
      "resnet20": {},
      "alexnet_cifar": {"model": "alexnet", "model_kwargs.small_image": True},
      "vgg11_bn_cifar": {"model": "vgg11_bn", "model_kwargs.small_image": True},
  }, sort_keys=False, allow_dotted_keys=True)   # run and plot in the order above
  return sweep
