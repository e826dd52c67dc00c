"""Evaluates the latest checkpoint of a training workdir, or a zoo entry, and prints one JSON line.

  python -m experiments.evaluate --workdir=runs/fmnist [--dataset=npz:fashion_mnist.npz --split=test]
  python -m experiments.evaluate --zoo=cifar10_4000_teacher [--dataset=... --split=...]

The model and its input normalisation come from the workdir's config.json; the
dataset defaults to the one the run evaluated on. `--split=holdout` means the
class-balanced validation hold-out of the run's training split. `--tta=flip` (or
five_shift, ten_shift, flip_zoom, or a views string) averages the probabilities of
test-time augmentation views.
"""

import json

import jax
from absl import app, flags

from effcv_jax import data as data_lib
from effcv_jax import sharding, train, watchdog, zoo
from effcv_jax import task as task_lib
from effcv_jax import workdir as workdir_lib
from effcv_jax.data import run_data as run_data_lib
from experiments import cli

_DATASET = flags.DEFINE_string("dataset", None, "Dataset spec (npz:PATH, tfds:NAME, pkg:NAME); "
                               "default: the run's evaluation dataset.")
_SPLIT = flags.DEFINE_string("split", None, "Split name; default: the run's eval split.")
_TTA = flags.DEFINE_string(
    "tta", "", "Test-time augmentation: a preset (flip, five_shift, ten_shift, flip_zoom) or a "
    "views string such as 'identity|flip_lr'; probabilities are averaged. Default: off.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Evaluation batch size; default from the config.")


def with_eval_settings(config, dataset: str | None, split: str | None,
                        batch_size: int | None):
  """`config` (changed in place) evaluating `split` of `dataset` with `batch_size`."""
  if dataset is not None:
    config.eval_dataset = dataset
    if split is None:
      split = "test"
  if split is not None:
    config.eval_split = split
  if batch_size:
    config.eval_batch_size = batch_size
  return config


def evaluate_variables(config, eval_task, variables, eval_source, tta_views: str = "") -> dict:
  """Accuracy, loss and count of `variables` on `eval_source` with the eval step of
  `eval_task`, batches of config.eval_batch_size sharded over all devices."""
  mesh = sharding.make_mesh()
  eval_batch_size = sharding.padded_batch_size(config.eval_batch_size, mesh)
  return train.evaluate(train.jit_eval_step(eval_task, mesh, tta_views),
                        sharding.replicate(variables, mesh),
                        data_lib.eval_batches(eval_source, eval_batch_size), mesh)


def evaluate_workdir(workdir: str, dataset: str | None = None, split: str | None = None,
                     data_dir: str | None = None, batch_size: int | None = None,
                     tta_views: str = "") -> dict:
  """Restores the latest checkpoint of `workdir` and evaluates it (its weight averages
  when the run kept them, task.eval_variables); returns the metrics.

  Reads only the workdir and the evaluation data (the run's training data only for
  split 'holdout', which is carved out of it). $EFFCV_CONV overrides the saved
  config's conv_backend. A watchdog (the run's config.watchdog) ends an evaluation
  whose batches stop completing with exit status 75.
  """
  config = with_eval_settings(cli.override_conv_backend(workdir_lib.load_config(workdir)),
                               dataset, split, batch_size)
  with watchdog.Watchdog("evaluate", **workdir_lib.watchdog_limits(config),
                         describe_state=lambda: "evaluation writes no state; rerun it"):
    mesh = sharding.make_mesh()
    eval_source = run_data_lib.load_eval_source(config, config.get("eval_dataset", ""),
                                                config.eval_split, data_dir)
    _, task, state, step = workdir_lib.restore_latest(
        workdir, run_data_lib.image_shape_of(eval_source), mesh, config)
    variables = task_lib.eval_variables(state)
    result = evaluate_variables(config, task, variables, eval_source, tta_views)
  return {**result, "checkpoint_step": step,
          "dataset": config.get("eval_dataset", "") or config.dataset,
          "split": config.eval_split, "tta": tta_views or None, "devices": jax.device_count()}


def evaluate_zoo(name: str, dataset: str | None = None, split: str | None = None,
                 data_dir: str | None = None, batch_size: int | None = None,
                 tta_views: str = "") -> dict:
  """Evaluates zoo entry `name` (default: on the split its card reports); returns the
  metrics with the card's recorded accuracy beside them."""
  entry = zoo.load(name)
  config = with_eval_settings(cli.override_conv_backend(entry.config), dataset, split,
                               batch_size)
  with watchdog.Watchdog("evaluate", **workdir_lib.watchdog_limits(config),
                         describe_state=lambda: "evaluation writes no state; rerun it"):
    eval_source = run_data_lib.load_eval_source(config, config.get("eval_dataset", ""),
                                                config.eval_split, data_dir)
    eval_task, _ = task_lib.build_task(config)
    result = evaluate_variables(config, eval_task, entry.variables, eval_source, tta_views)
  return {**result, "zoo": name, "card_accuracy": entry.card["metrics"]["accuracy"],
          "dataset": config.get("eval_dataset", "") or config.dataset,
          "split": config.eval_split, "tta": tta_views or None, "devices": jax.device_count()}


def main(argv):
  del argv
  if (cli.workdir() is None) == (cli.zoo() is None):
    raise app.UsageError("give exactly one of --workdir (a training run) and --zoo (a zoo "
                         "entry)")
  settings = (_DATASET.value, _SPLIT.value, cli.data_dir(), _BATCH.value, _TTA.value)
  if cli.zoo() is not None:
    print(json.dumps(evaluate_zoo(cli.zoo(), *settings)))
  else:
    print(json.dumps(evaluate_workdir(cli.workdir(), *settings)))


if __name__ == "__main__":
  cli.run(main, shared_flags=("workdir", "data_dir", "zoo"))
