"""The pseudo-label shard store: file format, manifests, fingerprints, reading and
re-tempering (see effcv_jax/pseudo_label/__init__.py for the layout and the temperature).

A pass writes, per process p of n, one part per shard (`shard_path`) and, last, a
manifest (`manifest_path`); every file is written to `<name>.tmp` and renamed, so a file
that exists is complete. `check_out_dir` finds the parts a rerun may keep and refuses
those of another pass; `load_pseudo_labels` merges the parts of a finished pass.
"""

import glob
import hashlib
import json
import os
import re
from typing import Any, Mapping

import jax
import numpy as np

from effcv_jax import files
from effcv_jax.data.sources import Source
from effcv_jax.errors import FileFormatError

FORMAT_VERSION = 1
STORE_KINDS = ("soft", "topk")
FLOAT16_MIN = float(np.finfo(np.float16).min)    # -65504: log(0) is stored as this
_FINGERPRINT_LEAVES = 4


# --------------------------------------------------------------------------
# File names and atomic writes.


def part_suffix(process_index: int, process_count: int) -> str:
  """'p{index}of{count}': the part of a shard (or manifest) one process writes."""
  return f"p{process_index}of{process_count}"


def shard_path(out_dir: str, shard: int, process_index: int, process_count: int) -> str:
  return os.path.join(out_dir, f"shard_{shard:05d}.{part_suffix(process_index, process_count)}.npz")


def manifest_path(out_dir: str, process_index: int, process_count: int) -> str:
  return os.path.join(out_dir, f"manifest.{part_suffix(process_index, process_count)}.json")


# --------------------------------------------------------------------------
# Fingerprints: guards against resuming with another teacher or pool.


def teacher_fingerprint(variables: Any) -> str:
  """16 hex digits from the tree structure, shapes, dtypes and the values of a few leaves.

  The values of `_FINGERPRINT_LEAVES` leaves evenly spaced in flattening order
  (first and last included) are hashed: any training step changes them all. A
  guard against accidents, not a cryptographic identity.
  """
  leaves = jax.tree_util.tree_leaves_with_path(variables)
  digest = hashlib.sha256()
  for path, leaf in leaves:
    digest.update(f"{jax.tree_util.keystr(path)}:{np.shape(leaf)}:{leaf.dtype};".encode())
  picks = np.unique(np.linspace(0, len(leaves) - 1, min(_FINGERPRINT_LEAVES, len(leaves))).round())
  for i in picks.astype(int):
    digest.update(np.ascontiguousarray(jax.device_get(leaves[i][1])).tobytes())
  return digest.hexdigest()[:16]


