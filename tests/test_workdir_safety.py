"""Workdirs lose nothing and are never silently wrong: strict resume, a lock, reused teachers.

Each refusal checks the error type (or, through an entry point, exit status 2 and one
`ERROR:` line), that the message names the keys or files, and that the workdir (or
the reused teacher's) is left byte for byte as it was. Refusal -> test:

- resume with a key that changes what is trained or evaluated (split_seed, num_holdout,
  seed, optimizer.lr, augment): test_resume_with_a_key_that_changes_the_run_is_refused,
  test_refused_resume_names_every_key_and_how_to_restore_it,
  test_cli_refuses_a_changed_resume_with_one_line
- keys that may change on resume (num_steps, log_every):
  test_resume_with_more_steps_and_another_cadence_is_accepted
- keys an older config.json lacks: test_keys_missing_from_an_older_config_use_their_defaults
- config.json that is not JSON: test_corrupt_config_json_names_the_file
- teacher_workdir (Noisy Student) with larger num_steps, nonexistent, other dataset:
  test_reused_teacher_must_be_finished_and_match,
  test_cli_refuses_a_missing_teacher_workdir_with_one_line; used unchanged:
  test_reused_teacher_is_read_and_never_written
- teacher_workdirs (distillation) nonexistent or unfinished:
  test_distillation_teachers_must_be_finished_runs
- a lock held by a live process: test_a_held_lock_refuses_a_second_run_at_once,
  test_cli_refuses_a_locked_workdir_with_the_holders_pid; re-entrant and process 0
  only: test_lock_is_reentrant_and_taken_on_process_zero_only
- a lock left by a killed process: test_stale_lock_of_a_killed_run_is_taken_over
"""

import json
import os
import shutil
import subprocess
import sys
import time

import jax
import pytest

from configs import digits_tiny, distill_cifar10_resnet56_to_resnet20
from effcv_jax import config_utils, distill, errors, noisy_student, train, workdir_lock
from effcv_jax import workdir as workdir_lib
from tests import noisy_student_tiny
from tests.conftest import REPO_ROOT
from tests.fault_driver import run_until_killed
from tests.test_bad_input import _snapshot

# configs/digits_tiny.py cut to 10 steps, with an unlabelled pool for Noisy Student; the
# command-line flags give the same config to experiments.train.
_OVERRIDES = {"num_steps": 10, "checkpoint_every": 5, "eval_every": 10, "num_labelled": 1000}
_CLI_CONFIG = ["--config=configs/digits_tiny.py",
               *(f"--config.{key}={value}" for key, value in _OVERRIDES.items())]


def _config(**overrides):
  return config_utils.with_overrides(digits_tiny.get_config(), {**_OVERRIDES, **overrides})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  results = train.train_and_evaluate(_config(), workdir)
  return workdir, results


@pytest.fixture
def run_copy(finished_run, tmp_path):
  """A copy of the finished run (mtimes kept) and its snapshot."""
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run[0], workdir, copy_function=shutil.copy2)
  before = _snapshot(workdir)
  assert {"config.json", "results.json"} <= set(before)
  assert workdir_lock.LOCK_NAME not in before
  return workdir, before


def _run_cli(*args, **kwargs):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=300, **kwargs)


def _one_error_line(result) -> str:
  """The single `ERROR:` line of a refused entry point (exit status 2, no traceback)."""
  assert result.returncode == errors.EXIT_USER_ERROR, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  lines = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
  assert len(lines) == 1, result.stderr[-3000:]
  return lines[0]


# --------------------------------------------------------------------------
# Resume.


