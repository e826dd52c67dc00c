"""The PyTorch comparison of benchmarks/train_step.py (part=torch, in its own subprocess).

The same model (--model: ResNet-20 or the small CNN) and step as the JAX workload (uint8 NHWC ->
float, normalise, cross-entropy, backward, SGD with the config's momentum and decay on kernels),
eager, the same batch every step, float32 or (--dtype=bfloat16) the forward pass and loss
under torch.autocast('cpu', torch.bfloat16); threads and memory format per variant. Needs
`pip install torch` (see benchmarks/requirements.txt); without it the part reports itself
skipped.
"""

from __future__ import annotations

import os

from benchmarks.train_step_harness import Settings, time_rounds
from benchmarks.train_step_workloads import NUM_CLASSES, make_config, random_batch


def torch_resnet20(num_classes: int = NUM_CLASSES):
  """CIFAR ResNet-20 with option-A shortcuts, as effcv_jax.models.resnet_cifar."""
  import torch.nn.functional as F
  from torch import nn

  class Block(nn.Module):

    def __init__(self, cin: int, cout: int, stride: int):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.stride, self.extra = stride, cout - cin

    def forward(self, x):
      y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
      shortcut = x
      if self.stride != 1 or self.extra:   # option A: subsample, zero-pad the channels
        shortcut = F.pad(x[:, :, ::self.stride, ::self.stride],
                         (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
      return F.relu(y + shortcut)

  layers, cin = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()], 16
  for stage, width in enumerate((16, 32, 64)):
    for i in range(3):
      layers.append(Block(cin, width, 2 if stage > 0 and i == 0 else 1))
      cin = width
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
  return nn.Sequential(*layers)


def torch_small_cnn(widths: tuple[int, ...], hidden: int, in_channels: int,
                    image_size: int, num_classes: int = NUM_CLASSES):
  """The small CNN as effcv_jax.models.cnn.SmallCNN: per stage [conv3x3 (no bias), BN, ReLU]
  x 2 and a 2x2 max-pool, then a hidden dense layer with ReLU and the classifier."""
  from torch import nn

  layers, cin = [], in_channels
  for width in widths:
    for _ in range(2):
      layers += [nn.Conv2d(cin, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
      cin = width
    layers.append(nn.MaxPool2d(2))
    image_size //= 2
  layers += [nn.Flatten(), nn.Linear(cin * image_size * image_size, hidden), nn.ReLU(),
             nn.Linear(hidden, num_classes)]
  return nn.Sequential(*layers)


def init_like_flax(model):
  """Re-initialises `model`'s weights as the JAX models' initialisers do, so both sides train
  alike: convolutions He normal over fan-out (models/layers.conv_init), dense layers LeCun
  normal truncated at two standard deviations (flax's default), biases zero. Returns model."""
  import math

  import torch
  from torch import nn

  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
      elif isinstance(module, nn.Linear):
        # flax's truncated normal is rescaled so that the truncated variance is 1 / fan_in.
        std = math.sqrt(1.0 / module.in_features) / 0.87962566103423978
        nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
      if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
        nn.init.zeros_(module.bias)
  return model


TORCH_MODELS = {"resnet20": "ResNet-20 (option A), eager",
                "cnn_small": "small CNN (conv 32-32-64-64, dense 256), eager"}


def measure_torch(settings: Settings) -> dict:
  """part=torch: settings.model's step in eager PyTorch for each of settings.torch_variants (or
  {"skipped": why} where torch does not import)."""
  try:
    import torch
    import torch.nn.functional as F
  except Exception as error:  # pylint: disable=broad-except
    return {"skipped": f"import torch failed: {type(error).__name__}: {error}"}
  if settings.model not in TORCH_MODELS:
    raise ValueError(f"no PyTorch version of {settings.model!r}; one of {list(TORCH_MODELS)}")
  config, shape = make_config(settings.model, settings.batch_size)
  batch = random_batch(shape, settings.batch_size)
  images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2)   # uint8, channels_last strides
  labels = torch.from_numpy(batch["label"]).long()
  mean = torch.tensor(config.input_mean).view(1, -1, 1, 1)
  std = torch.tensor(config.input_std).view(1, -1, 1, 1)
  opt = config.optimizer
  results = {"torch": torch.__version__, "mkldnn": torch.backends.mkldnn.is_available(),
             "model": TORCH_MODELS[settings.model], "variants": {}}
  for variant in settings.torch_variants:
    if variant not in ("all_threads", "one_thread", "all_threads_channels_last",
                       "one_thread_channels_last"):
      raise ValueError(f"unknown torch variant {variant!r}")
    threads = os.cpu_count() if variant.startswith("all_threads") else 1
    channels_last = variant.endswith("channels_last")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if settings.model == "resnet20":
      model = torch_resnet20()
    else:
      model = torch_small_cnn(tuple(config.model_kwargs.widths), config.model_kwargs.hidden,
                              shape[2], shape[0])
    model = init_like_flax(model).train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    decay = [p for p in model.parameters() if p.ndim > 1]     # as optim.weight_decay_mask
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": opt.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov)
    last = {}

    def call():
      x = images.float().contiguous(memory_format=memory_format)
      x = (x / 255.0 - mean) / std
      with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.dtype == "bfloat16"):
        loss = F.cross_entropy(model(x), labels)
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      last["loss"] = loss

    speed = time_rounds(call, settings.steps, settings.rounds, settings.warmup + 1,
                        lambda: last["loss"].item(), settings.batch_size)
    results["variants"][variant] = {"threads": torch.get_num_threads(),
                                    "channels_last": channels_last, "dtype": settings.dtype,
                                    "last_loss": round(last["loss"].item(), 4), **speed}
  return results
