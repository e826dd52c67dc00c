"""Published models: the weights, config and model card of finished runs, loaded by name.

    zoo/NAME/weights.safetensors   the variables, flattened as 'params/...' and
                                   'batch_stats/...' (float16 where that keeps the
                                   accuracy within 0.1 point, else float32)
    zoo/NAME/config.json           the run's config (model, classes, normalisation, data)
    zoo/NAME/card.json             the model card: task, data and split, the command that
                                   trained it, its metrics and the command that checks
                                   them, the sha256 of every file
    zoo/NAME/README.md             the card for people, generated from card.json

`load(NAME)` returns a `ZooModel` (model, variables, preprocessing, config, card);
`experiments/zoo.py` exports a finished run's workdir into an entry;
`python -m experiments.evaluate --zoo=NAME` checks its metrics; `restore_run` (or
`python -m experiments.zoo --restore --name=NAME --workdir=W`) turns an entry back into a
finished run directory, e.g. a teacher for config.teacher_workdir on another machine.

An entry's weights may live at an http(s) URL instead of in the repository (card.json
'weights_url'): they are downloaded once into $EFFCV_CACHE_DIR/zoo/ (default
~/.cache/effcv_jax/zoo) and their sha256 checked against the card; a failed download
or a mismatch is a ZooError naming the URL. Machines without internet copy the file
into that cache (the error says where). The zoo directory is the repository's zoo/,
or $EFFCV_ZOO_DIR.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.request
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from effcv_jax import files, sharding
from effcv_jax import task as task_lib
from effcv_jax import workdir as workdir_lib
from effcv_jax.checkpoint import Checkpointer
from effcv_jax.errors import UserError
from effcv_jax.pretrained.common import Preprocessing

ZOO_DIR_ENV = "EFFCV_ZOO_DIR"
CACHE_DIR_ENV = "EFFCV_CACHE_DIR"
WEIGHTS = "weights.safetensors"
CARD = "card.json"
CONFIG = "config.json"
DOWNLOAD_TIMEOUT_SECONDS = 60


class ZooError(UserError):
  """A zoo entry is missing, damaged, or its download failed; the message says which."""


@dataclasses.dataclass(frozen=True)
class ZooModel:
  """A published model: `task.model.apply(variables, task_lib.model_inputs(task, x), train=False)`
  on float images x (B, H, W, C) in [0, 255] gives logits; `predict_logits` does that."""
  name: str
  config: ml_collections.ConfigDict
  card: dict[str, Any]
  variables: dict[str, Any]
  task: task_lib.Task

  @property
  def model(self):
    return self.task.model

  @property
  def preprocessing(self) -> Preprocessing:
    """The normalisation (x / 255 - mean) / std and the image size the model was trained at."""
    return Preprocessing(tuple(self.config.input_mean), tuple(self.config.input_std),
                         int(self.card.get("image_size", 0)))

  def predict_logits(self, images: np.ndarray) -> np.ndarray:
    """uint8 or float images (B, H, W, C) in [0, 255] -> logits (B, num_classes)."""
    return np.asarray(task_lib.predict_logits(self.task, self.variables,
                                              np.asarray(images, np.float32)))


def zoo_root() -> pathlib.Path:
  """$EFFCV_ZOO_DIR, else the repository's zoo/ directory."""
  root = os.environ.get(ZOO_DIR_ENV)
  return pathlib.Path(root) if root else pathlib.Path(__file__).resolve().parent.parent / "zoo"


def names(root: pathlib.Path | None = None) -> list[str]:
  """The entries of the zoo (directories holding a card.json), sorted."""
  root = root or zoo_root()
  return sorted(p.name for p in root.iterdir() if (p / CARD).is_file()) if root.is_dir() else []


