"""Fast AutoAugment (Lim, Kim, Kim, Kim, Kim, NeurIPS 2019): a policy search by density matching.

The labelled training data is split into K class-stratified folds. For each fold k a model is
trained, without the searched augmentation, on the other K - 1 folds (D_M); a policy that makes
the held-out fold D_A look like data the model has seen (in distribution) keeps its loss low.
For each fold, T rounds of a Bayesian search (optuna's TPE, B trials a round) propose
candidate policies of N_sub sub-policies of N_op ops each (op name, probability in [0, 1],
magnitude in [0, 1]); a candidate's score is the fold model's mean cross-entropy on D_A
augmented by it (the paper's objective, minimised; the accuracy is recorded too). The N best
candidates of each round and fold are merged: the final policy holds their K * T * N * N_sub
sub-policies, written as an `autoaugment(policy=[...])` spec string (augment/policies.py).

Scoring runs jitted: a candidate is a `policies.SubPolicyTables` of arrays, so every candidate
runs the same compiled program (`make_scorer`). All candidates of a fold are scored with the
same random draws (common random numbers), so their differences are the policies'.

Resumable: the fold models are training workdirs (WORKDIR/fold_K, reused when finished,
resumed from their checkpoints otherwise); the studies live in an optuna journal file
(WORKDIR/optuna_journal.log). Each trial is asked with a TPE sampler seeded by (seed, fold,
round, number of completed trials), so a search interrupted between trials and resumed
proposes the same candidates as one that ran through; a trial interrupted while scored is
marked failed and asked again. A finished search, rerun, returns the same policy.
WORKDIR/search_cost.json adds up the process CPU time and wall time of the sessions that did
work.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optuna
from absl import logging

from effcv_jax import files, sharding, train, workdir_lock
from effcv_jax import task as task_lib
from effcv_jax import workdir as workdir_lib
from effcv_jax.augment import policies
from effcv_jax.data import pipeline
from effcv_jax.data import run_data as run_data_lib
from effcv_jax.errors import ConfigError, ResumeRefusedError
from effcv_jax.policy_search import papers_cost

# The paper's search space has 16 ops; Cutout and SamplePairing are not policy ops here.
DEFAULT_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "AutoContrast", "Invert",
               "Equalize", "Solarize", "Posterize", "Contrast", "Color", "Brightness",
               "Sharpness")
JOURNAL = "optuna_journal.log"
COST = "search_cost.json"
SETTINGS = "search_settings.json"
LEVEL_DIGITS = 3   # candidates' probabilities and levels are rounded to this many decimals


def default_search() -> ml_collections.ConfigDict:
  """The `search` group of a Fast AutoAugment config: the paper's K=5, T=2, B=200, N=10,
  5 sub-policies of 2 ops.

  num_folds: K; num_rounds: T; num_trials: B (per round and fold); num_selected: N (best
  candidates kept per round and fold); num_sub_policies, num_ops: a candidate's shape; ops: the
  op names searched over (policies.op_space()); num_draws: augmented copies of each held-out
  image a candidate is scored on; num_startup_trials: TPE's random trials before it models;
  score_batch_size: images per scoring batch; seed: folds, sampler and scoring draws.
  """
  return ml_collections.ConfigDict(dict(
      num_folds=5, num_rounds=2, num_trials=200, num_selected=10, num_sub_policies=5,
      num_ops=2, ops=DEFAULT_OPS, num_draws=1, num_startup_trials=10, score_batch_size=500,
      seed=0))


def check_search(search: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the key, value and valid range of a bad search setting."""
  valid = policies.op_space()
  ops = tuple(search.ops)
  unknown = [name for name in ops if name not in valid]
  if unknown:
    raise ConfigError(f"search.ops names unknown op {unknown[0]!r}; valid ops: "
                      f"{', '.join(valid)}")
  if not ops or len(set(ops)) != len(ops):
    raise ConfigError(f"search.ops must name at least one op, each once; got {ops!r}")
  minimum = dict(num_folds=2, num_rounds=1, num_trials=1, num_selected=1, num_sub_policies=1,
                 num_ops=1, num_draws=1, num_startup_trials=0, score_batch_size=1)
  for key, low in minimum.items():
    if int(search[key]) < low:
      raise ConfigError(f"search.{key}={search[key]} must be >= {low}")
  if search.num_selected > search.num_trials:
    raise ConfigError(f"search.num_selected={search.num_selected} (N) must be <= "
                      f"search.num_trials={search.num_trials} (B): a round keeps its N best "
                      "of B candidates")


