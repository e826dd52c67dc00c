"""Exports the final model of a finished training run into the zoo (effcv_jax/zoo.py).

  python -m experiments.zoo --workdir=runs/ns_cifar10_4000/teacher --name=cifar10_4000_teacher \
      --train_command="python -m experiments.noisy_student --config=... --workdir=..." \
      [--report=reports/noisy_student_cifar10_4000.json] [--title="..."] [--data_dir=...]

Restores the run's latest checkpoint (which must be its num_steps) and takes its evaluation
weights (the weight averages of a run with ema_decay > 0), evaluates them on the
run's evaluation split with float32 weights and with float16 weights, keeps float16
when its accuracy is within 0.1 point of float32 (--dtype forces one), and writes
zoo/NAME/ (or --entry_dir). The card's accuracy is measured here, on the weights as stored;
its check command (`python -m experiments.evaluate --zoo=NAME`) reproduces it.

The other way round, on a machine without the run:

  python -m experiments.zoo --restore --name=cifar10_4000_teacher --workdir=runs/teacher_4000

makes a new WORKDIR a finished run of the entry (zoo.restore_run: config.json, a checkpoint
of the stored weights, results.json with the card's metrics), e.g. the teacher of a Noisy
Student config's teacher_workdir, so a student can be trained without retraining it.
"""

import json
import os

import jax
import numpy as np
from absl import flags

from effcv_jax import sharding, zoo
from effcv_jax import task as task_lib
from effcv_jax import workdir as workdir_lib
from effcv_jax.data import class_names
from effcv_jax.data import run_data as run_data_lib
from effcv_jax.errors import ConfigError
from experiments import cli
from experiments.evaluate import evaluate_variables

_NAME = flags.DEFINE_string("name", None, "Name of the zoo entry (a directory name).")
_TRAIN_COMMAND = flags.DEFINE_string("train_command", None,
                                     "The command that trained the run (for the card).")
_TITLE = flags.DEFINE_string("title", "", "One line saying what the model is.")
_REPORT = flags.DEFINE_string("report", "", "The report (reports/*.json) that cites the model.")
_NOTE = flags.DEFINE_string("note", "", "Anything a user of the model should know (e.g. how it "
                            "relates to the report's number).")
_DTYPE = flags.DEFINE_enum("dtype", "auto", ["auto", "float16", "float32"],
                           "Weights' dtype; auto: float16 when within 0.1 point of float32.")
_ENTRY_DIR = flags.DEFINE_string("entry_dir", None, "Entry directory; default zoo/NAME.")
_RESTORE = flags.DEFINE_bool("restore", False, "Instead of exporting: make --workdir a "
                             "finished run of the entry --name (zoo.restore_run).")

FLOAT16_TOLERANCE = 0.001    # accuracy (0..1) float16 weights may lose against float32


def as_dtype(variables, dtype: str):
  """Variables rounded to `dtype` and back to float32 (what loading the stored file gives)."""
  return jax.tree.map(lambda x: np.asarray(x).astype(dtype).astype(np.float32)
                      if np.issubdtype(np.asarray(x).dtype, np.floating) else np.asarray(x),
                      variables)


def data_split_phrase(config) -> str:
  """How the run's labelled and evaluation data were carved out of its dataset."""
  labelled = ("all labelled" if config.get("num_labelled", -1) < 0
              else f"{config.num_labelled} labelled (class-balanced)")
  holdout = config.get("num_holdout", 0)
  held = f", {holdout} held out for validation" if holdout else ""
  return f"{labelled}{held}, split_seed {config.get('split_seed', 0)}"


def export(workdir: str, name: str, train_command: str, out_dir: str, data_dir: str | None,
           title: str = "", report: str = "", dtype: str = "auto", note: str = "") -> dict:
  """Writes the zoo entry of the finished run in `workdir`; returns its card."""
  config = workdir_lib.load_config(workdir)
  finished = workdir_lib.finished_results(workdir, config.num_steps)
  if finished is None:
    raise ConfigError(f"{workdir} has not finished its num_steps={config.num_steps}: only a "
                      "finished run's final model goes into the zoo")
  eval_source = run_data_lib.load_eval_source(config, config.get("eval_dataset", ""),
                                              config.eval_split, data_dir)
  image_shape = run_data_lib.image_shape_of(eval_source)
  mesh = sharding.make_mesh()
  _, task, state, step = workdir_lib.restore_latest(workdir, image_shape, mesh, config)
  variables = jax.device_get(task_lib.eval_variables(state))
  measured = {d: evaluate_variables(config, task, as_dtype(variables, d), eval_source)
              for d in ("float32", "float16")}
  if dtype == "auto":
    loss = measured["float32"]["accuracy"] - measured["float16"]["accuracy"]
    dtype = "float16" if loss <= FLOAT16_TOLERANCE else "float32"
  eval_name = config.get("eval_dataset", "") or config.dataset
  card = {
      "name": name, "title": title,
      "task": f"image classification, {config.num_classes} classes",
      "class_names": list(class_names.class_names_for(config.dataset) or ()),
      "model": config.model,
      "num_parameters": int(sum(np.size(x) for x in jax.tree.leaves(variables["params"]))),
      "image_size": int(image_shape[0]), "channels": int(image_shape[-1]),
      "dataset": config.dataset, "train_split": config.train_split,
      "data_split": data_split_phrase(config),
      "eval": f"{eval_name} [{config.eval_split}]",
      "train_command": train_command, "trained_steps": int(step),
      "dtype": dtype, "metrics": measured[dtype],
      "ema_weights": task_lib.has_ema(state),
      "float32_accuracy": measured["float32"]["accuracy"],
      "run_results": finished,
      "check_command": f"python -m experiments.evaluate --zoo={name}",
      "report": report, "note": note,
  }
  return zoo.write_entry(out_dir, config, as_dtype(variables, dtype), card)


def main(argv):
  del argv
  if _RESTORE.value:
    if not _NAME.value:
      raise ConfigError("--name is required: the zoo entry to restore")
    print(json.dumps(zoo.restore_run(_NAME.value, cli.workdir())))
    return
  for flag in (_NAME, _TRAIN_COMMAND):
    if not flag.value:
      raise ConfigError(f"--{flag.name} is required")
  out_dir = _ENTRY_DIR.value or os.path.join(zoo.zoo_root(), _NAME.value)
  card = export(cli.workdir(), _NAME.value, _TRAIN_COMMAND.value, out_dir, cli.data_dir(),
                _TITLE.value, _REPORT.value, _DTYPE.value, _NOTE.value)
  print(json.dumps({k: card[k] for k in ("name", "dtype", "metrics", "float32_accuracy",
                                         "files")}))


if __name__ == "__main__":
  cli.run(main, shared_flags=("workdir", "data_dir"), required=("workdir",))
