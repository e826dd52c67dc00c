"""Concurrent oneDNN convolutions give the single-threaded result every time, under the
AVX2 and the AVX-512 kernels: forward pass, input and kernel gradients of every CIFAR
ResNet convolution shape from two calling threads at once, and jitted ResNet-20 train
steps from two threads (tests/onednn_stress_driver.py; each run in its own process, with
ONEDNN_MAX_CPU_ISA fixing the kernels oneDNN generates).

Before onednn_conv.cc gave each execution its own scratchpad, the first concurrent call
already returned wrong numbers (and long runs segfaulted or hung); a longer run by hand:
`ONEDNN_MAX_CPU_ISA=AVX2 python tests/onednn_stress_driver.py --threads=2 --seconds=600`.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks.machine import cpu_flags
from effcv_jax.models import onednn_conv
from tests.conftest import missing

DRIVER = pathlib.Path(__file__).with_name("onednn_stress_driver.py")
SECONDS = 10


@pytest.fixture(scope="module")
def onednn_available():
  reason = onednn_conv.unavailable_reason()
  if reason is not None:
    missing("onednn", reason)


@pytest.mark.parametrize("isa, flag", [("AVX2", "avx2"), ("AVX512_CORE", "avx512f")])
@pytest.mark.parametrize("mode", ["convs", "resnet"])
def test_concurrent_executions_match_the_single_threaded_result(onednn_available, mode, isa,
                                                                 flag):
  if flag not in cpu_flags():
    missing("cpu_isa", f"this CPU has no {flag}: oneDNN cannot use its {isa} kernels here")
  env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa, "EFFCV_CONV": "onednn"}
  result = subprocess.run(
      [sys.executable, str(DRIVER), f"--mode={mode}", "--threads=2", f"--seconds={SECONDS}",
       "--hang_seconds=120"], env=env, capture_output=True, text=True, timeout=900)
  lines = [line for line in result.stdout.splitlines() if line.startswith("STRESS")]
  assert result.returncode == 0 and lines and lines[-1].startswith("STRESS OK"), (
      f"exit {result.returncode}: {lines[-1:] or result.stderr[-3000:]}")
  calls = int(lines[-1].split("calls=")[1].split()[0])
  assert calls >= 4, lines[-1]    # both threads ran, several calls overlapping
