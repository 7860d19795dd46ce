"""The catalogue: a trained model and the index of catalogue images it searches.

One object serves `deephash predict` and the demo: `Catalogue.open(workdir, index_path)` loads
the model and an index built for it by `deephash index` (`build_index`; its bit length and
`model_id` must be the model's: codes of two models are not comparable, so a mismatch is an
error), or, without an index, encodes the workdir's `config.input.database_split` on the fly.
Queries are read by the one image loader (data/images.py), searched exactly in the
`HammingIndex`, and come back as entries sorted by (Hamming distance, id), or, re-ranked
(`search_embeddings`' `rerank`), by the asymmetric distance of the query's continuous code.
An index built with `view_weights` holds several codes an entry (its image's and renderings of
it as a shopper's photo) and ranks an entry by the weighted sum of their distances; with
`merge_views` it holds one code an entry, the sign of the weighted mean of those views'
continuous codes (`merged_codes`).
"""

from __future__ import annotations

import datetime
import functools
import io
import itertools
import os
import time
from typing import Iterable, Sequence

from absl import logging
import numpy as np
from PIL import Image, ImageOps

from deephash_jax import config_lib
from deephash_jax import encoder as encoder_lib
from deephash_jax.data import fashion_mnist
from deephash_jax.data import images as images_lib
from deephash_jax.data import registry
from deephash_jax.evaluators import closest_match
from deephash_jax.search import index as index_lib
from deephash_jax.search import packing

THUMBNAIL_SIZE = 160


class CatalogueError(ValueError):
  """A query file, the index or k is unusable; the message names the file and the problem."""


class EntryNotFound(KeyError):
  """No catalogue entry has this id (or it has no image)."""


def read_query(path: str, image_shape) -> np.ndarray:
  """A query file as the model's uint8 (H, W, C) input; CatalogueError naming `path` otherwise."""
  if not os.path.exists(path):
    raise CatalogueError(f"{path}: no such file")
  if not os.path.isfile(path):
    raise CatalogueError(f"{path}: not a file")
  try:
    return images_lib.read_image(path, image_shape[0], image_shape[2], name=path)
  except images_lib.ImageError as e:
    raise CatalogueError(str(e)) from e


def build_index(workdir: str, split: str, output: str, *, image_root: str | None = None,
                view_weights: Sequence[int] = (1,), merge_views: bool = False) -> dict:
  """`deephash index`: encodes `split` with the model in `workdir` into an index file.

  The split comes from the workdir's own dataset, or from any image tree given as `image_root`
  (read at the model's input size). The index holds the packed codes, the clothing-type labels,
  each image's absolute path (when the dataset has files) and, in its metadata, the class names,
  the item ids, the split and the model's workdir and step. Returns a summary.

  With several `view_weights` every image gets one code a weight: its own, then renderings as a
  shopper's photo by the model's `config.eval.closest_match.recipe` (`catalogue_views`), and an
  entry ranks by the weighted sum of its codes' distances (search/index.py). With `merge_views`
  every image keeps one code, the sign of the weighted mean of those views' continuous codes
  (`merged_codes`): the index, its bytes and its scan are those of one code an image.
  """
  start = time.time()
  view_weights = index_lib.check_view_weights(view_weights)
  if merge_views and len(view_weights) < 2:
    raise ValueError(f"merge_views needs two or more view_weights, got {list(view_weights)}")
  encoder = encoder_lib.HashEncoder.from_workdir(workdir)
  data, root = registry.load_catalogue_split(encoder.config.input, split, image_root)
  paths = None
  if data.paths is not None:
    paths = [os.path.join(root, *p.split("/")) for p in data.paths]
  else:
    logging.warning("The %s split of %s has no image files: the index holds no paths, so the "
                    "demo shows no thumbnails; pass --image_root=<tree> to index a tree.",
                    split, encoder.config.input.dataset)
  metadata = {
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "workdir": os.path.abspath(workdir), "step": encoder.step, "split": split,
      "image_root": root, "class_names": list(data.class_names),
      "items": np.asarray(data.items).tolist()}
  cm = encoder.config.eval.closest_match
  if len(view_weights) > 1:
    metadata["views"] = {"recipe": closest_match.recipe_dict(cm.recipe),
                         "seeds": view_seeds(cm.seed, len(view_weights))}
  # Each view's continuous codes as they come (its own first, then the renderings): packed, or
  # summed into one code, so one view's floats are in memory at a time.
  views = itertools.chain([encoder.embed(data.images)], (encoder.embed(view) for view in
                          catalogue_views(data.images, cm.recipe, cm.seed, len(view_weights))))
  if merge_views:
    metadata["views"]["merged_weights"] = list(view_weights)
    codes = [packing.pack_bits(merged_codes(views, view_weights))]
  else:
    codes = [packing.pack_bits(view) for view in views]
  index = index_lib.HammingIndex(encoder.num_bits, model_id=encoder.model_id, metadata=metadata,
                                 view_weights=(1,) if merge_views else view_weights)
  index.add(np.stack(codes, axis=1), labels=data.labels, paths=paths)
  os.makedirs(os.path.dirname(os.path.abspath(output)) or ".", exist_ok=True)
  index.save(output)
  return {"index": os.path.abspath(output), "count": len(index), "num_bits": encoder.num_bits,
          "view_weights": list(view_weights), "merge_views": bool(merge_views),
          "split": split, "image_root": root or "", "model_id": encoder.model_id,
          "seconds": round(time.time() - start, 2)}


