"""Fashion-MNIST: the IDX files of Debian's `dataset-fashion-mnist` package, read through a TFDS
builder of our own (`FashionMnistLocal`): their gzip checksums differ from upstream, so the stock
`fashion_mnist` builder rejects them. The upstream URLs are a fallback only where no local copy
exists.

Where TensorFlow is not installed (an accelerator image with JAX alone), the same IDX files are
read directly and put in the order TFDS writes the split in (`tfds_order`): the same arrays, bit
for bit, so a run trains and evaluates the same either way.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import struct

from absl import logging
import numpy as np

from deephash_jax.data import base
from deephash_jax.data.base import DataError

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
  base.hide_tf_from_accelerators()
  return _fashion_mnist_builder_class()(data_dir=data_dir, source_dir=source_dir)




def tfds_order(num_examples: int, split: str) -> np.ndarray:
  """The indices 0..n-1 in the order TFDS writes a split whose example keys they are: sorted by
  the md5 of the split's name (the salt) followed by the key (tfds.core.hashing.Hasher)."""
  salted = hashlib.md5(split.encode())

  def key_hash(i: int) -> int:
    md5 = salted.copy()
    md5.update(str(i).encode())
    return int(md5.hexdigest(), 16)
  return np.array(sorted(range(num_examples), key=key_hash), np.int64)


def read_in_tfds_order(source_dir: str | None, split: str):
  """(images, labels, ids) of one split from the IDX files, in the builder's order: what TFDS
  gives for the split, without TensorFlow."""
  if not _has_local_copy(source_dir):
    raise DataError(f"config.input.source_dir={source_dir!r}: no Fashion-MNIST IDX files "
                    f"{[f for files in FASHION_MNIST_FILES.values() for f in files]} there, and "
                    "without TensorFlow there is no download (`apt-get install "
                    "dataset-fashion-mnist`, or pip install tensorflow-cpu)")
  images, labels = read_fashion_mnist_split(source_dir, split)
  order = tfds_order(len(labels), split)
  return images[order], labels[order], order


_SPLITS: dict[tuple, base.Split] = {}   # (data_dir, source_dir, split) -> the split, read once


def load_split(input_config, split: str) -> base.Split:
  """Builds (once) and reads one split of Fashion-MNIST into memory; item id = image index.

  Read once per process (decoding the 60,000 training PNGs takes seconds, and training and then
  evaluation read the same splits): every caller gets the same Split, its arrays read-only.
  """
  key = (input_config.get("data_dir"), input_config.get("source_dir"), split)
  if key not in _SPLITS:
    if base.tensorflow_installed():
      builder = base.prepare_once(lambda: fashion_mnist_builder(input_config.get("data_dir"),
                                                                input_config.get("source_dir")))
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (TF loads lazily)
      arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
      images, labels, items = arrays["image"], arrays["label"], arrays["id"]
    else:
      logging.info("TensorFlow is not installed: reading Fashion-MNIST's %s split from the IDX "
                   "files in %s, in TFDS's order.", split, input_config.get("source_dir"))
      images, labels, items = read_in_tfds_order(input_config.get("source_dir"), split)
    labels, items = labels.astype(np.int32), items.astype(np.int32)
    for array in (images, labels, items):
      array.flags.writeable = False
    _SPLITS[key] = base.Split(images, labels, items, FASHION_MNIST_CLASSES)
  return _SPLITS[key]
