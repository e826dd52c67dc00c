"""Calibration, adversarial and corruption robustness of a training run's latest checkpoint
or of a zoo entry; writes a JSON report and PNGs.

  python -m experiments.robustness --workdir=runs/fmnist [--dataset=SPEC --split=NAME]
  python -m experiments.robustness --zoo=cifar10_4000_teacher --max_examples=1000
      [--suites=calibration,adversarial,corruptions] [--epsilons=2,4,8] [--pgd_steps=10]
      [--corruptions=fog,snow --severities=1,3,5 --baseline=reports/robustness_X.json]
      [--out=DIR]

The evaluated split defaults to the run's own evaluation split (as experiments/evaluate.py).
Suites:
  calibration  top-1 accuracy, ECE (15 equal-width confidence bins), NLL and Brier score
               of the whole split, before and after temperature scaling, and a reliability
               diagram. The temperature is fitted on the run's hold-out when the config has
               one and the evaluated split is another; otherwise (the split evaluated is the
               hold-out, or there is none) on the evaluated split itself, 2-fold cross-fitted
               (each half scaled by the temperature fitted on the other half), which the
               JSON says ("separate_validation": false).
  adversarial  top-1 accuracy under FGSM and PGD (L-infinity, random start, --pgd_steps
               steps of 2.5 * epsilon / steps) at each of --epsilons (pixel units of
               [0, 255] images: 8 means 8/255), on --max_examples examples spread evenly
               over the split (default all); PGD's random start keyed by (--seed, batch).
  corruptions  top-1 accuracy under each of --corruptions (default the 15 of CIFAR-10-C /
               ImageNet-C, effcv_jax/robustness/corruptions.py) at each of --severities,
               on --max_examples examples spread evenly over the split (default all); each
               image's corruption keyed by (--seed, corruption, severity, its index in the
               split); constants by --corruption_constants ('auto': 'cifar' up to 64 px,
               else 'imagenet'). With --baseline (another run's robustness JSON with this
               suite), the corruption error CE per corruption, mCE and relative mCE against
               it (effcv_jax/robustness/corruption_metrics.py).
Default suites: calibration,adversarial.

Output (--out, created if missing): for a workdir, the workdir
itself by default, as robustness.json, robustness_reliability.png,
robustness_adversarial.png and robustness_corruptions.png beside the run's files (none of
which is read for writing or changed); for a zoo entry, reports/ by default, as
robustness_NAME.json and robustness_NAME_*.png. A report already there of the same
subject (workdir or zoo entry, checkpoint step, model, dataset, split) keeps the suites this
command does not run (merge_reports; "commands" says which command wrote each suite); one of
another subject is replaced. Reads only the run (or entry) and the evaluation data, plus the
training split of the config's dataset where its hold-out is needed.
"""

import json
import os
import sys
import textwrap
import time

import jax
import numpy as np
from absl import app, flags, logging

from effcv_jax import data as data_lib
from effcv_jax import files, sharding, train, watchdog, zoo
from effcv_jax import task as task_lib
from effcv_jax import workdir as workdir_lib
from effcv_jax.data import run_data as run_data_lib
from effcv_jax.errors import ConfigError, FileFormatError, MissingFileError
from effcv_jax.robustness import adversarial, calibration, corruption_metrics, corruptions
from experiments import cli, evaluate

SUITES = ("calibration", "adversarial", "corruptions")
# The report's picture of each suite (its key in report["pictures"]).
PICTURE_OF_SUITE = {"calibration": "reliability", "adversarial": "adversarial",
                    "corruptions": "corruptions"}
# What a report describes: an earlier report's suites are kept only where these agree.
SUBJECT_KEYS = ("zoo", "workdir", "checkpoint_step", "model", "dataset", "eval_split")
DEFAULT_SUITES = ("calibration", "adversarial")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --dataset, --split and --batch_size are experiments/evaluate.py's flags (imported with it).
_SUITES = flags.DEFINE_string("suites", ",".join(DEFAULT_SUITES),
                              f"Comma-separated: {', '.join(SUITES)}.")
