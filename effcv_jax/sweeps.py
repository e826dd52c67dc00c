"""Running the variants of a sweep config: each a training run in WORKDIR/<name>.

A sweep config has `base` (a training config), `variants` ({name: {dotted.key: value}}) and
`title`; experiments/sweep.py is its command line. Optional fields: `trainer`
('supervised', the default: train.py; 'ssl': the semi-supervised trainer, ssl/run.py, whose
algorithm each variant's ssl.algorithm names) and `seeds` (a list of seeds for every variant,
or {variant: [seed, ...]}; see with_seeds). Every variant's config is built and checked before
any variant trains, so a bad override fails in seconds, not hours.
"""

import os
from typing import Any

import ml_collections
from absl import logging

from effcv_jax import config_utils, metrics, preflight, reports, train
from effcv_jax import workdir as workdir_lib
from effcv_jax.errors import ConfigError
from effcv_jax.ssl import run as ssl_run

TRAINERS = ("supervised", "ssl")


def sweep_of_configs(title: str, base: ml_collections.ConfigDict,
                     configs: dict[str, ml_collections.ConfigDict], **fields: Any
                     ) -> ml_collections.ConfigDict:
  """A sweep config whose variants are whole training configs: {title, base, variants (each
  config stored as its differences from `base`, config_utils.differences), **fields} (e.g.
  trainer, seeds, include_groups). variant_configs of it gives the configs back."""
  sweep = ml_collections.ConfigDict()
  sweep.title = title
  sweep.base = base
  sweep.variants = ml_collections.ConfigDict(
      {name: config_utils.differences(base, config) for name, config in configs.items()},
      sort_keys=False, allow_dotted_keys=True)
  sweep.update(fields)
  return sweep


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