@pytest.mark.parametrize("key, value, shown", [
    ("split_seed", 1, "split_seed: 0 there, 1 now"),
    ("num_holdout", 200, "num_holdout: 300 there, 200 now"),
    ("seed", 3, "seed: 0 there, 3 now"),
    ("optimizer.lr", 0.01, "optimizer.lr: 0.05 there, 0.01 now"),
    ("optimizer.name", "adamw", "optimizer.name: 'sgd' there, 'adamw' now"),
    ("augment", "flip_lr", "augment: 'random_crop(padding=1)' there, 'flip_lr' now"),
])
def test_resume_with_a_key_that_changes_the_run_is_refused(run_copy, key, value, shown):
  workdir, before = run_copy
  with pytest.raises(errors.ResumeRefusedError) as error:
    train.train_and_evaluate(_config(num_steps=20, **{key: value}), workdir)
  message = str(error.value)
  assert f"{workdir} holds a run with a different {key} ({shown})" in message
  assert os.path.join(workdir, "config.json") in message and "new --workdir" in message
  assert _snapshot(workdir) == before


def test_refused_resume_names_every_key_and_how_to_restore_it(run_copy):
  workdir, before = run_copy
  config = _config(split_seed=2, num_holdout=200, num_steps=20, log_every=1)
  with pytest.raises(errors.ResumeRefusedError) as error:
    workdir_lib.check_config(config, workdir)
  message = str(error.value)
  assert "different num_holdout, split_seed (num_holdout: 300 there, 200 now; split_seed: 0 " \
         "there, 2 now)" in message
  assert "(--config.num_holdout=300 --config.split_seed=0)" in message
  assert "num_steps" not in message.split("Only")[0] and "log_every" not in message.split(
      "Only")[0]
  assert "Only num_steps, log_every, eval_every" in message
  assert _snapshot(workdir) == before


def test_cli_refuses_a_changed_resume_with_one_line(run_copy):
  workdir, before = run_copy
  result = _run_cli("experiments.train", *_CLI_CONFIG, f"--workdir={workdir}",
                    "--config.split_seed=1", "--config.num_holdout=200")
  line = _one_error_line(result)
  assert "num_holdout: 300 there, 200 now; split_seed: 0 there, 1 now" in line
  assert "--verbose" in line
  assert _snapshot(workdir) == before


def test_resume_with_more_steps_and_another_cadence_is_accepted(run_copy):
  workdir, _ = run_copy
  results = train.train_and_evaluate(_config(num_steps=15, log_every=3, eval_every=15),
                                     workdir)
  assert results["step"] == 15
  saved = workdir_lib.read_saved_config(workdir)
  assert (saved["num_steps"], saved["log_every"]) == (15, 3)
  assert not os.path.exists(workdir_lock.lock_path(workdir))


def test_keys_missing_from_an_older_config_use_their_defaults(finished_run):
  saved = workdir_lib.read_saved_config(finished_run[0])
  older = {k: v for k, v in saved.items()
           if k not in ("conv_backend", "watchdog", "label_smoothing", "freeze_batch_stats")}
  assert workdir_lib.differing_keys(older, _config()) == []
  # A key without a default (a model keyword) is part of the model: unset differs.
  older["model_kwargs"] = {"widths": [8, 16]}
  assert workdir_lib.differing_keys(older, _config()) == [
      ("model_kwargs.hidden", workdir_lib.UNSET, 32)]
  older["label_smoothing"] = 0.1
  assert [key for key, _, _ in workdir_lib.differing_keys(older, _config())] == [
      "label_smoothing", "model_kwargs.hidden"]


