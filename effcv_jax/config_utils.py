"""Small helpers for ml_collections configs."""

import difflib
from typing import Any, Mapping

import ml_collections

from effcv_jax.errors import UserError

OPEN_GROUPS = ("model_kwargs",)


class ConfigKeyError(UserError, KeyError):
  """An override names a key the config does not have; the message suggests the right one."""

  def __str__(self) -> str:   # KeyError would show the message quoted, newlines escaped
    return str(self.args[0]) if self.args else ""


def _no_such_key(dotted: str, node: Any, name: str) -> ConfigKeyError:
  if not isinstance(node, ml_collections.ConfigDict):
    return ConfigKeyError(f"config override {dotted!r}: no such key {name!r} (its parent "
                          f"is a {type(node).__name__} value, not a group of keys)")
  keys = sorted(node.keys())
  close = difflib.get_close_matches(name, keys, n=1)
  hint = f"did you mean {close[0]!r}?" if close else f"the keys there are {keys}"
  return ConfigKeyError(f"config override {dotted!r}: no such key {name!r}; {hint}")


def with_overrides(base: ml_collections.ConfigDict,
                   overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `base` with dotted-key overrides applied: {'optimizer.lr': 0.1, 'model': 'x'}.

  Raises ConfigKeyError (a KeyError) for a key `base` does not have (a typo must not
  pass silently), except inside the free-form groups OPEN_GROUPS (a model's keyword
  arguments), and TypeError for a value of another type than the key's (an int
  key accepts no float or string). `base` is never modified.
  """
  config = base.copy_and_resolve_references()
  with config.unlocked():
    for dotted, value in overrides.items():
      *parents, leaf = dotted.split(".")
      node = config
      for parent in parents:
        if not isinstance(node, ml_collections.ConfigDict) or parent not in node:
          raise _no_such_key(dotted, node, parent)
        node = node[parent]
      if not isinstance(node, ml_collections.ConfigDict):
        raise _no_such_key(dotted, node, leaf)
      if leaf not in node and ".".join(parents) not in OPEN_GROUPS:
        raise _no_such_key(dotted, node, leaf)
      try:
        node[leaf] = value
      except TypeError as e:
        raise TypeError(f"config override {dotted!r}: {value!r} has type "
                        f"{type(value).__name__}, the key holds {type(node[leaf]).__name__} "
                        f"(now {node[leaf]!r}); give a value of that type") from e
  return config


def flatten(config: ml_collections.ConfigDict | Mapping[str, Any], prefix: str = ""
            ) -> dict[str, Any]:
  """{dotted.key: value} of every leaf of `config` (nested groups joined by dots)."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def differences(base: ml_collections.ConfigDict,
                other: ml_collections.ConfigDict) -> dict[str, Any]:
  """The overrides that turn `base` into `other`: {dotted.key: other's value} for each leaf
  whose value differs; KeyError naming keys only one of them has (overrides cannot add or
  remove keys)."""
  base_flat, other_flat = flatten(base), flatten(other)
  if set(base_flat) != set(other_flat):
    raise KeyError(f"the configs have different keys: {sorted(set(base_flat) ^ set(other_flat))}")
  return {key: value for key, value in other_flat.items() if value != base_flat[key]}
