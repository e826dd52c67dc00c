"""Sharded teacher inference, resume, multi-process parts, selection and the labelled source."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_tiny
from effcv_jax import data as data_lib
from effcv_jax import pseudo_label, sharding, train
from effcv_jax import task as task_lib
from effcv_jax.augment import tta

# float16 log-probabilities: a probability p comes back within ~p * 2**-11 (+ renormalisation).
F16_ATOL = 2e-3
BATCH = 64
SHARD = 256        # 1,797 digits -> 8 shards, the last one of 5 examples


@pytest.fixture(scope="module")
def teacher():
  """A cnn_small trained 40 steps on the 8x8 digits (confident, not perfect), and the pool."""
  config = digits_tiny.get_config()
  mesh = sharding.make_mesh(jax.devices()[:1])
  task, state = task_lib.init_task_and_state(config, (8, 8, 1), mesh)
  pool = data_lib.load_source("pkg:digits", "train")
  step = train.jit_train_step(task, mesh)
  batches = data_lib.train_iterator(pool, 32, seed=0)
  for _ in range(40):
    state, _ = step(state, sharding.to_global(next(batches), mesh))
  variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  return task, variables, pool


def _reference_probs(task, variables, images, temperature=1.0):
  """float32 (N, K) softmax(logits / T), computed in one unsharded call."""
  logits = task_lib.predict_logits(task, variables, jnp.asarray(images, jnp.float32))
  return np.asarray(jax.nn.softmax(logits / temperature, axis=-1))


@pytest.fixture(scope="module")
def labelled_8(teacher, tmp_path_factory):
  """The whole pool labelled over the 8 fake devices; (out_dir, loaded labels)."""
  task, variables, pool = teacher
  out_dir = str(tmp_path_factory.mktemp("labels_8"))
  pseudo_label.label_pool(variables, task, pool, out_dir, mesh=sharding.make_mesh(),
                          batch_size=BATCH, shard_size=SHARD)
  return out_dir, pseudo_label.load_pseudo_labels(out_dir)


def test_eight_devices_equal_one_device_and_the_reference(teacher, labelled_8, tmp_path):
  task, variables, pool = teacher
  assert jax.device_count() == 8
  pseudo_label.label_pool(variables, task, pool, str(tmp_path), batch_size=BATCH,
                          shard_size=SHARD, mesh=sharding.make_mesh(jax.devices()[:1]))
  idx_1, probs_1, conf_1 = pseudo_label.load_pseudo_labels(str(tmp_path))
  _, (idx_8, probs_8, conf_8) = labelled_8

  # 1,797 examples: not a multiple of the batch (64) nor of the devices (8); each once.
  np.testing.assert_array_equal(idx_8, np.arange(1797))
  np.testing.assert_array_equal(idx_1, idx_8)
  np.testing.assert_allclose(probs_8, probs_1, atol=F16_ATOL)
  np.testing.assert_array_equal(probs_8.argmax(1), probs_1.argmax(1))
  np.testing.assert_allclose(conf_8, conf_1, rtol=1e-5)
  np.testing.assert_allclose(probs_8.sum(1), 1.0, rtol=1e-6)

  reference = _reference_probs(task, variables, pool.images)
  np.testing.assert_allclose(probs_8, reference, atol=F16_ATOL)
  top2 = np.sort(reference, axis=1)[:, -2:]
  clear = top2[:, 1] - top2[:, 0] > F16_ATOL    # float16 may round a near-tie either way
  assert clear.mean() > 0.99
  np.testing.assert_array_equal(probs_8.argmax(1)[clear], reference.argmax(1)[clear])
  np.testing.assert_allclose(conf_8, reference.max(1), rtol=1e-5)
  accuracy = np.mean(probs_8.argmax(1) == pool.labels)
  assert 0.5 < accuracy < 1.0    # a real, imperfect teacher: labels are informative


def test_part_files_and_manifest(labelled_8):
  out_dir, (_, probs, _) = labelled_8
  names = sorted(os.listdir(out_dir))
  assert names == ["manifest.p0of1.json"] + [f"shard_{s:05d}.p0of1.npz" for s in range(8)]
  with np.load(os.path.join(out_dir, "shard_00007.p0of1.npz")) as part:
    np.testing.assert_array_equal(part["indices"], np.arange(1792, 1797))
    assert part["log_probs"].dtype == np.float16 and part["log_probs"].shape == (5, 10)
    assert part["confidence"].dtype == np.float32
  manifest = pseudo_label.read_manifests(out_dir)[0]
  assert manifest["spec"]["pool_size"] == 1797 and manifest["spec"]["num_classes"] == 10
  assert [s["count"] for s in manifest["shards"]] == [256] * 7 + [5]


@pytest.mark.parametrize("pool_size, batch_size, shard_size", [(13, 8, 5), (3, 16, 100)])
def test_small_odd_pools_label_every_example_once(teacher, tmp_path, pool_size, batch_size,
                                                  shard_size):
  task, variables, pool = teacher
  small = data_lib.Subset(pool, np.arange(100, 100 + pool_size))
  pseudo_label.label_pool(variables, task, small, str(tmp_path), mesh=sharding.make_mesh(),
                          batch_size=batch_size, shard_size=shard_size)
  indices, probs, _ = pseudo_label.load_pseudo_labels(str(tmp_path))
  np.testing.assert_array_equal(indices, np.arange(pool_size))
  reference = _reference_probs(task, variables, pool.images[100:100 + pool_size])
  np.testing.assert_allclose(probs, reference, atol=F16_ATOL)


class _Unlabelled:
  """The images of `source` without labels, as an unlabelled pool would be."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    return {"image": self.source[index]["image"]}


