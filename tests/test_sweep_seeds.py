"""Sweeps over seeds and trainers (effcv_jax/sweeps.py, experiments/sweep.py): variants x
seeds, the semi-supervised trainer, seed groups with error bars, groups of other reports."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from PIL import Image

from configs import (augment_methods, digits_tiny, ssl_cifar10, ssl_cifar10_4000_sweep,
                     ssl_fashion_mnist_1000, ssl_fashion_mnist_1000_sweep)
from effcv_jax import config_utils, reports, sweeps
from effcv_jax.augment import spec as augment_spec
from effcv_jax.errors import ConfigError, MissingFileError


def _sweep(**fields):
  sweep = ml_collections.ConfigDict(dict(
      base=digits_tiny.get_config(), title="t",
      variants=ml_collections.ConfigDict({"a": {}, "b": {"optimizer.lr": 0.5}},
                                         sort_keys=False, allow_dotted_keys=True)))
  sweep.update(fields)
  return sweep


def test_seeds_repeat_each_variant_with_its_overrides():
  expanded, groups = sweeps.with_seeds(_sweep(), [3, 4])
  assert groups == {"a": ["a_seed_3", "a_seed_4"], "b": ["b_seed_3", "b_seed_4"]}
  assert dict(expanded.variants["b_seed_4"]) == {"optimizer.lr": 0.5, "seed": 4}
  configs = sweeps.variant_configs(expanded)
  assert (configs["b_seed_4"].seed, configs["b_seed_4"].optimizer.lr) == (4, 0.5)
  # The config's field, per variant; a variant it does not name runs at the base seed.
  expanded, groups = sweeps.with_seeds(_sweep(seeds={"b": [0, 1]}))
  assert groups == {"a": ["a_seed_0"], "b": ["b_seed_0", "b_seed_1"]}
  assert sweeps.with_seeds(_sweep(seeds={"b": [0, 1]}), [7])[1]["b"] == ["b_seed_7"]  # flag wins
  unchanged, groups = sweeps.with_seeds(_sweep())
  assert groups == {} and list(unchanged.variants) == ["a", "b"]
  with pytest.raises(ConfigError, match="variants the sweep does not have: \\['c'\\]"):
    sweeps.with_seeds(_sweep(seeds={"c": [0]}))


@pytest.mark.parametrize("sweep_config, algorithm_config, three_seeds", [
    (ssl_fashion_mnist_1000_sweep, ssl_fashion_mnist_1000.get_config,
     ("supervised", "fixmatch", "softmatch", "softmatch_24k")),
    (ssl_cifar10_4000_sweep, lambda name: ssl_cifar10.get_config(f"4000,cpu,{name}"), ())])
def test_ssl_sweep_variants_are_exactly_the_algorithm_configs(sweep_config, algorithm_config,
                                                              three_seeds):
  sweep, groups = sweeps.with_seeds(sweep_config.get_config())
  configs = sweeps.variant_configs(sweep)   # each also passes preflight
  for algorithm in sweep_config.ALGORITHMS:
    assert (config_utils.flatten(configs[f"{algorithm}_seed_0"])
            == config_utils.flatten(algorithm_config(algorithm))), algorithm
  assert all(len(groups[name]) == (3 if name in three_seeds else 1) for name in groups)
  for name, (algorithm, steps) in getattr(sweep_config, "LONGER", {}).items():
    longer = configs[f"{name}_seed_0"]
    assert (longer.ssl.algorithm, longer.num_steps, longer.eval_every) == (
        algorithm, steps, steps // 8)
    assert (config_utils.differences(algorithm_config(algorithm), longer)
            == {"num_steps": steps, "eval_every": steps // 8})
  # The included Noisy Student groups name reports and groups (or runs) that exist.
  included = reports.included_groups(dict(sweep.include_groups))
  assert all(group["num_seeds"] >= 1 for group in included.values())
  assert "noisy_student" in included


def test_config_differences_need_the_same_keys():
  with pytest.raises(KeyError, match="different keys"):
    config_utils.differences(digits_tiny.get_config(), ml_collections.ConfigDict({"x": 1}))


@pytest.mark.parametrize("task", augment_methods.TASKS)
def test_augment_methods_sweep_runs_every_method_three_times_on_its_task(task):
  """configs/augment_methods.py: every method (each mixing op, the policies, GAN samples)
  as one variant of the task's base run at seeds 0, 1, 2; every run's config passes the
  preflight checks (its augmentation spec parses)."""
  expanded, groups = sweeps.with_seeds(augment_methods.get_config(task))
  configs = sweeps.variant_configs(expanded)
  methods = {"none", "flip_crop", "randaugment", "fast_autoaugment", "pba", "gan",
             *augment_methods.MIXING}
  methods |= {"pba_full"} if task == "fashion_mnist" else {
      "autoaugment", "alexnet_flip_crop", "vgg11_bn_flip_crop"}
  assert set(groups) == methods
  assert all(members == [f"{m}_seed_{s}" for s in (0, 1, 2)] for m, members in groups.items())
  base = augment_methods.get_config(task).base
  assert configs["flip_crop_seed_1"].augment == base.augment
  assert configs["cutmix_seed_0"].augment == f"{base.augment}|cutmix(alpha=1.0)"
  assert configs["gan_seed_2"].gan_augment.ratio == augment_methods.GAN_RATIO
  assert {c.num_steps for c in configs.values()} == {base.num_steps}
  # Fast AutoAugment's policy is the one searched on the task's own labels.
  faa = augment_methods.policy_search_eval.report(augment_methods.FAST_AUTOAUGMENT_REPORTS[task])
  assert f"--config=configs/fast_autoaugment_{task}_" in faa["command"]
  assert configs["fast_autoaugment_seed_2"].augment == f"{faa['policy']}|{base.augment}"
  # PBA's schedule, searched on the task's labels, is stretched from the search to the run.
  searched = augment_methods.policy_search_eval.report(augment_methods.PBA_REPORTS[task])
  first_change = augment_spec.parse_op(searched["schedule_spec"])[1]["schedule"][1][0]
  stretched = augment_spec.parse_op(configs["pba_seed_1"].augment.split("|")[0])[1]["schedule"]
  assert stretched[1][0] == round(first_change * base.num_steps / searched["num_steps"])
  if task == "fashion_mnist":   # the full-length PBA search's schedule is used as found
    found = augment_methods.policy_search_eval.report(augment_methods.PBA_FULL_REPORT)
    assert configs["pba_full_seed_0"].augment == f"{found['schedule_spec']}|{base.augment}"
  # Every augmentation traces on the task's images (PuzzleMix's blocks and cells must divide
  # them), with a stand-in for the model's saliency.
  shape = {"fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}[task]
  images = jax.ShapeDtypeStruct((8, *shape), jnp.float32)
  labels = jax.ShapeDtypeStruct((8, base.num_classes), jnp.float32)
  for spec in sorted({c.augment for c in configs.values()}):
    pipeline = augment_spec.build(spec)
    out = jax.eval_shape(lambda x, y, p=pipeline: p(
        jax.random.PRNGKey(0), x, y, saliency_fn=lambda i, _: jnp.ones(i.shape[:3]),
        step=jnp.int32(0)), images, labels)
    assert out[0].shape == images.shape, spec


def test_ssl_trainer_seeds_and_report_with_error_bars(tmp_path):
  base = digits_tiny.get_config()
  base.num_labelled, base.batch_size, base.num_steps = 50, 8, 2
  base.log_every = base.checkpoint_every = base.eval_every = 2
  base.ssl.update(dict(algorithm="fixmatch", mu=2, weak_augment="random_crop(padding=1)",
                       strong_augment="random_crop(padding=1)|cutout(size=4)"))
  other = tmp_path / "other.json"
  other.write_text(json.dumps({"seed_groups": {"g": {
      "mean": 0.5, "std": 0.1, "num_seeds": 2, "variants": {"x": 0.4, "y": 0.6},
      "missing": []}}}))
  sweep = _sweep(base=base, trainer="ssl", include_groups={"elsewhere": f"{other}:g"})
  sweep.variants = ml_collections.ConfigDict({"fixmatch": {}}, allow_dotted_keys=True)
  sweep, groups = sweeps.with_seeds(sweep, [0, 1])
  rows = sweeps.run_variants(sweep, str(tmp_path / "runs"), None, None, "cmd")
  assert list(rows) == ["fixmatch_seed_0", "fixmatch_seed_1"]
  assert all(row["images_seen"] == 2 * 8 * (1 + 2) and row["steps_timed"] == 2
             for row in rows.values())
  # Each row carries its run's evaluations (metrics.jsonl), the last one its accuracy.
  assert all(row["eval_curve"] == [[2, row["accuracy"]]] for row in rows.values())
  saved = json.loads((tmp_path / "runs" / "fixmatch_seed_1" / "config.json").read_text())
  assert saved["seed"] == 1
  summary = {**reports.seed_group_summary(groups, rows),
             **reports.included_groups(dict(sweep.include_groups))}
  assert summary["fixmatch"]["num_seeds"] == 2 and summary["elsewhere"]["source"] == f"{other}:g"
  reports.write_bar_report(str(tmp_path / "r"), "t", rows, extra={"seed_groups": summary})
  written = json.loads((tmp_path / "r.json").read_text())
  assert written["seed_groups"]["elsewhere"]["mean"] == 0.5
  with Image.open(tmp_path / "r.png") as image:  # one bar per group: 0.45 in each + 1.3 in
    assert abs(image.size[1] - (0.45 * 2 + 1.3) * 120) <= 1
  # A finished run is reused, not retrained.
  again = sweeps.run_variants(sweep, str(tmp_path / "runs"), None, [], "cmd")
  assert again.keys() == rows.keys()
  # On another machine (no workdirs) the report's rows are kept when they are the same runs;
  # a row whose config changed, or a variant asked to train, is not kept.
  moved = str(tmp_path / "moved")
  kept = sweeps.run_variants(sweep, moved, None, [], "cmd", reported=rows)
  assert kept == {n: {**row, "kept_from_report": True} for n, row in rows.items()}
  changed = sweep.copy_and_resolve_references()
  changed.base.optimizer.lr *= 2
  assert sweeps.run_variants(changed, moved, None, [], "cmd", reported=rows) == {}
  legacy = {n: {k: v for k, v in row.items() if k != "config_sha256"} for n, row in rows.items()}
  assert list(sweeps.run_variants(sweep, moved, None, [], "cmd", reported=legacy)) == list(rows)


def test_included_group_names_a_missing_report_or_group(tmp_path):
  with pytest.raises(MissingFileError, match="no report at"):
    reports.included_groups({"x": f"{tmp_path}/none.json:g"})
  (tmp_path / "r.json").write_text(json.dumps({"seed_groups": {"g": {}},
                                              "variants": {"v": {"accuracy": 0.5}}}))
  with pytest.raises(ConfigError, match="has no seed group or variant 'h'; its groups: "
                     "\\['g'\\], its variants: \\['v'\\]"):
    reports.included_groups({"x": f"{tmp_path}/r.json:h"})


def test_included_variant_is_a_group_of_one_seed(tmp_path):
  (tmp_path / "r.json").write_text(json.dumps({"variants": {
      "teacher": {"accuracy": 0.75}, "student_1": {"accuracy": 0.8125}}}))
  group = reports.included_groups({"ns": f"{tmp_path}/r.json:student_1"})["ns"]
  assert group == {"mean": 0.8125, "std": None, "num_seeds": 1,
                   "variants": {"student_1": 0.8125}, "missing": [],
                   "source": f"{tmp_path}/r.json:student_1"}
