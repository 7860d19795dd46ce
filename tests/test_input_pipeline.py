"""IDX reading, the TFDS builder on synthetic files, and the step-indexed two-view sampler."""

import gzip
import os

import ml_collections
import numpy as np
import pytest

from deephash_jax import input_pipeline
from tests import fake_data


def test_read_idx_round_trip(tmp_path):
  array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  fake_data.write_idx(str(tmp_path / "a.gz"), array)
  np.testing.assert_array_equal(input_pipeline.read_idx(str(tmp_path / "a.gz")), array)


def test_read_idx_names_the_file_on_truncation_and_bad_magic(tmp_path):
  array = np.zeros((4, 28, 28), np.uint8)
  path = str(tmp_path / "train-images-idx3-ubyte.gz")
  fake_data.write_idx(path, array)
  with gzip.open(path) as f:
    data = f.read()
  with gzip.open(path, "wb") as f:
    f.write(data[:-10])
  with pytest.raises(input_pipeline.DataError, match="train-images-idx3-ubyte.gz.*truncated"):
    input_pipeline.read_idx(path)
  with gzip.open(path, "wb") as f:
    f.write(b"\x12\x34\x08\x03" + data[4:])
  with pytest.raises(input_pipeline.DataError, match="bad IDX magic"):
    input_pipeline.read_idx(path)
  with open(path, "wb") as f:
    f.write(b"not gzip at all")
  with pytest.raises(input_pipeline.DataError, match="cannot read"):
    input_pipeline.read_idx(path)


def test_labels_count_mismatch_is_reported(tmp_path):
  fake_data.write_fake_fashion_mnist(str(tmp_path), num_train=20, num_test=10)
  fake_data.write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), np.zeros(7, np.uint8))
  with pytest.raises(input_pipeline.DataError, match="7 labels for 10 images"):
    input_pipeline.read_fashion_mnist_split(str(tmp_path), "test")


def test_tfds_builder_reads_local_idx_files(tmp_path):
  source = fake_data.write_fake_fashion_mnist(str(tmp_path / "src"), num_train=30, num_test=10)
  config = ml_collections.ConfigDict(dict(dataset="fashion_mnist", source_dir=source,
                                          data_dir=str(tmp_path / "tfds")))
  train = input_pipeline.load_split(config, "train")
  images, labels = input_pipeline.read_fashion_mnist_split(source, "train")
  assert train.images.shape == (30, 28, 28, 1) and train.images.dtype == np.uint8
  # TFDS shuffles example order; the "id" feature maps back to the IDX row.
  np.testing.assert_array_equal(train.images, images[train.items])
  np.testing.assert_array_equal(train.labels, labels[train.items])
  assert len(input_pipeline.load_split(config, "test")) == 10


def _split(n=40):
  labels = np.arange(n) % 4
  return input_pipeline.Split(np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1), labels.astype(
      np.int32), np.arange(n, dtype=np.int32), ("a", "b", "c", "d"))


def test_sampler_is_a_function_of_seed_and_step():
  a = input_pipeline.TwoViewSampler(_split(), num_items=8, seed=3)
  b = input_pipeline.TwoViewSampler(_split(), num_items=8, seed=3)
  order = [a.global_indices(s).copy() for s in range(12)]
  # Any access order (e.g. after a resume at step 7) gives the same batches.
  for s in (7, 2, 11, 0):
    np.testing.assert_array_equal(b.global_indices(s), order[s])
  # An epoch (5 steps of 8 of 40 items) visits every item once; epochs differ.
  assert sorted(np.concatenate(order[:5]).tolist()) == list(range(40))
  assert not np.array_equal(np.concatenate(order[:5]), np.concatenate(order[5:10]))
  c = input_pipeline.TwoViewSampler(_split(), num_items=8, seed=4)
  assert not np.array_equal(c.global_indices(0), order[0])


def test_sampler_process_slices_tile_the_global_batch():
  global_batch = input_pipeline.TwoViewSampler(_split(), num_items=8, seed=0).local_batch(3)
  parts = [input_pipeline.TwoViewSampler(_split(), num_items=8, seed=0, process_index=p,
                                         process_count=2).local_batch(3) for p in range(2)]
  for key in global_batch:
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), global_batch[key])


def test_sampler_rejects_bad_sizes():
  with pytest.raises(ValueError, match="exceeds the split"):
    input_pipeline.TwoViewSampler(_split(8), num_items=9, seed=0)
  with pytest.raises(ValueError, match="processes"):
    input_pipeline.TwoViewSampler(_split(), num_items=9, seed=0, process_count=2)


def test_unknown_dataset_is_named():
  with pytest.raises(ValueError, match="config.input.dataset='mnist'"):
    input_pipeline.load_split(ml_collections.ConfigDict(dict(dataset="mnist")), "train")