def pool_fingerprint(pool_source: Source) -> str:
  """16 hex digits from the pool's length and its first, middle and last images."""
  digest = hashlib.sha256(str(len(pool_source)).encode())
  for i in sorted({0, len(pool_source) // 2, len(pool_source) - 1}):
    digest.update(np.ascontiguousarray(pool_source[i]["image"]).tobytes())
  return digest.hexdigest()[:16]


# --------------------------------------------------------------------------
# Shards and process slices.


def shard_ranges(pool_size: int, shard_size: int) -> list[tuple[int, int]]:
  """[(start, stop), ...]: contiguous index ranges of `shard_size` (the last one shorter)."""
  return [(start, min(start + shard_size, pool_size)) for start in range(0, pool_size, shard_size)]


def process_indices(start: int, stop: int, process_index: int, process_count: int) -> np.ndarray:
  """int64 (m,): the pool indices process `process_index` labels in shard [start, stop)."""
  return np.arange(start, stop, dtype=np.int64)[process_index::process_count]


# --------------------------------------------------------------------------
# Resuming.


SHARD_REMEDY = ("Delete it and rerun the same command (the Noisy Student run or label_pool "
                "with the same arguments): the pass labels only the missing shards again.")
MANIFEST_REMEDY = ("Delete it and rerun the same command (the Noisy Student run or label_pool "
                   "with the same arguments): the pass keeps its complete shards and writes "
                   "the manifest again.")


def read_shard(npz_path: str) -> dict[str, np.ndarray]:
  """Every array of a shard part file (FileFormatError if it is truncated or corrupt)."""
  arrays, _ = files.read_npz(npz_path, SHARD_REMEDY)
  if "spec" not in arrays:
    raise FileFormatError(f"{os.path.abspath(npz_path)}: not a pseudo-label shard (no 'spec' "
                          f"array). {SHARD_REMEDY}")
  return arrays


def read_spec(npz_path: str) -> dict[str, Any]:
  """The pass settings a shard part file was written with."""
  spec, _ = files.read_npz(npz_path, SHARD_REMEDY, keys=("spec",))
  if "spec" not in spec:
    raise FileFormatError(f"{os.path.abspath(npz_path)}: not a pseudo-label shard (no 'spec' "
                          f"array). {SHARD_REMEDY}")
  return json.loads(str(spec["spec"]))


def read_manifest(path: str) -> dict[str, Any]:
  """The manifest file `path` (FileFormatError if it is not complete JSON)."""
  with open(path) as f:
    text = f.read()
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise FileFormatError(f"{os.path.abspath(path)}: not a complete JSON manifest ({e}). "
                          f"{MANIFEST_REMEDY}") from e


def check_out_dir(out_dir: str, spec: dict[str, Any], process_index: int,
                   process_count: int) -> np.ndarray:
  """bool (S,): shards whose part this process has already written with the same spec.

  Raises ValueError if out_dir holds parts or manifests of a different pass.
  """
  for path in glob.glob(os.path.join(out_dir, "manifest.*.json")):
    other = read_manifest(path)["spec"]
    if other != spec:
      changed = sorted(k for k in spec if other.get(k) != spec[k])
      raise ValueError(f"{out_dir} holds pseudo-labels of another pass ({path} differs in "
                       f"{changed}); use another out_dir or delete it")
  suffix = part_suffix(process_index, process_count)
  foreign = [p for p in glob.glob(os.path.join(out_dir, "shard_*.npz"))
             if not re.search(rf"\.p\d+of{process_count}\.npz$", p)]
  if foreign:
    raise ValueError(f"{out_dir} holds parts written by another process count "
                     f"(e.g. {os.path.basename(foreign[0])}); use another out_dir")
  done = np.zeros(spec["num_shards"], bool)
  for shard in range(spec["num_shards"]):
    path = shard_path(out_dir, shard, process_index, process_count)
    if os.path.exists(path):
      if read_spec(path) != spec:
        raise ValueError(f"{path} was written by another pass (teacher, pool or settings "
                         f"differ); use another out_dir or delete it")
      done[shard] = True
  for tmp in glob.glob(os.path.join(out_dir, f"*.{suffix}.*.tmp")):
    os.remove(tmp)    # left by an interrupted write
  return done


def describe_shards(out_dir: str) -> str:
  """One phrase naming the shard parts already on disk in `out_dir` (for the watchdog);
  reads the directory listing only."""
  try:
    parts = sorted(n for n in os.listdir(out_dir) if re.fullmatch(r"shard_\d+\.p\d+of\d+\.npz", n))
  except OSError:
    parts = []
  if not parts:
    return f"no pseudo-label shard written yet in {out_dir}"
  return (f"{len(parts)} pseudo-label shard parts written in {out_dir} (last {parts[-1]}); "
          "a rerun keeps them")


# --------------------------------------------------------------------------
# Reading.


def read_manifests(out_dir: str) -> list[dict[str, Any]]:
  """The manifests of every process of one complete pass; raises if any is missing."""
  paths = sorted(glob.glob(os.path.join(out_dir, "manifest.*.json")))
  if not paths:
    raise FileNotFoundError(f"no manifest in {out_dir}: the labelling pass has not finished "
                            "(rerun label_pool with the same arguments to resume)")
  manifests = []
  for path in paths:
    manifests.append(read_manifest(path))
  spec = manifests[0]["spec"]
  if any(m["spec"] != spec for m in manifests):
    raise ValueError(f"{out_dir} mixes manifests of different passes")
  found = sorted(m["process_index"] for m in manifests)
  if found != list(range(spec["process_count"])):
    raise FileNotFoundError(f"{out_dir}: manifests of processes {found} of "
                            f"{spec['process_count']}; the pass has not finished on every process")
  return manifests


def _dense_log_probs(part: Mapping[str, np.ndarray], num_classes: int) -> np.ndarray:
  """float32 (m, K) log-probabilities of a part; -inf outside the stored top k."""
  if "log_probs" in part:
    return part["log_probs"].astype(np.float32)
  dense = np.full((len(part["indices"]), num_classes), -np.inf, np.float32)
  np.put_along_axis(dense, part["topk_classes"], part["topk_log_probs"].astype(np.float32), axis=1)
  return dense


def softmax(logits: np.ndarray) -> np.ndarray:
  """float32 softmax over the last axis (-inf entries get 0)."""
  shifted = logits - np.max(logits, axis=-1, keepdims=True)
  exp = np.exp(shifted)
  return (exp / np.sum(exp, axis=-1, keepdims=True)).astype(np.float32)


def retemper(log_probs: np.ndarray, from_temperature: float, to_temperature: float) -> np.ndarray:
  """Probabilities (N, K) at `to_temperature` from log-probabilities (N, K) at `from_temperature`.

  softmax(log p_T * T / T') == softmax(logits / T'); also renormalises rounding.
  """
  return softmax(log_probs * np.float32(from_temperature / to_temperature))


def _merged_pass(out_dir: str) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray]:
  """(spec, indices int64 (N,), log_probs float32 (N, K), stored confidence float32 (N,)) of a
  finished pass, every part merged and sorted by pool index."""
  manifests = read_manifests(out_dir)
  spec = manifests[0]["spec"]
  parts = []
  for manifest in manifests:
    for entry in manifest["shards"]:
      arrays = read_shard(os.path.join(out_dir, entry["file"]))
      parts.append({k: v for k, v in arrays.items() if k != "spec"})
  indices = np.concatenate([p["indices"] for p in parts])
  order = np.argsort(indices, kind="stable")
  indices = indices[order]
  if not np.array_equal(indices, np.arange(spec["pool_size"])):
    raise ValueError(f"{out_dir}: the parts do not cover the pool of {spec['pool_size']} "
                     f"examples exactly once ({len(indices)} labels)")
  log_probs = np.concatenate([_dense_log_probs(p, spec["num_classes"]) for p in parts])[order]
  confidence = np.concatenate([p["confidence"] for p in parts])[order]
  return spec, indices, log_probs, confidence


def load_teacher_logits(out_dir: str) -> np.ndarray:
  """float32 (N, K): the teacher's logits of a finished store='soft' pass without TTA, up to
  a per-example constant (pass temperature x stored log-probabilities), in pool order; with
  TTA the log of the mean over views, scaled the same way. Softmax and temperature
  scaling of them equal those of the true logits."""
  spec, _, log_probs, _ = _merged_pass(out_dir)
  if spec["store"] != "soft":
    raise ValueError(f"{out_dir}: a store={spec['store']!r} pass keeps only the top "
                     f"{spec['top_k']} classes; the teacher's logits need store='soft'")
  return log_probs * np.float32(spec["temperature"])


def load_pseudo_labels(out_dir: str, temperature: float | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Merges all parts of a finished pass.

  Args:
    temperature: the temperature of the returned labels; None: the pass's.
  Returns:
    indices int64 (N,) (= arange(pool_size)), probs float32 (N, K) summing to 1,
    confidence float32 (N,): the teacher's max probability; at the pass
    temperature the exact stored value, at another the max of `probs`.
  """
  if temperature is not None and not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  spec, indices, log_probs, confidence = _merged_pass(out_dir)
  pass_temperature = spec["temperature"]
  probs = retemper(log_probs, pass_temperature, temperature or pass_temperature)
  if temperature is not None and temperature != pass_temperature:
    confidence = probs.max(axis=-1)
  return indices, probs, confidence.astype(np.float32)