def check_config(config: ml_collections.ConfigDict) -> None:
  """The whole search config: its `search` group (check_search) and a `fold` training config
  that trains on the images as stored (no host pre-processing)."""
  if "search" not in config or "fold" not in config:
    raise ConfigError("a Fast AutoAugment config has groups `fold` (the fold models' training "
                      "config) and `search` (fast_autoaugment.default_search())")
  check_search(config.search)
  if config.fold.get("host_preprocessing", ""):
    raise ConfigError(f"fold.host_preprocessing={config.fold.host_preprocessing!r}: the search "
                      "scores the stored images; set it to ''")


# ---------------------------------------------------------------------------------------------
# Folds.
# ---------------------------------------------------------------------------------------------


def stratified_folds(labels: np.ndarray, num_folds: int, seed: int) -> list[np.ndarray]:
  """K disjoint folds of indices into `labels` (N,) that cover them all, each class spread as
  evenly as possible (its examples, shuffled, dealt round-robin, each class starting where the
  previous one stopped, so the fold sizes differ by at most one). Sorted index arrays."""
  if num_folds < 2:
    raise ConfigError(f"search.num_folds={num_folds} must be >= 2")
  rng = np.random.default_rng(seed)
  folds: list[list[int]] = [[] for _ in range(num_folds)]
  offset = 0
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    for position, index in enumerate(members):
      folds[(offset + position) % num_folds].append(int(index))
    offset += len(members)
  return [np.sort(np.asarray(fold, np.int64)) for fold in folds]


# ---------------------------------------------------------------------------------------------
# Candidates and their scores.
# ---------------------------------------------------------------------------------------------


def distributions(search: ml_collections.ConfigDict
                  ) -> dict[str, optuna.distributions.BaseDistribution]:
  """The search space: for sub-policy s and op o, `s{s}_o{o}_op` (categorical over
  search.ops), `..._p` (probability) and `..._m` (magnitude fraction), both uniform in [0, 1]."""
  space = {}
  for sub in range(search.num_sub_policies):
    for op in range(search.num_ops):
      prefix = f"s{sub}_o{op}"
      space[f"{prefix}_op"] = optuna.distributions.CategoricalDistribution(tuple(search.ops))
      space[f"{prefix}_p"] = optuna.distributions.FloatDistribution(0.0, 1.0)
      space[f"{prefix}_m"] = optuna.distributions.FloatDistribution(0.0, 1.0)
  return space


def candidate_policy(params: Mapping[str, Any], search: ml_collections.ConfigDict
                     ) -> policies.SubPolicies:
  """A trial's parameters -> its sub-policies ((op, probability, level 0..9), ...), rounded to
  LEVEL_DIGITS decimals (what is scored is what the spec string says)."""
  return tuple(
      tuple((str(params[f"s{sub}_o{op}_op"]), round(float(params[f"s{sub}_o{op}_p"]),
                                                    LEVEL_DIGITS),
             round(policies.AUTOAUGMENT_MAX_LEVEL * float(params[f"s{sub}_o{op}_m"]),
                   LEVEL_DIGITS))
            for op in range(search.num_ops))
      for sub in range(search.num_sub_policies))


def search_space(ops: Sequence[str]) -> list[policies.PolicyOp]:
  """The op space candidates index: Identity, then the searched ops in order."""
  space = policies.op_space()
  return [space["Identity"]] + [space[name] for name in ops if name != "Identity"]


