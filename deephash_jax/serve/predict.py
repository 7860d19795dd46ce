r"""`deephash predict`: the nearest catalogue images of query photos, by a trained model.

    deephash predict --workdir=workdirs/fm --image=query.png [--image=other.jpg] \
        [--index=fm.dhidx] [--k=10] [--rerank=100] [--json] [--grid=matches.png]

Each query file is read like the demo's uploads and the catalogue's own images (the one image
loader, data/images.py: EXIF rotation, transparency on black, converted and resized to the
model's input), encoded by the model and searched exactly in the catalogue (catalogue.py: an
index built by `deephash index` for this very model, or without one the workdir's database split
encoded on the fly). The Hamming top-`rerank` (100 by default) is re-ranked by the asymmetric
distance of the query's continuous code (search/asymmetric.py); with rerank=0 matches come
sorted by (Hamming distance, id).
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from deephash_jax import config_lib
from deephash_jax.data import registry
from deephash_jax.search import index as index_lib
from deephash_jax.search import packing
from deephash_jax.serve import catalogue as catalogue_lib

GRID_CELL_INCHES = 1.5


def predict(workdir: str, image_paths: Sequence[str], *, index_path: str | None = None,
            k: int = 10, rerank: int = index_lib.DEFAULT_CANDIDATES,
            grid: str | None = None) -> list[dict]:
  """The k nearest index entries of each query image file, by the model in `workdir`.

  Args:
    workdir: a training workdir (config.json and checkpoints).
    image_paths: query image files (any format and size the demo takes).
    index_path: an index of this model built by `deephash index`; None encodes the workdir's
      database split on the fly (see the module docstring).
    k: matches per query (at most the index size).
    rerank: 0, the Hamming ranking; > 0, the Hamming top-`rerank` re-ranked by the asymmetric
      distance (`Catalogue.search_embeddings`; default `index.DEFAULT_CANDIDATES`).
    grid: when given, a PNG with one row per query: the query, then its matches.

  Returns:
    One record per query, in order: {"query": path, "code": packed code as hex, "num_bits",
    "matches": [{"rank", "id", "label" (class name), "label_id", "distance" (Hamming),
    "path" (image file or None), and re-ranked "asymmetric_distance"}]}, matches sorted by
    (distance, id) or, re-ranked, by asymmetric distance.

  Raises:
    CatalogueError: a query file is missing or not an image (named), k < 1, rerank < 0, or the
      index is not this model's (bit length or model_id).
  """
  if not image_paths:
    raise catalogue_lib.CatalogueError("no query images: pass --image=<file> (repeat it for "
                                       "several)")
  if k < 1:
    raise catalogue_lib.CatalogueError(f"k={k}: must be at least 1")
  if rerank < 0:
    raise catalogue_lib.CatalogueError(f"rerank={rerank}: 0 (the Hamming ranking) or the number "
                                       "of Hamming candidates to re-rank")
  # Queries are read before the model is loaded, so a bad file fails at once.
  image_shape = registry.image_shape(config_lib.load_config(workdir).input)
  images = np.stack([catalogue_lib.read_query(p, image_shape) for p in image_paths])
  catalogue = catalogue_lib.Catalogue.open(workdir, index_path)
  embeddings = catalogue.encoder.embed(images)
  codes = packing.pack_bits(embeddings)
  num_bits = catalogue.encoder.num_bits
  keys = ("rank", "id", "label", "label_id", "distance", "path") + (
      ("asymmetric_distance",) if rerank else ())
  results = [{"query": os.path.abspath(path), "code": code.tobytes().hex(), "num_bits": num_bits,
              "matches": [{key: m[key] for key in keys} for m in matches]}
             for path, code, matches in zip(
                 image_paths, codes, catalogue.search_embeddings(embeddings, k, rerank=rerank))]
  if grid:
    rows = [(image, os.path.basename(result["query"]),
             [dict(m, image=catalogue.entry_image(m["id"])) for m in result["matches"]])
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
    asymmetric = bool(matches) and "asymmetric_distance" in matches[0]
    extra = lambda m: f"  {m['asymmetric_distance']:>7.3f}" if asymmetric else ""
    head = f"  {'asym':>7}" if asymmetric else ""
    lines = [f"query {result['query']}  ({result['num_bits']}-bit code {result['code']})",
             f"{'rank':>4}  {'id':>7}  {'dist':>4}{head}  {'label':<{width}}  path"]
    lines += [f"{m['rank']:>4}  {m['id']:>7}  {m['distance']:>4}{extra(m)}  "
              f"{str(m['label']):<{width}}  {m['path'] or '-'}" for m in matches]
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
