"""The docs' generated tables match the JSON files, and the README stays a README.

Numbers are written by hand in one place only: the JSON file a run or benchmark wrote
(reports/*.json, benchmarks/results/*.json). experiments/docs.py renders the tables of
README.md, docs/results.md and benchmarks/README.md from them; these tests fail when a
committed table differs from what it renders (fix: `python -m experiments.docs`), when a JSON
file is in no table, or when the generator's renderers lose what makes a table faithful
(split, command, seeds). Standard library and the generator only: no JAX, well under a second.
"""

import fnmatch
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
  results = re.search(r"<!-- generated:results -->\n(.*?)<!-- end generated:results -->", text, re.S)
  rows = [line for line in results.group(1).splitlines() if line.startswith("| ")][1:]
  accuracy_reports = [n for n, r in docs.Sources(REPO_ROOT).reports.items()
                      if docs.kind_of(r) in docs.KIND_TITLES]
  assert len(rows) == len(accuracy_reports)
  # Each row links its table in docs/results.md, whose block links the JSON.
  results_doc = (REPO_ROOT / "docs" / "results.md").read_text(encoding="utf-8")
  assert all("](docs/results.md#" in row for row in rows)
  for name in accuracy_reports:
    assert f"](../reports/{name}.json)" in results_doc, name


def _doc_paths() -> list:
  return ([REPO_ROOT / relative for relative in docs.DOC_FILES]
          + sorted(p for p in (REPO_ROOT / "docs").glob("*.md") if p.name != "results.md"))


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_and_anchors_point_at_existing_targets():
  for path in _doc_paths():
    text = path.read_text(encoding="utf-8")
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
      if re.match(r"[a-z]+://", target):
        continue
      linked = (path.parent / target) if target else path
      assert linked.exists(), f"{path.relative_to(REPO_ROOT)} links to missing {target}"
      if anchor:
        headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)
        assert anchor in {_slug(h) for h in headings}, f"{path.name}: no #{anchor} in {target}"


def test_files_and_modules_the_docs_name_exist():
  """Paths (configs/..., tests/..., effcv_jax/...) and `python -m` modules in the docs."""
  absent = []
  for path in _doc_paths():
    text = path.read_text(encoding="utf-8")
    for name in re.findall(r"\b((?:configs|tests|benchmarks|experiments|effcv_jax)/[\w/]*\w\.py)\b",
                           text):
      if not (REPO_ROOT / name).exists():
        absent.append(f"{path.relative_to(REPO_ROOT)}: {name}")
    for module in re.findall(r"python -m ((?:experiments|benchmarks)\.\w+)", text):
      if not (REPO_ROOT / (module.replace(".", "/") + ".py")).exists():
        absent.append(f"{path.relative_to(REPO_ROOT)}: python -m {module}")
  assert not absent, "the docs name files that do not exist:\n" + "\n".join(sorted(set(absent)))


_TOP_DIRS = ("effcv_jax", "experiments", "configs", "tests", "benchmarks", "reports", "docs",
             ".ci")


def test_paths_and_modules_in_backticks_exist():
  """Every `path` (a file, folder or glob under the repository's top folders) and every
  `effcv_jax.module` named in backticks exists."""
  pattern = re.compile(r"`((?:%s)/[\w./*-]*)" % "|".join(re.escape(d) for d in _TOP_DIRS))
  absent = []
  for path in _doc_paths():
    text = path.read_text(encoding="utf-8")
    for name in pattern.findall(text):
      name = name.rstrip(".")
      if not (list(REPO_ROOT.glob(name)) or (REPO_ROOT / name).exists()):
        absent.append(f"{path.relative_to(REPO_ROOT)}: `{name}`")
    for module in re.findall(r"`((?:effcv_jax|experiments)(?:\.\w+)+)", text):
      relative = module.replace(".", "/")
      if not ((REPO_ROOT / f"{relative}.py").exists()
              or (REPO_ROOT / relative / "__init__.py").exists()):
        absent.append(f"{path.relative_to(REPO_ROOT)}: module `{module}`")
  assert not absent, "the docs name paths that do not exist:\n" + "\n".join(sorted(set(absent)))


