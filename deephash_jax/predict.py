r"""`deephash predict`: the nearest catalogue images of query photos, by a trained model.

    deephash predict --workdir=workdirs/fm --image=query.png [--image=other.jpg] \
        [--index=fm.dhidx] [--k=10] [--json] [--grid=matches.png]

Each query file is read like the demo's uploads and the catalogue's own images
(`dataset_tree.read_image`: EXIF rotation, transparency on black, converted and resized to the
model's input), encoded by `HashEncoder` and searched exactly in a `HammingIndex`. Matches come
sorted by (Hamming distance, id), as `HammingIndex.search` returns them.

The index: with `index_path`, one built by `deephash index` for this very model (its bit length
and `model_id` must be the encoder's: codes of two models are not comparable, so a mismatch is
an error, not a warning). Without it, the workdir's `config.input.database_split` (the split
`deephash evaluate` searches) is encoded on the fly, in memory, and a log line says so: a
prediction works straight after training, and gives the same matches as an index of that split.
For many queries over a large catalogue, build the index once.
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import logging
import numpy as np

from deephash_jax import config_lib
from deephash_jax import dataset_tree
from deephash_jax import index as index_lib
from deephash_jax import indexing
from deephash_jax import inference
from deephash_jax import input_pipeline

GRID_CELL_INCHES = 1.5


class PredictError(ValueError):
  """A query file, the index or k is unusable; the message names the file and the problem."""


def read_query(path: str, image_shape) -> np.ndarray:
  """A query file as the model's uint8 (H, W, C) input; PredictError naming `path` otherwise."""
  if not os.path.exists(path):
    raise PredictError(f"{path}: no such file")
  if not os.path.isfile(path):
    raise PredictError(f"{path}: not a file")
  try:
    return dataset_tree.read_image(path, image_shape[0], image_shape[2], name=path)
  except dataset_tree.ImageError as e:
    raise PredictError(str(e)) from e


