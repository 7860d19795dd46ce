"""data/fashion_mnist.py: IDX reading and our TFDS builder on synthetic files."""

import gzip

import ml_collections
import numpy as np
import pytest

from deephash_jax.data import fashion_mnist
from deephash_jax.data import registry
from deephash_jax.data.base import DataError
from tests import fake_data


def test_read_idx_round_trip(tmp_path):
  array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  fake_data.write_idx(str(tmp_path / "a.gz"), array)
  np.testing.assert_array_equal(fashion_mnist.read_idx(str(tmp_path / "a.gz")), array)


def test_read_idx_names_the_file_on_truncation_and_bad_magic(tmp_path):
  array = np.zeros((4, 28, 28), np.uint8)
  path = str(tmp_path / "train-images-idx3-ubyte.gz")
  fake_data.write_idx(path, array)
  with gzip.open(path) as f:
    data = f.read()
  with gzip.open(path, "wb") as f:
    f.write(data[:-10])
  with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*truncated"):
    fashion_mnist.read_idx(path)
  with gzip.open(path, "wb") as f:
    f.write(b"\x12\x34\x08\x03" + data[4:])
  with pytest.raises(DataError, match="bad IDX magic"):
    fashion_mnist.read_idx(path)
  with open(path, "wb") as f:
    f.write(b"not gzip at all")
  with pytest.raises(DataError, match="cannot read"):
    fashion_mnist.read_idx(path)


def test_labels_count_mismatch_is_reported(tmp_path):
  fake_data.write_fake_fashion_mnist(str(tmp_path), num_train=20, num_test=10)
  fake_data.write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), np.zeros(7, np.uint8))
  with pytest.raises(DataError, match="7 labels for 10 images"):
    fashion_mnist.read_fashion_mnist_split(str(tmp_path), "test")


def test_tfds_builder_reads_local_idx_files(tmp_path):
  source = fake_data.write_fake_fashion_mnist(str(tmp_path / "src"), num_train=30, num_test=10)
  config = ml_collections.ConfigDict(dict(dataset="fashion_mnist", source_dir=source,
                                          data_dir=str(tmp_path / "tfds")))
  train = registry.load_split(config, "train")
  images, labels = fashion_mnist.read_fashion_mnist_split(source, "train")
  assert train.images.shape == (30, 28, 28, 1) and train.images.dtype == np.uint8
  # TFDS shuffles example order; the "id" feature maps back to the IDX row.
  np.testing.assert_array_equal(train.images, images[train.items])
  np.testing.assert_array_equal(train.labels, labels[train.items])
  assert len(registry.load_split(config, "test")) == 10
  # Read once per process: the same split again is the same object, its arrays read-only.
  assert registry.load_split(config, "train") is train
  assert not (train.images.flags.writeable or train.labels.flags.writeable
              or train.items.flags.writeable)
  with pytest.raises(ValueError, match="read-only"):
    train.images[0, 0, 0, 0] = 1


def test_tfds_order_is_the_order_of_tfds_own_hasher():
  from tensorflow_datasets.core import hashing  # pylint: disable=g-import-not-at-top
  for split, n in (("train", 1000), ("test", 37), ("test", 0)):
    hasher = hashing.Hasher(split)
    np.testing.assert_array_equal(fashion_mnist.tfds_order(n, split),
                                  sorted(range(n), key=hasher.hash_key))


def test_without_tensorflow_the_split_is_the_tfds_split_bit_for_bit(tmp_path, monkeypatch):
  source = fake_data.write_fake_fashion_mnist(str(tmp_path / "src"), num_train=300, num_test=40)
  config = ml_collections.ConfigDict(dict(dataset="fashion_mnist", source_dir=source,
                                          data_dir=str(tmp_path / "tfds")))
  with_tf = {s: registry.load_split(config, s) for s in ("train", "test")}
  monkeypatch.setattr(fashion_mnist.base, "tensorflow_installed", lambda: False)
  monkeypatch.setattr(fashion_mnist, "_SPLITS", {})       # read again, the other way
  monkeypatch.setattr(fashion_mnist, "fashion_mnist_builder", None)   # TFDS is not touched
  for split, tfds_split in with_tf.items():
    direct = registry.load_split(config, split)
    assert direct is not tfds_split
    for name in ("images", "labels", "items"):
      np.testing.assert_array_equal(getattr(direct, name), getattr(tfds_split, name))
      assert getattr(direct, name).dtype == getattr(tfds_split, name).dtype
    assert direct.class_names == tfds_split.class_names
  config.source_dir = str(tmp_path / "nowhere")
  with pytest.raises(DataError, match=r"source_dir=.*nowhere.*no Fashion-MNIST IDX files"):
    registry.load_split(config, "train")
