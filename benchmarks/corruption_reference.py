"""Our corruptions (effcv_jax/robustness/corruptions.py) against the `imagecorruptions`
package on the same images: PSNR and the accuracy drop of one fixed model.

  PYTHONPATH=DIR python -m benchmarks.corruption_reference [--zoo=cifar10_4000_teacher]
      [--reference_images=300]
      [--reference_report=benchmarks/results/corruption_reference.json]

DIR holds imagecorruptions and its dependencies, kept out of the project's environment
(it pulls in opencv-python and scikit-image):
  pip install --target DIR imagecorruptions opencv-python-headless scikit-image --no-deps
  pip install --target DIR imageio lazy_loader networkx tifffile --no-deps
The package knows only the ImageNet-C constants, so both sides use them (ours with
constants='imagenet') on the model's own evaluation images (the zoo entry's evaluation
split, as experiments/robustness.py evaluates it; --reference_images spread evenly over it).
Per corruption and severity the JSON holds: the mean per-image PSNR of ours against the
reference's image (high only where both are deterministic: the random ones draw different
noise), the mean PSNR of each against the clean image (like for like for every corruption),
and the model's top-1 accuracy and its drop from clean under each. Our images are
truncated to uint8 as the reference's np.uint8 does. The reference runs with np.random
seeded per (seed, corruption, severity, image index), and two compatibility patches
(effcv_jax/robustness/corruption_reference.py).
"""

import json
import time

import numpy as np
from absl import app, flags

from benchmarks.machine import command_line, machine_info
from effcv_jax import sharding, zoo
from effcv_jax import task as task_lib
from effcv_jax.data import run_data as run_data_lib
from effcv_jax.data import sources
from effcv_jax.robustness import corruptions
from effcv_jax.robustness.corruption_reference import (REFERENCE_DIFFERENCES, reference_corrupt,
                                                       reference_module)
from experiments import cli, evaluate, robustness

_NUM_IMAGES = flags.DEFINE_integer("reference_images", 300, "Images, spread evenly over the split.")
_SEED = flags.DEFINE_integer("reference_seed", 0, "Seed of both sides' random draws.")
_REPORT = flags.DEFINE_string("reference_report",
                              "benchmarks/results/corruption_reference.json",
                              "Where to write the JSON.")

def _accuracy(task, variables, images, labels, mesh) -> float:
  logits, kept = robustness.collect_logits(task, variables, sources.ArraySource(images, labels),
                                           sharding.padded_batch_size(100, mesh), mesh)
  return float(np.mean(logits.argmax(-1) == kept))


def main(argv):
  del argv
  reference = reference_module()
  name = cli.zoo() or "cifar10_4000_teacher"
  entry = zoo.load(name)
  config = evaluate.with_eval_settings(entry.config, None, None, None)
  task, _ = task_lib.build_task(config)
  mesh = sharding.make_mesh()
  variables = sharding.replicate(entry.variables, mesh)
  source = run_data_lib.load_eval_source(config, config.get("eval_dataset", ""),
                                         config.eval_split, cli.data_dir())
  indices = robustness.attacked_indices(len(source), min(_NUM_IMAGES.value, len(source)))
  images = np.stack([source[int(i)]["image"] for i in indices]).astype(np.uint8)
  labels = np.array([source[int(i)]["label"] for i in indices], np.int32)
  clean = _accuracy(task, variables, images, labels, mesh)
  rows, started = {}, time.perf_counter()
  for corruption in corruptions.CORRUPTIONS:
    rows[corruption] = {}
    for severity in corruptions.SEVERITIES:
      ours = np.floor(np.asarray(corruptions.corrupt(
          images, corruption, severity, seed=_SEED.value, indices=indices,
          constants="imagenet"))).astype(np.uint8)
      theirs = reference_corrupt(reference, images, corruption, severity, _SEED.value, indices)
      accuracy_ours = _accuracy(task, variables, ours, labels, mesh)
      accuracy_theirs = _accuracy(task, variables, theirs, labels, mesh)
      rows[corruption][str(severity)] = {
          "psnr_ours_vs_reference": round(float(np.mean(np.minimum(
              corruptions.psnr(ours, theirs), 99.0))), 2),
          "psnr_vs_clean_ours": round(float(np.mean(np.minimum(
              corruptions.psnr(ours, images), 99.0))), 2),
          "psnr_vs_clean_reference": round(float(np.mean(np.minimum(
              corruptions.psnr(theirs, images), 99.0))), 2),
          "accuracy_ours": round(accuracy_ours, 4),
          "accuracy_reference": round(accuracy_theirs, 4),
          "accuracy_drop_ours": round(clean - accuracy_ours, 4),
          "accuracy_drop_reference": round(clean - accuracy_theirs, 4)}
      print(corruption, severity, json.dumps(rows[corruption][str(severity)]), flush=True)
  mean_drop = {side: round(float(np.mean([r[f"accuracy_drop_{side}"] for c in rows.values()
                                          for r in c.values()])), 4)
               for side in ("ours", "reference")}
  report = {
      "title": "Our corruptions against imagecorruptions (ImageNet-C constants, same images)",
      "command": command_line("benchmarks.corruption_reference"),
      "environment": "PYTHONPATH=DIR: imagecorruptions installed apart (see the docstring)",
      "machine": machine_info(), "reference": f"imagecorruptions {_version('imagecorruptions')}",
      "reference_patches": ["np.float_ = np.float64 (fog)", "skimage.filters.gaussian "
                            "multichannel=True -> channel_axis=-1 (glass_blur)"],
      "zoo": name, "model": config.model, "dataset": config.dataset,
      "eval_split": config.eval_split, "num_images": len(indices), "seed": _SEED.value,
      "constants": "imagenet (both sides)", "frost_textures": corruptions.frost_source(),
      "our_images": "floored to uint8 as the reference's np.uint8",
      "psnr_cap_db": 99.0, "clean_accuracy": round(clean, 4),
      "mean_accuracy_drop": mean_drop, "reference_differences": REFERENCE_DIFFERENCES,
      "seconds": round(time.perf_counter() - started, 1), "by_corruption": rows}
  with open(_REPORT.value, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1)
    f.write("\n")
  print(json.dumps({"clean_accuracy": report["clean_accuracy"], "mean_accuracy_drop": mean_drop}))


def _version(package: str) -> str:
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return "unknown"


if __name__ == "__main__":
  cli.run(main, shared_flags=("data_dir", "zoo"))
