"""Data sources, class-balanced splits and grain pipelines: shapes, counts, exactness."""

import time

import numpy as np
import pytest

from effcv_jax import data as data_lib
from effcv_jax.data import pipeline, sources, splits
from tests.conftest import data_file


@pytest.fixture(scope="module")
def fashion_test():
  data_file("fashion_mnist.npz")
  return data_lib.load_source("npz:fashion_mnist.npz", "test")


def test_npz_grayscale_gets_channel_axis(fashion_test):
  assert fashion_test.images.shape == (10000, 28, 28, 1)
  assert fashion_test.images.dtype == np.uint8
  assert fashion_test.labels.dtype == np.int32
  assert np.bincount(fashion_test.labels).tolist() == [1000] * 10
  record = fashion_test[3]
  assert record["image"].shape == (28, 28, 1) and record["label"] == fashion_test.labels[3]


def test_npz_colour_and_absolute_path():
  path = data_file("cifar10_train.npz")
  images, labels = data_lib.load_arrays(f"npz:{path}", "train")
  assert images.shape == (50000, 32, 32, 3) and images.dtype == np.uint8
  assert np.bincount(labels).tolist() == [5000] * 10
  np.testing.assert_allclose(images[..., 0].mean() / 255, 0.49139968, atol=1e-6)


def test_packaged_datasets():
  images, labels = data_lib.load_arrays("pkg:mnist5k", "train")
  assert images.shape == (5000, 28, 28, 1) and images.dtype == np.uint8
  assert np.bincount(labels).tolist() == [500] * 10
  digits, digit_labels = data_lib.load_arrays("pkg:digits", "train")
  assert digits.shape == (1797, 8, 8, 1) and digits.max() == 255
  assert len(np.unique(digit_labels)) == 10


def test_npz_errors_name_the_problem(tmp_path, monkeypatch):
  bad = tmp_path / "bad.npz"
  np.savez(bad, x_train=np.zeros((4, 8, 8), np.float32), y_train=np.zeros(4, np.int64))
  with pytest.raises(data_lib.DataError, match="must be uint8"):
    data_lib.load_source(f"npz:{bad}", "train")
  with pytest.raises(data_lib.DataError, match=r"missing \['x_test', 'y_test'\]"):
    data_lib.load_source(f"npz:{bad}", "test")
  monkeypatch.delenv("EFFCV_DATA_DIR", raising=False)
  with pytest.raises(data_lib.DataError, match="EFFCV_DATA_DIR"):
    data_lib.load_source("npz:nowhere.npz", "train")
  with pytest.raises(data_lib.DataError, match="Unknown dataset spec"):
    data_lib.load_source("csv:x", "train")


def test_tfds_offline_fails_fast_with_advice(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  start = time.perf_counter()
  with pytest.raises(data_lib.DataError, match="npz:PATH"):
    data_lib.load_source("tfds:mnist", "test")
  assert time.perf_counter() - start < 10


def test_balanced_split_counts_and_determinism():
  labels = np.repeat(np.arange(10), 5000)
  split = splits.make_split(labels, num_holdout=5000, num_labelled=4000, seed=0)
  assert np.bincount(labels[split.holdout]).tolist() == [500] * 10
  assert np.bincount(labels[split.labelled]).tolist() == [400] * 10
  assert len(split.unlabelled) == 50000 - 5000 - 4000
  everything = np.concatenate([split.holdout, split.labelled, split.unlabelled])
  assert np.array_equal(np.sort(everything), np.arange(50000))
  again = splits.make_split(labels, num_holdout=5000, num_labelled=4000, seed=0)
  assert np.array_equal(again.labelled, split.labelled)
  other = splits.make_split(labels, num_holdout=5000, num_labelled=4000, seed=1)
  assert not np.array_equal(other.labelled, split.labelled)
  with pytest.raises(ValueError, match="balanced"):
    splits.make_split(labels, num_holdout=5001)


def _small_source(n=100):
  images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 4, 4, 1), np.uint8)
  return data_lib.ArraySource(images, np.arange(n, dtype=np.int32))


def test_train_iterator_epochs_are_permutations_and_resume_exactly():
  source = _small_source(100)
  iterator = data_lib.train_iterator(source, 20, seed=3, process_index=0, process_count=1)
  first_epoch = np.concatenate([next(iterator)["label"] for _ in range(5)])
  assert sorted(first_epoch.tolist()) == list(range(100))
  second_epoch = np.concatenate([next(iterator)["label"] for _ in range(5)])
  assert sorted(second_epoch.tolist()) == list(range(100))
  assert not np.array_equal(first_epoch, second_epoch)
  batch = next(iterator)
  assert batch["image"].shape == (20, 4, 4, 1) and batch["image"].dtype == np.uint8
  state = iterator.get_state()
  expected = [next(iterator)["label"] for _ in range(7)]
  resumed = data_lib.train_iterator(source, 20, seed=3, process_index=0, process_count=1)
  resumed.set_state(state)
  assert all(np.array_equal(a, next(resumed)["label"]) for a in expected)


def test_train_iterator_process_shards_partition_the_global_batch():
  source = _small_source(96)
  per_process = [data_lib.train_iterator(source, 24, seed=0, process_index=p, process_count=4)
                 for p in range(4)]
  epoch = np.concatenate([np.concatenate([next(it)["label"] for it in per_process])
                          for _ in range(4)])
  assert all(len(next(it)["label"]) == 6 for it in per_process)
  assert sorted(epoch.tolist()) == list(range(96))


@pytest.mark.parametrize("n, batch, processes", [(300, 128, 1), (300, 100, 1), (7, 4, 2), (301, 64, 4)])
def test_eval_batches_count_every_example_once(n, batch, processes):
  source = _small_source(n)
  seen, batch_counts = [], []
  for p in range(processes):
    batches = list(data_lib.eval_batches(source, batch, process_index=p, process_count=processes))
    batch_counts.append(len(batches))
    for b in batches:
      assert b["image"].shape == (batch // processes, 4, 4, 1)
      seen.extend(b["label"][b["mask"]].tolist())
  assert len(set(batch_counts)) == 1
  assert batch_counts[0] == pipeline.num_eval_batches(n, batch, processes)
  assert sorted(seen) == list(range(n))


def test_subset_renumbers():
  subset = data_lib.Subset(_small_source(10), np.array([7, 2]))
  assert len(subset) == 2 and subset[0]["label"] == 7 and subset[1]["label"] == 2


def test_sources_validate_labels():
  with pytest.raises(data_lib.DataError, match="negative label"):
    sources.validate_arrays(np.zeros((2, 4, 4), np.uint8), np.array([0, -1]), "x")
  with pytest.raises(data_lib.DataError, match="2 images but 3 labels"):
    sources.validate_arrays(np.zeros((2, 4, 4), np.uint8), np.array([0, 1, 2]), "x")