def sha256_of(path: str | pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


# ----------------------------------------------------------------------------
# Weights.

def save_variables(path: str | pathlib.Path, variables: Mapping[str, Any],
                   dtype: str = "float32") -> None:
  """Writes `variables` ({'params': ..., 'batch_stats': ...}) as safetensors, floating
  arrays cast to `dtype` ('float32' or 'float16'), atomically."""
  flat = traverse_util.flatten_dict(dict(variables), sep="/")
  arrays = {}
  for key, value in flat.items():
    array = np.asarray(value)
    arrays[key] = array.astype(dtype) if np.issubdtype(array.dtype, np.floating) else array
  tmp = f"{path}.tmp"
  save_file(arrays, tmp)
  os.chmod(tmp, 0o644)
  os.replace(tmp, path)


def load_variables(path: str | pathlib.Path) -> dict[str, Any]:
  """The variables of a safetensors file written by save_variables, floats as float32."""
  flat = {key: value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value
          for key, value in load_file(str(path)).items()}
  return traverse_util.unflatten_dict(flat, sep="/")


def cache_dir() -> pathlib.Path:
  """Where downloaded zoo weights are kept: $EFFCV_CACHE_DIR/zoo or ~/.cache/effcv_jax/zoo."""
  base = os.environ.get(CACHE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                        "effcv_jax")
  return pathlib.Path(base) / "zoo"


def fetch(url: str, sha256: str, directory: pathlib.Path | None = None) -> pathlib.Path:
  """The file at `url`, downloaded once into `directory` (default cache_dir()) as
  SHA256/BASENAME and checked against `sha256` (a cached copy too, every time). Raises ZooError naming the URL when the
  download fails or its sha256 differs (the bad download is not kept)."""
  directory = directory or cache_dir()
  target = directory / sha256 / (os.path.basename(url.split("?")[0]) or WEIGHTS)
  if target.is_file():
    if sha256_of(target) == sha256:
      return target
    target.unlink()      # a damaged copy in the cache: downloaded again
  target.parent.mkdir(parents=True, exist_ok=True)
  handle, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
  try:
    with os.fdopen(handle, "wb") as out:
      try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
          shutil.copyfileobj(response, out)
      except (urllib.error.URLError, OSError, ValueError) as e:
        reason = (f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError)
                  else getattr(e, "reason", None) or e)
        raise ZooError(f"could not download {url}: {reason}. Without internet, copy the file "
                       f"to {target} (sha256 {sha256})") from e
    got = sha256_of(tmp)
    if got != sha256:
      raise ZooError(f"{url} has sha256 {got}, the zoo card expects {sha256}: the file at the "
                     "URL changed or the download is damaged; nothing was kept")
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return target


# ----------------------------------------------------------------------------
# Entries.

def entry_dir(name: str) -> pathlib.Path:
  """zoo_root()/name; ZooError listing the entries if there is none of that name."""
  path = zoo_root() / name
  if not (path / CARD).is_file():
    known = ", ".join(names()) or "none"
    raise ZooError(f"no zoo entry {name!r} in {zoo_root()} (entries: {known})")
  return path


def read_card(name: str) -> dict[str, Any]:
  with open(entry_dir(name) / CARD) as f:
    return json.load(f)


def weights_path(name: str, card: Mapping[str, Any] | None = None) -> pathlib.Path:
  """The entry's weights file, downloaded first when the card gives a weights_url;
  ZooError if its sha256 differs from the card's."""
  card = card or read_card(name)
  expected = card["files"][WEIGHTS]
  if card.get("weights_url"):
    return fetch(card["weights_url"], expected)
  path = entry_dir(name) / WEIGHTS
  got = sha256_of(path)
  if got != expected:
    raise ZooError(f"{path} has sha256 {got}, its card {CARD} says {expected}: the weights "
                   "were changed or damaged; restore them from the repository")
  return path


def load(name: str) -> ZooModel:
  """The zoo entry `name`: its model (on config.conv_backend), variables (float32) and
  preprocessing, with its config and card."""
  card = read_card(name)
  with open(entry_dir(name) / CONFIG) as f:
    config = ml_collections.ConfigDict(json.load(f))
  variables = load_variables(weights_path(name, card))
  eval_task, _ = task_lib.build_task(config)
  return ZooModel(name, config, card, variables, eval_task)