def run_config(sweep: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The config of the sweep's run `name` (a variant, or variant_seed_S under its seeds) as
  run_variants trains it: e.g. the teacher a Noisy Student config reuses from a sweep."""
  expanded, _ = with_seeds(sweep)
  configs = variant_configs(expanded)
  if name not in configs:
    raise ConfigError(f"the sweep has no run {name!r}; its runs: {', '.join(configs)}")
  return configs[name]


def seed_variant(name: str, seed: int) -> str:
  """The name of variant `name` run with config.seed = seed."""
  return f"{name}_seed_{seed}"


def variant_of(run: str) -> str:
  """The variant a run of the sweep belongs to: seed_variant's inverse ('a_seed_2' -> 'a'),
  the name itself for a run without seeds."""
  return run.rsplit("_seed_", 1)[0]


def with_seeds(sweep: ml_collections.ConfigDict, seeds: list[int] | None = None
               ) -> tuple[ml_collections.ConfigDict, dict[str, list[str]]]:
  """(sweep with every variant repeated per seed, {variant: [its runs' names]}).

  The seeds are `seeds` for every variant when given (e.g. --seeds), else the sweep's
  `seeds` field (a list for every variant, or {variant: [seed, ...]}, a variant missing
  from it running at the base config's seed alone). Each run is named
  seed_variant(variant, seed) and overrides config.seed (initialisation, batch order,
  augmentation and dropout draws; the labelled split is split_seed's). Without seeds in
  either place the sweep is returned unchanged with no groups."""
  field = sweep.get("seeds")
  if seeds is None and field is None:
    return sweep, {}
  field_per_variant = isinstance(field, (ml_collections.ConfigDict, dict))
  if seeds is None and field_per_variant:
    per_variant = {name: list(field.get(name, [sweep.base.seed])) for name in sweep.variants}
  else:
    per_variant = {name: list(seeds if seeds is not None else field) for name in sweep.variants}
  unknown = set(field) - set(sweep.variants) if field_per_variant else set()
  if unknown:
    raise ConfigError(f"sweep seeds name variants the sweep does not have: {sorted(unknown)}; "
                      f"its variants: {list(sweep.variants)}")
  variants, groups = {}, {}
  for name, overrides in sweep.variants.items():
    if not per_variant[name]:
      raise ConfigError(f"sweep variant {name!r} has an empty list of seeds")
    groups[name] = [seed_variant(name, seed) for seed in per_variant[name]]
    for seed in per_variant[name]:
      variants[seed_variant(name, seed)] = {**dict(overrides), "seed": int(seed)}
  expanded = sweep.copy_and_resolve_references()
  with expanded.unlocked():
    expanded.variants = ml_collections.ConfigDict(variants, sort_keys=False,
                                                  allow_dotted_keys=True)
  return expanded, groups


def _train_or_reuse(trainer: str, config: ml_collections.ConfigDict, workdir: str,
                    data_dir: str | None, may_train: bool) -> dict[str, Any] | None:
  """train.train_or_reuse with the sweep's trainer."""
  if trainer == "supervised":
    return train.train_or_reuse(config, workdir, data_dir, may_train=may_train)
  done = workdir_lib.finished_results(workdir, config.num_steps)
  if done is not None or not may_train:
    return done
  return ssl_run.train_ssl(config, workdir, data_dir)


def images_per_step(trainer: str, config: ml_collections.ConfigDict) -> int:
  """Training images one step of `config` sees: its batch, plus the unlabelled ones
  (ssl.mu per labelled image) under the semi-supervised trainer."""
  return config.batch_size * (1 + config.ssl.mu if trainer == "ssl" else 1)


def _kept_row(reported: dict[str, Any] | None, overrides: dict[str, Any],
              config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The row a report written before holds for this variant, if it is this config's run:
  the same config fingerprint, or (rows written before fingerprints) the same overrides and
  step count. None otherwise."""
  legacy_same = bool(reported) and (reported.get("overrides") == overrides
                                    and reported.get("steps") == config.num_steps)
  return reports.kept_row(reported, workdir_lib.config_fingerprint(config), legacy_same)


def run_variants(sweep: ml_collections.ConfigDict, workdir: str, data_dir: str | None,
                 only: list[str] | None, command: str,
                 reported: dict[str, dict[str, Any]] | None = None
                 ) -> dict[str, dict[str, Any]]:
  """Trains (or resumes, or reuses when finished) every variant in workdir/<name>, in the
  config's order; with `only`, only those variants train and the others are reported
  if finished. Returns {name: {accuracy, num_examples, steps, images_seen, train_seconds
  and steps_timed (the seconds and steps of the session that finished it), eval_curve
  ([[step, accuracy], ...] of the run's evaluations, metrics.eval_curve), overrides,
  config_sha256 (workdir.config_fingerprint), command}} for the finished variants.

  reported: the rows of this sweep's report as written before ({name: row}). A variant
  that is not to train now and whose workdir holds no finished run keeps its row from
  there when it is the same run (_kept_row; marked kept_from_report): runs/ does not move
  with the repository, its report does, so one sweep can be finished on several machines."""
  trainer = sweep.get("trainer", "supervised")
  if trainer not in TRAINERS:
    raise ConfigError(f"sweep trainer = {trainer!r}; expected one of {TRAINERS}")
  configs = variant_configs(sweep)
  rows = {}
  for name, overrides in sweep.variants.items():
    may_train = only is None or name in only
    results = _train_or_reuse(trainer, configs[name], os.path.join(workdir, name), data_dir,
                              may_train=may_train)
    if results is None:
      kept = None if may_train else _kept_row((reported or {}).get(name), dict(overrides),
                                               configs[name])
      if kept is not None:
        rows[name] = kept
        logging.info("variant %s: accuracy %.4f (kept from the report)", name, kept["accuracy"])
      continue
    rows[name] = {"accuracy": results["accuracy"], "num_examples": results["num_examples"],
                  "steps": results["step"],
                  "images_seen": results["step"] * images_per_step(trainer, configs[name]),
                  "train_seconds": results["train_seconds_this_session"],
                  "steps_timed": results.get("steps_this_session"),
                  "eval_curve": metrics.eval_curve(os.path.join(workdir, name)),
                  "overrides": dict(overrides),
                  "config_sha256": workdir_lib.config_fingerprint(configs[name]),
                  "command": command}
    logging.info("variant %s: accuracy %.4f", name, results["accuracy"])
  return rows
