"""The fine-tuning quadrant: its sweep config and the report's analysis."""

import json
import math

import pytest

from configs import transfer_quadrant
from effcv_jax import sweeps
from effcv_jax.pretrained import quadrant
from experiments import docs

QUADRANT = {"backbones": ("a",), "targets": ("near", "far"),
            "similarity": {"near": "similar", "far": "different"},
            "sizes": {"10": "little", "1000": "much"}, "recipes": ("probe", "top", "all"),
            "advice": {"little/similar": "probe", "little/different": "top",
                       "much/similar": "all", "much/different": "all"},
            "num_eval": 5000}


def _rows(accuracies):
  return {name: {"accuracy": accuracy} for name, accuracy in accuracies.items()}


def test_the_advice_holds_where_the_advised_recipe_is_best_or_within_two_standard_errors():
  rows = _rows({"a_near_10pc_probe": 0.60, "a_near_10pc_top": 0.61, "a_near_10pc_all": 0.55,
                "a_far_10pc_probe": 0.70, "a_far_10pc_top": 0.60, "a_far_10pc_all": 0.65,
                "a_near_1000pc_probe": 0.70, "a_near_1000pc_top": 0.75,
                "a_near_1000pc_all": 0.80})
  cells = {(c["target"], c["labels_per_class"]): c for c in quadrant.analyse(QUADRANT, rows)}
  near_little = cells[("near", 10)]
  # top beats the advised probe by 1 point; SE of the difference: sqrt((.61*.39+.6*.4)/5000)
  se = math.sqrt((0.61 * 0.39 + 0.60 * 0.40) / 5000)
  assert near_little["best"] == "top" and near_little["advised"] == "probe"
  assert near_little["gap_points"] == pytest.approx(1.0)
  assert near_little["gap_se_points"] == pytest.approx(round(100 * se, 2))
  assert near_little["advice_holds"] is True                # 1 point < 2 x 0.98 points
  far_little = cells[("far", 10)]
  assert (far_little["best"], far_little["advised"]) == ("probe", "top")
  assert far_little["advice_holds"] is False                # 10 points is not noise
  assert cells[("near", 1000)]["advice_holds"] is True and cells[("near", 1000)]["gap_points"] == 0
  unfinished = cells[("far", 1000)]
  assert unfinished["accuracy"] == {"probe": None, "top": None, "all": None}
  assert unfinished["best"] is None and unfinished["advice_holds"] is None


def test_write_report_writes_the_cells_and_a_figure(tmp_path):
  rows = _rows({"a_near_10pc_probe": 0.6, "a_near_10pc_top": 0.5, "a_near_10pc_all": 0.4})
  path = str(tmp_path / "quadrant")
  quadrant.write_report(path, "title", QUADRANT, rows)
  report = json.loads((tmp_path / "quadrant.json").read_text())
  assert [c["advice_holds"] for c in report["cells"]] == [True, None, None, None]
  assert report["variants"]["a_near_10pc_probe"]["accuracy"] == 0.6
  assert (tmp_path / "quadrant.png").stat().st_size > 10_000
  for row in rows.values():
    row["command"] = "python -m experiments.sweep ..."
  quadrant.write_report(path, "title (hold-out accuracy)", QUADRANT, rows)
  report = json.loads((tmp_path / "quadrant.json").read_text())
  assert docs.kind_of(report) == "quadrant"
  text = docs.render_quadrant("quadrant", report)
  assert "3 of 12 variants ran" in text and "validation" in text
  assert ("| `a` | near (similar) | 10 (little) | 60.00 % | 50.00 % | 40.00 % | `probe` | "
          "`probe` | yes (0.00 ± 0.98 pt) |") in text
  assert text.count("not run") == 3


def test_the_quadrant_config_has_every_recipe_on_every_cell_and_passes_preflight():
  sweep = transfer_quadrant.get_config()
  configs = sweeps.variant_configs(sweep)       # builds and checks all of them
  assert len(configs) == 2 * 2 * 2 * 4
  probe = configs["lite0_fashion_mnist_10pc_probe"]
  assert (probe.model, probe.input_channels, probe.num_labelled) == ("efficientnet_lite0", 3, 100)
  assert probe.freeze_batch_stats and probe.optimizer.lr_rules[-1] == (".*", 0.0)
  longer, all_layers = (configs[f"mnv1_cifar10_1000pc_{r}"] for r in ("longer", "all"))
  assert longer.num_steps == transfer_quadrant.LONGER * all_layers.num_steps
  assert longer.model == "mobilenet_v1_0.25" and longer.input_channels == 0
  top = configs["mnv1_cifar10_10pc_top"]
  assert top.optimizer.lr_rules[0] == ("head/.*", 1.0)
  assert ("conv_pw_1[23].*", 0.01) in top.optimizer.lr_rules
  cells = quadrant.analyse(sweep.quadrant.to_dict(), {})
  assert {c["advised"] for c in cells} == set(transfer_quadrant.RECIPES)


def test_the_quadrant_report_records_the_input_size_it_ran_at():
  sweep = transfer_quadrant.get_config()
  assert sweep.quadrant.input_size == transfer_quadrant.INPUT_SIZE
  sweep.base.input_size = 64                     # as --config.base.input_size=64 sets it
  assert sweep.quadrant.to_dict()["input_size"] == 64
  assert {c.input_size for c in sweeps.variant_configs(sweep).values()} == {64}
  report = json.loads(json.dumps({   # as read back from the report's JSON
      "title": "t", "metric": "accuracy", "quadrant": sweep.quadrant.to_dict(),
      "cells": quadrant.analyse(sweep.quadrant.to_dict(), {}), "variants": {}}))
  assert "- images resized to 64 px inside the step" in docs.render_quadrant("q", report)
