"""Calibration metrics, temperature scaling, FGSM/PGD and experiments/robustness.py.

The metrics are checked against NumPy references written here on hand-made logits; the
attacks on a digits_tiny model trained for 60 steps (module fixture).
"""

import hashlib
import json
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_tiny
from effcv_jax import config_utils, sharding, train
from effcv_jax import workdir as workdir_lib
from effcv_jax.data import run_data as run_data_lib
from effcv_jax.robustness import adversarial, calibration
from experiments import docs, robustness
from tests.conftest import REPO_ROOT


# --------------------------------------------------------------------------
# Calibration metrics against NumPy references.

def _reference_ece(probs: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> float:
  """ECE by a loop over bins (lo, hi], the first bin [0, hi]."""
  confidence, predicted = probs.max(1), probs.argmax(1)
  total = 0.0
  for b in range(num_bins):
    lo, hi = b / num_bins, (b + 1) / num_bins
    inside = (confidence > lo) & (confidence <= hi) if b else (confidence <= hi)
    if inside.any():
      accuracy = np.mean(predicted[inside] == labels[inside])
      total += inside.sum() / len(labels) * abs(accuracy - confidence[inside].mean())
  return total


def _logits_of(probs) -> np.ndarray:
  return np.log(np.asarray(probs, np.float64))


HAND_PROBS = np.array([[0.95, 0.03, 0.02], [0.5, 0.3, 0.2], [0.1, 0.85, 0.05],
                       [0.4, 0.35, 0.25], [0.2, 0.2, 0.6], [0.97, 0.02, 0.01],
                       [0.34, 0.33, 0.33], [0.05, 0.05, 0.9]])
HAND_LABELS = np.array([0, 1, 1, 0, 0, 0, 2, 2])


def test_ece_nll_brier_equal_numpy_references_on_hand_made_logits():
  logits = _logits_of(HAND_PROBS) + 3.0         # a constant shift leaves softmax unchanged
  bins = calibration.reliability_bins(logits, HAND_LABELS)
  assert bins["count"].sum() == 8 and (bins["count"] == 0).sum() >= 8      # empty bins
  # 0.95 and 0.97 share the last bin (14/15, 1]: both correct.
  assert bins["count"][14] == 2 and bins["accuracy"][14] == 1.0
  np.testing.assert_allclose(bins["confidence"][14], 0.96)
  assert bins["count"][0] == 0 and bins["accuracy"][0] == 0 and bins["confidence"][0] == 0
  np.testing.assert_allclose(calibration.expected_calibration_error(logits, HAND_LABELS),
                             _reference_ece(HAND_PROBS, HAND_LABELS), rtol=1e-12)
  reference_nll = -np.mean(np.log(HAND_PROBS[np.arange(8), HAND_LABELS]))
  np.testing.assert_allclose(calibration.negative_log_likelihood(logits, HAND_LABELS),
                             reference_nll, rtol=1e-12)
  reference_brier = np.mean(np.sum((HAND_PROBS - np.eye(3)[HAND_LABELS]) ** 2, axis=1))
  np.testing.assert_allclose(calibration.brier_score(logits, HAND_LABELS), reference_brier,
                             rtol=1e-12)
  # With a temperature: the references on softmax(logits / T).
  scaled = np.exp(_logits_of(HAND_PROBS) / 2.0)
  scaled /= scaled.sum(1, keepdims=True)
  np.testing.assert_allclose(calibration.expected_calibration_error(logits, HAND_LABELS,
                                                                     temperature=2.0),
                             _reference_ece(scaled, HAND_LABELS), rtol=1e-12)
  metrics = calibration.calibration_metrics(logits, HAND_LABELS)
  assert metrics["accuracy"] == 5 / 8


def test_a_perfectly_calibrated_model_has_zero_ece():
  # Confidence 0.8 right 4 times in 5, confidence 0.6 right 3 times in 5.
  probs = np.array([[0.8, 0.2]] * 5 + [[0.4, 0.6]] * 5)
  labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 0])
  assert calibration.expected_calibration_error(_logits_of(probs), labels) < 1e-12
  bins = calibration.reliability_bins(_logits_of(probs), labels)
  np.testing.assert_allclose(bins["accuracy"][bins["count"] > 0], [0.6, 0.8])
  # Always right at confidence 1 (up to float): ECE 0, NLL 0, Brier 0.
  sure = np.array([[50.0, 0.0], [0.0, 50.0]])
  assert calibration.expected_calibration_error(sure, [0, 1]) < 1e-12
  assert calibration.negative_log_likelihood(sure, [0, 1]) < 1e-12
  assert calibration.brier_score(sure, [0, 1]) < 1e-12
  assert calibration.brier_score(sure, [1, 0]) == pytest.approx(2.0)