def test_unlabelled_pool(teacher, tmp_path):
  task, variables, pool = teacher
  small = _Unlabelled(data_lib.Subset(pool, np.arange(20)))
  pseudo_label.label_pool(variables, task, small, str(tmp_path), mesh=sharding.make_mesh(),
                          batch_size=8, shard_size=16)
  indices, probs, _ = pseudo_label.load_pseudo_labels(str(tmp_path))
  np.testing.assert_array_equal(indices, np.arange(20))
  np.testing.assert_allclose(probs, _reference_probs(task, variables, pool.images[:20]),
                             atol=F16_ATOL)


class _CountingSource:
  """Records every index read from `source`."""

  def __init__(self, source):
    self.source, self.reads = source, []

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    self.reads.append(int(index))
    return self.source[index]


class _Interrupted(Exception):
  pass


def test_interrupted_pass_resumes_without_relabelling(teacher, labelled_8, tmp_path):
  task, variables, pool = teacher
  out_dir, mesh = str(tmp_path), sharding.make_mesh()
  finished = []

  def stop_after_three(shard):
    finished.append(shard)
    if len(finished) == 3:
      raise _Interrupted

  with pytest.raises(_Interrupted):
    pseudo_label.label_pool(variables, task, pool, out_dir, mesh=mesh, batch_size=BATCH,
                            shard_size=SHARD, on_shard_done=stop_after_three)
  assert sorted(os.listdir(out_dir)) == [f"shard_{s:05d}.p0of1.npz" for s in range(3)]
  with pytest.raises(FileNotFoundError, match="not finished"):
    pseudo_label.load_pseudo_labels(out_dir)
  mtimes = {name: os.stat(os.path.join(out_dir, name)).st_mtime_ns for name in os.listdir(out_dir)}

  counting = _CountingSource(pool)
  resumed = []
  pseudo_label.label_pool(variables, task, counting, out_dir, mesh=mesh, batch_size=BATCH,
                          shard_size=SHARD, on_shard_done=resumed.append)
  assert resumed == [3, 4, 5, 6, 7]
  # Only the unfinished shards [768, 1797) were read, plus index 0 for the pool fingerprint.
  assert set(counting.reads) == set(range(3 * SHARD, 1797)) | {0}
  for name, mtime in mtimes.items():
    assert os.stat(os.path.join(out_dir, name)).st_mtime_ns == mtime
  resumed_labels = pseudo_label.load_pseudo_labels(out_dir)
  for got, want in zip(resumed_labels, labelled_8[1]):
    np.testing.assert_array_equal(got, want)

  # A finished pass rerun does nothing; another teacher refuses to mix its shards in.
  rerun = []
  pseudo_label.label_pool(variables, task, pool, out_dir, mesh=mesh, batch_size=BATCH,
                          shard_size=SHARD, on_shard_done=rerun.append)
  assert rerun == []
  other = jax.tree.map(lambda x: x * 1.01, variables)
  with pytest.raises(ValueError, match="another pass"):
    pseudo_label.label_pool(other, task, pool, out_dir, mesh=mesh, batch_size=BATCH,
                            shard_size=SHARD)
  with pytest.raises(ValueError, match="another pass"):
    pseudo_label.label_pool(variables, task, pool, out_dir, mesh=mesh, batch_size=BATCH,
                            shard_size=SHARD, temperature=2.0)


