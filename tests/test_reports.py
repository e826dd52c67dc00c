"""effcv_jax.reports: the JSON holds the rows as given; the PNG's layout follows the count."""

import json

import pytest
from PIL import Image

from effcv_jax import metrics, reports
from experiments import cli


def _rows(count):
  return {f"variant_{i}": {"accuracy": 0.80 + 0.01 * i, "workdir": f"runs/v{i}"}
          for i in range(count)}


def test_json_holds_title_metric_extra_and_rows_in_order(tmp_path):
  rows = _rows(3)
  reports.write_bar_report(str(tmp_path / "r"), "a title", rows, "top-1", {"command": "x"})
  written = json.loads((tmp_path / "r.json").read_text())
  assert written == {"title": "a title", "metric": "top-1", "command": "x", "variants": rows}
  assert list(written["variants"]) == list(rows)


def test_few_variants_upright_bars_many_horizontal(tmp_path):
  dpi = 120
  reports.write_bar_report(str(tmp_path / "few"), "t", _rows(3))
  reports.write_bar_report(str(tmp_path / "many"), "t", _rows(12))
  with Image.open(tmp_path / "few.png") as few, Image.open(tmp_path / "many.png") as many:
    # Upright: 1.6 in per bar + 2 in wide, 3.6 in high; horizontal: 8 in wide, 0.32 in a row.
    assert few.size == (round((1.6 * 3 + 2) * dpi), round(3.6 * dpi))
    assert many.size[0] == 8 * dpi
    assert abs(many.size[1] - (0.32 * 12 + 1.2) * dpi) <= 1


def test_seed_group_summary_is_mean_and_sample_std_of_finished_variants():
  rows = {"a0": {"accuracy": 0.80}, "a1": {"accuracy": 0.84}, "a2": {"accuracy": 0.88},
          "b0": {"accuracy": 0.70}}
  summary = reports.seed_group_summary({"a": ["a0", "a1", "a2"], "b": ["b0", "b1"]}, rows)
  assert summary["a"]["mean"] == pytest.approx(0.84)
  assert summary["a"]["std"] == pytest.approx(0.04)       # sqrt((0.0016 + 0 + 0.0016) / 2)
  assert summary["a"]["num_seeds"] == 3 and summary["a"]["missing"] == []
  assert summary["b"] == {"mean": 0.70, "std": None, "num_seeds": 1,
                          "variants": {"b0": 0.70}, "missing": ["b1"]}


def test_eval_curve_reads_the_evaluations_of_metrics_jsonl(tmp_path):
  records = [{"step": 10, "split": "train", "accuracy": 0.3},
             {"step": 20, "split": "eval", "accuracy": 0.5, "num_examples": 8},
             {"step": 10, "split": "eval", "accuracy": 0.4, "num_examples": 8},
             {"step": 20, "split": "eval", "loss": 1.0}]          # no accuracy: skipped
  torn = '{"step": 30, "split": "eval", "accur'
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + torn)
  assert metrics.eval_curve(str(tmp_path)) == [[10, 0.4], [20, 0.5]]
  assert metrics.eval_curve(str(tmp_path), "loss") == [[20, 1.0]]
  assert metrics.eval_curve(str(tmp_path / "missing")) == []


def test_group_curves_average_seeds_at_their_common_steps_and_widen_the_figure(tmp_path):
  rows = {"a_seed_0": {"accuracy": 0.6, "eval_curve": [[10, 0.4], [20, 0.6]]},
          "a_seed_1": {"accuracy": 0.7, "eval_curve": [[5, 0.1], [10, 0.5], [20, 0.7]]},
          "b_seed_0": {"accuracy": 0.5, "eval_curve": [[20, 0.5]]},   # one point: no curve
          "c_seed_0": {"accuracy": 0.5}}                                # older row: no curve
  groups = reports.seed_group_summary(
      {"a": ["a_seed_0", "a_seed_1"], "b": ["b_seed_0"], "c": ["c_seed_0"]}, rows)
  groups["other"] = {"mean": 0.5, "std": None, "num_seeds": 1, "variants": {"x": 0.5},
                     "missing": [], "source": "r.json:x"}
  curves = reports.group_curves(groups, rows)
  assert curves.keys() == {"a"}
  assert curves["a"] == [[10, pytest.approx(0.45)], [20, pytest.approx(0.65)]]
  reports.write_bar_report(str(tmp_path / "with"), "t", rows, extra={"seed_groups": groups})
  no_curves = {n: {"accuracy": r["accuracy"]} for n, r in rows.items()}
  reports.write_bar_report(str(tmp_path / "without"), "t", no_curves,
                           extra={"seed_groups": groups})
  with Image.open(tmp_path / "with.png") as wide, Image.open(tmp_path / "without.png") as bars:
    assert bars.size[0] == 8 * 120 and wide.size[0] == int(13.5 * 120)
    assert wide.size[1] == max(bars.size[1], 4 * 120)


@pytest.mark.parametrize("typed, recorded", [
    ("--workdir=/work/main/runs/ns", "--workdir=runs/ns"),          # under the checkout
    ("--data_dir=/work/shared/data", "--data_dir=../shared/data"),  # beside it
    ("/work/main/configs/a.py", "configs/a.py"),
    ("--workdir=/work/main", "--workdir=."),
    ("--workdir=/work/other/x", "--workdir=/work/other/x"),         # beside, not shared/
    ("--config=configs/a.py", "--config=configs/a.py"),             # relative: as typed
    ("--cache=/opt/cache", "--cache=/opt/cache"),                   # elsewhere: as typed
    ("--note=a=/work/main/b", "--note=a=/work/main/b"),             # not a path
    ("--config.lr=0.1", "--config.lr=0.1")])
def test_recorded_commands_name_paths_relative_to_the_checkout(typed, recorded):
  """Reports record their command with the machine's absolute paths made relative to the
  checkout they ran from, so that the command runs from any other checkout."""
  assert cli.portable_argument(typed, cwd="/work/main") == recorded
