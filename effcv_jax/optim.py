"""optax builders: learning-rate schedules, weight decay masks, per-group rates.

Parameter groups are chosen big_vision-style by regular expressions on the
flattened parameter path ('layer1_0/conv1/kernel'): the first pattern that
fully matches a path gives its learning-rate multiplier; a multiplier of 0 (or
None) freezes the group: no updates and no optimiser state for it.

A multiplier can also change with the step: ((0, 0.0), (500, 1.0)) is 0 before
step 500 and 1 from then on (freeze-then-unfreeze). Such a group is not frozen in
the sense above: it keeps optimiser state from the start, so while its rate is 0
its momentum (or Adam moments) already follows its gradients, and its first real
update at step 500 is a warmed-up one; its parameters stay bit-identical until then.

    rules = layerwise_lr_rules([r"conv1(_bn)?/.*", r"block1/.*", r"head/.*"], decay=0.5)
    # -> (("conv1(_bn)?/.*", 0.25), ("block1/.*", 0.5), ("head/.*", 1.0))
"""

import functools
import re
from typing import Any, Callable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from effcv_jax.errors import ConfigError

# A rule's multiplier: a constant (0 or None freezes) or ((from_step, multiplier), ...).
Multiplier = Union[float, None, Sequence[Sequence[float]]]


def make_schedule(name: str, base_lr: float, total_steps: int,
                  warmup_steps: int = 0, end_lr_fraction: float = 0.0, *,
                  decay_rate: float = 0.97, decay_every_steps: float = 0.0,
                  staircase: bool = True) -> optax.Schedule:
  """Linear warmup to base_lr, then 'cosine' decay to end_lr_fraction*base_lr, 'constant', or
  'exponential': base_lr * decay_rate ** (step / decay_every_steps), the exponent floored with
  `staircase` (the official TF EfficientNet / Noisy Student schedule, whose step counts from
  0 through the warm-up: lr = base_lr * step / warmup_steps before warmup_steps, then
  base_lr * 0.97 ** floor(step / (2.4 epochs of steps))). decay_every_steps may be fractional
  (epochs times steps per epoch)."""
  if name == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, base_lr, warmup_steps, max(total_steps, warmup_steps + 1),
        end_value=base_lr * end_lr_fraction)
  if name == "constant":
    warmup = optax.linear_schedule(0.0, base_lr, max(warmup_steps, 1))
    return optax.join_schedules([warmup, optax.constant_schedule(base_lr)], [warmup_steps])
  if name == "exponential":
    if not decay_every_steps > 0:
      raise ConfigError(f"optimizer.decay_every_steps = {decay_every_steps!r}: the exponential "
                        "schedule needs the steps between decays (> 0), e.g. 2.4 epochs of "
                        "steps; set --config.optimizer.decay_every_steps")
    return functools.partial(_exponential_lr, base_lr=base_lr, warmup_steps=warmup_steps,
                             decay_rate=decay_rate, decay_every_steps=float(decay_every_steps),
                             staircase=staircase)
  raise ValueError(f"Unknown schedule {name!r}; use 'cosine', 'constant' or 'exponential'")


def _exponential_lr(step, *, base_lr, warmup_steps, decay_rate, decay_every_steps, staircase):
  """The 'exponential' schedule of `make_schedule` at `step` (a scalar)."""
  step = jnp.asarray(step, jnp.float32)
  exponent = step / decay_every_steps
  if staircase:
    exponent = jnp.floor(exponent)
  decayed = base_lr * jnp.power(decay_rate, exponent)
  if not warmup_steps:
    return decayed
  return jnp.where(step < warmup_steps, base_lr * step / warmup_steps, decayed)


