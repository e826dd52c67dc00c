"""Running the variants of a sweep config: each a training run in WORKDIR/<name>.

A sweep config has `base` (a training config), `variants` ({name: {dotted.key: value}}) and
`title`; experiments/sweep.py is its command line. Every variant's config is built and
checked before any variant trains, so a bad override fails in seconds, not hours.
"""

import os
from typing import Any

import ml_collections
from absl import logging

from effcv_jax import config_utils, preflight, train
from effcv_jax.errors import ConfigError


def variant_configs(sweep: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
  """{name: base config with the variant's overrides}, each checked by preflight; a bad one
  raises the error with the variant's name in front."""
  configs = {}
  for name, overrides in sweep.variants.items():
    try:
      configs[name] = config_utils.with_overrides(sweep.base, dict(overrides))
      preflight.check_config(configs[name])
    except (KeyError, TypeError, ConfigError) as e:
      raise type(e)(f"sweep variant {name!r}: {e}") from e
  return configs


def run_variants(sweep: ml_collections.ConfigDict, workdir: str, data_dir: str | None,
                 only: list[str] | None, command: str) -> dict[str, dict[str, Any]]:
  """Trains (or resumes, or reuses when finished) every variant in workdir/<name>, in the
  config's order; with `only`, only those variants train and the others are reported
  if finished. Returns {name: {accuracy, num_examples, steps, train_seconds, overrides,
  command}} for the finished variants."""
  configs = variant_configs(sweep)
  rows = {}
  for name, overrides in sweep.variants.items():
    results = train.train_or_reuse(configs[name], os.path.join(workdir, name), data_dir,
                                   may_train=only is None or name in only)
    if results is None:
      continue
    rows[name] = {"accuracy": results["accuracy"], "num_examples": results["num_examples"],
                  "steps": results["step"], "train_seconds": results["train_seconds_this_session"],
                  "overrides": dict(overrides), "command": command}
    logging.info("variant %s: accuracy %.4f", name, results["accuracy"])
  return rows
