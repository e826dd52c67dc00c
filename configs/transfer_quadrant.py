"""The fine-tuning quadrant: how much of an ImageNet backbone to train, by the amount of
target data and its similarity to ImageNet.

  python -m experiments.sweep --config=configs/transfer_quadrant.py \
      --workdir=runs/transfer_quadrant --report=reports/transfer_quadrant --data_dir=../shared/data
  # one backbone, or one cell:  ... --only=$(python -m configs.transfer_quadrant lite0_cifar10_10pc)

Backbones: EfficientNet-Lite0 (ImageNet, the weights of requirements-weights.txt) and
MobileNet v1 0.25 (ImageNet, the Keras .h5 of the shared data). Targets: CIFAR-10 (objects:
similar to ImageNet) and Fashion-MNIST (grey product photos on black: different; the grey
channel is repeated to RGB inside the step), at 10 and 1,000 labels per class (100 and
10,000 class-balanced images of the training split), evaluated on a fixed class-balanced
5,000-image hold-out of the same split (validation; no test data is used). Recipes:
  probe   linear probe: the backbone frozen (no updates, batch norm in inference mode),
          a new head trained;
  top     the head at the base rate and the last stage at 0.01x, everything below frozen,
          batch norm in inference mode (at 0.1x MobileNet v1's training collapsed to chance
          by step 50: docs/results.md);
  all     every layer trained, the backbone at 0.1x the head's rate, batch norm in
          training mode;
  longer  `all` for 3x the steps.
The advice tested (the course material's quadrant): little data + similar -> probe,
little + different -> top, much + similar -> all (small learning rate), much + different
-> longer. Images are flipped and cropped at their size, resized to 128 px inside the step
(MobileNet v1 0.25's ImageNet resolution; Lite0's is 224, three times the pixels) and
normalised as the weights expect (reports/transfer_quadrant_64px.json: the 10-labels-per-
class half at 64 px, `--config.base.input_size=64`). The new 10-class head starts at zero
(EfficientNet's own head init gives logits in the tens on ImageNet features; with the top
stage training they diverged).
Steps (batch 50): 100 at 10 labels per class (50 epochs), 400 at 1,000 (2 epochs), 3x for
`longer`. One SGD recipe for all (Nesterov 0.9, base lr 0.05, cosine, 10 warm-up steps,
weight decay 5e-4), not tuned per recipe; one seed per variant.
"""

import sys

import ml_collections

from configs.common import base_config

BACKBONES = {
    "lite0": {"model": "efficientnet_lite0",
              "init_from.kind": "efficientnet_lite", "init_from.path": "",
              "input_mean": (127.0 / 255,) * 3, "input_std": (128.0 / 255,) * 3},
    "mnv1": {"model": "mobilenet_v1_0.25",
             "init_from.kind": "keras_mobilenet_v1",
             "init_from.path": "weights/keras_mobilenet_v1_0.25_128_imagenet.h5",
             # Keras' batch-norm momentum 0.99 barely moves the statistics in a few
             # hundred steps; 0.9 lets them settle (the transfer config says more).
             "model_kwargs.bn_momentum": 0.9,
             "input_mean": (0.5,) * 3, "input_std": (0.5,) * 3},
}
# The parameters each backbone's `top` recipe trains (regexes over '/'-joined paths).
TOP_LAYERS = {"lite0": ("block7a/.*", "top_conv/.*", "top_bn/.*", "head/.*"),
              "mnv1": ("conv_dw_1[23].*", "conv_pw_1[23].*", "head/.*")}
# The top stage's learning-rate multiplier in the `top` recipe.
TOP_STAGE_LR = 0.01
TARGETS = {"cifar10": {"dataset": "npz:cifar10_train.npz", "input_channels": 0},
           "fashion_mnist": {"dataset": "npz:fashion_mnist.npz", "input_channels": 3}}
