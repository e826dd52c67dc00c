"""Evaluates the latest checkpoint of a training workdir and prints one JSON line.

  python -m experiments.evaluate --workdir=runs/fmnist [--dataset=npz:fashion_mnist.npz --split=test]

The model and its input normalisation come from the workdir's config.json; the
dataset defaults to the one the run evaluated on. `--split=holdout` means the
class-balanced validation hold-out of the run's training split. `--tta=flip` (or
five_shift, ten_shift, flip_zoom, or a views string) averages the probabilities of
test-time augmentation views.
"""

import json

import jax
from absl import flags

from effcv_jax import data as data_lib
from effcv_jax import sharding, train, watchdog
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


def evaluate_workdir(workdir: str, dataset: str | None = None, split: str | None = None,
                     data_dir: str | None = None, batch_size: int | None = None,
                     tta_views: str = "") -> dict:
  """Restores the latest checkpoint of `workdir` and evaluates it; returns the metrics.

  Reads only the workdir and the evaluation data (the run's training data only for
  split 'holdout', which is carved out of it). $EFFCV_CONV overrides the saved
  config's conv_backend. A watchdog (the run's config.watchdog) ends an evaluation
  whose batches stop completing with exit status 75.
  """
  config = cli.override_conv_backend(workdir_lib.load_config(workdir))
  if dataset is not None:
    config.eval_dataset = dataset
    if split is None:
      split = "test"
  if split is not None:
    config.eval_split = split
  if batch_size:
    config.eval_batch_size = batch_size
  with watchdog.Watchdog("evaluate", **workdir_lib.watchdog_limits(config),
                         describe_state=lambda: "evaluation writes no state; rerun it"):
    mesh = sharding.make_mesh()
    eval_source = run_data_lib.load_eval_source(config, config.get("eval_dataset", ""),
                                                config.eval_split, data_dir)
    _, task, state, step = workdir_lib.restore_latest(
        workdir, run_data_lib.image_shape_of(eval_source), mesh, config)
    eval_batch_size = sharding.padded_batch_size(config.eval_batch_size, mesh)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    result = train.evaluate(train.jit_eval_step(task, mesh, tta_views), variables,
                            data_lib.eval_batches(eval_source, eval_batch_size), mesh)
  return {**result, "checkpoint_step": step,
          "dataset": config.get("eval_dataset", "") or config.dataset,
          "split": config.eval_split, "tta": tta_views or None, "devices": jax.device_count()}


def main(argv):
  del argv
  print(json.dumps(evaluate_workdir(cli.workdir(), _DATASET.value, _SPLIT.value,
                                    cli.data_dir(), _BATCH.value, _TTA.value)))


if __name__ == "__main__":
  cli.run(main, shared_flags=("workdir", "data_dir"), required=("workdir",))