_EPSILONS = flags.DEFINE_string("epsilons", "2,4,8", "L-infinity radii in pixel units of [0, 255] "
                                "images (8 means 8/255), comma-separated.")
_PGD_STEPS = flags.DEFINE_integer("pgd_steps", adversarial.DEFAULT_PGD_STEPS, "PGD steps.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", None, "Attack and corrupt only N "
                                     "examples, spread evenly over the split (the calibration "
                                     "suite uses all).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of PGD's random starts and of the corruptions.")
_CORRUPTIONS = flags.DEFINE_string("corruptions", ",".join(corruptions.CORRUPTIONS),
                                   "Comma-separated corruptions of the corruptions suite.")
_SEVERITIES = flags.DEFINE_string("severities", "1,2,3,4,5", "Comma-separated severities (1..5).")
_CORRUPTION_CONSTANTS = flags.DEFINE_enum("corruption_constants", "auto",
                                          ["auto", *corruptions.CONSTANTS],
                                          "Corruption constants: 'cifar' (32 px), 'imagenet' "
                                          "(224 px) or 'auto' (by image size).")
_BASELINE = flags.DEFINE_string("baseline", None, "Another run's robustness JSON with a "
                                "corruptions section: CE, mCE and relative mCE against it.")
_OUT = flags.DEFINE_string("out", None, "Output directory; default: the workdir, or reports/ "
                           "for a zoo entry.")


def parse_suites(text: str) -> tuple[str, ...]:
  """'calibration,adversarial' -> the suites, in SUITES order; ConfigError on another name."""
  names = [n.strip() for n in text.split(",") if n.strip()]
  unknown = [n for n in names if n not in SUITES]
  if unknown or not names:
    raise ConfigError(f"--suites={text}: {', '.join(unknown) or 'empty'} is not a suite; "
                      f"choose among {', '.join(SUITES)} (comma-separated)")
  return tuple(s for s in SUITES if s in names)


def parse_epsilons(text: str) -> tuple[float, ...]:
  """'2,4,8' -> (2.0, 4.0, 8.0), increasing; ConfigError unless each is in (0, 255]."""
  try:
    values = sorted({float(v) for v in text.split(",") if v.strip()})
  except ValueError:
    raise ConfigError(f"--epsilons={text} is not a comma-separated list of numbers") from None
  if not values or values[0] <= 0 or values[-1] > 255:
    raise ConfigError(f"--epsilons={text}: give radii in (0, 255], pixel units (8 = 8/255)")
  return tuple(values)


def parse_corruptions(text: str) -> tuple[str, ...]:
  """'fog, snow' -> the corruptions in CORRUPTIONS order; ConfigError on another name."""
  names = [n.strip() for n in text.split(",") if n.strip()]
  unknown = [n for n in names if n not in corruptions.CORRUPTIONS]
  if unknown or not names:
    raise ConfigError(f"--corruptions={text}: {', '.join(unknown) or 'empty'} is not a "
                      f"corruption; choose among {', '.join(corruptions.CORRUPTIONS)}")
  return tuple(c for c in corruptions.CORRUPTIONS if c in names)


def parse_severities(text: str) -> tuple[int, ...]:
  """'1,3,5' -> (1, 3, 5); ConfigError unless each is an integer in 1..5."""
  try:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
  except ValueError:
    raise ConfigError(f"--severities={text} is not a comma-separated list of integers") from None
  if not values or values[0] < 1 or values[-1] > 5:
    raise ConfigError(f"--severities={text}: give severities in 1..5")
  return tuple(values)


def _batch_size(config, mesh) -> int:
  return sharding.padded_batch_size(config.eval_batch_size, mesh)


def collect_logits(task, variables, source, batch_size: int, mesh) -> tuple[np.ndarray,
                                                                              np.ndarray]:
  """Inference logits (N, K) float32 and labels (N,) of every example of `source` (on
  every process: the jitted pass returns each global batch replicated)."""
  def forward(v, b):
    logits = task_lib.predict_logits(task, v, b["image"].astype(np.float32))
    return logits.astype(np.float32), b["label"], b["mask"]

  fn = jax.jit(forward, in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
               out_shardings=sharding.replicated(mesh))
  logits, labels = [], []
  for batch in data_lib.eval_batches(source, batch_size):
    out, label, mask = jax.device_get(fn(variables, sharding.to_global(batch, mesh)))
    logits.append(np.asarray(out)[mask])
    labels.append(np.asarray(label)[mask])
    watchdog.beat()
  return np.concatenate(logits), np.concatenate(labels).astype(np.int64)


