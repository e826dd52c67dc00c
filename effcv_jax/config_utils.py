"""Small helpers for ml_collections configs."""

from typing import Any, Mapping

import ml_collections

OPEN_GROUPS = ("model_kwargs",)


def with_overrides(base: ml_collections.ConfigDict,
                   overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `base` with dotted-key overrides applied: {'optimizer.lr': 0.1, 'model': 'x'}.

  Raises KeyError for a key `base` does not have (a typo must not pass silently),
  except inside the free-form groups OPEN_GROUPS (a model's keyword arguments).
  """
  config = base.copy_and_resolve_references()
  with config.unlocked():
    for dotted, value in overrides.items():
      *parents, leaf = dotted.split(".")
      node = config
      for parent in parents:
        node = node[parent]
      if leaf not in node and ".".join(parents) not in OPEN_GROUPS:
        raise KeyError(f"config override {dotted!r}: no such key")
      node[leaf] = value
  return config
