"""Datasets and batching.

* `FashionMnistLocal`: a TFDS builder of our own that reads the four IDX `.gz` files of Debian's
  `dataset-fashion-mnist` package (their gzip checksums differ from upstream, so the stock
  `fashion_mnist` builder rejects them) and falls back to the upstream URLs only when no local copy
  exists.
* `load_split`: a prepared TFDS split as in-memory uint8 NumPy arrays.
* `TwoViewSampler`: the training order as a pure function of (seed, step). Each step takes
  `batch_size // 2` catalogue items; the compiled train step renders each twice (a catalogue
  view and a query view, see `augment.py`). Because a batch depends on the step alone, a run that
  resumes from a checkpoint, even after SIGKILL, sees exactly the batches an uninterrupted run
  sees, and every process of a multi-host run takes its own contiguous slice of the global batch.

The datasets here are small enough to live in host memory as uint8 (Fashion-MNIST: 47 MB);
augmentation runs on the accelerator inside the compiled step, so the host only gathers rows.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import struct
from typing import Mapping

import numpy as np

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_UPSTREAM = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class DataError(ValueError):
  """Bad input data; the message names the file and what is wrong with it."""


def _hide_tf_from_accelerators():
  """TF only reads files here; it must never take GPU/TPU memory from JAX."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # Already initialised: devices were hidden earlier.
    pass


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally gzipped) into a NumPy array, validating its header."""
  try:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f"{path}: cannot read IDX file ({e})") from e
  if len(data) < 4:
    raise DataError(f"{path}: {len(data)} bytes, too short for an IDX header")
  zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
  dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
  if zero != 0 or dtype_code not in dtypes or ndim == 0:
    raise DataError(f"{path}: bad IDX magic number {data[:4].hex()}")
  header_end = 4 + 4 * ndim
  if len(data) < header_end:
    raise DataError(f"{path}: truncated IDX header")
  shape = struct.unpack(f">{ndim}I", data[4:header_end])
  dtype = np.dtype(dtypes[dtype_code])
  expected = int(np.prod(shape)) * dtype.itemsize
  payload = len(data) - header_end
  if payload != expected:
    raise DataError(
        f"{path}: IDX header says shape {shape} ({expected} bytes) but the file holds "
        f"{payload} bytes of data; the file is truncated or corrupt")
  return np.frombuffer(data, dtype, offset=header_end).reshape(shape).astype(
      dtype.newbyteorder("="))


def read_fashion_mnist_split(source_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Images (N, 28, 28, 1) uint8 and labels (N,) int64 of one split from IDX files."""
  image_file, label_file = FASHION_MNIST_FILES[split]
  images = read_idx(os.path.join(source_dir, image_file))
  labels = read_idx(os.path.join(source_dir, label_file))
  if images.ndim != 3 or images.shape[1:] != (28, 28):
    raise DataError(f"{os.path.join(source_dir, image_file)}: expected (N, 28, 28) images, "
                    f"got {images.shape}")
  if labels.shape != (images.shape[0],):
    raise DataError(f"{os.path.join(source_dir, label_file)}: {labels.shape[0]} labels for "
                    f"{images.shape[0]} images")
  if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
    raise DataError(f"{os.path.join(source_dir, label_file)}: label {labels.max()} out of range")
  return images[..., None], labels.astype(np.int64)


def _has_local_copy(source_dir: str | None) -> bool:
  return bool(source_dir) and all(
      os.path.exists(os.path.join(source_dir, f))
      for files in FASHION_MNIST_FILES.values() for f in files)