def _bins_json(bins: dict) -> dict:
  return {k: [round(float(x), 6) for x in bins[k]] for k in ("confidence", "accuracy")} | {
      "count": [int(c) for c in bins["count"]]}


def _rounded(metrics: dict) -> dict:
  return {k: round(v, 6) for k, v in metrics.items()}


def calibration_suite(logits: np.ndarray, labels: np.ndarray,
                      validation: tuple[np.ndarray, np.ndarray] | None,
                      validation_name: str) -> tuple[dict, dict, dict]:
  """Metrics before and after temperature scaling of the evaluated logits (N, K).

  `validation`: (logits, labels) of a separate split to fit the temperature on, or None
  to cross-fit it on the evaluated split's even and odd examples. Returns the report's
  'calibration' section and the reliability bins before and after.
  """
  before = calibration.calibration_metrics(logits, labels)
  if validation is not None:
    temperature = calibration.fit_temperature(*validation)
    scaled = logits / temperature
    fit = {"split": validation_name, "num_examples": int(len(validation[1])),
           "separate_validation": True,
           "validation_nll_before": round(calibration.negative_log_likelihood(*validation), 6),
           "validation_nll_after": round(calibration.negative_log_likelihood(
               *validation, temperature=temperature), 6)}
  else:
    temperature = calibration.fit_temperature(logits, labels)
    halves = (np.arange(len(labels)) % 2 == 0, np.arange(len(labels)) % 2 == 1)
    fold_t = [calibration.fit_temperature(logits[h], labels[h]) for h in halves]
    scaled = logits.astype(np.float64)
    scaled[halves[0]] /= fold_t[1]
    scaled[halves[1]] /= fold_t[0]
    fit = {"split": "the evaluated split itself (no separate validation split)",
           "num_examples": int(len(labels)), "separate_validation": False,
           "cross_fitted": "2-fold: even-indexed examples scaled by the temperature fitted "
                           "on the odd ones and vice versa",
           "fold_temperatures": [round(t, 6) for t in fold_t],
           "after_in_sample_optimistic": _rounded(calibration.calibration_metrics(
               logits, labels, temperature))}
  after = calibration.calibration_metrics(scaled, labels)
  bins_before = calibration.reliability_bins(logits, labels)
  bins_after = calibration.reliability_bins(scaled, labels)
  section = {"num_examples": int(len(labels)), "num_bins": calibration.NUM_BINS,
             "temperature": round(temperature, 6), "temperature_fit": fit,
             "before": _rounded(before), "after": _rounded(after),
             "bins_before": _bins_json(bins_before), "bins_after": _bins_json(bins_after)}
  return section, bins_before, bins_after


