"""The model zoo (effcv_jax/zoo.py, experiments/zoo.py, experiments/evaluate.py --zoo).

Every entry in the repository's zoo/ is checked: its files' sha256 against its card,
its size, and its recorded accuracy reproduced by its check command's function on the
data CI has. Export, load and the URL path are tested on a small digits run, the URL
path against a local HTTP server on 127.0.0.1.
"""

import functools
import http.server
import json
import os
import shutil
import threading

import jax
import numpy as np
import pytest
from PIL import Image

from configs import digits_tiny
from effcv_jax import config_utils, sharding, train, zoo
from effcv_jax import workdir as workdir_lib
from effcv_jax.data import load_arrays
from effcv_jax.errors import ConfigError
from experiments import evaluate
from experiments import zoo as zoo_cli
from tests.conftest import data_file

REPO_ZOO = zoo.zoo_root()
MAX_ENTRY_BYTES = 4 * 2**20
MAX_ZOO_BYTES = 30 * 2**20


def _entry_bytes(path) -> int:
  return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


@pytest.mark.parametrize("name", zoo.names(REPO_ZOO))
def test_repository_entry_matches_its_card_and_reproduces_its_accuracy(name, monkeypatch):
  monkeypatch.delenv(zoo.ZOO_DIR_ENV, raising=False)
  entry = REPO_ZOO / name
  card = json.loads((entry / zoo.CARD).read_text())
  for file_name, digest in card["files"].items():
    assert zoo.sha256_of(entry / file_name) == digest, file_name
  assert _entry_bytes(entry) <= MAX_ENTRY_BYTES
  assert card["check_command"] == f"python -m experiments.evaluate --zoo={name}"
  assert (entry / "README.md").read_text() == zoo.card_markdown(card)
  data_file(card["dataset"].split(":", 1)[1])        # the data the check needs
  result = evaluate.evaluate_zoo(name, data_dir=os.environ["EFFCV_DATA_DIR"])
  assert result["num_examples"] == card["metrics"]["num_examples"]
  # The same images and weights; another convolution backend may flip a borderline image.
  assert abs(result["accuracy"] - card["metrics"]["accuracy"]) <= 2 / result["num_examples"]


def test_the_whole_zoo_fits_its_budget():
  total = sum(_entry_bytes(REPO_ZOO / name) for name in zoo.names(REPO_ZOO))
  assert total <= MAX_ZOO_BYTES


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  """A finished digits_tiny run (20 steps)."""
  workdir = str(tmp_path_factory.mktemp("digits") / "run")
  config = config_utils.with_overrides(digits_tiny.get_config(), {
      "num_steps": 20, "checkpoint_every": 10, "eval_every": 20, "log_every": 10})
  results = train.train_and_evaluate(config, workdir)
  return workdir, results


@pytest.fixture(scope="module")
def exported(digits_run, tmp_path_factory):
  """The digits run exported into a temporary zoo as 'digits' (float32 forced)."""
  workdir, _ = digits_run
  root = tmp_path_factory.mktemp("zoo")
  card = zoo_cli.export(workdir, "digits", "python -m experiments.train ...", str(root / "digits"),
                        None, title="tiny", dtype="float32")
  return root, card


def test_export_load_and_evaluate_reproduce_the_run(digits_run, exported, monkeypatch):
  workdir, results = digits_run
  root, card = exported
  monkeypatch.setenv(zoo.ZOO_DIR_ENV, str(root))
  assert card["metrics"]["accuracy"] == pytest.approx(results["accuracy"])
  assert card["class_names"] == [str(d) for d in range(10)]
  assert card["trained_steps"] == 20 and card["dtype"] == "float32"
  entry = zoo.load("digits")
  images, _ = load_arrays("pkg:digits", "train")
  _, task, state, _ = workdir_lib.restore_latest(workdir, images.shape[1:], sharding.make_mesh())
  expected = np.asarray(train.predict_logits(
      task, {"params": state.params, "batch_stats": state.batch_stats},
      images[:16].astype(np.float32)))
  np.testing.assert_allclose(entry.predict_logits(images[:16]), expected, rtol=1e-5, atol=1e-5)
  assert entry.preprocessing.image_size == 8
  checked = evaluate.evaluate_zoo("digits")
  assert checked["accuracy"] == card["metrics"]["accuracy"] == checked["card_accuracy"]


def test_float16_weights_round_trip(digits_run, tmp_path):
  workdir, _ = digits_run
  card = zoo_cli.export(workdir, "half", "cmd", str(tmp_path / "half"), None, dtype="float16")
  assert card["dtype"] == "float16"
  stored = zoo.load_variables(tmp_path / "half" / zoo.WEIGHTS)
  _, _, state, _ = workdir_lib.restore_latest(workdir, (8, 8, 1), sharding.make_mesh())
  original = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  def check(loaded, kept):
    assert loaded.dtype == np.float32                       # loaded back as float32
    np.testing.assert_array_equal(loaded, np.asarray(kept).astype(np.float16).astype(np.float32))
  jax.tree.map(check, stored, original)


def test_changed_weights_are_refused(exported, tmp_path, monkeypatch):
  root, _ = exported
  copy = tmp_path / "zoo"
  shutil.copytree(root, copy)
  weights = copy / "digits" / zoo.WEIGHTS
  weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
  monkeypatch.setenv(zoo.ZOO_DIR_ENV, str(copy))
  with pytest.raises(zoo.ZooError, match=rf"{weights} has sha256 .* card card.json says"):
    zoo.load("digits")
  with pytest.raises(zoo.ZooError, match=r"no zoo entry 'nope' .*entries: digits"):
    zoo.load("nope")