def test_two_process_parts_union_equals_single_process(teacher, labelled_8, tmp_path):
  task, variables, pool = teacher
  out_dir = str(tmp_path)
  for process_index in (0, 1):
    if process_index == 1:
      with pytest.raises(FileNotFoundError, match="processes \\[0\\] of 2"):
        pseudo_label.load_pseudo_labels(out_dir)
    pseudo_label.label_pool(variables, task, pool, out_dir, mesh=sharding.make_mesh(),
                            batch_size=BATCH, shard_size=SHARD,
                            process_index=process_index, process_count=2)
  for process_index in (0, 1):
    with np.load(pseudo_label.shard_path(out_dir, 7, process_index, 2)) as part:
      np.testing.assert_array_equal(part["indices"], np.arange(1792, 1797)[process_index::2])
  indices, probs, confidence = pseudo_label.load_pseudo_labels(out_dir)
  _, (want_indices, want_probs, want_confidence) = labelled_8
  np.testing.assert_array_equal(indices, want_indices)
  np.testing.assert_allclose(probs, want_probs, atol=F16_ATOL)
  np.testing.assert_array_equal(probs.argmax(1), want_probs.argmax(1))
  np.testing.assert_allclose(confidence, want_confidence, rtol=1e-5)


def _entropy(probs):
  return -np.sum(probs * np.log(np.maximum(probs, 1e-30)), axis=1)


def test_temperature_at_pass_time_equals_temperature_at_load_time(teacher, labelled_8, tmp_path):
  task, variables, pool = teacher
  out_dir, (_, probs_t1, _) = labelled_8
  pseudo_label.label_pool(variables, task, pool, str(tmp_path), mesh=sharding.make_mesh(),
                          batch_size=BATCH, shard_size=SHARD, temperature=2.0)
  _, probs_pass_t2, conf_pass_t2 = pseudo_label.load_pseudo_labels(str(tmp_path))
  _, probs_load_t2, conf_load_t2 = pseudo_label.load_pseudo_labels(out_dir, temperature=2.0)
  reference_t2 = _reference_probs(task, variables, pool.images, temperature=2.0)
  np.testing.assert_allclose(probs_pass_t2, reference_t2, atol=F16_ATOL)
  np.testing.assert_allclose(probs_load_t2, reference_t2, atol=F16_ATOL)
  np.testing.assert_allclose(conf_load_t2, conf_pass_t2, atol=F16_ATOL)
  # Higher temperature flattens every label, lower sharpens it; the argmax stays.
  _, probs_sharp, conf_sharp = pseudo_label.load_pseudo_labels(out_dir, temperature=0.5)
  assert np.all(_entropy(probs_load_t2) > _entropy(probs_t1))
  assert np.all(_entropy(probs_sharp) < _entropy(probs_t1))
  assert np.all(conf_sharp >= probs_t1.max(1) - 1e-6)
  np.testing.assert_array_equal(probs_sharp.argmax(1), probs_t1.argmax(1))


def test_topk_storage_keeps_the_k_largest_renormalised(teacher, labelled_8, tmp_path):
  task, variables, pool = teacher
  pseudo_label.label_pool(variables, task, pool, str(tmp_path), mesh=sharding.make_mesh(),
                          batch_size=BATCH, shard_size=SHARD, store="topk", top_k=3)
  _, probs_topk, confidence = pseudo_label.load_pseudo_labels(str(tmp_path))
  _, (_, probs_soft, conf_soft) = labelled_8
  assert np.all((probs_topk > 0).sum(1) <= 3)
  np.testing.assert_allclose(probs_topk.sum(1), 1.0, rtol=1e-6)
  # The 3 largest values, renormalised (compared sorted: a tie at rank 3 may keep either class).
  kept = np.sort(probs_soft, axis=1)[:, -3:]
  np.testing.assert_allclose(np.sort(probs_topk, axis=1)[:, -3:],
                             kept / kept.sum(1, keepdims=True), atol=F16_ATOL)
  np.testing.assert_array_equal(probs_topk.argmax(1), probs_soft.argmax(1))
  np.testing.assert_array_equal(confidence, conf_soft)   # of the full distribution


def test_tta_views_average_probabilities(teacher, tmp_path):
  task, variables, pool = teacher
  small = data_lib.Subset(pool, np.arange(40))
  pseudo_label.label_pool(variables, task, small, str(tmp_path), mesh=sharding.make_mesh(),
                          batch_size=16, shard_size=40, views="flip")
  _, probs, _ = pseudo_label.load_pseudo_labels(str(tmp_path))
  reference = tta.predict_probs(lambda x: task_lib.predict_logits(task, variables, x),
                                jnp.asarray(pool.images[:40]), "flip")
  np.testing.assert_allclose(probs, np.asarray(reference), atol=F16_ATOL)
  plain = _reference_probs(task, variables, pool.images[:40])
  assert np.abs(probs - plain).max() > 1e-2     # the flipped view did change the labels


# --------------------------------------------------------------------------
# Selection (pure NumPy).


def _probs_for(classes, confidence, num_classes=3):
  """Rows with argmax `classes[i]` and max probability `confidence[i]`."""
  classes, confidence = np.asarray(classes), np.asarray(confidence, np.float32)
  rest = (1.0 - confidence) / (num_classes - 1)
  probs = np.repeat(rest[:, None], num_classes, axis=1)
  probs[np.arange(len(classes)), classes] = confidence
  return probs


