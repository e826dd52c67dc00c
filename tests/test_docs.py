"""The docs' generated tables match the JSON files, and the README stays a README.

Numbers are written by hand in one place only: the JSON file a run or benchmark wrote
(reports/*.json, benchmarks/results/*.json). experiments/docs.py renders the tables of
README.md, docs/results.md and benchmarks/README.md from them; these tests fail when a
committed table differs from what it renders (fix: `python -m experiments.docs`), when a JSON
file is in no table, or when the generator's renderers lose what makes a table faithful
(split, command, seeds). Standard library and the generator only: no JAX, well under a second.
"""

import json
import re
import shutil

import pytest

from experiments import docs
from tests.conftest import REPO_ROOT

README_LIMIT_BYTES = 10_000
MAIN_COMMANDS = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt && "
    "python -m experiments.noisy_student",
    "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements-dev.txt && "
    "python -m pytest -q tests",
)


def test_committed_docs_match_the_json_files():
  problems = docs.check(REPO_ROOT)
  assert not problems, ("the docs differ from what `python -m experiments.docs` generates "
                        "(run it and commit):\n" + "\n\n".join(problems))


def test_readme_is_short_and_keeps_the_two_commands():
  text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
  assert len(text.encode()) <= README_LIMIT_BYTES
  for command in MAIN_COMMANDS:
    assert f"```bash\n{command}\n```" in text, command
  for name in ("data", "running", "methods", "design", "results"):
    assert f"(docs/{name}.md)" in text and (REPO_ROOT / "docs" / f"{name}.md").exists(), name
  results = re.search(r"<!-- generated:results -->\n(.*?)<!-- end generated -->", text, re.S)
  rows = [line for line in results.group(1).splitlines() if line.startswith("| ")][1:]
  assert len(rows) == len(list((REPO_ROOT / "reports").glob("*.json")))
  assert all("](reports/" in row and "](docs/results.md#" in row for row in rows)


def test_doc_links_point_at_existing_files():
  for relative in docs.DOC_FILES + tuple(f"docs/{p.name}" for p in (REPO_ROOT / "docs").glob("*.md")):
    path = REPO_ROOT / relative
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
      if not re.match(r"[a-z]+://", target):
        assert (path.parent / target).exists(), f"{relative} links to missing {target}"


# --------------------------------------------------------------------------
# The generator itself, on a copy of the repository's files.

@pytest.fixture
def copy(tmp_path):
  """The docs and JSON files in a scratch repository root."""
  for relative in docs.DOC_FILES + ("reports", "benchmarks/results"):
    source, target = REPO_ROOT / relative, tmp_path / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
      shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.png"))
    else:
      shutil.copy(source, target)
  return tmp_path


def test_check_lists_a_changed_number_and_writing_fixes_it(copy):
  path = copy / "reports" / "transfer.json"
  report = json.loads(path.read_text())
  report["variants"]["10pc_probe"]["accuracy"] = 0.1234
  path.write_text(json.dumps(report))
  problems = docs.check(copy)
  assert len(problems) == 2          # README's summary row and the report's own table
  assert all("12.34 %" in problem for problem in problems)
  assert docs.main(["--check", f"--root={copy}"]) == 1
  assert docs.main([f"--root={copy}"]) == 0
  assert docs.check(copy) == []
  assert "**12.34 %**" in (copy / "docs" / "results.md").read_text()


def test_check_fails_on_a_json_file_in_no_table_and_on_an_unknown_block(copy):
  shutil.copy(copy / "reports" / "distill.json", copy / "reports" / "distill_partial.json")
  problems = docs.check(copy)
  assert any("reports/distill_partial.json is in no generated block" in p for p in problems)
  readme = copy / "benchmarks" / "README.md"
  readme.write_text(readme.read_text() + "\n<!-- generated:benchmark:nothing -->\n"
                    "<!-- end generated -->\n")
  assert any("unknown generated block 'benchmark:nothing'" in p for p in docs.check(copy))


def test_tables_say_split_seeds_and_command():
  sources = docs.Sources(REPO_ROOT)
  for name, report in sources.reports.items():
    text = sources.render(f"report:{name}")
    assert "- split: " in text and "seeds: " in text and "- command: `python -m " in text, name
    assert "not recorded" not in text.split("- split: ")[1].split(";")[0], name
    for variant in report["variants"].values():
      assert docs.pct(variant["accuracy"]) in text
  for name in sources.benchmarks:
    text = sources.render(f"benchmark:{name}")
    assert "- command: `python -m benchmarks." in text and "- machine: " in text, name


def test_split_comes_from_the_report_or_its_title():
  assert docs.split_of({"eval_split": "holdout"}).startswith("validation")
  assert docs.split_of({"eval_split": "test"}) == "official test split"
  assert docs.split_of({"title": "X: 5,000-image hold-out accuracy"}).startswith("validation")
  assert docs.split_of({"title": "X: test accuracy"}) == "official test split"
  assert docs.split_of({"title": "X"}) == "not recorded"


def test_generator_imports_no_jax():
  source = (REPO_ROOT / "experiments" / "docs.py").read_text(encoding="utf-8")
  imports = re.findall(r"^(?:import|from) (\w+)", source, re.M)
  assert not set(imports) & {"jax", "flax", "effcv_jax", "numpy", "absl"}, imports
