"""The fine-tuning quadrant's report: for every backbone and cell (target data amount x
similarity to the pretraining data), which recipe won, and whether the advised one did.

`quadrant` (a sweep config's field, see configs/transfer_quadrant.py) names backbones,
targets with their similarity, labels per class with their amount, recipes, the advice
{"little/similar": recipe, ...} and num_eval (evaluation images). Variant names are
f"{backbone}_{target}_{per_class}pc_{recipe}" and rows are experiments.sweep's
({name: {accuracy, ...}}).
"""

import math
import os
from typing import Any, Mapping

import jax

from effcv_jax import files

# How many standard errors of a difference of two accuracies count as a real difference.
SIGNIFICANT_SE = 2.0


def difference_se(accuracy_a: float, accuracy_b: float, num_eval: int) -> float:
  """The standard error of accuracy_a - accuracy_b on num_eval images each, treating the
  two as independent binomials (conservative for two models on the same images)."""
  variance = (accuracy_a * (1 - accuracy_a) + accuracy_b * (1 - accuracy_b)) / num_eval
  return math.sqrt(variance)


def analyse(quadrant: Mapping[str, Any], rows: Mapping[str, Mapping[str, Any]]
            ) -> list[dict[str, Any]]:
  """One dict per (backbone, target, labels per class) with every recipe's accuracy
  (None where the variant has not run), the best recipe, the advised recipe, its gap to
  the best (points), the gap's standard error, and `advice_holds`: the advised recipe
  is the best or within SIGNIFICANT_SE standard errors of it (None until all ran)."""
  cells = []
  for backbone in quadrant["backbones"]:
    for target in quadrant["targets"]:
      for per_class, amount in quadrant["sizes"].items():
        similarity = quadrant["similarity"][target]
        names = {r: f"{backbone}_{target}_{per_class}pc_{r}" for r in quadrant["recipes"]}
        accuracy = {r: rows[n]["accuracy"] if n in rows else None for r, n in names.items()}
        advised = quadrant["advice"][f"{amount}/{similarity}"]
        cell = {"backbone": backbone, "target": target, "labels_per_class": int(per_class),
                "amount": amount, "similarity": similarity, "accuracy": accuracy,
                "advised": advised, "best": None, "gap_points": None, "gap_se_points": None,
                "advice_holds": None}
        if all(a is not None for a in accuracy.values()):
          best = max(accuracy, key=accuracy.get)
          gap = accuracy[best] - accuracy[advised]
          se = difference_se(accuracy[best], accuracy[advised], quadrant["num_eval"])
          cell.update(best=best, gap_points=round(100 * gap, 2),
                      gap_se_points=round(100 * se, 2),
                      advice_holds=bool(gap <= SIGNIFICANT_SE * se))
        cells.append(cell)
  return cells


def write_report(path: str, title: str, quadrant: Mapping[str, Any],
                 rows: Mapping[str, Mapping[str, Any]]) -> None:
  """Writes path.json ({title, quadrant, cells: analyse(...), variants: rows}) and
  path.png (one panel per cell, bars per recipe and backbone, the advised recipe
  outlined). Under multi-host only process 0 writes."""
  if jax.process_index() != 0:
    return
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  quadrant = quadrant.to_dict() if hasattr(quadrant, "to_dict") else dict(quadrant)
  cells = analyse(quadrant, rows)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  files.write_json_atomic(path + ".json", {"title": title, "metric": "accuracy",
                                           "quadrant": quadrant, "cells": cells,
                                           "variants": dict(rows)})
  sizes, targets = list(quadrant["sizes"]), list(quadrant["targets"])
  backbones, recipes = list(quadrant["backbones"]), list(quadrant["recipes"])
  figure, axes = plt.subplots(len(sizes), len(targets), figsize=(5 * len(targets),
                                                                 3.4 * len(sizes)),
                              squeeze=False)
  width = 0.8 / len(backbones)
  colours = ["#4878a8", "#e1812c", "#3a923a", "#c03d3e"]
  for row, per_class in enumerate(sizes):
    for column, target in enumerate(targets):
      axis = axes[row][column]
      for b, backbone in enumerate(backbones):
        [cell] = [c for c in cells if (c["backbone"], c["target"], str(c["labels_per_class"]))
                  == (backbone, target, str(per_class))]
        values = [100 * (cell["accuracy"][r] or 0.0) for r in recipes]
        positions = [i + (b - (len(backbones) - 1) / 2) * width for i in range(len(recipes))]
        bars = axis.bar(positions, values, width, label=backbone, color=colours[b % 4])
        for recipe, bar in zip(recipes, bars):
          if recipe == cell["advised"]:
            bar.set_edgecolor("black")
            bar.set_linewidth(2)
        axis.bar_label(bars, labels=[f"{v:.1f}" if v else "" for v in values], fontsize=7)
      amount, similarity = quadrant["sizes"][per_class], quadrant["similarity"][target]
      axis.set_title(f"{target} ({similarity}), {per_class}/class ({amount}); advice: "
                     f"{quadrant['advice'][amount + '/' + similarity]}", fontsize=9)
      axis.set_xticks(range(len(recipes)), recipes)
      axis.set_ylim(0, 100)
      axis.set_ylabel("hold-out accuracy (%)")
  axes[0][0].legend(fontsize=8, loc="lower left")
  figure.suptitle(title + " (advised recipe outlined)", fontsize=10)
  figure.tight_layout()
  figure.savefig(path + ".png", dpi=120)
  plt.close(figure)
