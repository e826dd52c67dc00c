"""Reports of experiments: numbers as JSON, a picture as PNG."""

import os
from typing import Any

import jax

from effcv_jax import files


_MAX_UPRIGHT_BARS = 8   # more variants are drawn as horizontal bars


def write_bar_report(path: str, title: str, rows: dict[str, dict[str, Any]],
                     metric_name: str = "accuracy", extra: dict[str, Any] | None = None) -> None:
  """Writes path.json ({title, metric, **extra, variants: rows}) and path.png (a bar chart
  of rows[name]['accuracy'] per variant, in order; with more than 8 variants horizontal
  bars and a line at the first one's value). Under multi-host only process 0 writes."""
  if jax.process_index() != 0:
    return
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  files.write_json_atomic(path + ".json", {"title": title, "metric": metric_name,
                                           **(extra or {}), "variants": rows})
  names = list(rows)
  values = [100 * rows[n]["accuracy"] for n in names]
  low, high = max(0.0, min(values) - 10), min(100.0, max(values) + 8)
  if len(names) <= _MAX_UPRIGHT_BARS:
    figure, axis = plt.subplots(figsize=(1.6 * len(names) + 2, 3.6))
    bars = axis.bar(names, values, color="#4878a8")
    axis.bar_label(bars, labels=[f"{v:.1f}" for v in values])
    if max(len(n) for n in names) > 12:     # long names would overlap: slant them
      axis.set_xticks(range(len(names)), names, rotation=25, ha="right")
    axis.set_ylabel(f"{metric_name} (%)")
    axis.set_ylim(low, high)
  else:  # many variants: one row each, top to bottom, against the first (the baseline)
    figure, axis = plt.subplots(figsize=(8, 0.32 * len(names) + 1.2))
    bars = axis.barh(names, values, color="#4878a8")
    axis.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=2, fontsize=8)
    axis.axvline(values[0], color="#c44e52", linestyle="--", linewidth=1,
                 label=f"{names[0]} {values[0]:.2f}")
    axis.legend(loc="lower right", fontsize=8)
    axis.invert_yaxis()
    axis.tick_params(axis="y", labelsize=8)
    axis.set_xlabel(f"{metric_name} (%)")
    axis.set_xlim(low, high)
  axis.set_title(title, fontsize=10)
  figure.tight_layout()
  figure.savefig(path + ".png", dpi=120)
  plt.close(figure)


def seed_group_summary(groups: dict[str, list[str]], rows: dict[str, dict[str, Any]]
                       ) -> dict[str, dict[str, Any]]:
  """{group: {mean, std, num_seeds, variants, missing}} of rows[variant]['accuracy'] over
  each group's finished variants (groups: the same recipe at several seeds). std is the
  sample standard deviation (n - 1; None below two seeds); missing lists unfinished ones."""
  summary = {}
  for group, variants in groups.items():
    values = [rows[v]["accuracy"] for v in variants if v in rows]
    mean = sum(values) / len(values) if values else None
    std = ((sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
           if len(values) > 1 else None)
    summary[group] = {"mean": mean, "std": std, "num_seeds": len(values),
                      "variants": {v: rows[v]["accuracy"] for v in variants if v in rows},
                      "missing": [v for v in variants if v not in rows]}
  return summary