def test_readme_layout_names_existing_files():
  """The README's layout block: each line's leading names (files or folders, under the
  top-level folder they are indented below) exist."""
  text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
  block = re.search(r"## Layout\n+```\n(.*?)```", text, re.S).group(1)
  top, checked, absent = None, 0, []
  for line in block.splitlines():
    match = re.match(r"^( *)([\w.]+/?(?:, [\w.]+/?)*)(?: {2,}|$)", line)
    if not match:
      continue
    indent, names = match.groups()
    for name in names.split(", "):
      relative = name if not indent else f"{top}/{name}"
      if not (REPO_ROOT / relative).exists():
        absent.append(relative)
      checked += 1
    if not indent:
      top = names.rstrip("/")
  assert not absent, f"README's layout names missing {absent}"
  assert checked >= 20, checked


def test_results_prose_names_only_existing_reports_and_variants():
  """docs/results.md's prose refers to rows by name: the names must exist (globs allowed)."""
  text = (REPO_ROOT / docs.RESULTS_DOC).read_text(encoding="utf-8")
  prose = re.sub(r"<!-- generated:([\w:.-]+) -->.*?<!-- end generated:\1 -->", "", text,
                 flags=re.S)
  sources = docs.Sources(REPO_ROOT)
  known = set(sources.reports) | {variant for report in sources.reports.values()
                                  for variant in report.get("variants", {})}
  for name in re.findall(r"`([a-z0-9_*/]+)`", prose):
    assert fnmatch.filter(known, name), f"docs/results.md names {name!r}, in no report"


# --------------------------------------------------------------------------
# The generator itself, on a copy of the repository's files.

@pytest.fixture
def scratch(tmp_path):
  """The docs and JSON files in a scratch repository root."""
  for relative in docs.DOC_FILES + ("reports", "benchmarks/results", docs.ZOO_DIR):
    source, target = REPO_ROOT / relative, tmp_path / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
      shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.png", "*.safetensors"))
    else:
      shutil.copy(source, target)
  return tmp_path


def test_check_lists_a_changed_number_and_writing_fixes_it(scratch):
  path = scratch / "reports" / "transfer.json"
  report = json.loads(path.read_text())
  report["variants"]["10pc_scratch"]["accuracy"] = 0.1234  # the first: in the headline
  path.write_text(json.dumps(report))
  problems = docs.check(scratch)
  assert len(problems) == 2          # README's summary row and the report's own table
  assert all("12.34 %" in problem for problem in problems)
  assert docs.main(["--check", f"--root={scratch}"]) == 1
  assert docs.main([f"--root={scratch}"]) == 0
  assert docs.check(scratch) == []
  assert "**12.34 %**" in (scratch / "docs" / "results.md").read_text()


def test_check_fails_on_a_json_file_in_no_table_and_on_an_unknown_block(scratch):
  shutil.copy(scratch / "reports" / "distill.json", scratch / "reports" / "distill_partial.json")
  problems = docs.check(scratch)
  assert any("reports/distill_partial.json is in no generated block" in p for p in problems)
  readme = scratch / "benchmarks" / "README.md"
  readme.write_text(readme.read_text() + "\n<!-- generated:benchmark:nothing -->\n"
                    "<!-- end generated:benchmark:nothing -->\n")
  assert any("unknown generated block 'benchmark:nothing'" in p for p in docs.check(scratch))


def test_tables_say_split_seeds_and_command():
  sources = docs.Sources(REPO_ROOT)
  for name, report in sources.reports.items():
    text = sources.render(f"report:{name}")
    if docs.kind_of(report) == "robustness":
      assert f"`{report['command']}`" in text and "; split: " in text, name
      if "calibration" in report:
        for when in ("before", "after"):
          assert docs.pct(report["calibration"][when]["ece"]) in text, name
      if "adversarial" in report:
        for key in ("fgsm", "pgd"):
          assert all(docs.pct(v) in text for v in report["adversarial"][key].values()), name
      continue
    if docs.kind_of(report) == "policy_search":
      assert f"`{report['command']}`" in text and "CPU-hours" in text, name
      continue
    if docs.kind_of(report) == "pba":
      assert f"`{report['command']}`" in text and f"`{report['schedule_spec']}`" in text, name
      assert docs.pct(report["final_best_accuracy"]) in text, name
      continue
    if docs.kind_of(report) == "gan_quality":
      assert f"`{report['command']}`" in text and "- split: " in text and "seeds: " in text
      assert all(docs.pct(report["quality"][key]) in text for key in
                 ("classifier_accuracy_on_generated", "generated_only_accuracy")), name
      assert f"](../reports/{report['samples_png']})" in text, name
      continue
    if docs.kind_of(report) == "imagenet_samples":
      assert f"`{report['command']}`" in text, name
      for model in report["models"].values():
        assert f"{model['top1']}/{report['photos']}" in text
      continue
    assert "- metric: `accuracy`; split: " in text and "seeds: " in text, name
    assert "- command: `python -m " in text, name
    assert "not recorded" not in text.split("split: ")[1].split(";")[0], name
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