def view_seeds(seed: int, views: int) -> list[int]:
  """The seeds of views 1.. views - 1: `seed + closest_match.VIEW_SEED_OFFSET + v`, so never the
  evaluation's queries' seed."""
  return [int(seed) + closest_match.VIEW_SEED_OFFSET + v for v in range(1, views)]


def merged_codes(view_codes: Iterable[np.ndarray], view_weights: Sequence[int]) -> np.ndarray:
  """(N, K) float64: the weighted mean of the views' continuous codes, view v's (N, K) codes
  weighted `view_weights[v]`; its signs are what `build_index(merge_views=True)` stores. The
  views are summed one by one in order, so an iterator holds one view in memory at a time."""
  view_weights = index_lib.check_view_weights(view_weights)
  total, count = None, 0
  for codes in view_codes:
    if count == len(view_weights):
      raise ValueError(f"more views of codes than the {len(view_weights)} view_weights")
    term = view_weights[count] * np.asarray(codes, np.float64)
    total = term if total is None else total + term
    count += 1
  if count != len(view_weights):
    raise ValueError(f"{count} views of codes for {len(view_weights)} view_weights")
  return total / sum(view_weights)


def catalogue_views(images: np.ndarray, recipe, seed: int, views: int, *, first: int = 1):
  """The renderings of catalogue images that an index of `views` codes an item adds, one array
  a view (views `first`.. views - 1): by the closest-match `recipe`, with `view_seeds`."""
  for view_seed in view_seeds(seed, views)[first - 1:]:
    yield closest_match.render_queries(images, recipe, view_seed)


def _load_index(index_path: str, *, num_bits: int, workdir: str) -> index_lib.HammingIndex:
  if not os.path.isfile(index_path):
    raise CatalogueError(f"{index_path}: no such index file (build one with `deephash index`)")
  try:
    index = index_lib.HammingIndex.load(index_path)
  except index_lib.IndexFileError as e:
    raise CatalogueError(str(e)) from e
  if index.num_bits != num_bits:
    raise CatalogueError(f"{index_path}: holds {index.num_bits}-bit codes but the model in "
                         f"{workdir} makes {num_bits}-bit codes: it was built by another model; "
                         "rebuild it with `deephash index` and this --workdir")
  if not len(index):
    raise CatalogueError(f"{index_path}: the index is empty")
  return index