def _calibrated_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Logits (n, 10) and labels drawn from their own softmax: calibrated by construction."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(0.0, 2.0, (n, 10))
  probs = calibration.softmax(logits)
  labels = (probs.cumsum(1) > rng.random((n, 1))).argmax(1)
  return logits, labels


def test_temperature_scaling_recovers_a_known_temperature_and_lowers_nll():
  logits, labels = _calibrated_logits(4000, 0)
  over_confident = 3.0 * logits
  temperature = calibration.fit_temperature(over_confident, labels)
  assert temperature == pytest.approx(3.0, rel=0.08)
  assert calibration.fit_temperature(over_confident, labels) == temperature   # deterministic
  before = calibration.negative_log_likelihood(over_confident, labels)
  after = calibration.negative_log_likelihood(over_confident, labels, temperature)
  assert after < before - 0.3
  assert after <= calibration.negative_log_likelihood(over_confident, labels, 3.0) + 1e-6
  assert (calibration.expected_calibration_error(over_confident, labels, temperature=temperature)
          < calibration.expected_calibration_error(over_confident, labels) / 3)
  # Under-confident logits get T < 1; held-out examples gain too.
  assert calibration.fit_temperature(logits / 2.0, labels) == pytest.approx(0.5, rel=0.08)
  held_logits, held_labels = _calibrated_logits(2000, 1)
  assert (calibration.negative_log_likelihood(3 * held_logits, held_labels, temperature)
          < calibration.negative_log_likelihood(3 * held_logits, held_labels))


def test_calibration_suite_uses_a_separate_validation_split_or_cross_fits():
  logits, labels = _calibrated_logits(1000, 2)
  val_logits, val_labels = _calibrated_logits(1000, 3)
  section, _, _ = robustness.calibration_suite(3 * logits, labels,
                                               (3 * val_logits, val_labels), "v [holdout]")
  assert section["temperature_fit"]["separate_validation"] is True
  assert section["temperature"] == pytest.approx(3.0, rel=0.15)
  assert section["after"]["nll"] < section["before"]["nll"]
  assert section["after"]["accuracy"] == section["before"]["accuracy"]
  assert sum(section["bins_after"]["count"]) == 1000
  crossed, _, _ = robustness.calibration_suite(3 * logits, labels, None, "")
  assert crossed["temperature_fit"]["separate_validation"] is False
  assert all(t == pytest.approx(3.0, rel=0.15)
             for t in crossed["temperature_fit"]["fold_temperatures"])
  assert crossed["after"]["ece"] < crossed["before"]["ece"]


# --------------------------------------------------------------------------
# Attacks on a tiny trained model.

@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  """A digits_tiny run of 60 steps, its task and variables and its 300-image hold-out."""
  workdir = str(tmp_path_factory.mktemp("digits") / "run")
  config = config_utils.with_overrides(digits_tiny.get_config(), {
      "num_steps": 60, "checkpoint_every": 60, "eval_every": 60, "log_every": 30})
  results = train.train_and_evaluate(config, workdir)
  mesh = sharding.make_mesh()
  source = run_data_lib.load_eval_source(config, "", "holdout")
  _, task, state, _ = workdir_lib.restore_latest(workdir, (8, 8, 1), mesh, config)
  variables = sharding.replicate({"params": state.params, "batch_stats": state.batch_stats},
                                 mesh)
  return workdir, results, task, variables, source, mesh


