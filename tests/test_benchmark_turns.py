"""The alternating-turns harness of the train-step benchmarks (benchmarks/xla_cpu_flags.py,
benchmarks/onednn_builds.py): run order, environment per variant, medians and ratios, with
the subprocesses replaced by a recorder (no training)."""

import dataclasses
import subprocess
import sys

import pytest

from benchmarks import train_step_harness as harness
from tests.conftest import REPO_ROOT


@dataclasses.dataclass
class _Settings:
  model: str = "resnet20"
  batch_size: int = 128
  dtype: str = "float32"
  steps: int = 5
  rounds: int = 3
  warmup: int = 2


def test_turns_alternate_variants_then_torch_and_report_medians_and_ratios(monkeypatch):
  calls, speeds = [], {"base": [100.0, 120.0, 110.0], "fast": [150.0, 130.0, 140.0]}

  def fake_jax_child(settings, model, conv, extra_xla_flags="", extra_env=None):
    name = extra_env["NAME"]
    calls.append((name, extra_xla_flags, conv))
    if name == "fast" and sum(c[0] == "fast" for c in calls) == 2:
      return {"error": "exit code 1"}
    speed = speeds[name][sum(c[0] == name for c in calls) - 1]
    return {"images_per_s": speed, "cpu_over_wall": 1.9, "seconds_per_step": 128 / speed,
            "last_loss": 0.5, "phases": {"compile": {"wall_s": 4.0}}, "allocator": "system"}

  def fake_run_child(settings, args):
    calls.append(("torch", args, None))
    return {"variants": {"cl": {"images_per_s": 200.0}}, "allocator": "system"}

  monkeypatch.setattr(harness, "jax_child", fake_jax_child)
  monkeypatch.setattr(harness, "run_child", fake_run_child)
  monkeypatch.setattr(harness, "machine_info", lambda: {"cpu": "test"})
  result = harness.turns_report(
      "benchmarks.test", _Settings(), "onednn",
      {"base": {"NAME": "base"}, "fast": {"NAME": "fast", "XLA_FLAGS": "--x=1"}}, 3, "cl",
      {"described": True})
  # Every turn: the variants in order, then PyTorch; XLA_FLAGS goes to XLA's flags, the
  # rest of a variant's entries to the environment.
  assert [c[0] for c in calls] == ["base", "fast", "torch"] * 3
  assert {c[1] for c in calls if c[0] == "fast"} == {"--x=1"}
  assert calls[2][1] == ["--part=torch", "--model=resnet20", "--torch_variants=cl"]
  assert result["runs"]["base"][0]["allocator"] == result["torch"]["runs"][0]["allocator"]
  assert result["described"] and result["runs"]["fast"][1] == {"error": "exit code 1"}
  assert result["median_images_per_s"] == {"base": 110.0, "fast": 145.0}
  assert result["torch_median_images_per_s"] == 200.0
  assert result["over_baseline"] == {"base": 1.0, "fast": 1.318}
  assert result["over_torch"] == {"base": 0.55, "fast": 0.725}
  (target, value), = result["targets"].items()
  assert "best set: fast" in target and value["value"] == 0.725 and not value["met"]


@pytest.mark.parametrize("builds, message", [("no_prefix", "is not a new NAME=PREFIX"),
                                             ("a=/nonexistent", "has no include/dnnl.hpp")])
def test_onednn_builds_refuses_a_bad_build_before_timing(builds, message):
  done = subprocess.run([sys.executable, "-m", "benchmarks.onednn_builds", f"--builds={builds}",
                         "--output="], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert done.returncode == 1 and message in done.stderr, done.stderr[-2000:]


def test_isa_limits_keep_only_the_instruction_set_caps():
  assert harness.isa_limits({"XLA_FLAGS": "--xla_force_host_platform_device_count=8",
                             "HOME": "/root"}) == {}
  assert harness.isa_limits({
      "XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_cpu_max_isa=AVX2",
      "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": ""}) == {
          "XLA_FLAGS": "--xla_cpu_max_isa=AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
