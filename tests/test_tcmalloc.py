"""Entry points restart in place with tcmalloc preloaded where it is installed."""

import os
import subprocess
import sys

import pytest

from experiments import tcmalloc
from tests.conftest import REPO_ROOT, missing

_PROBE = ("from experiments import tcmalloc; tcmalloc.reexec_with_tcmalloc(); import os; "
          "print(os.getpid(), any('tcmalloc' in line for line in open('/proc/self/maps')))")


@pytest.mark.parametrize("setting, loaded", [("1", True), ("0", False)])
def test_restart_preloads_tcmalloc_unless_turned_off(setting, loaded):
  if tcmalloc.find_tcmalloc() is None or not sys.platform.startswith("linux"):
    missing("tcmalloc", "tcmalloc is not installed (apt-get install libtcmalloc-minimal4)")
  env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
  env[tcmalloc.TCMALLOC_ENV] = setting
  process = subprocess.Popen([sys.executable, "-c", _PROBE], cwd=REPO_ROOT, env=env,
                             stdout=subprocess.PIPE, text=True)
  out, _ = process.communicate(timeout=60)
  pid, found = out.split()
  assert int(pid) == process.pid      # the same process, restarted in place
  assert found == str(loaded)


def test_missing_tcmalloc_is_named_with_the_way_to_install_it(monkeypatch, capsys):
  monkeypatch.setattr(tcmalloc, "find_tcmalloc", lambda: None)
  monkeypatch.setattr(sys, "platform", "linux")
  monkeypatch.delenv("LD_PRELOAD", raising=False)
  monkeypatch.setenv(tcmalloc.TCMALLOC_ENV, "1")
  tcmalloc.reexec_with_tcmalloc()           # returns: nothing to preload
  assert "apt-get install libtcmalloc-minimal4" in capsys.readouterr().err
  monkeypatch.setenv(tcmalloc.TCMALLOC_ENV, "0")
  tcmalloc.reexec_with_tcmalloc()
  assert capsys.readouterr().err == ""
