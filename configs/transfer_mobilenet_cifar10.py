"""ImageNet MobileNet v1 0.25 (the Keras .h5) -> CIFAR-10 with 10 and 100 labels per class.

  python -m experiments.sweep --config=configs/transfer_mobilenet_cifar10.py \
      --workdir=runs/transfer_mobilenet_cifar10 --report=reports/transfer --data_dir=../shared/data
  # only the 10-labels-per-class half:
  ...  --only=10pc_scratch,10pc_probe,10pc_finetune

Three ways to train the same `mobilenet_v1_0.25` on 100 (10 per class) or 1,000 (100 per
class) labelled images of npz:cifar10_train.npz, each with the same step budget for a
label count, evaluated on the fixed class-balanced 5,000-image hold-out (validation):
  scratch   random initialisation, every layer at the base learning rate;
  probe     linear probe: ImageNet weights, backbone frozen (no updates, no optimiser
            state, batch norm in inference mode), a new 10-class head trained;
  finetune  ImageNet weights, new head at the base rate, backbone at 0.1x, batch norm
            in training mode.
Images are flipped and cropped at 32 px, then resized to 96 px inside the step (the
weights were trained at 128 px; 96 px is cheaper), normalised as the weights expect (x / 127.5 - 1). One SGD recipe for all
(Nesterov 0.9, base lr 0.05, cosine, 10 warmup steps, weight decay 5e-4, batch 50),
not tuned per variant. Writes reports/transfer.{json,png}.

Expected result and each run's training time: reports/transfer.json (docs/results.md).
"""

import ml_collections

from configs.common import base_config

WEIGHTS = "weights/keras_mobilenet_v1_0.25_128_imagenet.h5"
HEAD_ONLY = (("head/.*", 1.0), (".*", 0.0))
BACKBONE_TENTH = (("head/.*", 1.0), (".*", 0.1))
# labels per class -> training steps (batch 50) of every variant at that count
STEPS = {10: 200, 100: 400}


def base() -> ml_collections.ConfigDict:
  """The pretrained fine-tuning run; the variants change what they need."""
  config = base_config()
  config.dataset = "npz:cifar10_train.npz"
  config.num_holdout = 5000
  config.eval_split = "holdout"
  config.num_labelled = 100
  config.num_classes = 10
  config.model = "mobilenet_v1_0.25"
  # Keras' batch-norm momentum 0.99 leaves the running statistics of a from-scratch run
  # at their initial values after a few hundred steps (evaluation then predicts one
  # class); 0.9 lets every variant's statistics settle. (The probe keeps its own.)
  config.model_kwargs.bn_momentum = 0.9
  config.input_mean = (0.5, 0.5, 0.5)   # x / 127.5 - 1, as the Keras weights expect
  config.input_std = (0.5, 0.5, 0.5)
  config.input_size = 96
  config.augment = "flip_lr|random_crop(padding=4)"
  config.init_from = ml_collections.ConfigDict(dict(
      kind="keras_mobilenet_v1", path=WEIGHTS, new_head=True, head_patterns=(),
      check_preprocessing=True))
  config.batch_size = 50
  config.eval_batch_size = 500
  config.num_steps = STEPS[10]
  config.optimizer.lr = 0.05
  config.optimizer.weight_decay = 5e-4
  config.optimizer.warmup_steps = 10
  config.optimizer.lr_rules = BACKBONE_TENTH
  config.log_every = 25
  config.eval_every = 100000   # only at the end
  config.checkpoint_every = 100
  config.keep_checkpoints = 1
  return config


def get_config():
  sweep = ml_collections.ConfigDict()
  sweep.title = ("MobileNet v1 0.25 -> CIFAR-10 (96 px), batch 50: "
                 "5,000-image hold-out accuracy")
  sweep.base = base()
  variants = {}
  for per_class, steps in STEPS.items():
    labels = {"num_labelled": 10 * per_class, "num_steps": steps}
    variants[f"{per_class}pc_scratch"] = {**labels, "init_from.kind": "",
                                          "optimizer.lr_rules": ()}
    variants[f"{per_class}pc_probe"] = {**labels, "optimizer.lr_rules": HEAD_ONLY,
                                        "freeze_batch_stats": True}
    variants[f"{per_class}pc_finetune"] = {**labels, "optimizer.lr_rules": BACKBONE_TENTH}
  sweep.variants = ml_collections.ConfigDict(variants, allow_dotted_keys=True, sort_keys=False)
  return sweep
