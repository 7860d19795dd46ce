r"""Your own catalogue as a directory tree: scanning it and reading it through TFDS.

The tree (see docs/CATALOGUE.md, "Creating Dataset Directory Tree")::

    root/
      dataset_report.json                  what `deephash dataset create` kept and skipped
      train/<clothing_type>/<item_id>/<image files>
      gallery/<clothing_type>/<item_id>/<image files>
      query/<clothing_type>/<image file>   the item level is optional: an image directly under
                                           <clothing_type>/ is an item of its own

`deephash dataset create` builds such a tree (tree_create.py).
`load_split(input_config, split)` reads one split through our TFDS builder
(`ImageFolderTree`), images resized to `input.image_size` with `input.channels`, class names
sorted over the whole tree (so that labels agree between splits), each image's path relative
to the root kept in `Split.paths`. Each builder config is named after the tree's path, its file
listing (path, size, mtime), the image size and the channels, so that two trees, or one tree
after it changed, never share a prepared dataset.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
from typing import Iterable

from absl import logging
import numpy as np

from deephash_jax.data import base
from deephash_jax.data import images as images_lib
from deephash_jax.data.base import DataError
from deephash_jax.data.images import IMAGE_EXTENSIONS

SPLITS = ("train", "gallery", "query")
REPORT_FILE = "dataset_report.json"
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 512   # config.input.image_size; 64..224 is what we test


# ----------------------------------------------------------------------------- tree


@dataclasses.dataclass(frozen=True)
class TreeImage:
  split: str
  clothing_type: str
  item_key: str           # "<clothing_type>/<item_id>" or "<clothing_type>/<file name>"
  relative_path: str      # POSIX, relative to the root


@dataclasses.dataclass(frozen=True)
class ScannedTree:
  """The listing of a tree: its images, sorted class names and item keys, and what was ignored."""
  root: str
  images: tuple[TreeImage, ...]
  class_names: tuple[str, ...]
  item_keys: tuple[str, ...]
  ignored: tuple[str, ...]        # messages naming files that are not usable images
  fingerprint: str                # sha256 of the root and (path, size, mtime) of every image

  def splits(self) -> tuple[str, ...]:
    present = {image.split for image in self.images}
    return tuple(s for s in SPLITS if s in present)


def _visible(names: Iterable[str]) -> list[str]:
  return sorted(n for n in names if not n.startswith("."))


def scan_tree(root: str) -> ScannedTree:
  """Lists `root/<split>/<clothing_type>/[<item_id>/]<image>`; raises DataError if no split."""
  root = os.path.abspath(root)
  if not os.path.isdir(root):
    raise DataError(f"{root}: no such directory; create a tree with `deephash dataset create` "
                    "(docs/CATALOGUE.md)")
  images, ignored, stats = [], [], []

  def add_file(split, clothing_type, item_key, path):
    relative = os.path.relpath(path, root).replace(os.sep, "/")
    if os.path.splitext(path)[1].lower() not in IMAGE_EXTENSIONS:
      ignored.append(f"{path}: unsupported file type (expected "
                     f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
      return
    stat = os.stat(path)
    images.append(TreeImage(split, clothing_type, item_key, relative))
    stats.append(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}")

  for split in SPLITS:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      continue
    for type_name in _visible(os.listdir(split_dir)):
      type_dir = os.path.join(split_dir, type_name)
      if not os.path.isdir(type_dir):
        ignored.append(f"{type_dir}: not inside a <clothing_type>/ folder")
        continue
      count_before = len(images)
      for entry in _visible(os.listdir(type_dir)):
        path = os.path.join(type_dir, entry)
        if os.path.isdir(path):
          for file_name in _visible(os.listdir(path)):
            file_path = os.path.join(path, file_name)
            if os.path.isdir(file_path):
              ignored.append(f"{file_path}: folders below <item_id>/ are not read")
            else:
              add_file(split, type_name, f"{type_name}/{entry}", file_path)
        else:
          add_file(split, type_name, f"{type_name}/{entry}", path)
      if len(images) == count_before:
        ignored.append(f"{type_dir}: empty clothing type folder (no images)")
  if not any(os.path.isdir(os.path.join(root, s)) for s in SPLITS):
    raise DataError(f"{root}: none of the split folders {', '.join(SPLITS)} exists; expected "
                    "root/<split>/<clothing_type>/[<item_id>/]<images> (docs/CATALOGUE.md)")
  digest = hashlib.sha256(root.encode())
  for line in stats:
    digest.update(line.encode() + b"\n")
  return ScannedTree(
      root=root, images=tuple(images),
      class_names=tuple(sorted({image.clothing_type for image in images})),
      item_keys=tuple(sorted({image.item_key for image in images})),
      ignored=tuple(ignored), fingerprint=digest.hexdigest())


def _check_image_format(image_size, channels):
  if not isinstance(image_size, int) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
    raise DataError(f"config.input.image_size={image_size!r}: expected an integer in "
                    f"[{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] (64..224 is what is tested)")
  if channels not in (1, 3):
    raise DataError(f"config.input.channels={channels!r}: expected 1 (greyscale) or 3 (RGB)")


@functools.cache
def _image_folder_builder_class():
  """Defines (once: TFDS registers builder classes by name) the builder over a tree."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class ImageFolderTree(tfds.core.GeneratorBasedBuilder):
    """A `root/<split>/<clothing_type>/[<item_id>/]<image>` tree; one builder config per tree."""

    name = "deephash_image_folder"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Images, clothing type, item id and relative path."}

    def __init__(self, *, tree: ScannedTree, image_size: int, channels: int, **kwargs):
      self.tree = tree
      self.image_size = image_size
      self.channels = channels
      slug = re.sub(r"[^a-z0-9]+", "_", os.path.basename(tree.root).lower()).strip("_") or "tree"
      key = hashlib.sha256(f"{tree.fingerprint}:{image_size}:{channels}".encode()).hexdigest()
      config = tfds.core.BuilderConfig(
          name=f"{slug[:40]}_{image_size}px_{channels}c_{key[:16]}",
          description=f"{tree.root} at {image_size}x{image_size}x{channels}")
      super().__init__(config=config, **kwargs)

    def _info(self):
      shape = (self.image_size, self.image_size, self.channels)
      return self.dataset_info_from_configs(
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=shape),
              "label": tfds.features.ClassLabel(names=self.tree.class_names),
              "item": tfds.features.Scalar(dtype=np.int64),
              "path": tfds.features.Text(),
          }),
          supervised_keys=("image", "label"),
          description=f"Image tree at {self.tree.root}.",
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # Nothing to download: the tree is local.
      return {split: self._generate_examples(split) for split in self.tree.splits()}

    def _generate_examples(self, split):
      labels = {name: i for i, name in enumerate(self.tree.class_names)}
      items = {key: i for i, key in enumerate(self.tree.item_keys)}
      for entry in self.tree.images:
        if entry.split != split:
          continue
        path = os.path.join(self.tree.root, entry.relative_path)
        try:
          image = images_lib.read_image(path, self.image_size, self.channels)
        except DataError as e:
          logging.warning("Skipping %s", e)
          continue
        yield entry.relative_path, {"image": image, "label": labels[entry.clothing_type],
                                    "item": items[entry.item_key], "path": entry.relative_path}

  return ImageFolderTree