def make_scorer(task: task_lib.Task, space: Sequence[policies.PolicyOp],
                strategy: str = "auto", fill: float = 128.0, interpolation: str = "bilinear"):
  """score(variables, images uint8 (B, H, W, C), labels int (B,), mask bool (B,),
  tables (policies.SubPolicyTables), key) -> {'correct', 'loss', 'count'} sums over the
  masked-in images of the model's predictions on the images augmented by the tables'
  sub-policies (policies.apply_sub_policies with `key`, the autoaugment op's semantics and
  defaults). Jitted once: the tables are arguments, so candidates do not recompile."""

  def score(variables, images, labels, mask, tables, key):
    augmented = policies.apply_sub_policies(key, images.astype(jnp.float32), tables, space,
                                            strategy, fill, interpolation)
    log_probs = jax.nn.log_softmax(task_lib.predict_logits(task, variables, augmented))
    mask = mask.astype(jnp.float32)
    picked = jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), -1)[:, 0]
    return {"correct": jnp.sum(mask * (jnp.argmax(log_probs, -1) == labels)),
            "loss": jnp.sum(mask * -picked), "count": jnp.sum(mask)}

  return jax.jit(score)


_SCORERS: dict[tuple[str, tuple[str, ...]], tuple[task_lib.Task, Any]] = {}


def _task_and_scorer(fold_config: ml_collections.ConfigDict, ops: tuple[str, ...]):
  """(task, make_scorer(task, its space)) of a fold config, built once per process for equal
  configs and ops (a resumed or repeated search in one process compiles its scorer once)."""
  key = (fold_config.to_json(sort_keys=True), ops)
  if key not in _SCORERS:
    task, _ = task_lib.build_task(fold_config)
    _SCORERS[key] = (task, make_scorer(task, search_space(ops)))
  return _SCORERS[key]


def score_policy(scorer, variables: Any, images: np.ndarray, labels: np.ndarray,
                 tables: policies.SubPolicyTables, key: jax.Array, batch_size: int,
                 num_draws: int = 1) -> dict[str, float]:
  """Accuracy and mean cross-entropy of the model on `num_draws` augmented copies of images
  (N, H, W, C) uint8 with labels (N,): the copies stacked, in batches of batch_size (the last
  padded and masked); batch b augmented with key fold_in(key, b)."""
  images = np.concatenate([images] * num_draws)
  labels = np.concatenate([labels] * num_draws).astype(np.int32)
  batch_size = min(batch_size, len(labels))
  totals = None
  for batch, start in enumerate(range(0, len(labels), batch_size)):
    chunk_images, chunk_labels = images[start:start + batch_size], labels[start:start + batch_size]
    pad = batch_size - len(chunk_labels)
    mask = np.arange(batch_size) < len(chunk_labels)
    if pad:
      chunk_images = np.concatenate([chunk_images, np.zeros((pad,) + images.shape[1:],
                                                            images.dtype)])
      chunk_labels = np.concatenate([chunk_labels, np.zeros((pad,), np.int32)])
    sums = scorer(variables, chunk_images, chunk_labels, mask, tables,
                  jax.random.fold_in(key, batch))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {"accuracy": float(totals["correct"]) / count, "loss": float(totals["loss"]) / count}


def policy_spec(sub_policies: Sequence[Sequence[tuple[str, float, float]]]) -> str:
  """The spec string `autoaugment(policy=[[('Op', p, level), ...], ...])` of sub-policies."""
  def entry(name, probability, level):
    return f"({name!r}, {probability!r}, {level!r})"
  body = ", ".join("[" + ", ".join(entry(*op) for op in sub) + "]" for sub in sub_policies)
  return f"autoaugment(policy=[{body}])"


# ---------------------------------------------------------------------------------------------
# The search.
# ---------------------------------------------------------------------------------------------


def _trial_seed(seed: int, fold: int, round_index: int, completed: int) -> int:
  return int(np.random.SeedSequence([seed, fold, round_index, completed]).generate_state(1)[0])


