"""Every skip in the suite goes through tests/conftest.py:missing(), so CI's $EFFCV_REQUIRE
decides whether it is a skip or a failure: a raw pytest.skip, skipif mark or importorskip
passes on a machine that has the dependency and fails CI on one that lacks it (or hides a
missing dependency). A scan of the test sources, which catches them on any machine."""

import pathlib
import re

TESTS = pathlib.Path(__file__).resolve().parent
RAW_SKIP = re.compile(r"pytest\.(skip\(|importorskip\(|mark\.skipif\b|mark\.skip\b)")


def test_tests_skip_only_through_missing():
  offenders = [f"{path.name}:{number}: {line.strip()}"
               for path in sorted(TESTS.glob("*.py")) if path.name != "conftest.py"
               for number, line in enumerate(path.read_text().splitlines(), 1)
               if RAW_SKIP.search(line)]
  assert not offenders, "skip through tests/conftest.py:missing():\n" + "\n".join(offenders)
