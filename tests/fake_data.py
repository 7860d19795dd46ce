"""Small synthetic Fashion-MNIST-format IDX files for tests (no download, no real data needed)."""

import gzip
import os
import struct

import numpy as np


def write_idx(path, array):
  codes = {np.dtype(np.uint8): 0x08}
  header = struct.pack(">HBB", 0, codes[array.dtype], array.ndim)
  header += struct.pack(f">{array.ndim}I", *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.tobytes())


def class_images(labels, rng):
  """28x28 uint8 images whose class is a stripe pattern (orientation x period) in a central
  garment-like square on a dark background: shift-invariant, so learnable in a few steps even
  under the query-view augmentations."""
  images = rng.integers(0, 30, (len(labels), 28, 28), dtype=np.uint8)
  rows, cols = np.mgrid[0:20, 0:20]
  for i, label in enumerate(labels):
    period = (2, 3, 4, 6, 8)[int(label) % 5]
    axis = rows if int(label) < 5 else cols
    stripes = (axis // period) % 2 == 0
    images[i, 4:24, 4:24] = np.where(stripes, 230, 90) - rng.integers(0, 30)
  return images


def write_fake_fashion_mnist(directory, num_train=320, num_test=80, seed=0):
  """Writes the four IDX .gz files with 10 balanced classes; returns the directory."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  for split, n, prefix in (("train", num_train, "train"), ("test", num_test, "t10k")):
    labels = (np.arange(n) % 10).astype(np.uint8)
    write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), class_images(labels, rng))
    write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), labels)
  return directory