def _completed(study: optuna.Study) -> int:
  return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _run_round(study: optuna.Study, search: ml_collections.ConfigDict, fold: int,
               round_index: int, evaluate, max_new: int | None = None) -> int:
  """Completes the study's B trials (search.num_trials), or runs max_new of them; returns how
  many it ran. evaluate(sub_policies) -> {'loss', 'accuracy'}."""
  for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
    study.tell(stale.number, state=optuna.trial.TrialState.FAIL)  # an interrupted session's
  space = distributions(search)
  ran = 0
  while _completed(study) < search.num_trials and (max_new is None or ran < max_new):
    study.sampler = optuna.samplers.TPESampler(
        seed=_trial_seed(search.seed, fold, round_index, _completed(study)),
        n_startup_trials=search.num_startup_trials)
    trial = study.ask(space)
    result = evaluate(candidate_policy(trial.params, search))
    trial.set_user_attr("accuracy", result["accuracy"])
    study.tell(trial, result["loss"])
    ran += 1
  return ran


def selected_trials(study: optuna.Study, num_selected: int) -> list[optuna.trial.FrozenTrial]:
  """The N completed trials of lowest loss (ties: the earlier trial)."""
  done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
  return sorted(done, key=lambda trial: (trial.value, trial.number))[:num_selected]


