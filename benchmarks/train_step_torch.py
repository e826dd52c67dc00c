"""The PyTorch comparison of benchmarks/train_step.py (part=torch, in its own subprocess).

The same ResNet-20 and step as the JAX workload (uint8 NHWC -> float, normalise, cross-entropy,
backward, SGD with the config's momentum and decay on kernels), eager, float32, the same batch
every step; threads and memory format per variant. Needs `pip install torch` (see
benchmarks/requirements.txt); without it the part reports itself skipped.
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


def measure_torch(settings: Settings) -> dict:
  """part=torch: the ResNet-20 step in eager PyTorch for each of settings.torch_variants (or
  {"skipped": why} where torch does not import)."""
  try:
    import torch
    import torch.nn.functional as F
  except Exception as error:  # pylint: disable=broad-except
    return {"skipped": f"import torch failed: {type(error).__name__}: {error}"}
  config, shape = make_config("resnet20", settings.batch_size)
  batch = random_batch(shape, settings.batch_size)
  images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2)   # uint8, channels_last strides
  labels = torch.from_numpy(batch["label"]).long()
  mean = torch.tensor(config.input_mean).view(1, 3, 1, 1)
  std = torch.tensor(config.input_std).view(1, 3, 1, 1)
  opt = config.optimizer
  results = {"torch": torch.__version__, "mkldnn": torch.backends.mkldnn.is_available(),
             "model": "ResNet-20 (option A), eager", "variants": {}}
  for variant in settings.torch_variants:
    if variant not in ("all_threads", "one_thread", "all_threads_channels_last",
                       "one_thread_channels_last"):
      raise ValueError(f"unknown torch variant {variant!r}")
    threads = os.cpu_count() if variant.startswith("all_threads") else 1
    channels_last = variant.endswith("channels_last")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch_resnet20().train()
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
      loss = F.cross_entropy(model(x), labels)
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      last["loss"] = loss

    speed = time_rounds(call, settings.steps, settings.rounds, settings.warmup + 1,
                        lambda: last["loss"].item(), settings.batch_size)
    results["variants"][variant] = {"threads": torch.get_num_threads(),
                                    "channels_last": channels_last,
                                    "last_loss": round(last["loss"].item(), 4), **speed}
  return results
