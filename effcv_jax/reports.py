"""Reports of experiments: numbers as JSON, a picture as PNG."""

import os
import textwrap
from typing import Any

import jax

from effcv_jax import files
from effcv_jax import workdir as workdir_lib
from effcv_jax.errors import ConfigError, MissingFileError


_MAX_UPRIGHT_BARS = 8   # more variants are drawn as horizontal bars


def _pyplot():
  """matplotlib.pyplot on the file-only Agg backend (imported when a report is drawn)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def written_rows(path: str) -> dict[str, dict[str, Any]]:
  """The rows ({name: row}) of the report path.json as written before; {} when there is none."""
  if not os.path.exists(path + ".json"):
    return {}
  return workdir_lib.read_json(path + ".json").get("variants", {})


def kept_row(reported: dict[str, Any] | None, fingerprint: str, legacy_same: bool
             ) -> dict[str, Any] | None:
  """A row of a report written before, kept for a run that cannot be read here (runs/ does
  not move with the repository, its report does): the row marked kept_from_report when it
  is the same run, None otherwise. Same run: the row's `config_sha256` equals `fingerprint`
  (workdir.config_fingerprint of the run's config); for a row written before rows had
  fingerprints, `legacy_same` (the caller's check of the row's overrides and steps)."""
  if not reported:
    return None
  same = (reported["config_sha256"] == fingerprint if "config_sha256" in reported
          else legacy_same)
  return {**reported, "kept_from_report": True} if same else None


def write_bar_report(path: str, title: str, rows: dict[str, dict[str, Any]],
                     metric_name: str = "accuracy", extra: dict[str, Any] | None = None) -> None:
  """Writes path.json ({title, metric, **extra, variants: rows}) and path.png (a bar chart
  of rows[name]['accuracy'] per variant, in order; with more than 8 variants horizontal
  bars and a line at the first one's value). With extra['seed_groups'] (seed_group_summary)
  the chart has one bar per group instead: its mean, an error bar of one sample standard
  deviation, each seed as a dot; beside it, when the rows carry evaluation curves
  (row['eval_curve']), each group's mean curve (group_curves). Under multi-host only
  process 0 writes."""
  if jax.process_index() != 0:
    return
  plt = _pyplot()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  files.write_json_atomic(path + ".json", {"title": title, "metric": metric_name,
                                           **(extra or {}), "variants": rows})
  if (extra or {}).get("seed_groups"):
    _draw_seed_groups(path, title, metric_name, extra["seed_groups"],
                      group_curves(extra["seed_groups"], rows))
    return
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


def group_curves(groups: dict[str, dict[str, Any]], rows: dict[str, dict[str, Any]]
                 ) -> dict[str, list[list[float]]]:
  """{group: [[step, mean value], ...]}: each seed group's evaluation curve, the mean over its
  finished seeds (rows[variant]['eval_curve']) at the steps every one of them evaluated.
  Groups with fewer than two such steps (or included from another report) are left out."""
  curves = {}
  for name, group in groups.items():
    seed_curves = [dict(map(tuple, rows[v].get("eval_curve") or []))
                   for v in group["variants"] if v in rows]
    if not seed_curves or group.get("source"):
      continue
    steps = sorted(set.intersection(*(set(curve) for curve in seed_curves)))
    if len(steps) >= 2:
      curves[name] = [[step, sum(c[step] for c in seed_curves) / len(seed_curves)]
                      for step in steps]
  return curves


def _draw_seed_groups(path: str, title: str, metric_name: str,
                      groups: dict[str, dict[str, Any]],
                      curves: dict[str, list[list[float]]] | None = None) -> None:
  """path.png: a horizontal bar per seed group with a finished run (mean, +- one sample
  std, seeds as dots, labelled 'mean +- std (n seeds)'; groups included from another report
  hatched and marked); with `curves` (group_curves), a second panel with each group's mean
  evaluation curve against training steps."""
  plt = _pyplot()
  names = [name for name, group in groups.items() if group["num_seeds"]]
  means = [100 * groups[n]["mean"] for n in names]
  stds = [100 * (groups[n]["std"] or 0.0) for n in names]
  seeds = [[100 * a for a in groups[n]["variants"].values()] for n in names]
  low = max(0.0, min(min(s) for s in seeds) - 5)
  high = min(100.0, max(max(s) for s in seeds) + 4)
  height = 0.45 * len(names) + 1.3
  if curves:
    figure, (axis, curve_axis) = plt.subplots(
        1, 2, figsize=(13.5, max(height, 4.0)), gridspec_kw={"width_ratios": [8, 5.5]})
    _draw_curves(curve_axis, curves, metric_name)
  else:
    figure, axis = plt.subplots(figsize=(8, height))
  rows = list(range(len(names)))
  included = [bool(groups[n].get("source")) for n in names]  # from another report: hatched
  bars = axis.barh(rows, [m - low for m in means], left=low, xerr=stds, color="#4878a8",
                   capsize=3, error_kw={"elinewidth": 1})
  for bar, other in zip(bars, included):
    if other:
      bar.set_hatch("//")
      bar.set_facecolor("#9bb5cf")
  for row, values in zip(rows, seeds):
    axis.plot(values, [row] * len(values), "o", color="#222222", markersize=3)
  for row, name in zip(rows, names):
    group = groups[name]
    spread = f" ± {100 * group['std']:.2f}" if group["std"] is not None else ""
    # Right of the axes (x in axes units), where no bar or error bar reaches.
    axis.text(1.01, row, f"{100 * group['mean']:.2f}{spread} ({group['num_seeds']} "
              f"seed{'s' if group['num_seeds'] > 1 else ''})", va="center", ha="left",
              fontsize=8, transform=axis.get_yaxis_transform())
  axis.set_yticks(rows, [f"{n} (other report)" if other else n
                         for n, other in zip(names, included)], fontsize=8)
  axis.invert_yaxis()
  axis.set_xlim(low, high)
  axis.set_xlabel(f"{metric_name} (%): mean ± sample std over seeds, dots: seeds")
  axis.set_title(textwrap.fill(title, 75), fontsize=10)
  figure.tight_layout()
  figure.savefig(path + ".png", dpi=120)
  plt.close(figure)


def _draw_curves(axis, curves: dict[str, list[list[float]]], metric_name: str) -> None:
  """Each group's mean evaluation curve (percent against steps), one colour and label each:
  whether a method is still climbing when its schedule ends."""
  palette = _pyplot().get_cmap("tab10")
  for index, (name, curve) in enumerate(curves.items()):
    steps, values = zip(*curve)
    axis.plot(steps, [100 * v for v in values], marker="o", markersize=2.5, linewidth=1.2,
              color=palette(index % 10), linestyle=("-", "--", ":")[index // 10 % 3],
              label=name)
  last = [100 * curve[-1][1] for curve in curves.values()]
  axis.set_ylim(max(0.0, min(last) - 15), min(100.0, max(last) + 3))
  axis.set_xlabel("training step")
  axis.set_ylabel(f"{metric_name} (%), mean over seeds")
  axis.set_title("during training", fontsize=10)
  axis.grid(alpha=0.3)
  axis.legend(fontsize=7, ncol=2, loc="lower right")


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


def included_groups(sources: dict[str, str]) -> dict[str, dict[str, Any]]:
  """{label: a seed group of another report, with 'source'} for sources {label:
  'path/to/report.json:NAME'}. NAME is one of that report's seed groups, or, in a report
  without one of that name, one of its variants (a run of one seed: a group of one, std None).
  A missing file, group or variant raises MissingFileError / ConfigError naming it."""
  groups = {}
  for label, source in sources.items():
    path, _, name = source.rpartition(":")
    if not os.path.exists(path):
      raise MissingFileError(f"include_groups[{label!r}] = {source!r}: no report at {path}; "
                             "write that report first (its command is in its docs section)")
    report = workdir_lib.read_json(path)
    seed_groups, variants = report.get("seed_groups", {}), report.get("variants", {})
    if name in seed_groups:
      groups[label] = {**seed_groups[name], "source": source}
    elif name in variants:
      groups[label] = {**seed_group_summary({name: [name]}, variants)[name], "source": source}
    else:
      raise ConfigError(f"include_groups[{label!r}] = {source!r}: {path} has no seed group or "
                        f"variant {name!r}; its groups: {list(seed_groups)}, its variants: "
                        f"{list(variants)}")
  return groups