def restore_run(name: str, workdir: str) -> dict[str, Any]:
  """Makes `workdir` (new or empty) a finished run of the entry `name`: its config.json, a
  checkpoint at the run's num_steps whose weights (and weight averages, batch statistics)
  are the entry's, with a fresh optimiser state, and results.json with the card's metrics
  (measured on the stored weights) and `restored_from_zoo`. Such a workdir serves every
  reader of finished runs (a reused teacher, evaluation, export, a sweep's reuse); it is
  not meant to be trained further. Returns the results. A workdir that already holds a
  run is refused."""
  if (os.path.exists(workdir_lib.config_path(workdir))
      or workdir_lib.complete_checkpoint_steps(workdir)):
    raise ZooError(f"{workdir} already holds a run: restore zoo entry {name!r} into a new "
                   "directory")
  entry = load(name)
  config, card = entry.config, entry.card
  mesh = sharding.make_mesh()
  image_shape = (card["image_size"], card["image_size"], card["channels"])
  _, state = task_lib.init_task_and_state(config, image_shape, mesh)
  replicated = sharding.replicated(mesh)
  variables = jax.device_put(
      {"params": entry.variables["params"],
       "batch_stats": entry.variables.get("batch_stats", {})}, replicated)
  state = state.replace(step=jax.device_put(np.int32(config.num_steps), replicated),
                        params=variables["params"], batch_stats=variables["batch_stats"])
  state = task_lib.with_fresh_aux_batch_stats(task_lib.with_fresh_ema(state))
  os.makedirs(workdir, exist_ok=True)
  checkpointer = Checkpointer(workdir)
  try:
    checkpointer.save(int(config.num_steps), state)
    checkpointer.wait()
  finally:
    checkpointer.close()
  workdir_lib.write_config(config, workdir)
  results = {**card["metrics"], "step": int(config.num_steps), "eval_split": config.eval_split,
             "restored_from_zoo": name, "weights_dtype": card["dtype"],
             "train_seconds_this_session": 0.0, "steps_this_session": 0}
  files.write_json_atomic(os.path.join(workdir, "results.json"), results)
  return results


def card_markdown(card: Mapping[str, Any]) -> str:
  """README.md of an entry: the card's fields for people."""
  metrics = card["metrics"]
  lines = [
      f"# {card['name']}", "", card.get("title", ""), "",
      f"- task: {card['task']}",
      f"- model: `{card['model']}` ({card['num_parameters']:,} parameters), weights in "
      f"{card['dtype']}"
      + (" (the exponential moving average of the trained weights)"
         if card.get("ema_weights") else ""),
      f"- data: `{card['dataset']}` [{card['train_split']}], {card['data_split']}",
      f"- trained by: `{card['train_command']}` ({card['trained_steps']} steps)",
      f"- accuracy: {100 * metrics['accuracy']:.2f} % on {card['eval']} "
      f"({metrics['num_examples']} images), with the float32 weights "
      f"{100 * card['float32_accuracy']:.2f} %",
      f"- check: `{card['check_command']}`",
  ]
  if card.get("report"):
    lines.append(f"- report: `{card['report']}`")
  if card.get("note"):
    lines.append(f"- note: {card['note']}")
  lines += ["", "sha256:", ""] + [f"- `{n}`: `{h}`" for n, h in sorted(card["files"].items())]
  return "\n".join(lines) + "\n"


def write_entry(out_dir: str | pathlib.Path, config: ml_collections.ConfigDict,
                variables: Mapping[str, Any], card: dict[str, Any]) -> dict[str, Any]:
  """Writes weights (in card['dtype']), config.json, card.json (with the files' sha256)
  and README.md into out_dir; returns the completed card."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  save_variables(out_dir / WEIGHTS, variables, card["dtype"])
  files.write_text_atomic(str(out_dir / CONFIG), config.to_json(indent=2) + "\n")
  card = {**card, "files": {n: sha256_of(out_dir / n) for n in (WEIGHTS, CONFIG)}}
  files.write_text_atomic(str(out_dir / CARD), json.dumps(card, indent=2) + "\n")
  files.write_text_atomic(str(out_dir / "README.md"), card_markdown(card))
  return card