@functools.cache
def _fashion_mnist_builder_class():
  """Defines (once: TFDS registers builder classes by name) our Fashion-MNIST builder."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST from local IDX files (Debian's package), upstream URLs as a fallback."""

    name = "fashion_mnist_local"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Reads Debian's dataset-fashion-mnist IDX files."}

    def __init__(self, *, source_dir: str | None = DEBIAN_FASHION_MNIST_DIR, **kwargs):
      self.source_dir = source_dir
      super().__init__(**kwargs)

    def _info(self):
      return self.dataset_info_from_configs(
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(28, 28, 1)),
              "label": tfds.features.ClassLabel(names=FASHION_MNIST_CLASSES),
              "id": tfds.features.Scalar(dtype=np.int64),
          }),
          supervised_keys=("image", "label"),
          homepage="https://github.com/zalandoresearch/fashion-mnist",
      )

    def _split_generators(self, dl_manager):
      if _has_local_copy(self.source_dir):
        directory = self.source_dir
      else:  # Fallback for users elsewhere; never reached where Debian's package is installed.
        paths = dl_manager.download({f: FASHION_MNIST_UPSTREAM + f
                                     for files in FASHION_MNIST_FILES.values() for f in files})
        directory = os.path.dirname(str(next(iter(paths.values()))))
      return {split: self._generate_examples(directory, split) for split in FASHION_MNIST_FILES}

    def _generate_examples(self, directory, split):
      images, labels = read_fashion_mnist_split(directory, split)
      for i, (image, label) in enumerate(zip(images, labels)):
        yield i, {"image": image, "label": int(label), "id": i}

  return FashionMnistLocal


def fashion_mnist_builder(data_dir: str | None = None,
                          source_dir: str | None = DEBIAN_FASHION_MNIST_DIR):
  """Our TFDS builder for Fashion-MNIST, reading `source_dir` (TF imported lazily)."""
  _hide_tf_from_accelerators()
  return _fashion_mnist_builder_class()(data_dir=data_dir, source_dir=source_dir)


@dataclasses.dataclass(frozen=True)
class Split:
  """A dataset split held in host memory."""
  images: np.ndarray   # (N, H, W, C) uint8
  labels: np.ndarray   # (N,) int32 clothing type
  items: np.ndarray    # (N,) int32 catalogue item id (same item = same garment)
  class_names: tuple[str, ...]
  paths: np.ndarray | None = None  # (N,) str, relative to the tree root (image_folder only)

  def __len__(self):
    return len(self.labels)


def load_split(input_config, split: str) -> Split:
  """Builds (once) and reads one split of the configured dataset into memory."""
  if input_config.dataset == "fashion_mnist":
    builder = fashion_mnist_builder(input_config.get("data_dir"), input_config.get("source_dir"))
    builder.download_and_prepare()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    labels = arrays["label"].astype(np.int32)
    return Split(arrays["image"], labels, arrays["id"].astype(np.int32), FASHION_MNIST_CLASSES)
  if input_config.dataset == "image_folder":
    from deephash_jax import dataset_tree  # pylint: disable=g-import-not-at-top
    return dataset_tree.load_split(input_config, split)
  raise ValueError(f"config.input.dataset={input_config.dataset!r}: expected 'fashion_mnist' "
                   "or 'image_folder'")


class TwoViewSampler:
  """Deterministic batches of catalogue items: the batch of step s depends on (seed, s) only.

  Each epoch is a seeded permutation of the split; a step takes `num_items` consecutive entries
  (the remainder of an epoch is dropped). In a multi-process run every process computes the same
  global indices and keeps its own contiguous slice of them.
  """

  def __init__(self, split: Split, *, num_items: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    if num_items > len(split):
      raise ValueError(f"batch of {num_items} items exceeds the split's {len(split)} items; "
                       "lower config.train.batch_size")
    if num_items % process_count:
      raise ValueError(f"{num_items} items per batch do not divide over {process_count} "
                       "processes")
    self.split = split
    self.num_items = num_items
    self.seed = seed
    self.steps_per_epoch = len(split) // num_items
    self._local = slice(process_index * num_items // process_count,
                        (process_index + 1) * num_items // process_count)
    self._perm_epoch, self._perm = -1, None

  def global_indices(self, step: int) -> np.ndarray:
    epoch, offset = divmod(int(step), self.steps_per_epoch)
    if epoch != self._perm_epoch:
      rng = np.random.default_rng([self.seed, epoch])
      self._perm, self._perm_epoch = rng.permutation(len(self.split)), epoch
    return self._perm[offset * self.num_items:(offset + 1) * self.num_items]

  def local_batch(self, step: int) -> Mapping[str, np.ndarray]:
    """This process's slice of the global batch of `step`."""
    idx = self.global_indices(step)[self._local]
    return {"image": self.split.images[idx], "label": self.split.labels[idx],
            "item": self.split.items[idx]}