def test_a_noisy_student_headline_gives_its_students_seed_mean_where_it_has_one():
  """The README cell of a Noisy Student report: the main student alone, or the mean of the
  seed group that holds it (and its gain over the teacher), other variants counted apart; the
  student's model is named only where it is not the teacher's."""
  variants = {"teacher": {"model": "cnn", "accuracy": 0.80},
              "student_1": {"model": "cnn", "accuracy": 0.85, "gain_over_teacher": 0.05},
              "student_seed_1": {"model": "cnn", "accuracy": 0.83},
              "no_noise": {"model": "cnn", "accuracy": 0.81}}
  report = {"teacher_steps": 100, "variants": variants}   # what marks a Noisy Student report
  assert docs.headline(report) == (
      "teacher `cnn` 80.00 % -> student **85.00 %** (+5.00); 2 more variants")
  report["seed_groups"] = {"students": {"mean": 0.84, "num_seeds": 2,
                                        "variants": {"student_1": 0.85, "student_seed_1": 0.83}},
                           "other": {"mean": 0.81, "num_seeds": 1,
                                     "variants": {"no_noise": 0.81}}}
  assert docs.headline(report) == (
      "teacher `cnn` 80.00 % -> student **84.00 %** (2 seeds, +4.00); 1 more variant")
  variants["student_1"]["model"] = "resnet"
  assert docs.headline(report).startswith("teacher `cnn` 80.00 % -> student `resnet` **84.00 %**")


def test_a_resumed_runs_train_time_says_which_steps_it_covers():
  """A sweep row's time is the finishing session's: a resumed run says how many steps that was."""
  assert docs.train_time({"train_seconds": 90, "steps": 100, "steps_timed": 100}) == "1.5 min"
  assert docs.train_time({"train_seconds": 90, "steps": 100}) == "1.5 min"
  assert (docs.train_time({"train_seconds": 90, "steps": 6000, "steps_timed": 1500})
          == "1.5 min (its last 1,500 steps)")


def test_generator_imports_no_jax():
  source = (REPO_ROOT / "experiments" / "docs.py").read_text(encoding="utf-8")
  imports = re.findall(r"^(?:import|from) (\w+)", source, re.M)
  assert not set(imports) & {"jax", "flax", "effcv_jax", "numpy", "absl"}, imports


def test_check_names_the_file_and_fails_on_an_unpaired_marker(scratch, capsys):
  readme = scratch / "README.md"
  text = readme.read_text()
  readme.write_text(text.replace("<!-- end generated:results -->", "<!-- end generated -->"))
  assert docs.main(["--check", f"--root={scratch}"]) == 1
  err = capsys.readouterr().err
  assert "README.md: 2 generated-block marker(s) without their pair" in err
  readme.write_text(text.replace("[Noisy Student](", "[Noisy Students](", 1))
  assert docs.main(["--check", f"--root={scratch}"]) == 1
  assert "README.md: generated blocks differ from the JSON files" in capsys.readouterr().err
  assert docs.main([f"--root={scratch}"]) == 0 and readme.read_text() == text


def test_a_new_result_file_must_be_documented_and_renders_whatever_its_shape(scratch):
  new = scratch / "benchmarks" / "results" / "stress_new.json"
  new.write_text(json.dumps({"command": "python tests/onednn_stress_driver.py --seconds=60",
                             "machine": {"cpu": "CPU", "cpu_count": 2},
                             "runs": {"convs": {"iterations": 1234, "outcome": "STRESS OK"}}}))
  assert any("benchmarks/results/stress_new.json is in no generated block" in p
             for p in docs.check(scratch))
  readme = scratch / "benchmarks" / "README.md"
  readme.write_text(readme.read_text() + "\n<!-- generated:benchmark:stress_new -->\n"
                    "<!-- end generated:benchmark:stress_new -->\n")
  assert docs.main([f"--root={scratch}"]) == 0 and docs.check(scratch) == []
  text = readme.read_text()
  assert "| `runs.convs.iterations` | `1234` |" in text
  assert "| `runs.convs.outcome` | `STRESS OK` |" in text


def test_a_result_file_missing_a_field_is_named(scratch):
  path = scratch / "reports" / "transfer.json"
  report = json.loads(path.read_text())
  del report["variants"]["10pc_probe"]["accuracy"]
  path.write_text(json.dumps(report))
  assert any("report:transfer" in p and "'accuracy'" in p for p in docs.check(scratch))