def test_perturbations_stay_within_epsilon_and_the_pixel_range(digits_run):
  _, _, task, variables, source, _ = digits_run
  images = jnp.asarray(np.stack([source[i]["image"] for i in range(64)]), jnp.float32)
  labels = jnp.asarray([source[i]["label"] for i in range(64)])
  assert float(images.min()) == 0 and float(images.max()) == 255     # both ends are clipped
  key = adversarial.batch_key(0, 3)
  for epsilon in (2.0, 8.0, 32.0):
    for adv in (adversarial.fgsm(task, variables, images, labels, epsilon),
                adversarial.pgd(task, variables, images, labels, key, epsilon, steps=4)):
      delta = np.asarray(adv - images)
      assert np.abs(delta).max() <= epsilon + 1e-3
      assert np.abs(delta).max() >= epsilon - 1e-3                   # the ball is used
      assert float(adv.min()) >= 0 and float(adv.max()) <= 255
  again = adversarial.pgd(task, variables, images, labels, key, 8.0, steps=4)
  np.testing.assert_array_equal(again, adversarial.pgd(task, variables, images, labels, key,
                                                       8.0, steps=4))
  other = adversarial.pgd(task, variables, images, labels, adversarial.batch_key(0, 4), 8.0,
                          steps=4)
  assert not np.array_equal(np.asarray(again), np.asarray(other))
  # FGSM's step raises the loss it follows.
  mask = jnp.ones(64)
  adv = adversarial.fgsm(task, variables, images, labels, 8.0)
  assert (float(adversarial.cross_entropy_sum(task, variables, adv, labels, mask))
          > float(adversarial.cross_entropy_sum(task, variables, images, labels, mask)))


def test_pgd_accuracy_falls_with_epsilon_and_beats_fgsm(digits_run):
  _, results, task, variables, source, mesh = digits_run
  section = robustness.adversarial_suite(task, variables, source, 64, mesh,
                                         (4.0, 16.0, 48.0), 5, 0)
  assert section["num_examples"] == 300
  assert section["clean_accuracy"] == pytest.approx(results["accuracy"])
  pgd = [section["pgd"][k] for k in ("4", "16", "48")]
  fgsm = [section["fgsm"][k] for k in ("4", "16", "48")]
  assert section["clean_accuracy"] >= pgd[0] >= pgd[1] >= pgd[2]
  assert pgd[2] < section["clean_accuracy"] - 0.2          # a real fall, not noise
  assert all(p <= f for p, f in zip(pgd, fgsm))
  assert section["largest_perturbation_minus_epsilon"] <= 1e-3
  low, high = section["adversarial_pixel_range"]
  assert low >= 0 and high <= 255
  again = robustness.adversarial_suite(task, variables, source, 64, mesh, (16.0,), 5, 0)
  assert again["pgd"]["16"] == section["pgd"]["16"]        # the same seed repeats


# --------------------------------------------------------------------------
# The command.

def _snapshot(directory: str) -> dict[str, str]:
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(pathlib.Path(directory).rglob("*")) if p.is_file()}


