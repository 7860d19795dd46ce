"""Test pictures, trees and configs shared by the data tests."""
import hashlib
import os

import ml_collections
from PIL import Image

from deephash_jax.data import image_tree


def photo(colour, size=(40, 30), mode="RGB"):
  """A garment-like picture: a bright rectangle on black."""
  image = Image.new("RGB", size, (0, 0, 0))
  image.paste(Image.new("RGB", (size[0] // 2, size[1] // 2), colour),
              (size[0] // 4, size[1] // 4))
  return image.convert(mode) if mode != "RGB" else image


def save(image, path, fmt, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path, format=fmt, **kwargs)


def checksums(folder):
  out = {}
  for directory, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = (hashlib.sha256(f.read()).hexdigest(),
                                              os.stat(path).st_mtime_ns)
  return out


def tree_files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                for d, _, files in os.walk(root) for f in files if f != image_tree.REPORT_FILE)


def input_config(root, tmp_path, **overrides):
  config = ml_collections.ConfigDict(dict(
      dataset="image_folder", root=str(root), image_size=64, channels=3, num_classes=0,
      data_dir=str(tmp_path / "tfds")))
  config.update(overrides)
  return config
