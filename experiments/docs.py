"""Regenerates the result and speed tables of the docs from the runs' JSON files.

  python -m experiments.docs            # rewrites every generated block in place
  python -m experiments.docs --check    # exit 1, listing the blocks that differ

Numbers are written by hand in exactly one place: the JSON a run or benchmark wrote
(reports/*.json, benchmarks/results/*.json, zoo/*/card.json). README.md, docs/*.md and benchmarks/README.md
hold blocks

  <!-- generated:NAME -->
  ...
  <!-- end generated:NAME -->

whose contents this module renders from those files; everything outside the blocks is prose
(which refers to the tables instead of repeating their numbers). Block names:

  results                   one line per accuracy report: what ran, split, headline result, links
  report:NAME               every variant of reports/NAME.json (for imagenet_samples: each
                            model's counts on the 20 photos beside its published top-1; for
                            robustness: calibration before/after temperature scaling and
                            FGSM/PGD accuracy per epsilon; for gan_quality: the
                            samples' measures beside the real images' and the sample grid)
  zoo                       one line per zoo entry (zoo/NAME/card.json), in docs/results.md:
                            model, data, accuracy, the command that checks it
  speed                     one line per benchmark: its targets and whether they were met
  benchmark:NAME            the measurements of benchmarks/results/NAME.json (a file of a
                            shape with no renderer of its own: every value, one row each)

`--check` also fails when a JSON file appears in no block, so a new report cannot go
undocumented. tests/test_docs.py runs the same check.

Standard library only: no JAX, runs in a fraction of a second. Not an absl/cli entry point on
purpose (cli.run starts the JAX-side machinery: tcmalloc restart, distributed flags).
"""

import argparse
import difflib
import json
import pathlib
import re
import sys
from typing import Any, Callable

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = ("README.md", "docs/results.md", "benchmarks/README.md")
REPORTS_DIR = "reports"
BENCHMARKS_DIR = "benchmarks/results"
ZOO_DIR = "zoo"
RESULTS_DOC = "docs/results.md"

BLOCK = re.compile(r"(<!-- generated:(?P<name>[\w:.-]+) -->\n)(?P<body>.*?)"
                   r"(<!-- end generated:(?P=name) -->)", re.DOTALL)
# Any start or end marker: a marker the BLOCK pattern does not pair is an error.
MARKER = re.compile(r"<!-- (?:end )?generated[^>]*-->")

Json = dict[str, Any]


# --------------------------------------------------------------------------
# Formatting.

def pct(value: float) -> str:
  return f"{100 * value:.2f} %"


def points(value: float) -> str:
  return f"{100 * value:+.2f}"


def minutes(seconds: float) -> str:
  return f"{seconds / 60:.1f} min"


def train_time(row: Json) -> str:
  """A sweep row's training time: that of the session that finished the run, and how many
  of its steps that session trained when the run was resumed (steps_timed < steps)."""
  timed = row.get("steps_timed")
  resumed = f" (its last {timed:,} steps)" if timed and timed < row["steps"] else ""
  return minutes(row["train_seconds"]) + resumed


def code(text: Any) -> str:
  """Inline code, safe inside a table cell."""
  text = str(text).replace("|", "\\|")
  return f"`{text}`" if text else "—"


MAX_OVERRIDE_CHARS = 160   # longer values (e.g. a searched policy) are cut in tables