def schedule_from_config(optimizer: Any, num_steps: int) -> optax.Schedule:
  """`make_schedule` with the keys of a config's `optimizer` group (configs/common.py:
  schedule, lr, warmup_steps, end_lr_fraction, decay_rate, decay_every_steps, staircase);
  keys an older config lacks take make_schedule's defaults."""
  return make_schedule(optimizer.schedule, optimizer.lr, num_steps,
                       optimizer.get("warmup_steps", 0), optimizer.get("end_lr_fraction", 0.0),
                       decay_rate=optimizer.get("decay_rate", 0.97),
                       decay_every_steps=optimizer.get("decay_every_steps", 0.0),
                       staircase=optimizer.get("staircase", True))


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
    raise ConfigError(f"parameter {path!r} matches no rule of optimizer.lr_rules "
                      f"{[p for p, _ in rules]}: end the rules with ('.*', 1.0) to catch all")
  return jax.tree.map(label, path_strings(params))


def normalize_rules(rules: Sequence[Sequence[Any]]) -> tuple[tuple[str, Multiplier], ...]:
  """Rules as hashable nested tuples (a config read back from JSON has lists).

  Constant multipliers become floats (None stays None); step-dependent ones
  ((from_step, multiplier), ...) with int steps, sorted by step. Raises ConfigError naming
  optimizer.lr_rules and the pattern if a regex does not compile.
  """
  for pattern, _ in rules:
    try:
      re.compile(str(pattern))
    except re.error as e:
      raise ConfigError(f"optimizer.lr_rules: pattern {str(pattern)!r} is not a valid regular "
                        f"expression ({e}); fix it in --config.optimizer.lr_rules") from e

  def multiplier(m):
    if m is None or isinstance(m, (int, float)):
      return m if m is None else float(m)
    return tuple(sorted((int(step), float(value)) for step, value in m))
  return tuple((str(pattern), multiplier(m)) for pattern, m in rules)


def is_frozen(multiplier: Multiplier) -> bool:
  """Whether a rule's multiplier freezes its group: a constant 0 or None."""
  return multiplier is None or (isinstance(multiplier, (int, float)) and multiplier == 0)


def multiplier_schedule(multiplier: Multiplier) -> Callable[[jax.Array], Any]:
  """step -> multiplier. A constant stays a Python float; ((from_step, m), ...) is
  piecewise constant: the m of the last pair with from_step <= step, 0 before the first."""
  if multiplier is None or isinstance(multiplier, (int, float)):
    value = float(multiplier or 0.0)
    return lambda step: value
  pairs = normalize_rules([("", multiplier)])[0][1]
  starts = np.asarray([step for step, _ in pairs], np.int32)
  values = np.asarray([0.0] + [value for _, value in pairs], np.float32)
  return lambda step: jnp.asarray(values)[jnp.sum(jnp.asarray(step) >= starts)]


def frozen_mask(params: Any, rules: Sequence[tuple[str, Multiplier]]) -> Any:
  """Leaf -> True where its (first matching) rule freezes it; all False without rules."""
  if not rules:
    return jax.tree.map(lambda _: False, params)
  labels = group_labels(params, rules)
  return jax.tree.map(lambda label: is_frozen(rules[int(label[len("group"):])][1]), labels)


def stop_frozen_gradients(params: Any, rules: Sequence[tuple[str, Multiplier]]) -> Any:
  """`params` with `lax.stop_gradient` on frozen leaves (rules as in `build_optimizer`).

  Applied inside the loss, the backward pass skips what only frozen parameters
  need (a linear probe differentiates the head alone); frozen
  gradients read as 0. Updates are unchanged: frozen groups get none anyway.
  """
  if not rules:
    return params
  return jax.tree.map(lambda p, frozen: jax.lax.stop_gradient(p) if frozen else p,
                      params, frozen_mask(params, rules))


def layerwise_lr_rules(layers: Sequence[str], decay: float, top: float = 1.0
                       ) -> tuple[tuple[str, float], ...]:
  """Layer-wise learning-rate decay: rules giving layers[i] the multiplier
  top * decay ** (len(layers) - 1 - i).

  layers: parameter-path regexes ordered from the input to the output (the last,
  usually the head, gets `top`; each layer below gets `decay` times the one above).
  Append a catch-all ('.*', m) if the layers do not cover every parameter.
  """
  n = len(layers)
  return tuple((pattern, top * decay ** (n - 1 - i)) for i, pattern in enumerate(layers))