class Predictor:
  """A model and the index it searches, with the class names and images of the index entries."""

  def __init__(self, workdir: str, index_path: str | None = None):
    self.workdir = workdir
    self.index_path = index_path
    config = config_lib.load_config(workdir)
    self._split = None  # The indexed split in memory, once loaded (for thumbnails).
    self._split_loaded = False
    if index_path:  # Checked before the (slower) checkpoint restore.
      self.index = _load_index(index_path, num_bits=int(config.model.num_bits), workdir=workdir)
      self.metadata = indexing.load_metadata(index_path)
    self.encoder = inference.HashEncoder.from_workdir(workdir)
    self.config = self.encoder.config
    if index_path:
      self._check_model_id()
      self.split_name = self.metadata.get("split")
      self.class_names = list(self.metadata.get("class_names") or _default_class_names(
          self.config, self.index.labels))
    else:
      self._index_database_split()
    self.position = {int(i): p for p, i in enumerate(self.index.ids)}

  def _check_model_id(self):
    if self.index.model_id == self.encoder.model_id:
      return
    built_by = (f"{self.metadata['workdir']} at step {self.metadata.get('step')}"
                if self.metadata.get("workdir") else "an unknown model")
    split = self.metadata.get("split") or self.config.input.database_split
    raise PredictError(
        f"{self.index_path}: built by another model ({built_by}, model_id "
        f"{self.index.model_id!r}); this model is {os.path.abspath(self.workdir)} at step "
        f"{self.encoder.step} (model_id {self.encoder.model_id!r}), and codes of two models are "
        f"not comparable. Rebuild the index: deephash index --workdir={self.workdir} "
        f"--split={split} --output={self.index_path} (or leave out --index to encode the "
        "database split on the fly)")

  def _index_database_split(self):
    self.split_name = self.config.input.database_split
    logging.info("No --index given: encoding the %r split of %s (config.input.database_split) "
                 "on the fly; for repeated queries build it once with `deephash index "
                 "--workdir=%s --split=%s --output=<file>` and pass --index.", self.split_name,
                 self.config.input.dataset, self.workdir, self.split_name)
    data, root = indexing.load_catalogue_split(self.config, self.split_name)
    paths = None if data.paths is None else [
        os.path.join(root, *p.split("/")) for p in data.paths]
    self.index = index_lib.HammingIndex(self.encoder.num_bits, model_id=self.encoder.model_id)
    self.index.add(self.encoder.encode(data.images), labels=data.labels, paths=paths)
    self.class_names = list(data.class_names)
    self.metadata = {}
    self._split, self._split_loaded = data, True
    logging.info("Encoded %d %r images.", len(self.index), self.split_name)

  def search(self, images: np.ndarray, k: int, queries: Sequence[str] | None = None) -> list:
    """Result records of the uint8 model-input `images`: one dict per query, see `predict`."""
    if k < 1:
      raise PredictError(f"k={k}: must be at least 1")
    codes = self.encoder.encode(images)
    distances, ids = self.index.search(codes, min(k, len(self.index)))
    queries = queries if queries is not None else [None] * len(images)
    return [{"query": query, "code": code.tobytes().hex(), "num_bits": self.encoder.num_bits,
             "matches": [self._match(rank, int(i), int(d))
                         for rank, (d, i) in enumerate(zip(dist, idx), start=1) if i >= 0]}
            for query, code, dist, idx in zip(queries, codes, distances, ids)]

  def _match(self, rank: int, item_id: int, distance: int) -> dict:
    position = self.position[item_id]
    label_id = None if self.index.labels is None else int(self.index.labels[position])
    label = None
    if label_id is not None:
      label = (self.class_names[label_id] if label_id < len(self.class_names)
               else f"class {label_id}")
    return {"rank": rank, "id": item_id, "label": label, "label_id": label_id,
            "distance": distance,
            "path": self.index.paths[position] if self.index.paths is not None else None}

  def match_image(self, match: dict) -> np.ndarray | None:
    """The model-input image of a match: from its file, else from the indexed split by id."""
    if match["path"]:
      try:
        return read_query(match["path"], self.encoder.image_shape)
      except PredictError as e:
        logging.warning("No thumbnail for match %d: %s", match["id"], e)
        return None
    split = self._indexed_split()
    return None if split is None else split.images[self.position[match["id"]]]

  def _indexed_split(self) -> input_pipeline.Split | None:
    if not self._split_loaded:
      self._split_loaded = True
      split = self.split_name or self.config.input.database_split
      logging.info("The index holds no image paths: reading the %r split of the workdir's "
                   "dataset for the thumbnails.", split)
      data, _ = indexing.load_catalogue_split(self.config, split,
                                              self.metadata.get("image_root"))
      if len(data) != len(self.index):
        logging.warning("The %r split has %d images, the index %d entries: no thumbnails.",
                        split, len(data), len(self.index))
      else:
        self._split = data
    return self._split


def _load_index(index_path: str, *, num_bits: int, workdir: str) -> index_lib.HammingIndex:
  if not os.path.isfile(index_path):
    raise PredictError(f"{index_path}: no such index file (build one with `deephash index`)")
  try:
    index = index_lib.HammingIndex.load(index_path)
  except index_lib.IndexFileError as e:
    raise PredictError(str(e)) from e
  if index.num_bits != num_bits:
    raise PredictError(f"{index_path}: holds {index.num_bits}-bit codes but the model in "
                       f"{workdir} makes {num_bits}-bit codes: it was built by another model; "
                       "rebuild it with `deephash index` and this --workdir")
  if not len(index):
    raise PredictError(f"{index_path}: the index is empty")
  return index


def _default_class_names(config, labels) -> list[str]:
  """Class names for an index without its metadata JSON."""
  if config.input.dataset == "fashion_mnist":
    return list(input_pipeline.FASHION_MNIST_CLASSES)
  count = 0 if labels is None or not len(labels) else int(labels.max()) + 1
  return [f"class {i}" for i in range(count)]