def overrides_text(overrides: dict | None, drop: tuple[str, ...] = ()) -> str:
  """`key=value` pairs of a variant's config overrides, in one table cell; a value longer
  than MAX_OVERRIDE_CHARS is cut, saying how long it is (the JSON holds it whole)."""
  items = [(k, v) for k, v in sorted((overrides or {}).items()) if k not in drop]
  if not items:
    return "—"
  def shown(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    if len(text) <= MAX_OVERRIDE_CHARS:
      return text
    return f"{text[:MAX_OVERRIDE_CHARS - 40]}... ({len(text):,} characters, whole in the JSON)"
  return ", ".join(code(f"{k}={shown(v)}") for k, v in items)


def table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def split_of(report: Json) -> str:
  """The evaluation split: `eval_split` where the report records it; older sweep reports
  only say it in their title."""
  split = report.get("eval_split")
  if split is None:
    title = report.get("title", "").lower()
    split = ("test" if "test" in title else
             "holdout" if re.search(r"hold-?out|validation", title) else "not recorded")
  return {"holdout": "validation (hold-out from the training split)",
          "test": "official test split"}.get(split, split)


def seeds_of(report: Json) -> str:
  if report.get("seed_groups"):
    counts = sorted({g["num_seeds"] for g in report["seed_groups"].values() if g["num_seeds"]})
    if kind_of(report) == "noisy_student":
      return (f"{'/'.join(map(str, counts))} per recipe (student seeds, one teacher; "
              "the seed table below), one for the other rows")
    return f"{'/'.join(map(str, counts))} per variant (the seed table below)"
  seeds = report.get("seeds", report.get("seed"))
  if seeds is None:
    return "not recorded in the JSON (one run per variant, the config's seed)"
  return ", ".join(map(str, seeds)) if isinstance(seeds, list) else str(seeds)


def kind_of(report: Json) -> str:
  if "schedule_spec" in report:
    return "pba"
  if "paper_gpu_hours_cifar10" in report:
    return "policy_search"
  if "photos" in report:
    return "imagenet_samples"
  if "frechet_distance" in report.get("quality", {}):
    return "gan_quality"
  if "calibration" in report or "adversarial" in report:
    return "robustness"
  if "cells" in report and "quadrant" in report:
    return "quadrant"
  if "teacher_steps" in report:
    return "noisy_student"
  if "distill" in report:
    return "distill"
  return "sweep"


def variant_command(report: Json, variant: Json) -> str:
  """What a variant's command adds to the report's (e.g. `--only=NAME`), or the whole."""
  command, base = variant.get("command", ""), report.get("command")
  if base and command.startswith(base) and command != base:
    return code(command[len(base):].strip())
  return "same" if base and command == base else code(command)


# --------------------------------------------------------------------------
# Reports (accuracy runs).

def _ns_steps(report: Json, name: str, variant: Json) -> int:
  if name == "teacher":
    return report["teacher_steps"]
  return (variant.get("overrides") or {}).get("student.num_steps", report["student_steps"])


def _pseudo(variant: Json) -> tuple[str, str]:
  stats = variant.get("pseudo_labels")
  if not stats:
    return "—", "—"
  used = f"{stats['selected']:,} of {stats['pool']:,}"
  return used, f"{100 * stats['selected_pseudo_label_accuracy']:.1f} %"


def render_noisy_student(name: str, report: Json) -> str:
  head = [f"### {name}", "",
          f"{report['title']} ([reports/{name}.json](../reports/{name}.json), "
          f"[plot](../reports/{name}.png)).", "",
          f"- metric: {code(report.get('metric', 'accuracy'))}; split: {split_of(report)}; {report['num_labelled']:,} labels; seeds: "
          f"{seeds_of(report)}",
          f"- command: {code(report['command'])} (a row's `--only` trains that variant alone)",
          ""]
  rows = []
  for variant_name, variant in report["variants"].items():
    used, correct = _pseudo(variant)
    rows.append([
        code(variant_name), code(variant["model"]),
        overrides_text(variant.get("overrides"), drop=("student.eval_every",)),
        f"{_ns_steps(report, variant_name, variant):,}", used, correct,
        f"**{pct(variant['accuracy'])}**",
        "—" if variant_name == "teacher" else points(variant["gain_over_teacher"]),
        variant_command(report, variant)])
  text = "\n".join(head) + "\n" + table(
      ["variant", "model", "overrides", "steps", "pseudo-labels used", "of them correct",
       "accuracy", "vs teacher (points)", "command adds"], rows)
  provenance = provenance_notes(report["variants"])
  if provenance:
    text += "\n\n" + provenance
  if report.get("seed_groups"):
    text += "\n\n" + render_seed_groups(report["seed_groups"])
  return text


def provenance_notes(variants: Json) -> str:
  """Lines naming the rows whose runs were not trained on the machine that wrote the report:
  kept from the report written before (reports.kept_row) or restored from a zoo entry."""
  kept = [code(name) for name, row in variants.items() if row.get("kept_from_report")]
  restored = [f"{code(name)} (zoo entry {code(row['restored_from_zoo'])}, its stored weights)"
              for name, row in variants.items() if row.get("restored_from_zoo")]
  lines = []
  if kept:
    lines.append(f"Kept from the report as written before (trained on an earlier machine): "
                 f"{', '.join(kept)}.")
  if restored:
    lines.append(f"Restored from the zoo rather than trained here: {', '.join(restored)}.")
  return "\n".join(lines)


def render_seed_groups(groups: Json) -> str:
  """One row per group of a report's seed_groups: seeds, mean, sample std, each seed's run
  (for a group included from another report, that report)."""
  rows = []
  for group, summary in groups.items():
    spread = (f" ± {100 * summary['std']:.2f}" if summary["std"] is not None else "")
    rows.append([group, str(summary["num_seeds"]),
                 f"**{pct(summary['mean'])}**{spread}" if summary["mean"] is not None else "–",
                 ", ".join(f"{code(v)} {pct(a)}" for v, a in summary["variants"].items())
                 + (f" (missing: {', '.join(map(code, summary['missing']))})"
                    if summary["missing"] else "")
                 + (f" (from {code(summary['source'])})" if summary.get("source") else "")])
  return table(["recipe", "seeds", "mean ± std (points)", "runs"], rows)


def render_distill(name: str, report: Json) -> str:
  teacher, settings = report["teacher"], report["distill"]
  variants = report["variants"]
  head = [f"### {name}", "",
          f"{report['title']} ([reports/{name}.json](../reports/{name}.json), "
          f"[plot](../reports/{name}.png)).", "",
          f"- metric: {code(report.get('metric', 'accuracy'))}; split: {split_of(report)}; {report['num_labelled']:,} labels; seeds: "
          f"{seeds_of(report)}",
          f"- teacher: {code(teacher['model'])}, {pct(teacher['accuracy'])} on the same split",
          "- distillation: " + ", ".join(code(f"{k}={v}") for k, v in sorted(settings.items())),
          f"- command: {code(next(iter(variants.values()))['command'])}", ""]
  rows = []
  for variant_name, variant in variants.items():
    rows.append([code(variant_name), code(variant["model"]), code(variant["mode"]),
                 f"{variant['steps']:,} x {variant['batch_size']}",
                 f"**{pct(variant['accuracy'])}**", f"{variant['num_examples']:,}",
                 minutes(variant["train_seconds"])])
  return "\n".join(head) + "\n" + table(
      ["variant", "student", "mode", "steps x batch", "accuracy", "examples", "train time"],
      rows)


def sweep_head(name: str, report: Json, seeds: str, extra: tuple[str, ...] = ()) -> list[str]:
  """The heading lines of a sweep's section: title with links, metric, split, seeds, the
  variants' commands, then `extra` lines."""
  commands = sorted({v["command"] for v in report["variants"].values()})
  return [f"### {name}", "",
          f"{report['title']} ([reports/{name}.json](../reports/{name}.json), "
          f"[plot](../reports/{name}.png)).", "",
          f"- metric: {code(report.get('metric', 'accuracy'))}; split: {split_of(report)}; "
          f"seeds: {seeds}",
          f"- command: {', '.join(code(c) for c in commands) or 'none yet'}", *extra, ""]


def render_sweep(name: str, report: Json) -> str:
  """The variants' table (with the images each saw where recorded, and the time of the
  session that finished it), then the seed groups' table where the report has them."""
  variants = report["variants"]
  head = sweep_head(name, report, seeds_of(report))
  seen = any("images_seen" in variant for variant in variants.values())
  rows = [[code(variant_name), overrides_text(variant.get("overrides"), ("seed",)),
           f"{variant['steps']:,}"] + ([f"{variant['images_seen']:,}"] if seen else []) +
          [f"**{pct(variant['accuracy'])}**", f"{variant['num_examples']:,}",
           train_time(variant)]
          for variant_name, variant in variants.items()]
  text = "\n".join(head) + "\n" + table(
      ["variant", "overrides", "steps"] + (["images seen"] if seen else []) +
      ["accuracy", "examples", "train time"], rows)
  provenance = provenance_notes(variants)
  if provenance:
    text += "\n" + provenance + "\n"
  if report.get("seed_groups"):
    text += "\n" + render_seed_groups(report["seed_groups"])
  return text


def render_imagenet_samples(name: str, report: Json) -> str:
  photos = report["photos"]
  rows = [[code(model), f"{m['top1']}/{photos}", f"{m['top5']}/{photos}",
           f"{m['published_imagenet_top1']:.1f} %", f"{m['image_size']} px"]
          for model, m in report["models"].items()]
  return (f"{report['title']} ([JSON](reports/{name}.json), with where each published "
          f"top-1 is quoted from; {code(report['command'])}):\n\n" + table(
              ["`--pretrained=`", "top-1", "top-5", "published ImageNet top-1", "input"], rows))


def command_line(report: Json) -> str:
  """The robustness report's command, or each suite's where commands merged into one report
  differ."""
  commands = report.get("commands", {})
  if len(set(commands.values())) <= 1:
    return f"- command: {code(report['command'])}"
  return "- commands: " + "; ".join(f"{suite} {code(command)}"
                                    for suite, command in commands.items())


def render_robustness(name: str, report: Json) -> str:
  """experiments/robustness.py's report: calibration before/after temperature scaling and
  top-1 under FGSM and PGD per epsilon."""
  pictures = report["pictures"]
  links = [f"[reports/{name}.json](../reports/{name}.json)"] + [
      f"[{kind} plot](../reports/{file_name})" for kind, file_name in pictures.items()]
  source = (f"zoo entry {code(report['zoo'])}" if "zoo" in report
            else f"workdir {code(report['workdir'])} at step {report['checkpoint_step']:,}")
  lines = [f"### {name}", "", f"{report['title']} ({', '.join(links)}).", "",
           f"- model: {code(report['model'])}, {source}; split: {split_of(report)} of "
           f"{code(report['dataset'])}",
           command_line(report), ""]
  if "calibration" in report:
    section = report["calibration"]
    fit = section["temperature_fit"]
    how = (f"fitted on {code(fit['split'])} ({fit['num_examples']:,} examples)"
           if fit["separate_validation"] else
           "fitted on the evaluated split itself, no separate validation split; the "
           "after-scaling row is 2-fold cross-fitted (each half scaled by the temperature of "
           "the other half: " + ", ".join(f"{t:.3f}" for t in fit["fold_temperatures"]) + ")")
    lines += [f"Calibration on {section['num_examples']:,} examples, ECE with "
              f"{section['num_bins']} equal-width confidence bins, Brier summed over classes; "
              f"temperature {section['temperature']:.3f}, {how}.", ""]
    rows = [[label, pct(m["accuracy"]), f"**{pct(m['ece'])}**", f"{m['nll']:.4f}",
             f"{m['brier']:.4f}"]
            for label, m in (("before (T = 1)", section["before"]),
                             (f"after (T = {section['temperature']:.3f})"
                              if fit["separate_validation"] else "after (cross-fitted)",
                              section["after"]))]
    lines.append(table(["probabilities", "accuracy", "ECE", "NLL", "Brier"], rows))
  if "adversarial" in report:
    section = report["adversarial"]
    epsilons = [f"{e:g}" for e in section["epsilons"]]
    lines += [f"Top-1 under L-infinity attacks on {section['num_examples']:,} "
              f"examples of the split (epsilon in pixel units of [0, 255] images; PGD: "
              f"{section['pgd_steps']} steps of {section['pgd_step_size']}, random start, "
              f"seed {section['seed']}).", ""]
    rows = [[attack, pct(section["clean_accuracy"])]
            + [f"**{pct(section[key][e])}**" for e in epsilons]
            for attack, key in (("FGSM", "fgsm"), (f"PGD-{section['pgd_steps']}", "pgd"))]
    lines.append(table(["attack", "clean"] + [f"{e}/255" for e in epsilons], rows))
  if "corruptions" in report:
    lines.append(render_corruption_section(report["corruptions"]))
  return "\n".join(lines)


def render_corruption_section(section: Json) -> str:
  """Top-1 per corruption and severity (and its mean), with each corruption's error
  relative to the baseline run's (CE, relative CE) and the mCE line when compared."""
  severities = [str(s) for s in section["severities"]]
  versus = section.get("versus_baseline")
  head = [f"Top-1 under the corruptions on {section['num_examples']:,} examples of the split "
          f"({section['constants']} constants, frost: {section['frost_textures']}; seed "
          f"{section['seed']}); clean {pct(section['clean_accuracy'])}."]
  if versus:
    head.append(f"Against {code(versus['baseline'])} (clean "
                f"{pct(versus['baseline_clean_accuracy'])}): **mCE {100 * versus['mce']:.1f}**, "
                f"relative mCE {100 * versus['relative_mce']:.1f} (the baseline's = 100; CE: "
                "this model's summed error over the severities / the baseline's).")
  rows = []
  for corruption in section["corruptions"]:
    accuracy = section["accuracy"][corruption]
    mean = sum(accuracy[s] for s in severities) / len(severities)
    rows.append([corruption] + [pct(accuracy[s]) for s in severities] + [f"**{pct(mean)}**"]
                + ([f"{100 * versus['ce'][corruption]:.1f}",
                    f"{100 * versus['relative_ce'][corruption]:.1f}"] if versus else []))
  return (" ".join(head) + "\n\n" + table(
      ["corruption"] + [f"severity {s}" for s in severities] + ["mean"]
      + (["CE", "relative CE"] if versus else []), rows))


def render_quadrant(name: str, report: Json) -> str:
  """The fine-tuning quadrant (effcv_jax/pretrained/quadrant.py): one row per backbone and
  cell, every recipe's accuracy, the best and the advised recipe and whether the advice held."""
  recipes = report["quadrant"]["recipes"]
  head = sweep_head(
      name, report,
      f"one run per variant (the config's seed); {len(report['variants'])} of "
      f"{len(report['cells']) * len(recipes)} variants ran",
      ((f"- images resized to {report['quadrant']['input_size']} px inside the step",)
       if "input_size" in report["quadrant"] else ())
      + ("- holds: the advised recipe is the best or within 2 standard errors of it",))
  rows = []
  for cell in report["cells"]:
    accuracy = cell["accuracy"]
    holds = {True: "yes", False: "**no**", None: "not run"}[cell["advice_holds"]]
    gap = "" if cell["gap_points"] is None else (
        f" ({cell['gap_points']:.2f} ± {cell['gap_se_points']:.2f} pt)")
    rows.append([code(cell["backbone"]), f"{cell['target']} ({cell['similarity']})",
                 f"{cell['labels_per_class']:,} ({cell['amount']})"]
                + [pct(accuracy[r]) if accuracy[r] is not None else "–" for r in recipes]
                + [code(cell["best"]) if cell["best"] else "–", code(cell["advised"]),
                   holds + gap])
  return "\n".join(head) + "\n" + table(
      ["backbone", "target", "labels / class"] + recipes + ["best", "advised", "holds"], rows)


def search_cost_line(report: Json) -> str:
  """'- search cost: ...' of a policy search's report: its CPU-hours and wall hours beside
  the papers' GPU-hours on CIFAR-10 (the fields of policy_search.papers_cost)."""
  cost = report["search_cost"]
  papers = ", ".join(f"{method} {hours:,g}" for method, hours in
                     report["paper_gpu_hours_cifar10"].items())
  sessions = f", {cost['sessions']} session(s)" if "sessions" in cost else ""
  return (f"- search cost: **{cost['cpu_hours']:.2f} CPU-hours** ({cost['wall_hours']:.2f} wall "
          f"hours on {cost['cpu_count']} shared CPU cores, {cost['devices']} {cost['platform']} "
          f"device(s){sessions}); the papers' GPU-hours: {papers} "
          f"({report['paper_gpu_hours_note']})")


def render_policy_search(name: str, report: Json) -> str:
  """An augmentation policy search's report: its command, the policy's size, the search cost
  in CPU-hours beside the papers' GPU-hours, and (Fast AutoAugment) per fold the fold model's
  clean held-out score and the selected candidates' scores on the augmented held-out fold."""
  lines = [f"### {name}", "", f"{report['title']} ([reports/{name}.json](../reports/{name}.json)"
           f"; the policy spec string is its `policy`).", "",
           f"- command: {code(report['command'])}", search_cost_line(report)]
  if "num_sub_policies" in report:
    lines.append(f"- policy: {report['num_sub_policies']} sub-policies")
  if "score" in report:
    lines.append(f"- score: {report['score']}")
  lines.append("")
  if "folds" not in report:
    return "\n".join(lines)
  rows = []
  for fold in report["folds"]:
    selected = [trial for round_ in fold["rounds"] for trial in round_["selected"]]
    rows.append([str(fold["fold"]), f"{fold['num_train']:,} / {fold['num_held_out']:,}",
                 pct(fold["clean_held_out"]["accuracy"]),
                 f"{fold['clean_held_out']['loss']:.4f}",
                 f"{min(t['loss'] for t in selected):.4f} - {max(t['loss'] for t in selected):.4f}",
                 f"{pct(min(t['accuracy'] for t in selected))} - "
                 f"{pct(max(t['accuracy'] for t in selected))}"])
  return "\n".join(lines) + "\n" + table(
      ["fold", "train / held out", "clean held-out accuracy", "clean loss",
       "selected candidates' loss", "their accuracy"], rows)


def render_pba(name: str, report: Json) -> str:
  """A Population Based Augmentation search (experiments/pba.py): its settings, the final
  best member, the searched schedule, the cost next to the papers' GPU-hours, then one row
  per round (best and mean held-out accuracy, the round's best member's policy)."""
  head = [f"### {name}", "",
          f"{report['title']} ([reports/{name}.json](../reports/{name}.json)).", "",
          f"- command: {code(report['command'])}",
          f"- population {report['population']}, {report['num_steps']:,} steps of "
          f"{report['batch_size_per_member']} images per member, exploit and explore every "
          f"{report['ready_every']} steps ({report['rounds_done']} of {report['num_rounds']} "
          f"rounds run); {report['num_labelled']:,} labels; members evaluated on "
          f"{report['num_held_out']:,} held-out training images",
          f"- final best member: {pct(report['final_best_accuracy'])} held-out accuracy",
          search_cost_line(report),
          f"- searched schedule: {code(report['schedule_spec'])}", ""]
  rows = [[str(r["round"]), f"{r['start_step']}–{r['end_step']}", pct(max(r["accuracies"])),
           pct(sum(r["accuracies"]) / len(r["accuracies"])), code(r["best_policy"])]
          for r in report["rounds"]]
  return "\n".join(head) + "\n" + table(
      ["round", "steps", "best", "mean", "best member's policy"], rows)


def render_gan_quality(name: str, report: Json) -> str:
  """A GAN's sample quality (experiments/gan_quality.py --report): the GAN and the measuring
  classifier, then one row per measure, the real images' value beside the samples' where the
  measure has one, and the sample grid."""
  gan, classifier, quality = report["gan"], report["classifier"], report["quality"]
  head = [f"### {name}", "",
          f"{report['title']} ([reports/{name}.json](../reports/{name}.json)).", "",
          f"- command: {code(report['command'])}",
          f"- GAN: {code(gan['workdir'])}, {gan['loss']} loss, {gan['num_steps']:,} steps of "
          f"{gan['batch_size']} on the {gan['num_labelled']:,} labelled images of "
          f"{code(gan['dataset'])}",
          f"- classifier: {code(classifier['workdir'])} ({code(classifier['model'])}, "
          f"{classifier['num_steps']:,} steps of {classifier['batch_size']}, augment "
          f"{code(classifier['augment']) if classifier['augment'] else 'none'}); features: "
          "the input of its last dense layer (FID's formula on this network, not comparable "
          "with Inception FIDs)",
          f"- split: {quality['eval_split']} ({quality['num_real_eval']:,} real images); seeds: "
          f"one GAN run, {quality['num_samples']:,} class-balanced samples of noise seed "
          f"{quality['seed']}", ""]
  real_accuracy = (pct(quality["classifier_accuracy"])
                   if quality["classifier_accuracy"] is not None else None)
  rows = [["Fréchet distance to the real evaluation images",
           f"**{quality['frechet_distance']:.2f}**",
           f"{quality['real_train_frechet_distance']:.2f} (the "
           f"{quality['num_real_train']:,} real training images)"],
          ["the classifier's accuracy on the samples (their class labels)",
           f"**{pct(quality['classifier_accuracy_on_generated'])}**",
           f"{real_accuracy} (on the real evaluation images)" if real_accuracy else "–"],
          [f"evaluation accuracy of the classifier's config trained on the samples alone "
           f"({quality['generated_only_steps']:,} steps)",
           f"**{pct(quality['generated_only_accuracy'])}**",
           f"{real_accuracy} (trained on the real labelled images)" if real_accuracy else "–"]]
  return ("\n".join(head) + "\n" + table(["measure", "samples", "real images"], rows)
          + f"\n![{name} samples, one row per class](../reports/{report['samples_png']})\n")


REPORT_RENDERERS: dict[str, Callable[[str, Json], str]] = {
    "noisy_student": render_noisy_student, "distill": render_distill, "sweep": render_sweep,
    "imagenet_samples": render_imagenet_samples, "robustness": render_robustness,
    "quadrant": render_quadrant, "policy_search": render_policy_search, "pba": render_pba,
    "gan_quality": render_gan_quality}


def render_zoo(cards: dict[str, Json]) -> str:
  """One row per zoo entry (its card has the split, command and check in full), linked from
  docs/results.md, where the table is."""
  rows = [[f"[{code(name)}](../zoo/{name}/README.md)", code(card["model"]), card["eval"],
           f"**{pct(card['metrics']['accuracy'])}**", card["dtype"]]
          for name, card in sorted(cards.items())]
  return table(["entry", "model", "evaluated on", "accuracy", "weights"], rows)


KIND_TITLES = {"noisy_student": "Noisy Student", "distill": "Distillation", "sweep": "Sweep"}


def headline(report: Json) -> str:
  """The report's result in one cell."""
  variants = report["variants"]
  kind = kind_of(report)
  if kind == "noisy_student":   # the main student, or the mean of its seed group if it has one
    teacher, student = variants["teacher"], variants["student_1"]
    seeds = next((g for g in report.get("seed_groups", {}).values()
                  if "student_1" in g["variants"] and g["num_seeds"] > 1), None)
    accuracy = seeds["mean"] if seeds else student["accuracy"]
    more = len(variants) - 2 - (seeds["num_seeds"] - 1 if seeds else 0)
    same_model = student["model"] == teacher["model"]
    return (f"teacher {code(teacher['model'])} {pct(teacher['accuracy'])} -> student "
            + ("" if same_model else f"{code(student['model'])} ") + f"**{pct(accuracy)}** "
            + (f"({seeds['num_seeds']} seeds, {points(accuracy - teacher['accuracy'])})"
               if seeds else f"({points(student['gain_over_teacher'])})")
            + (f"; {more} more variant{'s' if more > 1 else ''}" if more else ""))
  if report.get("seed_groups"):   # the best group and the first (the baseline)
    groups = {n: g for n, g in report["seed_groups"].items() if g["num_seeds"]}
    best = max(groups, key=lambda n: groups[n]["mean"])
    return ", ".join(f"{n} {pct(groups[n]['mean'])} ({groups[n]['num_seeds']} "
                     f"seed{'s' if groups[n]['num_seeds'] != 1 else ''})"
                     for n in dict.fromkeys([best, next(iter(groups))]))
  if len(variants) > 3:   # the first (the baseline) and the best
    first, best = next(iter(variants)), max(variants, key=lambda n: variants[n]["accuracy"])
    return (f"{first} {pct(variants[first]['accuracy'])}, best {best} "
            f"{pct(variants[best]['accuracy'])} ({len(variants)} variants)")
  return ", ".join(f"{variant_name} {pct(v['accuracy'])}" for variant_name, v in variants.items())


def run_label(report: Json) -> str:
  """What ran, from the report's title (and, for distillation, teacher and budget)."""
  run = report["title"].split(":")[0].removeprefix("Noisy Student, ")
  if kind_of(report) == "distill":
    budgets = sorted({(v["steps"], v["batch_size"]) for v in report["variants"].values()})
    run += (f", {code(report['teacher']['model'])} teacher, "
            + " / ".join(f"{steps:,} steps of {batch}" for steps, batch in budgets))
  return run


def render_results(reports: dict[str, Json]) -> str:
  order = ("noisy_student", "distill", "sweep")
  accuracy_runs = {n: r for n, r in reports.items() if kind_of(r) in order}
  rows = []
  for name, report in sorted(accuracy_runs.items(),
                             key=lambda kv: (order.index(kind_of(kv[1])), kv[0])):
    kind = kind_of(report)
    split = split_of(report).split(" (")[0].removeprefix("official ").removesuffix(" split")
    method = f"{KIND_TITLES[kind]} {code(name)}" if kind == "sweep" else KIND_TITLES[kind]
    rows.append([f"[{method}]({RESULTS_DOC}#{name})", run_label(report), split,
                 headline(report)])
  return table(["method (its table)", "run", "split", "result"], rows)


# --------------------------------------------------------------------------
# Benchmarks (speed).

def target_state(met: bool | None) -> str:
  """How a benchmark target reads: met, not met, or stated (a figure with no threshold)."""
  return "stated" if met is None else ("met" if met else "not met")


def machine_line(result: Json) -> str:
  machine = result.get("machine", {})
  devices = machine.get("jax_devices", machine.get("devices", []))
  isa = machine.get("cpu_isa_flags")
  accelerator = machine.get("jax_device_kind") if machine.get("jax_backend") != "cpu" else None
  parts = [machine.get("cpu", "CPU"), f"{machine.get('cpu_count', '?')} cores",
           f"JAX {machine.get('jax', '?')}", ", ".join(devices), accelerator,
           f"vector ISA {' '.join(isa)}" if isa else ""]
  start = result.get("load_average_start", result.get("load_average_at_start"))
  end = result.get("load_average_end", result.get("load_average_at_end"))
  load = f"; 1-min load average {start[0]:.1f} -> {end[0]:.1f}" if start and end else ""
  return f"- machine: {', '.join(p for p in parts if p)}{load}"


def benchmark_head(name: str, result: Json) -> list[str]:
  """The first lines of a benchmark file's block: its heading, link, command and machine."""
  return [f"### {name}", "", f"[benchmarks/results/{name}.json](results/{name}.json)", "",
          f"- command: {code(result.get('command', ''))}", machine_line(result)]


def machine_summary(result: Json) -> str:
  """The CPU a result came from and its widest vector instruction set, for the summary table:
  'AMD EPYC, AVX2'; files written before the flags were recorded say so. A result measured on
  an accelerator names the accelerator instead."""
  machine = result.get("machine")
  if machine is None and result and all(isinstance(v, dict) for v in result.values()):
    machine = next(iter(result.values())).get("machine")   # a file of several entries
  machine = machine or {}
  if machine.get("jax_backend") not in (None, "cpu"):
    backend = machine["jax_backend"]
    return f"{machine.get('jax_device_kind', backend)} (JAX {backend})"
  flags = machine.get("cpu_isa_flags")
  if not flags:
    isa = "ISA not recorded"
  elif "amx_bf16" in flags:
    isa = "AVX-512 + AMX"
  elif "avx512f" in flags:
    isa = "AVX-512"
  else:
    isa = "AVX2" if "avx2" in flags else "no AVX2"
  limits = result.get("isa_limits") or {}
  if "ONEDNN_MAX_CPU_ISA" in limits:
    isa += f", limited to {limits['ONEDNN_MAX_CPU_ISA']}"
  return f"{machine.get('cpu', 'CPU not recorded')}, {isa}"


def _step_row(step: Json) -> list[str]:
  flags = step.get("xla_flags") or ""
  threading = step["threading"] + (" (XLA single-thread flags)" if flags and
                                   "multi_thread_eigen=false" in flags else "")
  return [code(step["model"]), code(step["conv"]), threading, step["allocator"],
          f"**{step['images_per_s']:.1f}**", f"{step['time_to_first_step_s']:.1f} s"]


def render_train_step(name: str, result: Json) -> str:
  lines = [*benchmark_head(name, result),
           f"- batch {result['settings']['batch_size']}, {result['settings']['rounds']} rounds "
           f"of {result['settings']['steps']} steps after {result['settings']['warmup']} warm-up "
           f"steps; optimiser: {result['settings']['optimizer']}", ""]
  rows = [_step_row(s) for s in result.get("step", []) + result.get("other_allocator", [])]
  torch = result.get("torch")
  if torch:
    for variant_name, variant in torch["variants"].items():
      layout = "channels_last" if variant["channels_last"] else "NCHW"
      rows.append([f"PyTorch {torch['torch']} ({variant_name})", f"eager, {layout}",
                   f"{variant['threads']} thread(s)", torch["allocator"],
                   f"**{variant['images_per_s']:.1f}**", "—"])
  lines.append(table(["model", "convolutions", "threading", "allocator", "images/s",
                      "first step after"], rows))
  for key in ("fast_conv_speedup", "onednn_speedup"):
    if key in result:
      lines.append(f"- {key}: " + ", ".join(f"{k} {v:.2f}x" for k, v in result[key].items()))
  layer = result.get("conv_layer")
  if layer:
    timings = ", ".join(f"{k} {v['ms']:.1f} ms" for k, v in layer.items()
                        if isinstance(v, dict) and "ms" in v)
    lines.append(f"- one convolution layer, {layer['shape']}: {timings}")
  compile_ = result.get("compile")
  if compile_:
    labels = {"cache_cold": "persistent compilation cache cold",
              "cache_warm": "from the cache", "opt0_cold": "XLA optimisation level 0, no cache"}
    runs = "; ".join(f"{label} {compile_[k]['time_to_first_step_s']:.1f} s"
                     for k, label in labels.items() if k in compile_)
    lines.append(f"- time to the first step ({code(compile_['model'])}, "
                 f"{code(compile_['conv'])} convolutions): {runs}")
    if "opt0_cold" in compile_:
      lines.append(f"  (at level 0 the step runs at {compile_['opt0_cold']['images_per_s']:.1f} "
                   "images/s)")
  for model, profile in (result.get("profile") or {}).items():
    shares = sorted(profile["by_kind_share"].items(), key=lambda kv: -kv[1])[:4]
    lines.append(f"- profile of one {code(model)} step ({code(profile['conv'])} convolutions, "
                 "XLA single-thread flags), share of op time: "
                 + ", ".join(f"{k} {100 * v:.1f} %" for k, v in shares))
  lines += targets_lines(result)
  return "\n".join(lines) + "\n"


def _peer_cell(peer: Json | None) -> str:
  if not peer or "images_per_second" not in peer:
    return (peer or {}).get("skipped", "—")
  return f"{peer['images_per_second']:,.0f} ({peer['ours_over_peer']:.2f}x)"


def render_augment(name: str, result: Json) -> str:
  lines = [*benchmark_head(name, result),
           "- peers: " + ", ".join(f"{k} {v}" for k, v in result["machine"].get("peers",
                                                                               {}).items()), ""]
  for allocator, run in result["by_allocator"].items():
    rows = []
    for row in run["runs"]:
      peers = row["peers"]
      rows.append([code(row["workload"]), f"{row['size']} px x {row['batch']}",
                   f"**{row['ours']['images_per_second']:,.0f}**",
                   f"{row['ours']['compile_seconds']:.1f} s"]
                  + [_peer_cell(peers.get(p))
                     for p in ("torchvision", "torchvision_all_threads", "albumentations")])
    lines.append(f"Allocator {code(allocator)} "
                 f"(LD_PRELOAD {code(run.get('ld_preload', ''))}):\n")
    lines.append(table(["workload", "images", "ours images/s", "compile",
                        "torchvision 1 thread (ours over it)",
                        "torchvision all threads", "albumentations"], rows))
    lines += targets_lines(run)
    lines.append("")
  return "\n".join(lines).rstrip("\n") + "\n"


def render_pseudo_label(name: str, result: Json) -> str:
  speed = result["throughput"]
  lines = [*benchmark_head(name, result),
           f"- model: {result['model']}; store: {result['store']}",
           f"- pool {speed['pool_size']:,}, batch {speed['batch_size']}, shards of "
           f"{speed['shard_size']:,}, {speed['repeats']} repeats: bare jitted forward "
           f"{speed['bare_forward_images_per_s']:,} images/s, whole pass "
           f"{speed['whole_pass_images_per_s']:,} images/s (**{speed['whole_over_bare']:.2f}x** "
           f"the bare forward); reading alone {speed['host_reading_only_images_per_s']:,} "
           "images/s", ""]
  rows = [[f"{r['pool_size']:,}", str(r["shards"]), f"{r['images_per_s']:,}",
           f"{r['rss_before_pass_mib']:.1f}", f"{r['max_rss_during_pass_mib']:.1f}",
           f"{r['pass_adds_mib']:.1f}"] for r in result["rss"]]
  lines.append(table(["pool", "shards", "images/s", "RSS before (MiB)", "max RSS during (MiB)",
                      "pass adds (MiB)"], rows))
  lines += targets_lines(result)
  return "\n".join(lines) + "\n"


def render_ssl_step(name: str, result: Json) -> str:
  """benchmarks/ssl_step.py's file: per model, the FixMatch step against the plain step over
  the same images and where its time goes."""
  lines = [*benchmark_head(name, result),
           f"- {result['definition']}; {result['rounds']} rounds of "
           f"{result['steps_per_round']} steps per variant, medians", ""]
  rows = []
  for run in result["runs"]:
    ms = run["median_ms"]
    rows.append([code(run["model"]), f"{run['labelled_batch']} + {run['mu']} x "
                 f"{run['labelled_batch']}", str(run["images_per_step"]),
                 f"{ms['fixmatch']:.1f}", f"{ms['fixmatch_no_views']:.1f}", f"{ms['plain']:.1f}",
                 f"{ms['views']:.1f}", f"**{run['fixmatch_over_plain']:.3f}**",
                 f"{run['fixmatch_over_plain_cpu']:.3f}",
                 pct(run["views_alone_share_of_fixmatch"]),
                 f"{run['fixmatch_over_separate_weak_forward']:.3f}"])
  lines.append(table(["model", "batch (B + mu B)", "images / step", "FixMatch ms",
                      "no views ms", "plain ms", "views alone ms", "FixMatch / plain",
                      "same, CPU time", "views alone / FixMatch",
                      "FixMatch / (plain (1 + mu) B + forward mu B)"], rows))
  lines += targets_lines(result)
  if result.get("notes"):
    lines.append(f"- notes: {result['notes']}")
  return "\n".join(lines) + "\n"


def turn_table(name: str, result: Json, columns: tuple[str, str],
               variants: dict[str, str]) -> list[str]:
  """The header lines and table of a file of alternating turns (benchmarks/
  train_step_harness.alternating_turns): per variant (`variants`: name -> what it is), the
  train step's median speed against the first variant and PyTorch, with every run's speed,
  CPU use and last loss; PyTorch's row last. `columns` names the first two columns."""
  limits = result.get("isa_limits") or {}
  lines = [*benchmark_head(name, result),
           *([f"- instruction sets limited by: {', '.join(f'{k}={v}' for k, v in limits.items())}"]
             if limits else []),
           f"- workload: {result['workload']}", ""]

  def run_cells(runs: list[Json]) -> list[str]:   # the measured runs' speed, CPU use, loss
    measured = [r for r in runs if "images_per_s" in r]
    return [", ".join(f"{r[key]}" for r in measured)
            for key in ("images_per_s", "cpu_over_wall", "last_loss")]

  rows = []
  for variant, description in variants.items():
    median = result["median_images_per_s"][variant]
    ratios = [result["over_baseline"][variant], result["over_torch"][variant]]
    rows.append([code(variant), description, f"**{median}**" if median else "failed",
                 *[f"{r:.3f}" if r else "-" for r in ratios],
                 *run_cells(result["runs"][variant])])
  torch = result.get("torch") or {}
  if torch:
    torch_median = result["torch_median_images_per_s"]
    rows.append([code(f"torch {torch['variant']}"), "PyTorch eager",
                 f"**{torch_median}**" if torch_median else "skipped or failed", "-",
                 "1.000" if torch_median else "-", *run_cells(torch["runs"])])
  lines.append(table([*columns, "median images/s", "over the first", "over PyTorch",
                      "runs (images/s)", "CPU / wall", "last loss"], rows))
  return lines


def render_xla_flags(name: str, result: Json) -> str:
  """benchmarks/xla_cpu_flags.py's file: per XLA option set, the train step's median speed
  against the baseline and PyTorch, with every run's speed and CPU use."""
  lines = turn_table(name, result, ("option set", "XLA_FLAGS"),
                     {option_set: code(xla_flags) if xla_flags else "(none)"
                      for option_set, xla_flags in result["option_sets"].items()})
  lines += targets_lines(result)
  return "\n".join(lines) + "\n"


def render_concurrent_runs(name: str, result: Json) -> str:
  """benchmarks/concurrent_runs.py's file: per arrangement of processes on the cores, the
  machine's images/s per turn and their median, its ratios, every process's images/s."""
  lines = [*benchmark_head(name, result), f"- workload: {result['workload']}", ""]
  medians = result["median_images_per_s"]
  rows = []
  for arrangement, median in medians.items():
    turns = [turn[arrangement] for turn in result["turns"]]
    per_process = "; ".join(" + ".join(str(run.get("images_per_s", "error")) for run in t["runs"])
                            for t in turns)
    rows.append([code(arrangement), str(median),
                 ", ".join(str(t["images_per_s"]) for t in turns), per_process])
  lines.append(table(["arrangement", "machine images/s (median)", "per turn",
                      "per process, per turn"], rows))
  lines.append("- ratios of the medians: " + ", ".join(
      f"{code(key)} {value}" for key, value in result["ratios"].items()))
  return "\n".join(lines) + "\n"


def render_tcmalloc_release(name: str, result: Json) -> str:
  """benchmarks/tcmalloc_release.py's file: per tcmalloc release rate, the train step's median
  speed against rate 0 and PyTorch, and every run's page faults and system time per step."""
  lines = turn_table(name, result, ("variant", "TCMALLOC_RELEASE_RATE"),
                     {variant: code(rate) for variant, rate in result["release_rates"].items()})
  torch = result.get("torch") or {}
  sides = {**result["runs"], **({f"torch {torch['variant']}": torch["runs"]} if torch else {})}
  rows = [[code(side), ", ".join(str(r.get("minor_page_faults_per_step", "-")) for r in runs),
           ", ".join(str(r.get("system_cpu_s_per_step", "-")) for r in runs)]
          for side, runs in sides.items()]
  lines += ["", table(["run", "minor page faults per step", "system CPU s per step"], rows)]
  lines += targets_lines(result)
  return "\n".join(lines) + "\n"


def render_onednn_builds(name: str, result: Json) -> str:
  """benchmarks/onednn_builds.py's file: per oneDNN build, the train step's median speed
  against the first build and PyTorch, and the kernels each build ran for each pass."""
  builds = result["builds"]
  lines = turn_table(name, result, ("build", "oneDNN"),
                     {build: f"{info['version']} ({info['cpu_runtime']} runtime, "
                             f"{info['cpu_threading']} threads)"
                      for build, info in builds.items()})
  if result.get("torch_onednn"):
    lines += ["", f"PyTorch's own oneDNN: {result['torch_onednn']}."]
  verbose = {build: info["verbose"] for build, info in builds.items() if info.get("verbose")}
  if result.get("torch_verbose"):
    verbose["PyTorch"] = result["torch_verbose"]
  rows = []
  for run, found in verbose.items():
    if "error" in found:
      rows.append([code(run), "-", "-", f"failed: {found['error']}"])
      continue
    if found.get("isa"):
      rows.append([code(run), "instruction set", "", found["isa"]])
    if found.get("data_types"):
      rows.append([code(run), "data types", "", ", ".join(
          f"{part} {'/'.join(types)}" for part, types in found["data_types"].items())])
    per_step = found.get("warm_ms_per_step", found.get("ms_per_step"))
    for part, kernels in found["kernels"].items():
      rows.append([code(run), part, f"{per_step[part]}", ", ".join(
          f"{code(kernel)} x{k['calls']}" for kernel, k in kernels.items())])
    rows.append([code(run), "**all oneDNN calls**", f"**{per_step['all']}**", ""])
  if rows:
    first = next(iter(verbose.values()))
    steps = first.get("steps")
    how = ("the calls' execution time per step without each call's first execution, which "
           "JIT-compiles its kernel (benchmarks/onednn_verbose.warm_ms_per_step)"
           if "warm_ms_per_step" in first else
           "the summed execution time / steps, first executions included (their kernels' JIT "
           "compilation inflates the rarely called `gemm_api`)")
    lines += ["", f"oneDNN's kernels per pass under ONEDNN_VERBOSE ({steps} steps per run, "
              f"a run of its own; ms per step is {how}; `gemm_api` rows are matrix products "
              "XLA hands to its own bundled oneDNN):", "",
              table(["run", "pass", "ms per step", f"kernels (calls in {steps} steps)"], rows)]
  lines += targets_lines(result)
  return "\n".join(lines) + "\n"


def render_batch_norm(name: str, result: Json) -> str:
  """benchmarks/batch_norm.py's file: per workload, the train step's speed with flax's
  BatchNorm and with the project's, timed in alternating rounds in one process."""
  settings = result["settings"]
  lines = [*benchmark_head(name, result),
           f"- workload: conv {settings['conv']}, batch {settings['batch_size']}, "
           f"{settings['rounds']} alternating rounds of {settings['steps']} steps per side", ""]
  rows = [[code(workload), f"{w['images_per_s']['flax']}", f"**{w['images_per_s']['ours']}**",
           f"**{w['ours_over_flax']:.3f}**", f"{w['ours_over_flax_median_of_rounds']:.3f}",
           f"{w['loss']['flax']} / {w['loss']['ours']}"]
          for workload, w in result["workloads"].items()]
  lines.append(table(["model / dtype", "flax nn.BatchNorm images/s", "layers.BatchNorm images/s",
                      "ours / flax (medians)", "median of per-round ratios",
                      "loss flax / ours"], rows))
  return "\n".join(lines) + "\n"


def _remat_models(result: Json) -> dict[str, Json]:
  """benchmarks/remat_memory.py's per-model entries ({model}_{size}px: plain, remat, ratios)."""
  return {key: entry for key, entry in result.items()
          if isinstance(entry, dict) and {"plain", "remat", "remat_over_plain"} <= entry.keys()}


def render_remat_memory(name: str, result: Json) -> str:
  """benchmarks/remat_memory.py's file: per model, the compiled train step's peak memory,
  backward residuals, convolutions and compile time without and with remat, and the executed
  step time where it was timed."""
  settings = result["settings"]
  lines = [*benchmark_head(name, result),
           f"- batch {settings['batch_size']}, {settings['num_classes']} classes, "
           f"conv_backend {code(settings['conv_backend'])}, optimiser "
           f"{code(settings['optimizer'])}, XLA_FLAGS {code(settings.get('xla_flags') or '')}"]
  for key in ("ran_as", "source"):
    if key in result:
      lines.append(f"- {key.replace('_', ' ')}: {result[key]}")
  rows = []
  for key, entry in _remat_models(result).items():
    plain, remat, ratios = entry["plain"], entry["remat"], entry["remat_over_plain"]
    timing = result.get(f"step_time_{key}")
    step = (f"{1000 * timing['seconds_per_step_plain']:.4g} / "
            f"{1000 * timing['seconds_per_step_remat']:.4g} (**{timing['remat_over_plain']}x**)"
            if timing else "not timed")
    rows.append([code(key), f"{plain['peak_gib']} / {remat['peak_gib']}",
                 f"**{ratios['peak_bytes']}x**",
                 f"{plain['residual_gib']} / {remat['residual_gib']} ({ratios['residual_bytes']}x)",
                 f"{plain['compiled_convolutions']} / {remat['compiled_convolutions']}",
                 f"{plain['compile_seconds']} / {remat['compile_seconds']}", step])
  lines += ["", table(["model", "compiled peak GiB plain / remat", "peak remat / plain",
                       "backward residuals GiB plain / remat", "compiled convolutions",
                       "compile s", "ms per step plain / remat"], rows)]
  for topic, note in result.get("notes", {}).items():
    lines.append(f"- note ({topic}): {note}")
  lines += targets_lines(result)
  return "\n".join(lines) + "\n"


def render_augment_dm_pix(name: str, result: Json) -> str:
  """One row per colour op: its difference from dm-pix's op and both timings per size."""
  lines = [*benchmark_head(name, result),
           f"- dm-pix {result.get('dm_pix', '?')}; " + " ".join(result.get("notes", [])), ""]
  sizes = list(result["sizes"])
  ops = list(result["sizes"][sizes[0]]["ops"])
  rows = []
  for op in ops:
    cells = [code(op)]
    for size in sizes:
      entry = result["sizes"][size]["ops"].get(op, {})
      cells.append(f"{entry.get('max_abs_difference', float('nan')):.3g} "
                   f"(mean {entry.get('mean_abs_difference', float('nan')):.2g})")
      cells.append(f"{entry.get('ours_ms', float('nan')):.3g} / "
                   f"{entry.get('dm_pix_ms', float('nan')):.3g}")
    cells.append(result["sizes"][sizes[0]]["ops"][op].get("note", ""))
    rows.append(cells)
  header = ["op"] + [h for size in sizes for h in (f"max diff {size}", f"ms ours / dm-pix {size}")]
  lines.append(table(header + ["note"], rows))
  return "\n".join(lines) + "\n"


def targets_lines(result: Json) -> list[str]:
  targets = result.get("targets") or {}
  if not targets:
    return []
  return ["- targets: " + "; ".join(
      f"{code(k)}: {v['value']} ({target_state(v['met'])})"
      for k, v in targets.items())]


def _leaves(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
  """(dotted path, value) of every scalar in a JSON value, in file order."""
  if isinstance(value, dict):
    return [leaf for key, item in value.items()
            for leaf in _leaves(item, f"{prefix}.{key}" if prefix else str(key))]
  if isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
    return [leaf for i, item in enumerate(value) for leaf in _leaves(item, f"{prefix}[{i}]")]
  return [(prefix, value)]


def render_generic(name: str, result: Json) -> str:
  """Any other result file (a new benchmark, a stress run): its command, machine and every
  value, so that it can be documented before it has a renderer of its own."""
  skip = {"command", "machine", "targets"}
  lines = [*benchmark_head(name, result), ""]
  rows = [[code(path), code(json.dumps(value) if not isinstance(value, str) else value)]
          for key, item in result.items() if key not in skip
          for path, value in _leaves(item, key)]
  lines.append(table(["field", "value"], rows))
  lines += targets_lines(result)
  return "\n".join(lines) + "\n"


def _is_stress(result: Json) -> bool:
  """benchmarks/onednn_stress.py's file: {label: {command, summary, runs, ...}}."""
  return bool(result) and all(isinstance(entry, dict) and "summary" in entry and "runs" in entry
                              for entry in result.values())


def render_onednn_stress(name: str, result: Json) -> str:
  """One table per label (a checkout's library): per ISA, calling threads and workload, how
  many runs ended with every result equal to the single-threaded one."""
  lines = [f"### {name}", "", f"[benchmarks/results/{name}.json](results/{name}.json)", ""]
  for label, entry in result.items():
    settings = entry.get("settings", {})
    lines += [f"Label {code(label)} (library at commit "
              f"{code(entry.get('library_root_commit', '')[:12])}):", "",
              f"- command: {code(entry['command'])}", machine_line(entry),
              "- each run: " + ", ".join(f"{k} {v}" for k, v in sorted(settings.items())), ""]
    rows = [[code(key), str(item["runs"]), f"**{item['ok']}**",
             ", ".join(f"{outcome} x{item['outcomes'].count(outcome)}"
                       for outcome in sorted(set(item["outcomes"])))]
            for key, item in entry["summary"].items()]
    lines.append(table(["ISA, calling threads, workload", "runs", "OK", "outcomes"], rows))
  return "\n".join(lines).rstrip("\n") + "\n"


def _stress_summary(result: Json) -> str:
  return "; ".join(
      f"{label}: {sum(i['ok'] for i in e['summary'].values())} of "
      f"{sum(i['runs'] for i in e['summary'].values())} runs OK" for label, e in result.items())


def render_corruption_reference(name: str, result: Json) -> str:
  """benchmarks/corruption_reference.py's file: per corruption, PSNR against the clean
  image and the accuracy drop, ours / the reference, over severities 1..5."""
  lines = [f"### {name}", "", f"[benchmarks/results/{name}.json](results/{name}.json): "
           f"{result['title']}; {result['num_images']} images of {result['dataset']} "
           f"[{result['eval_split']}], model {code(result['zoo'])} (clean accuracy "
           f"{100 * result['clean_accuracy']:.1f} %), reference {result['reference']}.", "",
           f"- command: {code(result['command'])}", machine_line(result),
           f"- frost: {result['frost_textures']}", ""]
  rows = []
  for corruption, by_severity in result["by_corruption"].items():
    severities = [by_severity[s] for s in sorted(by_severity, key=int)]
    pair = lambda key: " ".join(f"{r[key + '_ours']:.1f}/{r[key + '_reference']:.1f}"  # noqa
                                for r in severities)
    drops = " ".join(f"{100 * r['accuracy_drop_ours']:.0f}/{100 * r['accuracy_drop_reference']:.0f}"
                     for r in severities)
    same = " ".join(f"{r['psnr_ours_vs_reference']:.0f}" for r in severities)
    rows.append([code(corruption), pair("psnr_vs_clean"), drops, same])
  lines.append(table(["corruption", "PSNR vs clean (dB), ours/reference, severity 1..5",
                      "accuracy drop (points), ours/reference", "PSNR ours vs reference"],
                     rows))
  drop = result["mean_accuracy_drop"]
  lines.append(f"Mean accuracy drop over the 75: ours {100 * drop['ours']:.1f}, reference "
               f"{100 * drop['reference']:.1f} points. Where the formulas differ: "
               + "; ".join(f"{k}: {v}" for k, v in result["reference_differences"].items())
               + ".")
  return "\n".join(lines) + "\n"


def render_corruptions(name: str, result: Json) -> str:
  """benchmarks/corruptions.py's file: images/s of the whole suite and per corruption."""
  lines = [f"### {name}", "", f"[benchmarks/results/{name}.json](results/{name}.json): "
           f"15 corruptions x 5 severities on {result['images']}, frost: "
           f"{result['frost_textures']}.", "", f"- command: {code(result['command'])}",
           machine_line(result), ""]
  reference = result["reference"]
  sides = [(f"ours, {table_name} constants", side) for table_name, side in result["ours"].items()]
  if "by_corruption" in reference:
    sides.append((f"imagecorruptions ({reference['constants']})", reference))
  header = ["corruption"] + [label for label, _ in sides]
  rows = []
  for corruption in dict.fromkeys(k.split("/")[0] for k in sides[0][1]["by_corruption"]):
    cells = []
    for _, side in sides:
      speeds = [v["images_per_second"] for k, v in side["by_corruption"].items()
                if k.split("/")[0] == corruption]
      cells.append(f"{sum(speeds) / len(speeds):,.0f}")
    rows.append([code(corruption)] + cells)
  rows.append(["**whole suite**"] + [f"**{side['images_per_second']:,.0f}**" for _, side in sides])
  lines.append("Images per second (mean over severities; the suite: images x 75 / seconds):")
  lines.append("")
  lines.append(table(header, rows))
  if "speedup_same_constants" in result:
    rounds = result.get("rounds", [])
    measured = (f"median of {len(rounds)} rounds back to back: " + ", ".join(
        f"{r['speedup']}x at load {r['load_average'][0]:.1f}" for r in rounds) + "; "
                if rounds else "")
    lines.append(f"Ours over the reference with the same (ImageNet-C) constants: "
                 f"{result['speedup_same_constants']}x ({measured}reference: "
                 f"{reference.get('note', 'all images')}).")
  return "\n".join(lines) + "\n"


def benchmark_kind(result: Json) -> str:
  if "by_corruption" in result and "reference_differences" in result:
    return "corruption_reference"
  if "ours" in result and "frost_textures" in result:
    return "corruptions"
  if _is_stress(result):
    return "onednn_stress"
  if "by_allocator" in result:
    return "augment"
  if "sizes" in result and "dm_pix" in result:
    return "augment_dm_pix"
  if "throughput" in result and "rss" in result:
    return "pseudo_label"
  if "runs" in result and "definition" in result:
    return "ssl_step"
  if "step" in result and "settings" in result:
    return "train_step"
  if "option_sets" in result and "over_baseline" in result:
    return "xla_flags"
  if "turns" in result and "median_images_per_s" in result and "ratios" in result:
    return "concurrent_runs"
  if "builds" in result and "over_baseline" in result:
    return "onednn_builds"
  if "release_rates" in result and "over_baseline" in result:
    return "tcmalloc_release"
  if "workloads" in result and all("ours_over_flax" in w for w in result["workloads"].values()):
    return "batch_norm"
  if _remat_models(result) and "settings" in result:
    return "remat_memory"
  return "generic"


BENCHMARK_RENDERERS: dict[str, Callable[[str, Json], str]] = {
    "augment": render_augment, "pseudo_label": render_pseudo_label,
    "train_step": render_train_step, "onednn_stress": render_onednn_stress,
    "augment_dm_pix": render_augment_dm_pix, "corruptions": render_corruptions,
    "ssl_step": render_ssl_step, "xla_flags": render_xla_flags,
    "onednn_builds": render_onednn_builds, "tcmalloc_release": render_tcmalloc_release,
    "batch_norm": render_batch_norm, "remat_memory": render_remat_memory,
    "corruption_reference": render_corruption_reference,
    "concurrent_runs": render_concurrent_runs, "generic": render_generic}


def render_speed(results: dict[str, Json]) -> str:
  rows = []
  for name, result in sorted(results.items()):
    if benchmark_kind(result) == "onednn_stress":
      commands = sorted({entry["command"] for entry in result.values()})
      rows.append([f"[{name}](#{name})", ", ".join(code(c) for c in commands),
                   machine_summary(result), _stress_summary(result)])
      continue
    targets = {}
    for scope, holder in ([("", result)] + [(f"{k}: ", v) for k, v in
                                            result.get("by_allocator", {}).items()]):
      for key, target in (holder.get("targets") or {}).items():
        targets[f"{scope}{key}"] = target
    if targets:
      summary = "; ".join(f"{k} -> {v['value']} ({target_state(v['met'])})"
                          for k, v in targets.items())
    elif benchmark_kind(result) != "pseudo_label":
      summary = "see its table"
    else:
      speed = result["throughput"]
      summary = (f"whole pass {speed['whole_over_bare']:.2f}x the bare forward; pass adds "
                 + " / ".join(f"{r['pass_adds_mib']:.1f} MiB at {r['pool_size']:,}"
                              for r in result["rss"]))
    rows.append([f"[{name}](#{name})", code(result.get("command", "")),
                 machine_summary(result), summary])
  return table(["benchmark", "command", "machine",
                "result (targets as the benchmark defines them)"], rows)


# --------------------------------------------------------------------------
# Blocks.

def load_json_dir(root: pathlib.Path, folder: str) -> dict[str, Json]:
  return {path.stem: json.loads(path.read_text(encoding="utf-8"))
          for path in sorted((root / folder).glob("*.json"))}


class Sources:
  """The JSON files the blocks are rendered from."""

  def __init__(self, root: pathlib.Path):
    self.reports = load_json_dir(root, REPORTS_DIR)
    self.benchmarks = load_json_dir(root, BENCHMARKS_DIR)
    self.zoo = {path.parent.name: json.loads(path.read_text(encoding="utf-8"))
                for path in sorted((root / ZOO_DIR).glob("*/card.json"))}

  def render(self, name: str) -> str:
    """The contents of block `name`, ending in one newline."""
    return self._render(name).rstrip("\n") + "\n"

  def _render(self, name: str) -> str:
    kind, _, arg = name.partition(":")
    if kind == "results" and not arg:
      return render_results(self.reports)
    if kind == "speed" and not arg:
      return render_speed(self.benchmarks)
    if kind == "zoo" and not arg:
      return render_zoo(self.zoo)
    try:
      if kind == "report" and arg in self.reports:
        report = self.reports[arg]
        return REPORT_RENDERERS[kind_of(report)](arg, report)
      if kind == "benchmark" and arg in self.benchmarks:
        result = self.benchmarks[arg]
        return BENCHMARK_RENDERERS[benchmark_kind(result)](arg, result)
    except KeyError as error:
      raise ValueError(f"block {name!r}: its JSON file has no field {error.args[0]!r} that "
                       "its renderer needs") from error
    raise KeyError(f"unknown generated block {name!r} (or its JSON file is missing)")


def regenerate(text: str, sources: Sources) -> tuple[str, list[str]]:
  """`text` with every block re-rendered, and the names of the blocks in it."""
  names = []

  def replace(match: re.Match) -> str:
    names.append(match.group("name"))
    return match.group(1) + sources.render(match.group("name")) + match.group(4)

  return BLOCK.sub(replace, text), names


def check(root: pathlib.Path = REPO_ROOT, write: bool = False) -> list[str]:
  """Differences between the docs under `root` and what the JSON files give (rewriting the
  docs first when `write`); [] when they agree."""
  sources = Sources(root)
  problems, used = [], set()
  for relative in DOC_FILES:
    path = root / relative
    if not path.exists():
      problems.append(f"{relative}: missing")
      continue
    text = path.read_text(encoding="utf-8")
    try:
      new, names = regenerate(text, sources)
    except (KeyError, ValueError) as error:
      problems.append(f"{relative}: {error.args[0]}")
      continue
    used.update(names)
    unpaired = len(MARKER.findall(text)) - 2 * len(names)
    if unpaired:
      problems.append(f"{relative}: {unpaired} generated-block marker(s) without their pair "
                      "(each `<!-- generated:NAME -->` ends at `<!-- end generated:NAME -->`)")
    if new == text:
      continue
    if write:
      path.write_text(new, encoding="utf-8")
      continue
    diff = difflib.unified_diff(text.splitlines(), new.splitlines(), f"{relative} (committed)",
                                f"{relative} (generated)", lineterm="", n=0)
    problems.append(f"{relative}: generated blocks differ from the JSON files:\n"
                    + "\n".join(list(diff)[:40]))
  for folder, names, kind in ((REPORTS_DIR, sources.reports, "report"),
                              (BENCHMARKS_DIR, sources.benchmarks, "benchmark")):
    for name in names:
      if f"{kind}:{name}" not in used:
        problems.append(f"{folder}/{name}.json is in no generated block: add "
                        f"`<!-- generated:{kind}:{name} -->` to a doc, or delete the file")
  return problems


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.docs",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--check", action="store_true",
                      help="change nothing; exit 1 listing the blocks that differ")
  parser.add_argument("--root", default=str(REPO_ROOT), help="repository root")
  args = parser.parse_args(argv)
  problems = check(pathlib.Path(args.root), write=not args.check)
  for problem in problems:
    print(problem, file=sys.stderr)
  if not problems and not args.check:
    print("generated blocks rewritten from the JSON files: " + ", ".join(DOC_FILES))
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