SIMILARITY = {"cifar10": "similar", "fashion_mnist": "different"}
# labels per class -> (how much data that is, training steps of batch 50 for every recipe)
SIZES = {10: ("little", 100), 1000: ("much", 400)}
LONGER = 3
INPUT_SIZE = 128
RECIPES = ("probe", "top", "all", "longer")
ADVICE = {"little/similar": "probe", "little/different": "top",
          "much/similar": "all", "much/different": "longer"}


def recipe_overrides(recipe: str, backbone: str, steps: int) -> dict:
  """The overrides of one recipe: which parameters train (optimizer.lr_rules: regex ->
  learning-rate multiplier, 0 frozen), batch-norm mode and steps."""
  if recipe == "probe":
    return {"optimizer.lr_rules": (("head/.*", 1.0), (".*", 0.0)), "freeze_batch_stats": True,
            "num_steps": steps}
  if recipe == "top":
    top = tuple((p, TOP_STAGE_LR) for p in TOP_LAYERS[backbone] if p != "head/.*")
    return {"optimizer.lr_rules": (("head/.*", 1.0),) + top + ((".*", 0.0),),
            "freeze_batch_stats": True, "num_steps": steps}
  all_layers = {"optimizer.lr_rules": (("head/.*", 1.0), (".*", 0.1)),
                "freeze_batch_stats": False}
  return {**all_layers, "num_steps": steps * (LONGER if recipe == "longer" else 1)}


def base() -> ml_collections.ConfigDict:
  """The shared settings; every variant sets backbone, target, size and recipe."""
  config = base_config()
  config.dataset = TARGETS["cifar10"]["dataset"]
  config.num_holdout = 5000
  config.eval_split = "holdout"
  config.num_classes = 10
  config.input_size = INPUT_SIZE
  config.augment = "flip_lr|random_crop(padding=4)"
  config.init_from = ml_collections.ConfigDict(dict(
      kind="efficientnet_lite", path="", new_head=True, head_patterns=(),
      check_preprocessing=True, zero_head=True))
  config.batch_size = 50
  config.eval_batch_size = 500
  config.optimizer.lr = 0.05
  config.optimizer.weight_decay = 5e-4
  config.optimizer.warmup_steps = 10
  config.log_every = 25
  config.eval_every = 100000   # only at the end
  config.checkpoint_every = 100
  config.keep_checkpoints = 1
  return config


def variant_name(backbone: str, target: str, per_class: int, recipe: str) -> str:
  return f"{backbone}_{target}_{per_class}pc_{recipe}"


def get_config():
  sweep = ml_collections.ConfigDict()
  sweep.base = base()
  sweep.title = ("ImageNet backbones -> CIFAR-10 / Fashion-MNIST, batch 50: 5,000-image "
                 "hold-out accuracy")
  variants = {}
  for backbone, backbone_overrides in BACKBONES.items():
    for target, target_overrides in TARGETS.items():
      for per_class, (_, steps) in SIZES.items():
        for recipe in RECIPES:
          variants[variant_name(backbone, target, per_class, recipe)] = {
              **backbone_overrides, **target_overrides, "num_labelled": 10 * per_class,
              **recipe_overrides(recipe, backbone, steps)}
  sweep.variants = ml_collections.ConfigDict(variants, allow_dotted_keys=True, sort_keys=False)
  sweep.quadrant = ml_collections.ConfigDict(dict(
      backbones=tuple(BACKBONES), targets=tuple(TARGETS), similarity=SIMILARITY,
      sizes={str(k): v[0] for k, v in SIZES.items()}, recipes=RECIPES, advice=ADVICE,
      num_eval=base().num_holdout))
  # The images' side in px, following --config.base.input_size.
  sweep.quadrant.input_size = sweep.base.get_ref("input_size")
  return sweep


if __name__ == "__main__":
  # `python -m configs.transfer_quadrant PREFIX`: the variant names that start with PREFIX,
  # comma-separated (for --only).
  prefix = sys.argv[1] if len(sys.argv) > 1 else ""
  print(",".join(n for n in get_config().variants if n.startswith(prefix)))