class Catalogue:
  """A model and the index it searches, with the class names and images of the entries."""

  def __init__(self, encoder: encoder_lib.HashEncoder, index: index_lib.HammingIndex, *,
               index_path: str | None = None, split=None):
    self.encoder, self.index, self.index_path = encoder, index, index_path
    self.metadata = index.metadata
    labels = index.labels
    count = 0 if labels is None or not len(labels) else int(labels.max()) + 1
    default_names = (fashion_mnist.FASHION_MNIST_CLASSES
                     if encoder.config.input.dataset == "fashion_mnist" else
                     [f"class {i}" for i in range(count)])
    self.class_names = list(self.metadata.get("class_names") or default_names)
    self.split_name = self.metadata.get("split") or encoder.config.input.database_split
    self.position = {int(i): p for p, i in enumerate(index.ids)}
    self._split, self._split_loaded = split, split is not None
    self._thumbnail = functools.lru_cache(maxsize=4096)(self._make_thumbnail)

  @classmethod
  def open(cls, workdir: str, index_path: str | None = None) -> "Catalogue":
    """The model of `workdir` with the index at `index_path`, or (None) its database split
    encoded on the fly."""
    if index_path:   # Checked before the (slower) checkpoint restore.
      config = config_lib.load_config(workdir)
      index = _load_index(index_path, num_bits=int(config.model.num_bits), workdir=workdir)
      encoder = encoder_lib.HashEncoder.from_workdir(workdir)
      _check_model_id(index, index_path, encoder, workdir)
      return cls(encoder, index, index_path=index_path)
    encoder = encoder_lib.HashEncoder.from_workdir(workdir)
    split = encoder.config.input.database_split
    logging.info("No index given: encoding the %r split of %s (config.input.database_split) on "
                 "the fly; for repeated queries build it once with `deephash index "
                 "--workdir=%s --split=%s --output=<file>`.", split, encoder.config.input.dataset,
                 workdir, split)
    data, root = registry.load_catalogue_split(encoder.config.input, split)
    paths = None if data.paths is None else [os.path.join(root, *p.split("/"))
                                             for p in data.paths]
    index = index_lib.HammingIndex(encoder.num_bits, model_id=encoder.model_id, metadata={
        "split": split, "image_root": root, "class_names": list(data.class_names),
        "items": np.asarray(data.items).tolist(), "workdir": os.path.abspath(workdir)})
    index.add(encoder.encode(data.images), labels=data.labels, paths=paths)
    return cls(encoder, index, split=data)

  def __len__(self) -> int:
    return len(self.index)

  def search_codes(self, packed: np.ndarray, k: int) -> list[list[dict]]:
    """The k nearest entries of each packed code, as `entry` dicts with rank and distance."""
    if k < 1:
      raise CatalogueError(f"k={k}: must be at least 1")
    distances, ids = self.index.search(packed, min(k, len(self.index)))
    return [[dict(self.entry(int(i)), rank=rank, distance=int(d))
             for rank, (d, i) in enumerate(zip(dist, idx), start=1) if i >= 0]
            for dist, idx in zip(distances, ids)]

  def search_embeddings(self, codes: np.ndarray, k: int, *, rerank: int = 0) -> list[list[dict]]:
    """The k nearest entries of continuous codes (`HashEncoder.embed`), as `search_codes` gives
    them for their signs; with `rerank` > 0 the Hamming top-`rerank` (at least k) re-ranked by
    the asymmetric distance of the codes themselves (`HammingIndex.search_asymmetric`: a bit the
    photo is unsure of counts for little), each entry with its Hamming `distance` and its
    `asymmetric_distance`."""
    if k < 1:
      raise CatalogueError(f"k={k}: must be at least 1")
    if rerank < 0:
      raise CatalogueError(f"rerank={rerank}: 0 (the Hamming ranking) or the number of Hamming "
                           "candidates to re-rank")
    packed = packing.pack_bits(codes)
    if not rerank or not len(self.index):
      return self.search_codes(packed, k)
    k = min(k, len(self.index))
    distances, ids = self.index.search_asymmetric(codes, k, candidates=max(rerank, k))
    hamming = self.index.hamming_distances(
        packed, [[self.position[int(i)] for i in idx] for idx in ids])
    return [[dict(self.entry(int(i)), rank=rank, distance=int(h),
                  asymmetric_distance=round(float(d), 4))
             for rank, (d, h, i) in enumerate(zip(dist, ham, idx), start=1)]
            for dist, ham, idx in zip(distances, hamming, ids)]

  def entry(self, item_id: int) -> dict:
    """What the catalogue knows of one entry: id, label, clothing type, item and image path."""
    position = self.position.get(item_id)
    if position is None:
      raise EntryNotFound(f"no catalogue entry with id {item_id} (ids are "
                          f"{int(self.index.ids.min())}..{int(self.index.ids.max())})")
    label = None if self.index.labels is None else int(self.index.labels[position])
    items = self.metadata.get("items")
    return {"id": item_id, "label_id": label,
            "label": (self.class_names[label] if label is not None and label <
                      len(self.class_names) else None if label is None else f"class {label}"),
            "item": items[position] if items else None,
            "path": self.index.paths[position] if self.index.paths is not None else None}

  def entry_image(self, item_id: int) -> np.ndarray | None:
    """The model-input image of an entry: from its file, else from the indexed split."""
    entry = self.entry(item_id)
    if entry["path"]:
      try:
        return read_query(entry["path"], self.encoder.image_shape)
      except CatalogueError as e:
        logging.warning("No image for entry %d: %s", item_id, e)
        return None
    split = self._indexed_split()
    return None if split is None else split.images[self.position[item_id]]

  def _indexed_split(self):
    if not self._split_loaded:
      self._split_loaded = True
      logging.info("The index holds no image paths: reading the %r split of the workdir's "
                   "dataset for the images.", self.split_name)
      data, _ = registry.load_catalogue_split(self.encoder.config.input, self.split_name,
                                              self.metadata.get("image_root"))
      if len(data) != len(self.index):
        logging.warning("The %r split has %d images, the index %d entries: no images.",
                        self.split_name, len(data), len(self.index))
      else:
        self._split = data
    return self._split

  def thumbnail(self, item_id: int) -> bytes:
    """A PNG thumbnail of an entry's image file (EntryNotFound if it has none)."""
    entry = self.entry(item_id)
    if not entry["path"]:
      raise EntryNotFound("this index holds no image paths (its dataset has no files); "
                          "rebuild it with `deephash index --image_root=<tree>`")
    return self._thumbnail(entry["path"], item_id)

  def _make_thumbnail(self, path: str, item_id: int) -> bytes:
    try:
      with images_lib.decode_image(path, name=path) as image:
        image = ImageOps.exif_transpose(image)
        image = image.convert("RGBA" if "A" in image.getbands() or image.mode == "P" else "RGB")
        if image.mode == "RGBA":
          image = Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image)
        image = image.convert("RGB")
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.LANCZOS)
    except images_lib.ImageError as e:
      raise EntryNotFound(f"catalogue entry {item_id}: {e}") from e
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _check_model_id(index, index_path, encoder, workdir) -> None:
  if index.model_id == encoder.model_id:
    return
  metadata = index.metadata
  built_by = (f"{metadata['workdir']} at step {metadata.get('step')}"
              if metadata.get("workdir") else "an unknown model")
  split = metadata.get("split") or encoder.config.input.database_split
  raise CatalogueError(
      f"{index_path}: built by another model ({built_by}, model_id {index.model_id!r}); this "
      f"model is {os.path.abspath(workdir)} at step {encoder.step} (model_id "
      f"{encoder.model_id!r}), and codes of two models are not comparable. Rebuild the index: "
      f"deephash index --workdir={workdir} --split={split} --output={index_path} (or leave "
      "out --index to encode the database split on the fly)")