def test_corrupt_config_json_names_the_file(run_copy):
  workdir, _ = run_copy
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:
    f.write(text[:len(text) // 2])
  before = _snapshot(workdir)
  for call in (lambda: train.train_and_evaluate(_config(), workdir),
               lambda: workdir_lib.load_config(workdir)):
    with pytest.raises(errors.FileFormatError) as error:
      call()
    message = str(error.value)
    assert f"{path} is not valid JSON" in message and "new --workdir" in message
  assert _snapshot(workdir) == before


# --------------------------------------------------------------------------
# Reused teachers.


def _noisy_student_config(teacher_workdir, **teacher_overrides):
  """One iteration of a 5-step student on the pseudo-labels of the teacher in
  `teacher_workdir`, described by _config(**teacher_overrides)."""
  config = noisy_student_tiny.get_config()
  config.teacher = _config(**teacher_overrides)
  config.student = _config(num_steps=5, eval_every=5)
  config.student_overrides = ()
  config.num_iterations = 1
  config.pseudo.threshold = 0.0
  config.teacher_workdir = teacher_workdir
  return config


@pytest.mark.parametrize("teacher, reused, error, pattern", [
    ({"num_steps": 20}, "run", errors.ResumeRefusedError,
     r"teacher_workdir='.*' holds a run that finished at step 10, not at the 20 steps this "
     r"config asks for: a reused teacher is never trained further\. Set "
     r"teacher\.num_steps=10 \(--config\.teacher\.num_steps=10\) to use it as it is, or clear "
     r"teacher_workdir to train a new teacher inside the workdir"),
    ({"dataset": "pkg:mnist5k"}, "run", errors.ResumeRefusedError,
     r"holds a teacher with a different teacher\.dataset \(teacher\.dataset: 'pkg:digits' "
     r"there, 'pkg:mnist5k' in this config\).*--config\.teacher\.dataset=pkg:digits.*or "
     r"clear teacher_workdir"),
    ({}, "nowhere", errors.ConfigError,
     r"teacher_workdir='.*nowhere' does not exist: set it to the workdir of a finished "
     r"training run.*or clear teacher_workdir to train a new teacher inside the workdir"),
], ids=["num_steps", "dataset", "missing"])
def test_reused_teacher_must_be_finished_and_match(run_copy, tmp_path, teacher, reused, error,
                                                   pattern):
  """`reused`: the teacher_workdir, the finished run's copy or a path that does not exist."""
  teacher_dir, before = run_copy
  config = _noisy_student_config(str(tmp_path / reused), **teacher)
  workdir = tmp_path / "ns"
  with pytest.raises(error, match=pattern):
    noisy_student.run(config, str(workdir))
  with pytest.raises(error, match=pattern):   # the report's read-back refuses it too
    noisy_student.finished_rows(config, str(workdir))
  assert not workdir.exists() and not (tmp_path / "nowhere").exists()
  assert _snapshot(teacher_dir) == before


def test_cli_refuses_a_missing_teacher_workdir_with_one_line(tmp_path):
  missing = tmp_path / "nowhere"
  result = _run_cli("experiments.noisy_student", "--config=tests/noisy_student_tiny.py",
                    f"--workdir={tmp_path / 'ns'}", f"--config.teacher_workdir={missing}")
  line = _one_error_line(result)
  assert f"teacher_workdir='{missing}' does not exist" in line
  assert not missing.exists() and not (tmp_path / "ns").exists()


def test_reused_teacher_is_read_and_never_written(run_copy, tmp_path):
  teacher_dir, before = run_copy
  workdir = str(tmp_path / "ns")
  summary = noisy_student.run(_noisy_student_config(teacher_dir), workdir)
  assert summary["complete"] and summary["stages"][0]["workdir"] == teacher_dir
  assert summary["stages"][1]["pseudo_labels"]["pool"] == 1797 - 300 - 1000
  assert _snapshot(teacher_dir) == before
  assert not os.path.exists(os.path.join(workdir, "teacher"))
  assert not os.path.exists(workdir_lock.lock_path(workdir))
  assert not os.path.exists(workdir_lock.lock_path(os.path.join(workdir, "student_1")))


def _distill_config(teacher_workdirs, **student_overrides):
  """Distillation into a 5-step student from the finished runs `teacher_workdirs`."""
  config = distill_cifar10_resnet56_to_resnet20.get_config()
  config.teacher = _config()
  config.student = _config(num_steps=5, **student_overrides)
  config.teacher_workdirs = tuple(teacher_workdirs)
  return config


def test_distillation_teachers_must_be_finished_runs(run_copy, tmp_path):
  teacher_dir, before = run_copy
  workdir = tmp_path / "distill"
  missing = str(tmp_path / "nowhere")
  with pytest.raises(errors.ConfigError, match=rf"teacher_workdirs='{missing}' does not exist"):
    distill.run(_distill_config([teacher_dir, missing]), str(workdir))
  with pytest.raises(errors.ConfigError, match=r"holds a teacher of num_classes=10, the student "
                                               r"has student\.num_classes=12"):
    distill.run(_distill_config([teacher_dir], num_classes=12), str(workdir))
  assert _snapshot(teacher_dir) == before
  # A run continued to 20 steps that has not got there: its results are of step 10.
  config_file = os.path.join(teacher_dir, "config.json")
  with open(config_file) as f:
    saved = json.load(f)
  with open(config_file, "w") as f:
    json.dump({**saved, "num_steps": 20}, f)
  continued = _snapshot(teacher_dir)
  with pytest.raises(errors.ResumeRefusedError,
                     match=r"teacher_workdirs='.*' holds a run at step 10 of its num_steps=20 "
                           r".*never trained further\. Finish it with its own command first"):
    distill.run(_distill_config([teacher_dir]), str(workdir))
  assert _snapshot(teacher_dir) == continued
  assert not workdir.exists()


# --------------------------------------------------------------------------
# The lock.


def test_a_held_lock_refuses_a_second_run_at_once(run_copy):
  workdir, before = run_copy
  holder = workdir_lock.WorkdirLock(workdir)
  holder.acquire()
  try:
    start = time.perf_counter()
    with pytest.raises(errors.WorkdirLockedError) as error:
      train.train_and_evaluate(_config(num_steps=20), workdir)
    assert time.perf_counter() - start < 10
    message = str(error.value)
    assert f"{workdir} is in use by pid {os.getpid()} on host " in message
    assert "(command: " in message and "use another --workdir" in message
    with pytest.raises(errors.WorkdirLockedError):   # a Noisy Student loop in it too
      noisy_student.run(_noisy_student_config(workdir), workdir)
  finally:
    holder.release()
  assert _snapshot(workdir) == before


def test_cli_refuses_a_locked_workdir_with_the_holders_pid(run_copy):
  workdir, before = run_copy
  holder = workdir_lock.WorkdirLock(workdir)
  holder.acquire()
  try:
    result = _run_cli("experiments.train", *_CLI_CONFIG, f"--workdir={workdir}",
                      "--config.num_steps=20")
  finally:
    holder.release()
  line = _one_error_line(result)
  assert f"{workdir} is in use by pid {os.getpid()}" in line
  assert _snapshot(workdir) == before


def test_lock_is_reentrant_and_taken_on_process_zero_only(tmp_path, monkeypatch):
  workdir = tmp_path / "fresh" / "run"
  with workdir_lock.hold(str(workdir)):
    record = json.loads((workdir / workdir_lock.LOCK_NAME).read_text())
    assert record["pid"] == os.getpid()
    with workdir_lock.hold(str(workdir)):    # a nested run in the same directory
      assert (workdir / workdir_lock.LOCK_NAME).exists()
    assert (workdir / workdir_lock.LOCK_NAME).exists()
  assert not (tmp_path / "fresh").exists()   # created for the lock, left empty: removed
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  with workdir_lock.hold(str(workdir)):
    assert not (tmp_path / "fresh").exists()


def test_stale_lock_of_a_killed_run_is_taken_over(finished_run, tmp_path):
  """SIGKILLed while committing its second checkpoint (the first is complete), the run
  leaves its lock file; the rerun takes it over, says so, and ends as if never killed."""
  workdir = str(tmp_path / "killed")
  command = ("experiments.train", *_CLI_CONFIG, f"--workdir={workdir}")
  run_until_killed("checkpoint_commit:2", *command)
  assert workdir_lib.complete_checkpoint_steps(workdir) == [5]
  dead = workdir_lock.read_holder(workdir_lock.lock_path(workdir))
  assert dead and dead["pid"] > 0
  result = _run_cli(*command)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"found a stale lock of pid {dead['pid']} on host {dead['host']}" in result.stderr
  assert not os.path.exists(workdir_lock.lock_path(workdir))
  results = json.loads(open(os.path.join(workdir, "results.json")).read())
  reference = finished_run[1]
  for key in ("step", "accuracy", "loss", "num_examples"):
    assert results[key] == reference[key], key