def adversarial_suite(task, variables, source, batch_size: int, mesh,
                      epsilons: tuple[float, ...], pgd_steps: int, seed: int) -> dict:
  """Top-1 accuracy of `source` clean and under FGSM and PGD at each epsilon."""
  attacks = {"fgsm": adversarial.jit_attack_eval_step(task, mesh, 1, False),
             "pgd": adversarial.jit_attack_eval_step(task, mesh, pgd_steps, True)}
  replicated = sharding.replicated(mesh)
  clean = train.evaluate(train.jit_eval_step(task, mesh), variables,
                         data_lib.eval_batches(source, batch_size), mesh)
  section = {"norm": "linf", "epsilons": list(epsilons), "epsilon_units": "pixel units of "
             "[0, 255] images (8 = 8/255)", "pgd_steps": pgd_steps,
             "pgd_step_size": f"{adversarial.PGD_STEP_FACTOR} * epsilon / pgd_steps",
             "pgd_random_start": True, "seed": seed, "num_examples": clean["num_examples"],
             "clean_accuracy": round(clean["accuracy"], 6)}
  checks = {"max_perturbation": 0.0, "min_pixel": 255.0, "max_pixel": 0.0}
  for name, step in attacks.items():
    accuracies, seconds = {}, time.perf_counter()
    for epsilon in epsilons:
      alpha = epsilon if name == "fgsm" else adversarial.PGD_STEP_FACTOR * epsilon / pgd_steps
      scalars = jax.device_put((np.float32(epsilon), np.float32(alpha)), replicated)
      correct = count = 0.0
      for index, batch in enumerate(data_lib.eval_batches(source, batch_size)):
        key = jax.device_put(adversarial.batch_key(seed, index), replicated)
        sums = jax.device_get(step(variables, sharding.to_global(batch, mesh), key, *scalars))
        correct, count = correct + float(sums["correct"]), count + float(sums["count"])
        checks["max_perturbation"] = max(checks["max_perturbation"],
                                         float(sums["max_perturbation"]) - epsilon)
        checks["min_pixel"] = min(checks["min_pixel"], float(sums["min_pixel"]))
        checks["max_pixel"] = max(checks["max_pixel"], float(sums["max_pixel"]))
        watchdog.beat()
      accuracies[f"{epsilon:g}"] = round(correct / max(count, 1.0), 6)
    section[name] = accuracies
    section[f"{name}_seconds"] = round(time.perf_counter() - seconds, 1)
  section["largest_perturbation_minus_epsilon"] = round(checks["max_perturbation"], 6)
  section["adversarial_pixel_range"] = [checks["min_pixel"], checks["max_pixel"]]
  return section