def test_command_writes_the_report_and_leaves_the_run_unchanged(digits_run):
  workdir = digits_run[0]
  before = _snapshot(workdir)
  subprocess.run([sys.executable, "-m", "experiments.robustness", f"--workdir={workdir}",
                  "--epsilons=8,32", "--pgd_steps=3", "--max_examples=100"],
                 cwd=REPO_ROOT, check=True, capture_output=True, text=True)
  after = _snapshot(workdir)
  written = {"robustness.json", "robustness_reliability.png", "robustness_adversarial.png"}
  assert set(after) - set(before) == written
  assert {k: after[k] for k in before} == before
  report = json.loads((pathlib.Path(workdir) / "robustness.json").read_text())
  assert report["checkpoint_step"] == 60 and report["eval_split"] == "holdout"
  assert report["calibration"]["num_examples"] == 300
  assert report["calibration"]["temperature_fit"]["separate_validation"] is False
  assert report["calibration"]["before"]["accuracy"] == pytest.approx(digits_run[1]["accuracy"])
  assert report["adversarial"]["num_examples"] == 100
  assert set(report["adversarial"]["pgd"]) == {"8", "32"}
  for name in written - {"robustness.json"}:
    assert (pathlib.Path(workdir) / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # Another suite later is merged into the report: the earlier suites stay.
  subprocess.run([sys.executable, "-m", "experiments.robustness", f"--workdir={workdir}",
                  "--suites=corruptions", "--corruptions=contrast", "--severities=5",
                  "--max_examples=50"], cwd=REPO_ROOT, check=True, capture_output=True, text=True)
  merged = json.loads((pathlib.Path(workdir) / "robustness.json").read_text())
  assert merged["suites"] == ["calibration", "adversarial", "corruptions"]
  assert {k: merged[k] for k in ("calibration", "adversarial")} == {
      k: report[k] for k in ("calibration", "adversarial")}
  assert merged["corruptions"]["num_examples"] == 50
  assert set(merged["pictures"]) == {"reliability", "adversarial", "corruptions"}
  assert "--suites=corruptions" in merged["commands"]["corruptions"]
  assert merged["commands"]["calibration"] == report["commands"]["calibration"]


def test_bad_suites_value_is_one_line_config_error(tmp_path):
  assert robustness.parse_suites("adversarial, calibration") == ("calibration", "adversarial")
  with pytest.raises(robustness.ConfigError, match="corruption is not a suite"):
    robustness.parse_suites("calibration,corruption")
  assert robustness.parse_corruptions("snow, fog") == ("snow", "fog")
  with pytest.raises(robustness.ConfigError, match="rain is not a corruption"):
    robustness.parse_corruptions("fog,rain")
  assert robustness.parse_severities("5,1,3") == (1, 3, 5)
  with pytest.raises(robustness.ConfigError, match="1..5"):
    robustness.parse_severities("0,2")
  with pytest.raises(robustness.ConfigError):
    robustness.parse_epsilons("0,4")
  done = subprocess.run([sys.executable, "-m", "experiments.robustness",
                         f"--workdir={tmp_path}", "--suites=calibraton"],
                        cwd=REPO_ROOT, capture_output=True, text=True)
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert lines[-1].startswith("ERROR: ") and "calibraton is not a suite" in lines[-1]
  assert "Traceback" not in done.stderr
  assert list(tmp_path.iterdir()) == []


def test_max_examples_spreads_the_attacked_examples_over_the_split():
  np.testing.assert_array_equal(robustness.attacked_indices(10, 5), [0, 2, 4, 6, 8])
  picked = robustness.attacked_indices(5000, 1000)
  assert len(np.unique(picked)) == 1000 and picked.max() < 5000
  labels = np.repeat(np.arange(10), 500)                 # a split stored sorted by class
  assert (np.bincount(labels[picked]) == 100).all()


def test_another_split_gets_its_temperature_from_the_holdout(digits_run, tmp_path):
  workdir, _, task, variables, _, _ = digits_run
  config = workdir_lib.load_config(workdir)
  config.eval_split = "train"                # all 1,797 digits, the 300 held out among them
  report = robustness.run(config, task, variables, str(tmp_path), "r", {"model_label": "d"},
                          ("calibration",), (8.0,), 1, None, 0, None, "python -m x")
  section = report["calibration"]
  assert section["num_examples"] == 1797
  fit = section["temperature_fit"]
  assert fit["separate_validation"] is True and fit["num_examples"] == 300
  assert fit["split"] == "pkg:digits [holdout]"
  assert fit["validation_nll_after"] <= fit["validation_nll_before"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r_reliability.png"]
  assert json.loads((tmp_path / "r.json").read_text())["calibration"] == section


def test_corruption_suite_accuracy_falls_and_compares_with_a_baseline(digits_run, tmp_path):
  workdir, results, task, variables, source, mesh = digits_run
  section = robustness.corruption_suite(task, variables, source, 64, mesh,
                                        ("gaussian_noise", "contrast"), (1, 5), 0, "auto")
  assert section["constants"] == "cifar" and section["num_examples"] == 300
  assert section["clean_accuracy"] == pytest.approx(results["accuracy"])
  for name in ("gaussian_noise", "contrast"):
    accuracy = section["accuracy"][name]
    assert set(accuracy) == {"1", "5"}
    assert accuracy["5"] <= accuracy["1"] + 0.02 and accuracy["5"] < section["clean_accuracy"]
  again = robustness.corruption_suite(task, variables, source, 64, mesh, ("gaussian_noise",),
                                      (5,), 0, "auto")
  assert again["accuracy"]["gaussian_noise"]["5"] == section["accuracy"]["gaussian_noise"]["5"]
  # A subset corrupts each image as the whole split does: its index keys it.
  indices = np.arange(0, 300, 2)
  half = robustness.corruption_suite(task, variables, robustness.data_lib.Subset(source, indices),
                                     32, mesh, ("gaussian_noise",), (5,), 0, "auto", indices)
  assert half["num_examples"] == 150
  # The report against a baseline: itself (CE 1) and a hand-made one with twice its errors.
  config = workdir_lib.load_config(workdir)
  args = (("corruptions",), (8.0,), 1, None, 0, None, "python -m x")
  report = robustness.run(config, task, variables, str(tmp_path), "base", {"model_label": "d"},
                          *args, corruption_names=("contrast",), severities=(1, 5))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["base.json", "base_corruptions.png"]
  versus = robustness.run(config, task, variables, str(tmp_path), "again", {"model_label": "d"},
                          *args, corruption_names=("contrast",), severities=(1, 5),
                          baseline=str(tmp_path / "base.json"))["corruptions"]["versus_baseline"]
  assert versus["mce"] == pytest.approx(1.0) and versus["relative_mce"] == pytest.approx(1.0)
  base = json.loads((tmp_path / "base.json").read_text())
  errors = [1 - base["corruptions"]["accuracy"]["contrast"][s] for s in ("1", "5")]
  base["corruptions"]["accuracy"]["contrast"] = {"1": 1 - 2 * errors[0], "5": 1 - 2 * errors[1]}
  (tmp_path / "doubled.json").write_text(json.dumps(base))
  versus = robustness.compare_with_baseline(report["corruptions"], robustness.load_baseline(
      str(tmp_path / "doubled.json")), "doubled.json")
  assert versus["ce"]["contrast"] == pytest.approx(0.5, abs=1e-5)
  (tmp_path / "bad.json").write_text("{}")
  with pytest.raises(robustness.FileFormatError, match="bad.json: not a robustness JSON"):
    robustness.load_baseline(str(tmp_path / "bad.json"))


def _report(**fields) -> dict:
  """A hand-made report of the digits run's hold-out with the given sections."""
  base = {"title": "Some suites: w", "command": "python -m experiments.robustness --workdir=w",
          "workdir": "w", "checkpoint_step": 60, "model": "cnn_tiny", "dataset": "pkg:digits",
          "eval_split": "holdout", "devices": 1}
  suites = [s for s in robustness.SUITES if s in fields]
  return base | {"suites": suites} | fields | {
      "pictures": {robustness.PICTURE_OF_SUITE[s]: f"{s}.png" for s in suites},
      "commands": {s: base["command"] + f" --suites={s}" for s in suites}}


def test_merge_keeps_earlier_suites_of_the_same_subject_only(tmp_path):
  earlier = _report(calibration={"ece": 0.1}, adversarial={"pgd": {"8": 0.3}})
  new = _report(corruptions={"accuracy": {}}, adversarial={"pgd": {"8": 0.5}})
  path = str(tmp_path / "r.json")
  merged = robustness.merge_reports(earlier, new, path)
  assert merged["suites"] == ["calibration", "adversarial", "corruptions"]
  assert merged["title"] == (
      "Calibration, adversarial robustness and corruption robustness: w")  # the suites held
  assert merged["calibration"] == {"ece": 0.1}                  # kept
  assert merged["adversarial"] == {"pgd": {"8": 0.5}}          # rerun: the new one wins
  assert merged["pictures"] == {"reliability": "calibration.png",
                                "adversarial": "adversarial.png",
                                "corruptions": "corruptions.png"}
  assert merged["commands"]["calibration"].endswith("--suites=calibration")
  assert merged["commands"]["adversarial"] == new["commands"]["adversarial"]
  # The docs name each suite's command where they differ, else the one command.
  line = docs.command_line(merged)
  assert all(f"{s} `{merged['commands'][s]}`" in line for s in merged["suites"])
  assert docs.command_line(earlier | {"commands": {"calibration": earlier["command"]}}) == (
      f"- command: `{earlier['command']}`")
  # A report from before "commands" credits its suites to its command.
  old = {k: v for k, v in earlier.items() if k != "commands"}
  assert (robustness.merge_reports(old, new, path)["commands"]["calibration"]
          == earlier["command"])
  # Another checkpoint is another subject: the earlier suites are dropped.
  later = new | {"checkpoint_step": 120}
  assert robustness.merge_reports(earlier, later, path) == later
  assert robustness.merge_reports(None, new, path) == new
  # The file: none, a report, or something that is not one (named in the error).
  assert robustness.read_earlier_report(path) is None
  pathlib.Path(path).write_text(json.dumps(earlier))
  assert robustness.read_earlier_report(path) == earlier
  for text in ("[1, 2]", "{not json"):
    pathlib.Path(path).write_text(text)
    with pytest.raises(robustness.FileFormatError, match="r.json: not a robustness JSON"):
      robustness.read_earlier_report(path)