def _stress_entry(outcomes_by_key: dict) -> dict:
  runs = [{"isa": key.split()[0], "outcome": outcome}
          for key, outcomes in outcomes_by_key.items() for outcome in outcomes]
  return {"command": "python -m benchmarks.onednn_stress --label=L --repeats=2",
          "library_root_commit": "0123456789abcdef", "date": "d",
          "machine": {"cpu": "CPU", "cpu_count": 2, "jax": "0", "devices": ["cpu:0"]},
          "settings": {"seconds": 60, "repeats": 2},
          "summary": {key: {"runs": len(outcomes), "ok": outcomes.count("OK"),
                            "outcomes": outcomes} for key, outcomes in outcomes_by_key.items()},
          "runs": runs}


def _write_benchmark_and_render(scratch, name: str, result: dict) -> str:
  """Writes benchmarks/results/NAME.json, gives it a block in benchmarks/README.md, renders
  the docs (which must then check clean) and returns that README's text."""
  (scratch / "benchmarks" / "results" / f"{name}.json").write_text(json.dumps(result))
  readme = scratch / "benchmarks" / "README.md"
  readme.write_text(readme.read_text() + f"\n<!-- generated:benchmark:{name} -->\n"
                    f"<!-- end generated:benchmark:{name} -->\n")
  assert docs.main([f"--root={scratch}"]) == 0 and docs.check(scratch) == []
  return readme.read_text()


def test_the_onednn_stress_matrix_renders_per_label(scratch):
  """benchmarks/onednn_stress.py's file (one entry per checkout label) gets its own table:
  per ISA, threads and workload, the runs, how many were OK, and every outcome counted."""
  result = {"fixed": _stress_entry({"AVX2 threads=2 convs": ["OK", "OK"]}),
            "unfixed": _stress_entry({"AVX2 threads=2 convs": ["CORRUPT", "signal SIGSEGV"],
                                      "AVX2 threads=1 convs": ["OK", "HANG"]})}
  text = _write_benchmark_and_render(scratch, "onednn_stress", result)
  assert "fixed: 2 of 2 runs OK; unfixed: 1 of 4 runs OK" in text          # the summary row
  assert "| `AVX2 threads=2 convs` | 2 | **0** | CORRUPT x1, signal SIGSEGV x1 |" in text
  assert "| `AVX2 threads=1 convs` | 2 | **1** | HANG x1, OK x1 |" in text
  assert "library at commit `0123456789ab`" in text


def test_rows_not_trained_where_the_report_was_written_are_named():
  notes = docs.provenance_notes({
      "teacher": {"accuracy": 0.7, "restored_from_zoo": "cifar10_4000_teacher"},
      "student_1": {"accuracy": 0.8, "kept_from_report": True},
      "ablation": {"accuracy": 0.81}})
  assert notes.splitlines() == [
      "Kept from the report as written before (trained on an earlier machine): `student_1`.",
      "Restored from the zoo rather than trained here: `teacher` (zoo entry "
      "`cifar10_4000_teacher`, its stored weights)."]
  assert docs.provenance_notes({"a": {"accuracy": 0.5}}) == ""


