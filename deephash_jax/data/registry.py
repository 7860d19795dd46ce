"""The split registry: `load_split(config.input, name)` for every dataset the configs name.

* `"fashion_mnist"`: Debian's IDX files through our TFDS builder (fashion_mnist.py);
* `"image_folder"`: a `root/<split>/<clothing_type>/[<item_id>/]<images>` tree (image_tree.py).

`load_catalogue_split` reads a split as a trained model sees it, from the model's own dataset or
from any image tree (what `deephash index` and `deephash predict` encode).
"""

from __future__ import annotations

import os

from deephash_jax.data import fashion_mnist
from deephash_jax.data import image_tree
from deephash_jax.data.base import Split

DATASETS = {
    "fashion_mnist": fashion_mnist.load_split,
    "image_folder": image_tree.load_split,
}


def load_split(input_config, split: str) -> Split:
  """Builds (once) and reads one split of `input_config.dataset` into host memory."""
  if input_config.dataset not in DATASETS:
    raise ValueError(f"config.input.dataset={input_config.dataset!r}: expected one of "
                     f"{tuple(DATASETS)}")
  return DATASETS[input_config.dataset](input_config, split)


def image_shape(input_config) -> tuple[int, int, int]:
  """(H, W, C) of the model's input images."""
  if input_config.dataset == "fashion_mnist":
    return (28, 28, 1)
  return (input_config.image_size, input_config.image_size, input_config.channels)


def load_catalogue_split(input_config, split: str,
                         image_root: str | None = None) -> tuple[Split, str | None]:
  """(the split, its absolute tree root or None) as a model trained on `input_config` sees it.

  Without `image_root`, the split of the model's own dataset; with it, the split of that tree
  (maybe not the one trained on: its classes may differ), read at the model's input size.
  """
  if not image_root and input_config.dataset != "image_folder":
    return load_split(input_config, split), None
  size, _, channels = image_shape(input_config)
  tree_config = input_config.copy_and_resolve_references()
  with tree_config.unlocked():
    tree_config.dataset = "image_folder"
    tree_config.image_size, tree_config.channels = size, channels
    if image_root:
      tree_config.root, tree_config.num_classes = image_root, 0
  return image_tree.load_split(tree_config, split), os.path.abspath(tree_config.root)