def image_folder_builder(root: str, image_size: int, channels: int, data_dir: str | None = None):
  """Our TFDS builder over the tree at `root` (TF imported lazily)."""
  _check_image_format(image_size, channels)
  tree = scan_tree(root)
  for message in tree.ignored:
    logging.warning("Ignoring %s", message)
  base.hide_tf_from_accelerators()
  return _image_folder_builder_class()(tree=tree, image_size=image_size, channels=channels,
                                       data_dir=data_dir)


def load_split(input_config, split: str) -> base.Split:
  """Builds (once per tree version) and reads one split into memory, paths included.

  Examples are sorted by relative path. When `input_config.num_classes` is set it must equal
  the number of clothing types in the tree.
  """
  root = input_config.get("root")
  if not root:
    raise DataError("config.input.root is not set: pass --config.input.root=/path/to/tree")
  if not base.tensorflow_installed():
    raise DataError(f"{root}: image trees are read through TFDS, which needs TensorFlow here "
                    "(pip install tensorflow-cpu); Fashion-MNIST reads without it")
  builder = image_folder_builder(root, input_config.get("image_size"),
                                 input_config.get("channels"), input_config.get("data_dir"))
  class_names = builder.tree.class_names
  num_classes = input_config.get("num_classes")
  if num_classes and num_classes != len(class_names):
    raise DataError(
        f"config.input.num_classes={num_classes} but {builder.tree.root} has "
        f"{len(class_names)} clothing types ({', '.join(class_names)}); pass "
        f"--config.input.num_classes={len(class_names)}")
  if split not in builder.tree.splits():
    raise DataError(f"{os.path.join(builder.tree.root, split)}: no images in split {split!r}; "
                    f"this tree has {', '.join(builder.tree.splits()) or 'no images'}")
  builder = base.prepare_once(lambda: image_folder_builder(
      root, input_config.get("image_size"), input_config.get("channels"),
      input_config.get("data_dir")), builder)
  num_examples = builder.info.splits[split].num_examples if split in builder.info.splits else 0
  if not num_examples:
    raise DataError(f"{os.path.join(builder.tree.root, split)}: no readable images (see the "
                    "warnings above)")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  paths = np.array([p.decode() for p in arrays["path"]])
  order = np.argsort(paths, kind="stable")
  return base.Split(
      images=arrays["image"][order], labels=arrays["label"][order].astype(np.int32),
      items=arrays["item"][order].astype(np.int32), class_names=tuple(class_names),
      paths=paths[order])