def _base_optimizer(name: str, learning_rate: optax.ScalarOrSchedule,
                    weight_decay: float, momentum: float, nesterov: bool,
                    b2: float, rms_decay: float, rms_epsilon: float
                    ) -> optax.GradientTransformation:
  mask = weight_decay_mask  # a callable, so it also applies to multi_transform's subtrees
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(weight_decay, mask),
                       optax.sgd(learning_rate, momentum or None, nesterov))
  if name == "adamw":
    return optax.adamw(learning_rate, b2=b2, weight_decay=weight_decay, mask=mask)
  if name == "rmsprop":
    # tf.compat.v1.train.RMSPropOptimizer: mean square starts at 1, epsilon inside the
    # square root, the learning rate inside the momentum accumulator.
    return optax.chain(optax.add_decayed_weights(weight_decay, mask),
                       optax.rmsprop(learning_rate, decay=rms_decay, eps=rms_epsilon,
                                     initial_scale=1.0, eps_in_sqrt=True,
                                     momentum=momentum or None, nesterov=nesterov))
  raise ValueError(f"Unknown optimizer {name!r}; use 'sgd', 'adamw' or 'rmsprop'")


def build_optimizer(params: Any, *, name: str, schedule: optax.Schedule,
                    weight_decay: float = 0.0, momentum: float = 0.9,
                    nesterov: bool = False, b2: float = 0.999,
                    grad_clip_norm: float | None = None,
                    lr_rules: Sequence[tuple[str, Multiplier]] = (),
                    rms_decay: float = 0.9, rms_epsilon: float = 1e-3,
                    grad_scale: float = 1.0) -> optax.GradientTransformation:
  """SGD (coupled L2 on kernels, PyTorch-style), AdamW (decoupled) or RMSProp (coupled L2,
  TF1's RMSPropOptimizer: mean square decay `rms_decay`, initialised to 1, `rms_epsilon`
  inside the square root, plain momentum), with groups.

  lr_rules: ((regex, multiplier), ...) on parameter paths; empty means one group
  at multiplier 1. A multiplier is a constant (0 or None freezes: `set_to_zero`,
  no state) or ((from_step, m), ...), a step schedule that scales the group's
  learning rate. Weight decay skips biases and normalisation parameters.
  grad_scale multiplies the gradients first (before clipping and weight decay): with the
  student's batch mean over labelled + pseudo-labelled examples, 1 + unlabelled_ratio makes
  them those of Noisy Student's official loss (labelled mean + ratio x pseudo-labelled mean).
  """
  def optimizer(multiplier: Multiplier) -> optax.GradientTransformation:
    if is_frozen(multiplier):
      return optax.set_to_zero()
    scale = multiplier_schedule(multiplier)
    lr = lambda step: schedule(step) * scale(step)
    return _base_optimizer(name, lr, weight_decay, momentum, nesterov, b2, rms_decay,
                           rms_epsilon)

  lr_rules = normalize_rules(lr_rules)
  if lr_rules:
    labels = group_labels(params, lr_rules)
    groups = {f"group{i}": optimizer(m) for i, (_, m) in enumerate(lr_rules)}
    tx = optax.multi_transform(groups, labels)
  else:
    tx = optimizer(1.0)
  if grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  if grad_scale != 1.0:
    tx = optax.chain(optax.scale(grad_scale), tx)
  return tx


def optimizer_from_config(params: Any, optimizer: Any, schedule: optax.Schedule
                          ) -> optax.GradientTransformation:
  """`build_optimizer` with the keys of a config's `optimizer` group (configs/common.py);
  keys an older config lacks take build_optimizer's defaults."""
  return build_optimizer(
      params, name=optimizer.name, schedule=schedule,
      weight_decay=optimizer.get("weight_decay", 0.0), momentum=optimizer.get("momentum", 0.9),
      nesterov=optimizer.get("nesterov", False), grad_clip_norm=optimizer.get("grad_clip_norm"),
      lr_rules=optimizer.get("lr_rules", ()), rms_decay=optimizer.get("rms_decay", 0.9),
      rms_epsilon=optimizer.get("rms_epsilon", 1e-3),
      grad_scale=optimizer.get("grad_scale", 1.0))