def predict(workdir: str, image_paths: Sequence[str], *, index_path: str | None = None,
            k: int = 10, grid: str | None = None) -> list[dict]:
  """The k nearest index entries of each query image file, by the model in `workdir`.

  Args:
    workdir: a training workdir (config.json and checkpoints).
    image_paths: query image files (any format and size the demo takes).
    index_path: an index of this model built by `deephash index`; None encodes the workdir's
      database split on the fly (see the module docstring).
    k: matches per query (at most the index size).
    grid: when given, a PNG with one row per query: the query, then its matches.

  Returns:
    One record per query, in order: {"query": path, "code": packed code as hex, "num_bits",
    "matches": [{"rank", "id", "label" (class name), "label_id", "distance" (Hamming),
    "path" (image file or None)}]}, matches sorted by (distance, id).

  Raises:
    PredictError: a query file is missing or not an image (named), k < 1, or the index is not
      this model's (bit length or model_id).
  """
  if not image_paths:
    raise PredictError("no query images: pass --image=<file> (repeat it for several)")
  if k < 1:
    raise PredictError(f"k={k}: must be at least 1")
  # Queries are read before the model is loaded, so a bad file fails at once.
  image_shape = config_lib.image_shape(config_lib.load_config(workdir))
  images = np.stack([read_query(p, image_shape) for p in image_paths])
  predictor = Predictor(workdir, index_path)
  results = predictor.search(images, k, [os.path.abspath(p) for p in image_paths])
  if grid:
    rows = [(image, os.path.basename(result["query"]),
             [dict(m, image=predictor.match_image(m)) for m in result["matches"]])
            for image, result in zip(images, results)]
    save_rows_png(rows, grid)
    logging.info("Wrote %s", grid)
  return results


def render_table(results: Sequence[dict]) -> str:
  """Plain-text tables of `predict` results, one per query."""
  blocks = []
  for result in results:
    matches = result["matches"]
    width = max([len(str(m["label"])) for m in matches] + [5])
    lines = [f"query {result['query']}  ({result['num_bits']}-bit code {result['code']})",
             f"{'rank':>4}  {'id':>7}  {'dist':>4}  {'label':<{width}}  path"]
    lines += [f"{m['rank']:>4}  {m['id']:>7}  {m['distance']:>4}  {str(m['label']):<{width}}  "
              f"{m['path'] or '-'}" for m in matches]
    blocks.append("\n".join(lines))
  return "\n\n".join(blocks)


def save_grid_png(query_image: np.ndarray, matches: Sequence[dict], path: str, *,
                  query_title: str = "query") -> None:
  """One query and its matches as a PNG row: each match a dict with "image" (uint8 (H, W, C)
  or None), "rank", "label" and "distance", titled "#rank label / d=distance"."""
  save_rows_png([(query_image, query_title, matches)], path)


def save_rows_png(rows, path: str) -> None:
  """Several `save_grid_png` rows, (query_image, query_title, matches), in one PNG."""
  # The Agg canvas directly: no pyplot, so no global backend or figure state is touched.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  num_cols = 1 + max(len(matches) for _, _, matches in rows)
  figure = Figure(figsize=(GRID_CELL_INCHES * num_cols, 1.25 * GRID_CELL_INCHES * len(rows)))
  FigureCanvasAgg(figure)
  axes = figure.subplots(len(rows), num_cols, squeeze=False)
  for row, (query_image, query_title, matches) in enumerate(rows):
    _show(axes[row, 0], query_image, f"query\n{query_title}", color="tab:blue")
    for col in range(1, num_cols):
      if col > len(matches):
        axes[row, col].set_axis_off()
        continue
      match = matches[col - 1]
      _show(axes[row, col], match.get("image"),
            f"#{match['rank']} {match['label'] if match['label'] is not None else ''}\n"
            f"d={match['distance']}")
  figure.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, format="png", dpi=100)


def _show(axis, image, title: str, color: str | None = None) -> None:
  axis.set_xticks([])
  axis.set_yticks([])
  if image is None:
    axis.text(0.5, 0.5, "no image", ha="center", va="center", transform=axis.transAxes)
  else:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
      axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
      axis.imshow(image)
  axis.set_title(title, fontsize=8)
  if color:
    for spine in axis.spines.values():
      spine.set_color(color)
      spine.set_linewidth(2)