def test_onednn_builds_render_speed_per_build_and_kernels_per_pass(scratch):
  """benchmarks/onednn_builds.py's file: a row per build (version, runtimes, median speed and
  its ratios, every run) and PyTorch's, then the kernels each build ran per pass."""
  def run(speed):
    return {"images_per_s": speed, "cpu_over_wall": 1.9, "seconds_per_step": 0.4,
            "last_loss": 0.01, "compile_s": 5.0}
  result = {
      "command": "python -m benchmarks.onednn_builds --builds=wheel=/v,new=/p",
      "machine": {"cpu": "AMD EPYC", "cpu_count": 2, "jax": "0.10.2", "jax_devices": ["cpu:0"]},
      "workload": "resnet20, conv onednn",
      "builds": {"wheel": {"prefix": "/v", "version": "3.2.0", "cpu_runtime": "OpenMP",
                           "cpu_threading": "OpenMP",
                           "verbose": {"steps": 3, "isa": "Intel AVX2", "kernels": {
                               "forward": {"brgconv:avx2": {"calls": 54, "ms": 667.4}}},
                               "ms_per_step": {"forward": 222.5, "all": 222.5}}},
                 "new": {"prefix": "/p", "version": "3.13.2", "cpu_runtime": "SYCL",
                         "cpu_threading": "TBB"}},
      "torch_onednn": "torch 2.14.1: oneDNN 3.12.0", "torch_verbose": {"error": "exit code 1"},
      "runs": {"wheel": [run(300.0), run(320.0)], "new": [run(330.0), {"error": "exit code 1"}]},
      "torch": {"variant": "all_threads_channels_last", "runs": [run(400.0), run(400.0)]},
      "median_images_per_s": {"wheel": 310.0, "new": 330.0}, "torch_median_images_per_s": 400.0,
      "over_baseline": {"wheel": 1.0, "new": 1.065}, "over_torch": {"wheel": 0.775, "new": 0.825},
      "targets": {"resnet20_jax_over_torch >= 1.0 (best set: new)": {
          "value": 0.825, "met": False, "definition": "fastest / PyTorch"}}}
  text = _write_benchmark_and_render(scratch, "onednn_builds_check", result)
  assert ("| `wheel` | 3.2.0 (OpenMP runtime, OpenMP threads) | **310.0** | 1.000 | 0.775 | "
          "300.0, 320.0 |") in text
  assert "| `new` | 3.13.2 (SYCL runtime, TBB threads) | **330.0** | 1.065 | 0.825 | 330.0 |" in text
  assert "| `torch all_threads_channels_last` | PyTorch eager | **400.0** |" in text
  assert "PyTorch's own oneDNN: torch 2.14.1: oneDNN 3.12.0." in text
  assert "| `wheel` | forward | 222.5 | `brgconv:avx2` x54 |" in text
  assert "| `wheel` | instruction set |  | Intel AVX2 |" in text
  assert "| `wheel` | **all oneDNN calls** | **222.5** |  |" in text
  assert "| `PyTorch` | - | - | failed: exit code 1 |" in text


def test_machine_summary_names_the_widest_instruction_set_and_its_limits():
  def machine(*flags):
    return {"cpu": "CPU X", "cpu_isa_flags": list(flags)}
  assert docs.machine_summary({"machine": machine("avx", "avx2")}) == "CPU X, AVX2"
  assert docs.machine_summary({"machine": machine("avx2", "avx512f")}) == "CPU X, AVX-512"
  assert docs.machine_summary({"machine": machine("avx512f", "amx_bf16"),
                               "isa_limits": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}) == (
                                   "CPU X, AVX-512 + AMX, limited to AVX2")
  assert docs.machine_summary({"machine": {"cpu": "CPU X"}}) == "CPU X, ISA not recorded"
  # A file of several entries (e.g. onednn_stress.json) takes its first entry's machine.
  assert docs.machine_summary({"a": {"machine": machine("avx2")}}) == "CPU X, AVX2"
  # On an accelerator the summary names it, not the host CPU.
  gpu = {**machine("avx2"), "jax_backend": "gpu", "jax_device_kind": "NVIDIA H100 80GB HBM3"}
  assert docs.machine_summary({"machine": gpu}) == "NVIDIA H100 80GB HBM3 (JAX gpu)"
  assert "NVIDIA H100 80GB HBM3" in docs.machine_line({"machine": gpu})
  assert "NVIDIA" not in docs.machine_line({"machine": {**gpu, "jax_backend": "cpu"}})


def test_remat_memory_renders_one_row_per_model_with_its_ratios_and_step_time():
  entry = {"peak_gib": 2.0, "residual_gib": 4.0, "compiled_convolutions": 10,
           "compile_seconds": 1.0}
  result = {"command": "python -m benchmarks.remat_memory", "machine": {"cpu": "CPU X"},
            "settings": {"batch_size": 8, "num_classes": 1000, "conv_backend": "xla",
                         "optimizer": "tf_efficientnet_optimizer", "xla_flags": ""},
            "m_224px": {"plain": entry, "remat": {**entry, "peak_gib": 0.5},
                        "remat_over_plain": {"peak_bytes": 0.25, "residual_bytes": 0.1}},
            "n_600px": {"plain": entry, "remat": entry,
                        "remat_over_plain": {"peak_bytes": 1.0, "residual_bytes": 1.0}},
            "step_time_m_224px": {"seconds_per_step_plain": 0.01,
                                  "seconds_per_step_remat": 0.012, "remat_over_plain": 1.2}}
  assert docs.benchmark_kind(result) == "remat_memory"
  text = docs.render_remat_memory("remat_memory", result)
  rows = [line for line in text.splitlines() if line.startswith("| `")]
  assert len(rows) == 2
  assert "2.0 / 0.5" in rows[0] and "**0.25x**" in rows[0] and "10 / 12 (**1.2x**)" in rows[0]
  assert "not timed" in rows[1]