def test_threshold_keeps_exactly_the_confident_examples():
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.full(10, 0.3), size=500).astype(np.float32)
  indices = np.arange(1000, 1500)
  confidence = probs.max(1)
  threshold = float(confidence[17])         # one example exactly at the threshold
  chosen, labels = pseudo_label.select(indices, probs, confidence, threshold=threshold)
  np.testing.assert_array_equal(chosen, indices[confidence >= threshold])
  assert 1017 in chosen
  np.testing.assert_array_equal(labels, probs[confidence >= threshold])
  hard_chosen, hard = pseudo_label.select(indices, probs, threshold=threshold, hard=True)
  np.testing.assert_array_equal(hard_chosen, chosen)
  np.testing.assert_array_equal(hard, np.eye(10, dtype=np.float32)[labels.argmax(1)])


def test_balancing_takes_top_k_and_duplicates_small_classes_in_confidence_order():
  #          0    1    2    3    4    5    6    7    8
  classes = [0, 0, 1, 0, 0, 1, 0, 2, 2]
  confidence = [0.5, 0.9, 0.6, 0.7, 0.35, 0.8, 0.95, 0.4, 0.99]
  probs = _probs_for(classes, confidence)
  indices = np.arange(9) + 100
  chosen, labels = pseudo_label.select(indices, probs, per_class=4)
  # class 0 (5 examples): its 4 most confident; class 1 (2): 5, 2, 5, 2; class 2 (2): 8, 7, 8, 7.
  np.testing.assert_array_equal(chosen - 100, [6, 1, 3, 0, 5, 2, 5, 2, 8, 7, 8, 7])
  np.testing.assert_array_equal(np.bincount(labels.argmax(1)), [4, 4, 4])
  np.testing.assert_array_equal(labels, probs[chosen - 100])
  # Threshold first, then balance: class 2 keeps only 8, repeated; 4 (0.35) is dropped.
  chosen, _ = pseudo_label.select(indices, probs, threshold=0.45, per_class=3)
  np.testing.assert_array_equal(chosen - 100, [6, 1, 3, 5, 2, 5, 8, 8, 8])


def test_balancing_with_a_missing_class_and_seeded_ties():
  classes = [0] * 6 + [1]
  probs = _probs_for(classes, [1.0] * 6 + [0.9])        # six ties in class 0
  chosen_a, _ = pseudo_label.select(np.arange(7), probs, per_class=2, seed=0)
  assert len(chosen_a) == 4 and list(chosen_a[2:]) == [6, 6]    # class 2 has no example
  picks = {tuple(pseudo_label.select(np.arange(7), probs, per_class=2, seed=s)[0][:2])
           for s in range(10)}
  assert len(picks) > 1                                  # ties broken by the seed
  np.testing.assert_array_equal(chosen_a, pseudo_label.select(np.arange(7), probs,
                                                              per_class=2, seed=0)[0])


def test_pseudo_labelled_source_feeds_the_train_pipeline(teacher, labelled_8):
  _, _, pool = teacher
  indices, probs, confidence = labelled_8[1]
  chosen, labels = pseudo_label.select(indices, probs, confidence, threshold=0.3, per_class=50)
  source = pseudo_label.PseudoLabelledSource(pool, chosen, labels)
  assert len(source) == 500
  item = source[7]
  np.testing.assert_array_equal(item["image"], pool.images[chosen[7]])
  assert item["label"].dtype == np.int32 and item["label"] == labels[7].argmax()
  assert item["soft_label"].dtype == np.float32 and item["soft_label"].shape == (10,)
  batch = next(data_lib.train_iterator(source, 32, seed=0, process_index=0, process_count=1))
  assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].dtype == np.uint8
  assert batch["soft_label"].shape == (32, 10)
  np.testing.assert_array_equal(batch["label"], batch["soft_label"].argmax(1))
  with pytest.raises(ValueError, match="outside the pool"):
    pseudo_label.PseudoLabelledSource(pool, np.array([len(pool)]), np.ones((1, 10)) / 10)


def test_describe_shards_names_the_parts_on_disk_only(tmp_path):
  """What the pass's watchdog reports: complete parts (not .tmp files), read from the listing."""
  out_dir = str(tmp_path)
  assert pseudo_label.describe_shards(out_dir).startswith("no pseudo-label shard written yet")
  open(pseudo_label.shard_path(out_dir, 0, 0, 1), "w").close()
  open(pseudo_label.shard_path(out_dir, 1, 0, 1), "w").close()
  open(pseudo_label.shard_path(out_dir, 2, 0, 1) + ".tmp", "w").close()
  described = pseudo_label.describe_shards(out_dir)
  assert described.startswith("2 pseudo-label shard parts written") and "shard_00001" in described