def test_an_entry_restored_into_a_workdir_is_its_finished_run(exported, tmp_path, monkeypatch):
  root, card = exported
  monkeypatch.setenv(zoo.ZOO_DIR_ENV, str(root))
  workdir = str(tmp_path / "teacher")
  results = zoo.restore_run("digits", workdir)
  assert results["accuracy"] == card["metrics"]["accuracy"]
  assert results["restored_from_zoo"] == "digits" and results["step"] == 20
  entry = zoo.load("digits")
  # A reused teacher must be a finished run of the teacher config: the restored one is.
  reused = workdir_lib.check_reused_teacher(entry.config, workdir)
  assert reused["accuracy"] == card["metrics"]["accuracy"]
  config, _, state, step = workdir_lib.restore_latest(workdir, (8, 8, 1), sharding.make_mesh())
  assert step == 20 and config.to_dict() == entry.config.to_dict()
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get({"params": state.params, "batch_stats": state.batch_stats}),
               entry.variables)
  # What the restored run labels with is what the entry predicts.
  evaluated = evaluate.evaluate_workdir(workdir)
  assert evaluated["accuracy"] == card["metrics"]["accuracy"]
  with pytest.raises(zoo.ZooError, match="already holds a run"):
    zoo.restore_run("digits", workdir)


def test_export_refuses_an_unfinished_run(tmp_path):
  config = config_utils.with_overrides(digits_tiny.get_config(), {"num_steps": 30})
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(config.to_json())
  with pytest.raises(ConfigError, match=r"has not finished its num_steps=30"):
    zoo_cli.export(str(workdir), "x", "cmd", str(tmp_path / "x"), None)


class _Files(http.server.SimpleHTTPRequestHandler):
  """Serves a directory and counts GET requests per path."""
  requests: dict[str, int] = {}

  def do_GET(self):  # pylint: disable=invalid-name
    type(self).requests[self.path] = type(self).requests.get(self.path, 0) + 1
    super().do_GET()

  def log_message(self, *args):
    pass


@pytest.fixture
def server(tmp_path):
  """(base URL, served directory, request counts) of an HTTP server on 127.0.0.1."""
  served = tmp_path / "served"
  served.mkdir()
  _Files.requests = {}
  httpd = http.server.ThreadingHTTPServer(
      ("127.0.0.1", 0), functools.partial(_Files, directory=str(served)))
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}", served, _Files.requests
  httpd.shutdown()
  httpd.server_close()


def _url_entry(exported, tmp_path, url):
  """A copy of the exported zoo whose 'digits' weights live at `url`."""
  root, _ = exported
  copy = tmp_path / "url_zoo"
  shutil.copytree(root, copy)
  card_path = copy / "digits" / zoo.CARD
  card = json.loads(card_path.read_text())
  card["weights_url"] = url
  card_path.write_text(json.dumps(card))
  (copy / "digits" / zoo.WEIGHTS).unlink()
  return copy


def test_weights_at_a_url_are_downloaded_once_and_checked(exported, tmp_path, server,
                                                          monkeypatch):
  base, served, requests = server
  root, _ = exported
  shutil.copy(root / "digits" / zoo.WEIGHTS, served / "digits.safetensors")
  monkeypatch.setenv(zoo.ZOO_DIR_ENV, str(_url_entry(exported, tmp_path,
                                                     f"{base}/digits.safetensors")))
  monkeypatch.setenv(zoo.CACHE_DIR_ENV, str(tmp_path / "cache"))
  first = zoo.load("digits")
  second = zoo.load("digits")
  assert requests == {"/digits.safetensors": 1}
  jax.tree.map(np.testing.assert_array_equal, first.variables, second.variables)
  [cached] = [p for p in (tmp_path / "cache").rglob("*.safetensors")]
  cached.write_bytes(b"damaged")
  third = zoo.load("digits")                      # a damaged cached copy is fetched again
  assert requests == {"/digits.safetensors": 2}
  jax.tree.map(np.testing.assert_array_equal, first.variables, third.variables)


def test_a_url_with_other_bytes_or_no_file_names_the_url(exported, tmp_path, server,
                                                         monkeypatch):
  base, served, _ = server
  (served / "other.safetensors").write_bytes(b"not the weights")
  monkeypatch.setenv(zoo.CACHE_DIR_ENV, str(tmp_path / "cache"))
  cases = ((f"{base}/other.safetensors", r"has sha256 \w+, the zoo card expects"),
           (f"{base}/missing.safetensors", r"could not download .*: HTTP 404"),
           ("http://127.0.0.1:9/x.safetensors", r"could not download .*refused"))
  for index, (url, why) in enumerate(cases):
    monkeypatch.setenv(zoo.ZOO_DIR_ENV, str(_url_entry(exported, tmp_path / str(index), url)))
    with pytest.raises(zoo.ZooError, match=why) as error:
      zoo.load("digits")
    assert url in str(error.value)
  cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
  assert cached == []                   # nothing damaged or partial is kept


def test_predict_with_the_zoo_entry_and_the_workdir(digits_run, exported, tmp_path, monkeypatch):
  from experiments import predict   # pylint: disable=import-outside-toplevel
  workdir, _ = digits_run
  root, _ = exported
  monkeypatch.setenv(zoo.ZOO_DIR_ENV, str(root))
  images, _ = load_arrays("pkg:digits", "train")
  path = tmp_path / "digit.png"
  Image.fromarray(images[0, ..., 0]).save(path)
  expected = int(np.argmax(zoo.load("digits").predict_logits(images[:1])[0]))
  for predictor in (predict.zoo_predictor("digits"), predict.workdir_predictor(workdir, None)):
    line = predict.predict_file(predictor, path, top_k=2)
    assert line["top_k"][0]["class"] == expected
    assert line["top_k"][0]["name"] == str(expected)