def _check_settings(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Saves the search settings in the workdir, or refuses a resume that changed them."""
  path = os.path.join(workdir, SETTINGS)
  settings = json.loads(json.dumps(config.search.to_dict(), default=list))
  if os.path.exists(path):
    saved = workdir_lib.read_json(path)
    changed = sorted(key for key in set(saved) | set(settings)
                     if saved.get(key) != settings.get(key))
    if changed:
      names = ", ".join("search." + key for key in changed)
      raise ResumeRefusedError(
          f"{workdir} holds a search with other settings ({names}: saved "
          f"{[saved.get(key) for key in changed]}, now {[settings.get(key) for key in changed]}"
          "); use another --workdir or the saved settings")
    return
  os.makedirs(workdir, exist_ok=True)
  files.write_json_atomic(path, settings)


class _Cost:
  """Process CPU time and wall time of the sessions that did work, added up in a file."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, COST)
    saved = workdir_lib.read_json(self.path) if os.path.exists(self.path) else {}
    self.sessions = list(saved.get("sessions", []))
    self.cpu_start, self.wall_start = time.process_time(), time.time()
    self.active = False

  def record(self) -> None:
    """Writes this session's time so far (it counts from then on)."""
    entry = {"cpu_seconds": time.process_time() - self.cpu_start,
             "wall_seconds": time.time() - self.wall_start}
    if self.active:
      self.sessions[-1] = entry
    else:
      self.sessions.append(entry)
      self.active = True
    files.write_json_atomic(self.path, {"sessions": self.sessions})

  def totals(self) -> dict[str, Any]:
    cpu = sum(session["cpu_seconds"] for session in self.sessions)
    wall = sum(session["wall_seconds"] for session in self.sessions)
    return {"cpu_hours": cpu / 3600.0, "wall_hours": wall / 3600.0,
            "cpu_seconds": cpu, "wall_seconds": wall, "sessions": len(self.sessions),
            "cpu_count": os.cpu_count(), "devices": 1, "platform": jax.default_backend(),
            "measured": "process CPU time (all threads) and wall time of the sessions that "
                        "trained fold models or ran trials, added up over resumes"}


def _fold_arrays(source: pipeline.Source, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  records = [source[int(index)] for index in indices]
  return (np.stack([np.asarray(record["image"]) for record in records]),
          np.asarray([int(record["label"]) for record in records], np.int32))


def run(config: ml_collections.ConfigDict, workdir: str, data_dir: str | None = None,
        stop_after_trials: int | None = None) -> dict[str, Any]:
  """Runs (or resumes, or reads back) the search of `config` (groups `fold` and `search`) in
  `workdir`; returns the report (policy spec string, per-fold scores, cost).

  Bad settings raise ConfigError before any training. stop_after_trials ends the session after
  that many new trials, as an interruption would (returns None then).
  """
  check_config(config)
  search = config.search
  fold_config = config.fold
  run_data = run_data_lib.load_run_data(fold_config, data_dir)
  labels = run_data_lib.source_labels(run_data.train)
  smallest = int(np.min(np.bincount(labels)[np.unique(labels)]))
  if smallest < search.num_folds:
    raise ConfigError(f"search.num_folds={search.num_folds} exceeds the {smallest} examples "
                      "of the labelled split's smallest class: every fold needs every class")
  with workdir_lock.hold(workdir):
    _check_settings(config, workdir)
    cost = _Cost(workdir)
    folds = stratified_folds(labels, search.num_folds, search.seed)
    space = search_space(search.ops)
    task, scorer = _task_and_scorer(fold_config, tuple(search.ops))
    mesh = sharding.make_mesh(jax.devices()[:1])
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(os.path.join(workdir, JOURNAL)))
    trials_left = stop_after_trials
    fold_reports, merged = [], []
    for fold, held_out in enumerate(folds):
      fold_dir = os.path.join(workdir, f"fold_{fold}")
      rest = np.setdiff1d(np.arange(len(labels)), held_out)
      finished = workdir_lib.finished_results(fold_dir, fold_config.num_steps)
      results = finished or train.train_and_evaluate(
          fold_config, fold_dir, data_dir, train_sources=[pipeline.Subset(run_data.train, rest)])
      if finished is None:
        cost.record()
      _, _, state, _ = workdir_lib.restore_latest(fold_dir, run_data.image_shape, mesh,
                                                  fold_config)
      variables = jax.device_get(task_lib.eval_variables(state))
      images, fold_labels = _fold_arrays(run_data.train, held_out)
      key = jax.random.fold_in(jax.random.PRNGKey(search.seed), fold)
      evaluate = functools.partial(_evaluate_candidate, scorer, variables, images, fold_labels,
                                   space, key, search)
      # The clean images: Identity tables of the candidates' shape (one compiled program).
      clean = evaluate(((("Identity", 0.0, 0.0),) * search.num_ops,) * search.num_sub_policies)
      rounds = []
      for round_index in range(search.num_rounds):
        study = optuna.create_study(study_name=f"fold{fold}_round{round_index}",
                                    storage=storage, direction="minimize", load_if_exists=True)
        ran = _run_round(study, search, fold, round_index, evaluate, trials_left)
        if ran:
          cost.record()
        if trials_left is not None:
          trials_left -= ran
          if _completed(study) < search.num_trials:
            return None
        chosen = selected_trials(study, search.num_selected)
        rounds.append({"round": round_index, "selected": [
            {"trial": trial.number, "loss": trial.value,
             "accuracy": trial.user_attrs["accuracy"],
             "sub_policies": [list(map(list, sub)) for sub in
                              candidate_policy(trial.params, search)]} for trial in chosen]})
        for trial in chosen:
          merged.extend(candidate_policy(trial.params, search))
      fold_reports.append({
          "fold": fold, "num_train": int(len(rest)), "num_held_out": int(len(held_out)),
          "clean_held_out": clean, "model_eval": {
              key_: results.get(key_) for key_ in ("accuracy", "loss", "step")},
          "rounds": rounds})
    spec = policy_spec(merged)
    return {
        "title": config.get("title", "Fast AutoAugment policy search"),
        "method": "Fast AutoAugment (Lim et al. 2019), density matching with a TPE search",
        "policy": spec, "num_sub_policies": len(merged),
        "score": "the fold model's mean cross-entropy on its held-out fold augmented by the "
                 "candidate (minimised); 'accuracy' the same images' accuracy",
        "search": json.loads(json.dumps(search.to_dict(), default=list)),
        "fold_model": {"model": fold_config.model, "num_steps": fold_config.num_steps,
                       "augment": fold_config.augment, "dataset": fold_config.dataset,
                       "num_labelled": fold_config.get("num_labelled", -1),
                       "eval_split": fold_config.eval_split},
        "optuna_version": optuna.__version__,
        "folds": fold_reports,
        "search_cost": cost.totals(),
        **papers_cost(),
    }


def _evaluate_candidate(scorer, variables, images, labels, space, key, search, sub_policies):
  tables = policies.sub_policy_tables(policies.check_sub_policies(sub_policies), space)
  return score_policy(scorer, variables, images, labels, tables, key, search.score_batch_size,
                      search.num_draws)
