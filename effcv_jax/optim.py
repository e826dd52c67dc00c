"""optax builders: learning-rate schedules, weight decay masks, per-group rates.

Parameter groups are chosen big_vision-style by regular expressions on the
flattened parameter path ('layer1_0/conv1/kernel'): the first pattern that
fully matches a path gives its learning-rate multiplier; a multiplier of 0 (or
None) freezes the group: no updates and no optimiser state for it.
"""

import re
from typing import Any, Sequence

import jax
import optax
from flax import traverse_util


def make_schedule(name: str, base_lr: float, total_steps: int,
                  warmup_steps: int = 0, end_lr_fraction: float = 0.0) -> optax.Schedule:
  """Linear warmup to base_lr, then 'cosine' decay to end_lr_fraction*base_lr or 'constant'."""
  if name == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, base_lr, warmup_steps, max(total_steps, warmup_steps + 1),
        end_value=base_lr * end_lr_fraction)
  if name == "constant":
    warmup = optax.linear_schedule(0.0, base_lr, max(warmup_steps, 1))
    return optax.join_schedules([warmup, optax.constant_schedule(base_lr)], [warmup_steps])
  raise ValueError(f"Unknown schedule {name!r}; use 'cosine' or 'constant'")


def path_strings(params: Any) -> Any:
  """A pytree like `params` whose leaves are their '/'-joined paths."""
  flat = traverse_util.flatten_dict(params, sep="/")
  return traverse_util.unflatten_dict({k: k for k in flat}, sep="/")


def weight_decay_mask(params: Any) -> Any:
  """True for weight matrices and conv kernels; False for biases and norm scales/offsets."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def group_labels(params: Any, rules: Sequence[tuple[str, float | None]]) -> Any:
  """Leaf -> 'group{i}' for the first rule whose regex fully matches its path.

  Every path must match some rule (end the rules with ('.*', 1.0) to catch all).
  """
  def label(path: str) -> str:
    for i, (pattern, _) in enumerate(rules):
      if re.fullmatch(pattern, path):
        return f"group{i}"
    raise ValueError(f"parameter {path!r} matches no learning-rate rule in "
                     f"{[p for p, _ in rules]}")
  return jax.tree.map(label, path_strings(params))


def _base_optimizer(name: str, learning_rate: optax.ScalarOrSchedule,
                    weight_decay: float, momentum: float, nesterov: bool,
                    b2: float) -> optax.GradientTransformation:
  mask = weight_decay_mask  # a callable, so it also applies to multi_transform's subtrees
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(weight_decay, mask),
                       optax.sgd(learning_rate, momentum or None, nesterov))
  if name == "adamw":
    return optax.adamw(learning_rate, b2=b2, weight_decay=weight_decay, mask=mask)
  raise ValueError(f"Unknown optimizer {name!r}; use 'sgd' or 'adamw'")


def build_optimizer(params: Any, *, name: str, schedule: optax.Schedule,
                    weight_decay: float = 0.0, momentum: float = 0.9,
                    nesterov: bool = False, b2: float = 0.999,
                    grad_clip_norm: float | None = None,
                    lr_rules: Sequence[tuple[str, float | None]] = ()) -> optax.GradientTransformation:
  """SGD (coupled L2 on kernels, PyTorch-style) or AdamW (decoupled), with groups.

  lr_rules: ((regex, multiplier), ...) on parameter paths; empty means one group
  at multiplier 1. Weight decay skips biases and normalisation parameters.
  """
  def optimizer(multiplier: float | None) -> optax.GradientTransformation:
    if not multiplier:
      return optax.set_to_zero()
    lr = lambda step: schedule(step) * multiplier
    return _base_optimizer(name, lr, weight_decay, momentum, nesterov, b2)

  if lr_rules:
    labels = group_labels(params, lr_rules)
    groups = {f"group{i}": optimizer(m) for i, (_, m) in enumerate(lr_rules)}
    tx = optax.multi_transform(groups, labels)
  else:
    tx = optimizer(1.0)
  if grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  return tx