def write_adversarial_plot(path: str, section: dict, title: str) -> None:
  """Accuracy (%) against epsilon (0: clean) for FGSM and PGD, as a PNG at `path`."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  figure, axis = plt.subplots(figsize=(5.6, 3.8))
  xs = [0.0] + list(section["epsilons"])
  for name, colour in (("fgsm", "#dd8452"), ("pgd", "#c44e52")):
    ys = [100 * section["clean_accuracy"]] + [100 * section[name][f"{e:g}"]
                                              for e in section["epsilons"]]
    label = name.upper() + (f"-{section['pgd_steps']}" if name == "pgd" else "")
    axis.plot(xs, ys, marker="o", color=colour, label=label)
  axis.set_xticks(xs, ["clean"] + [f"{e:g}/255" for e in section["epsilons"]])
  axis.set_xlabel("L-infinity epsilon")
  axis.set_ylabel("top-1 accuracy (%)")
  axis.set_ylim(0, 100)
  axis.grid(alpha=0.3)
  axis.legend()
  axis.set_title(textwrap.fill(title, 60), fontsize=9)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def _split_indices(num_examples: int, batch_index: int, batch_size: int,
                   process_index: int, process_count: int) -> np.ndarray:
  """The positions in a split of n examples of the (padded) examples of a process's batch
  `batch_index` of data_lib.eval_batches (which gives process p the examples p, p + P, ...,
  batch_size // P at a time); padding positions are clipped to n - 1."""
  local = batch_size // process_count
  positions = process_index + (batch_index * local + np.arange(local)) * process_count
  return np.minimum(positions, num_examples - 1)


def corruption_suite(task, variables, source, batch_size: int, mesh, names: tuple[str, ...],
                     severities: tuple[int, ...], seed: int, constants: str,
                     split_indices: np.ndarray | None = None) -> dict:
  """Top-1 accuracy of `source` clean and under each corruption in `names` at each of
  `severities`. Image i of `source` is corrupted with the key of (seed, corruption,
  severity, split_indices[i]) (its index in the evaluated split; default i), so a subset
  sees the same corrupted images as the whole split. constants: 'cifar', 'imagenet' or
  'auto' (by image size)."""
  split_indices = np.arange(len(source)) if split_indices is None else split_indices
  height, width = np.shape(source[0]["image"])[:2]
  table = corruptions.constants_name(None if constants == "auto" else constants, height, width)
  eval_fn = train.jit_eval_step(task, mesh)
  process_index, process_count = jax.process_index(), jax.process_count()
  correct = {(c, s): 0.0 for c in names for s in severities}
  clean_correct = count = 0.0
  started = time.perf_counter()
  for index, batch in enumerate(data_lib.eval_batches(source, batch_size)):
    positions = split_indices[_split_indices(len(source), index, batch_size, process_index,
                                             process_count)]
    sums = jax.device_get(eval_fn(variables, sharding.to_global(batch, mesh)))
    clean_correct, count = clean_correct + float(sums["correct"]), count + float(sums["count"])
    for name in names:
      for severity in severities:
        images = corruptions.corrupt(batch["image"], name, severity, seed=seed,
                                     indices=positions, constants=table)
        corrupted = dict(batch, image=np.asarray(images))
        sums = jax.device_get(eval_fn(variables, sharding.to_global(corrupted, mesh)))
        correct[name, severity] += float(sums["correct"])
        watchdog.beat()
  count = max(count, 1.0)
  frost = corruptions.frost_source() if "frost" in names else None
  return {"constants": table, "image_size": [int(height), int(width)],
          "corruptions": list(names), "severities": list(severities), "seed": seed,
          "frost_textures": frost, "num_examples": int(round(count)),
          "clean_accuracy": round(clean_correct / count, 6),
          "accuracy": {c: {str(s): round(correct[c, s] / count, 6) for s in severities}
                       for c in names},
          "seconds": round(time.perf_counter() - started, 1)}


def load_baseline(path: str) -> dict:
  """The 'corruptions' section of another robustness JSON (MissingFileError,
  FileFormatError naming the file)."""
  if not os.path.isfile(path):
    raise MissingFileError(f"--baseline={path}: no such file (give another run's "
                           "robustness JSON written with --suites=corruptions)")
  try:
    with open(path, encoding="utf-8") as f:
      report = json.load(f)
    section = report["corruptions"]
    if not isinstance(section["accuracy"], dict) or "clean_accuracy" not in section:
      raise KeyError("accuracy or clean_accuracy")
  except (ValueError, KeyError, TypeError) as error:
    raise FileFormatError(f"{os.path.abspath(path)}: not a robustness JSON with a "
                          f"'corruptions' section ({type(error).__name__}: {error}); rerun "
                          "experiments.robustness --suites=corruptions for the baseline") from None
  return section | {"name": report.get("zoo") or report.get("workdir") or path}


def compare_with_baseline(section: dict, baseline: dict, baseline_path: str) -> dict:
  """CE per corruption, mCE and relative mCE of `section` against a baseline's section,
  over the corruptions and severities both have."""
  severities = [str(s) for s in section["severities"]
                if all(str(s) in baseline["accuracy"].get(c, {}) for c in section["corruptions"])]
  if not severities:
    raise FileFormatError(f"{os.path.abspath(baseline_path)}: its corruptions suite shares no "
                          "severity of every corruption evaluated here")
  keep = lambda accuracy: {c: {s: accuracy[c][s] for s in severities}  # noqa: E731
                           for c in section["corruptions"] if c in accuracy}
  metrics = corruption_metrics.mean_corruption_errors(
      corruption_metrics.accuracies_to_errors(keep(section["accuracy"])),
      1.0 - section["clean_accuracy"],
      corruption_metrics.accuracies_to_errors(keep(baseline["accuracy"])),
      1.0 - baseline["clean_accuracy"], baseline["name"])
  rounded = {k: ({c: round(v, 6) for c, v in metrics[k].items()} if isinstance(metrics[k], dict)
                 else round(metrics[k], 6) if isinstance(metrics[k], float) else metrics[k])
             for k in metrics}
  return rounded | {"baseline_file": baseline_path, "severities": [int(s) for s in severities],
                    "baseline_num_examples": baseline.get("num_examples"),
                    "baseline_constants": baseline.get("constants"),
                    "baseline_clean_accuracy": baseline["clean_accuracy"]}


def write_corruption_plot(path: str, section: dict, title: str) -> None:
  """Top-1 error (%) per corruption, one bar per severity, the clean error dashed."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  names, severities = section["corruptions"], section["severities"]
  figure_width = max(5.6, 0.75 * len(names) + 2)
  figure, axis = plt.subplots(figsize=(figure_width, 4.2))
  width = 0.8 / len(severities)
  colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(severities)))
  for i, severity in enumerate(severities):
    errors = [100 * (1 - section["accuracy"][c][str(severity)]) for c in names]
    axis.bar(np.arange(len(names)) + (i - (len(severities) - 1) / 2) * width, errors, width,
             color=colours[i], label=f"severity {severity}")
  axis.axhline(100 * (1 - section["clean_accuracy"]), color="#c44e52", linestyle="--",
               linewidth=1, label="clean")
  axis.set_xticks(np.arange(len(names)), [c.replace("_", " ") for c in names], rotation=45,
                  ha="right", fontsize=8)
  axis.set_ylabel("top-1 error (%)")
  axis.set_ylim(0, 100)
  axis.grid(alpha=0.3, axis="y")
  axis.legend(fontsize=7, ncol=min(6, len(severities) + 1), loc="upper left")
  axis.set_title(textwrap.fill(title, int(11 * figure_width)), fontsize=9)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def run(config, task, variables, out_dir: str, stem: str, description: dict,
        suites: tuple[str, ...], epsilons: tuple[float, ...], pgd_steps: int,
        max_examples: int | None, seed: int, data_dir: str | None,
        command: str, corruption_names: tuple[str, ...] = corruptions.CORRUPTIONS,
        severities: tuple[int, ...] = corruptions.SEVERITIES,
        corruption_constants: str = "auto", baseline: str | None = None) -> dict:
  """Runs `suites` on the evaluation split of `config` (config.eval_dataset/eval_split)
  and writes out_dir/{stem}.json and its PNGs (process 0 of a multi-process run); returns
  the report."""
  mesh = sharding.make_mesh()
  batch_size = _batch_size(config, mesh)
  dataset = config.get("eval_dataset", "") or config.dataset
  source = run_data_lib.load_eval_source(config, config.get("eval_dataset", ""),
                                         config.eval_split, data_dir)
  variables = sharding.replicate(variables, mesh)
  subject = f"{description['model_label']}, {dataset} [{config.eval_split}]"
  report = {"title": report_title(suites, subject),
            "command": command, **{k: v for k, v in description.items() if k != "model_label"},
            "model": config.model, "dataset": dataset, "eval_split": config.eval_split,
            "suites": list(suites), "devices": jax.device_count()}
  writer = jax.process_index() == 0       # every process computes, process 0 writes
  if writer:
    os.makedirs(out_dir, exist_ok=True)
  pictures = {}
  if "calibration" in suites:
    logits, labels = collect_logits(task, variables, source, batch_size, mesh)
    validation, validation_name = None, ""
    if config.get("num_holdout", 0) > 0 and config.eval_split != "holdout":
      holdout = run_data_lib.load_eval_source(config, "", "holdout", data_dir)
      validation = collect_logits(task, variables, holdout, batch_size, mesh)
      validation_name = f"{config.dataset} [holdout]"
    section, bins_before, bins_after = calibration_suite(logits, labels, validation,
                                                         validation_name)
    report["calibration"] = section
    pictures["reliability"] = os.path.join(out_dir, f"{stem}_reliability.png")
    if writer:
      calibration.write_reliability_diagram(
          pictures["reliability"], bins_before, bins_after,
          f"Reliability, {section['num_examples']:,} examples: {subject}",
          section["temperature"], section["before"]["ece"], section["after"]["ece"],
          "" if section["temperature_fit"]["separate_validation"] else ", 2-fold cross-fitted")
  if "adversarial" in suites:
    attacked = source
    if max_examples is not None and max_examples < len(source):
      attacked = data_lib.Subset(source, attacked_indices(len(source), max_examples))
    section = adversarial_suite(task, variables, attacked, batch_size, mesh, epsilons,
                                pgd_steps, seed)
    report["adversarial"] = section
    pictures["adversarial"] = os.path.join(out_dir, f"{stem}_adversarial.png")
    if writer:
      write_adversarial_plot(pictures["adversarial"], section,
                             f"{section['num_examples']:,} examples: {subject}")
  if "corruptions" in suites:
    indices = np.arange(len(source))
    if max_examples is not None and max_examples < len(source):
      indices = attacked_indices(len(source), max_examples)
    section = corruption_suite(task, variables, data_lib.Subset(source, indices), batch_size,
                               mesh, corruption_names, severities, seed, corruption_constants,
                               indices)
    if baseline is not None:
      section["versus_baseline"] = compare_with_baseline(section, load_baseline(baseline),
                                                         baseline)
    report["corruptions"] = section
    pictures["corruptions"] = os.path.join(out_dir, f"{stem}_corruptions.png")
    if writer:
      write_corruption_plot(pictures["corruptions"], section,
                            f"{section['num_examples']:,} examples, {section['constants']} "
                            f"constants: {subject}")
  report["pictures"] = {k: os.path.basename(v) for k, v in pictures.items()}
  report["commands"] = {suite: command for suite in suites}
  path = os.path.join(out_dir, f"{stem}.json")
  report = merge_reports(read_earlier_report(path), report, path)
  if writer:
    files.write_json_atomic(path, report)
  return report


def read_earlier_report(path: str) -> dict | None:
  """The robustness report already at `path` (None when there is none); FileFormatError
  naming the file when it is not a JSON object."""
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      earlier = json.load(f)
  except (ValueError, UnicodeDecodeError) as error:
    earlier = error
  if not isinstance(earlier, dict):
    raise FileFormatError(f"{os.path.abspath(path)}: not a robustness JSON report (the new "
                          "suites would be merged into it); move it away or give --out")
  return earlier


SUITE_TITLES = {"calibration": "calibration", "adversarial": "adversarial robustness",
                "corruptions": "corruption robustness"}


def report_title(suites, subject: str) -> str:
  """'Calibration, adversarial robustness and corruption robustness: SUBJECT' for the suites
  a report holds (in SUITES order)."""
  names = [SUITE_TITLES[s] for s in SUITES if s in suites]
  joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
  return f"{joined[0].upper()}{joined[1:]}: {subject}"


def merge_reports(earlier: dict | None, report: dict, path: str) -> dict:
  """`report` with the suites of `earlier` (the report already at `path`, or None) that it
  did not run, their pictures and commands; the new suites and top-level fields win.

  An earlier report of another subject (a SUBJECT_KEYS value differs: another checkpoint,
  model, dataset or split) describes something else: it is replaced, with a warning.
  A report written before "commands" existed credits its suites to its "command".
  """
  if earlier is None:
    return report
  differing = [k for k in SUBJECT_KEYS if earlier.get(k) != report.get(k)]
  if differing:
    logging.warning("%s: the earlier report's %s differ from this evaluation's; its suites "
                    "(%s) are replaced", path, ", ".join(differing),
                    ", ".join(s for s in SUITES if s in earlier) or "none")
    return report
  kept = [s for s in SUITES if s in earlier and s not in report]
  if not kept:
    return report
  sections = {s: report[s] if s in report else earlier[s] for s in SUITES
              if s in report or s in kept}
  earlier_commands = earlier.get("commands") or {s: earlier.get("command", "") for s in kept}
  pictures, commands = {}, {}
  for suite in sections:
    source = earlier if suite in kept else report
    picture = PICTURE_OF_SUITE[suite]
    if picture in source.get("pictures", {}):
      pictures[picture] = source["pictures"][picture]
    commands[suite] = (earlier_commands if suite in kept else report["commands"]).get(suite, "")
  merged = {k: v for k, v in report.items()
            if k not in SUITES and k not in ("pictures", "commands")}
  merged["title"] = report_title(sections, report["title"].split(": ", 1)[-1])
  return merged | {"suites": list(sections)} | sections | {"pictures": pictures,
                                                           "commands": commands}


def attacked_indices(num_examples: int, max_examples: int) -> np.ndarray:
  """`max_examples` indices (< num_examples) spread evenly over the split, increasing, so a
  split stored sorted by class stays balanced."""
  return np.arange(max_examples) * num_examples // max_examples


def summary(report: dict) -> dict:
  """The report's headline numbers (what the command prints)."""
  out = {"pictures": report["pictures"]}
  if "calibration" in report:
    section = report["calibration"]
    out.update(temperature=section["temperature"], before=section["before"],
               after=section["after"])
  if "adversarial" in report:
    section = report["adversarial"]
    out.update({k: section[k] for k in ("num_examples", "clean_accuracy", "fgsm", "pgd")})
  if "corruptions" in report:
    section = report["corruptions"]
    mean = {c: round(sum(by.values()) / len(by), 4) for c, by in section["accuracy"].items()}
    out["corruption_mean_accuracy"] = mean
    if "versus_baseline" in section:
      out.update({k: section["versus_baseline"][k] for k in ("mce", "relative_mce")})
  return out


def main(argv):
  if (cli.workdir() is None) == (cli.zoo() is None):
    raise app.UsageError("give exactly one of --workdir (a training run) and --zoo (a zoo "
                         "entry)")
  suites = parse_suites(_SUITES.value)
  epsilons = parse_epsilons(_EPSILONS.value)
  if flags.FLAGS.tta:
    raise ConfigError("--tta is experiments/evaluate.py's flag; the robustness suites evaluate "
                      "the plain forward pass")
  if _PGD_STEPS.value < 1:
    raise ConfigError(f"--pgd_steps={_PGD_STEPS.value}: give at least 1 step")
  if _MAX_EXAMPLES.value is not None and _MAX_EXAMPLES.value < 1:
    raise ConfigError(f"--max_examples={_MAX_EXAMPLES.value}: give at least 1 (or leave it out)")
  del argv
  command = "python -m experiments.robustness " + " ".join(
      a for a in sys.argv[1:] if not a.startswith(("--data_dir", "--out")))
  settings = dict(suites=suites, epsilons=epsilons, pgd_steps=_PGD_STEPS.value,
                  max_examples=_MAX_EXAMPLES.value, seed=_SEED.value,
                  data_dir=cli.data_dir(), command=command.strip(),
                  corruption_names=parse_corruptions(_CORRUPTIONS.value),
                  severities=parse_severities(_SEVERITIES.value),
                  corruption_constants=_CORRUPTION_CONSTANTS.value, baseline=_BASELINE.value)
  if _BASELINE.value is not None and "corruptions" in suites:
    load_baseline(_BASELINE.value)              # a bad file fails before the evaluation
  if cli.zoo() is not None:
    entry = zoo.load(cli.zoo())
    config = evaluate.with_eval_settings(cli.override_conv_backend(entry.config),
                                         flags.FLAGS.dataset, flags.FLAGS.split,
                                         flags.FLAGS.batch_size)
    task, _ = task_lib.build_task(config)
    with watchdog.Watchdog("robustness", **workdir_lib.watchdog_limits(config),
                           describe_state=lambda: "the report is written at the end; rerun"):
      report = run(config, task, entry.variables, _OUT.value or os.path.join(REPO_ROOT, "reports"),
                   f"robustness_{cli.zoo()}", {"zoo": cli.zoo(), "model_label": cli.zoo()},
                   **settings)
  else:
    workdir = cli.workdir()
    config = evaluate.with_eval_settings(
        cli.override_conv_backend(workdir_lib.load_config(workdir)), flags.FLAGS.dataset,
        flags.FLAGS.split, flags.FLAGS.batch_size)
    with watchdog.Watchdog("robustness", **workdir_lib.watchdog_limits(config),
                           describe_state=lambda: "the report is written at the end; rerun"):
      mesh = sharding.make_mesh()
      source = run_data_lib.load_eval_source(config, config.get("eval_dataset", ""),
                                             config.eval_split, cli.data_dir())
      _, task, state, step = workdir_lib.restore_latest(
          workdir, run_data_lib.image_shape_of(source), mesh, config)
      variables = task_lib.eval_variables(state)
      report = run(config, task, variables, _OUT.value or workdir, "robustness",
                   {"workdir": workdir, "checkpoint_step": step, "model_label": workdir},
                   **settings)
  print(json.dumps(summary(report)))


if __name__ == "__main__":
  cli.run(main, shared_flags=("workdir", "data_dir", "zoo"))
