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
  """28x28 uint8 images whose class is a horizontal band position plus noise: learnable fast."""
  images = rng.integers(0, 40, (len(labels), 28, 28), dtype=np.uint8)
  for i, label in enumerate(labels):
    row = 2 + int(label) * 2
    images[i, row:row + 4, 4:24] = 200 + rng.integers(0, 55)
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
