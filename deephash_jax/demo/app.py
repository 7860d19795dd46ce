"""The demo's FastAPI app: upload a photo (or pick a catalogue image), see its nearest codes.

    deephash demo --workdir=workdirs/catalogue --index=catalogue.dhidx [--port=8000]

JSON API (OpenAPI docs at /docs):
  POST /api/search              multipart field `image` (a photo), query param `k`
  GET  /api/items               catalogue entries, paged (`offset`, `limit`) or `random=true`
  GET  /api/items/{id}          metadata of one entry
  GET  /api/items/{id}/image    its thumbnail (PNG)
  GET  /api/items/{id}/similar  search with that entry's stored code
  GET  /api/info                the model's facts: bits, database size, measured mAP
  GET  /healthz                 liveness

Uploads are checked before they reach the model: an empty request, an empty file, a file over
`max_upload_bytes`, an image over `max_pixels`, a file that is not an image, or a truncated one
each get a 4xx with a message; greyscale, RGBA and palette images are converted like the
catalogue images (`dataset_tree.to_model_array`).
"""

from __future__ import annotations

import functools
import io
import json
import os
import time

from absl import logging
import fastapi
from fastapi import File, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
import numpy as np
import starlette.datastructures
from PIL import Image, ImageOps

from deephash_jax import dataset_tree
from deephash_jax import index as index_lib
from deephash_jax import indexing
from deephash_jax import inference

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000
MAX_K = 100
THUMBNAIL_SIZE = 160
# Upload problems -> HTTP status: the client can tell "too big" from "not an image".
STATUS_OF_IMAGE_ERROR = {"empty_file": 400, "corrupt": 400, "unreadable": 400,
                         "not_image": 415, "unsupported_format": 415, "too_large": 413}


class Catalogue:
  """The model, the index and what the page shows about them; thread-safe for reads."""

  def __init__(self, workdir: str, index_path: str):
    self.encoder = inference.HashEncoder.from_workdir(workdir)
    self.index = index_lib.HammingIndex.load(index_path,
                                             expected_model_id=self.encoder.model_id)
    metadata = indexing.load_metadata(index_path)
    labels = self.index.labels
    count = 0 if labels is None or not len(labels) else int(labels.max()) + 1
    self.class_names = list(metadata.get("class_names") or [f"class {i}" for i in range(count)])
    self.items = metadata.get("items")
    self.paths = self.index.paths
    self.position = {int(i): p for p, i in enumerate(self.index.ids)}
    self.image_root = metadata.get("image_root")
    self.info = {
        "num_bits": self.encoder.num_bits, "database_size": len(self.index),
        "model_id": self.encoder.model_id, "step": self.encoder.step,
        "split": metadata.get("split"), "image_shape": list(self.encoder.image_shape),
        "class_names": self.class_names, "has_images": self.paths is not None,
        "eval": _eval_results(workdir), "max_k": MAX_K,
    }
    self._thumbnail = functools.lru_cache(maxsize=4096)(self._make_thumbnail)
    # Compile the embedding and the search once, before the first request.
    self.search_codes(self.encode(np.zeros(self.encoder.image_shape, np.uint8)), 1)

  def encode(self, image: np.ndarray) -> np.ndarray:
    return self.encoder.encode(image[None])

  def search_codes(self, packed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    distances, ids = self.index.search(packed, min(k, len(self.index)))
    return distances[0], ids[0]

  def entry(self, item_id: int) -> dict:
    position = self.position.get(item_id)
    if position is None:
      raise HTTPException(404, f"no catalogue entry with id {item_id} (ids are 0.."
                               f"{len(self.index) - 1})")
    label = None if self.index.labels is None else int(self.index.labels[position])
    path = self.paths[position] if self.paths is not None else None
    shown = path
    if path and self.image_root and path.startswith(self.image_root + os.sep):
      shown = os.path.relpath(path, self.image_root).replace(os.sep, "/")
    return {
        "id": item_id,
        "label": label,
        "clothing_type": (self.class_names[label] if label is not None
                          and label < len(self.class_names) else None),
        "item": self.items[position] if self.items else None,
        "path": shown,
        "image_url": f"/api/items/{item_id}/image" if path else None,
        "url": f"/api/items/{item_id}",
    }

  def results(self, distances, ids) -> list[dict]:
    return [dict(self.entry(int(i)), rank=rank, distance=int(d))
            for rank, (d, i) in enumerate(zip(distances, ids), start=1) if i >= 0]

  def thumbnail(self, item_id: int) -> bytes:
    entry = self.entry(item_id)
    if self.paths is None:
      raise HTTPException(404, "this index holds no image paths (its dataset has no files); "
                               "rebuild it with `deephash index --image_root=<tree>`")
    return self._thumbnail(self.position[item_id], entry["id"])

  def _make_thumbnail(self, position: int, item_id: int) -> bytes:
    path = self.paths[position]
    try:
      with dataset_tree.decode_image(path, name=path) as image:
        image = ImageOps.exif_transpose(image)
        image = image.convert("RGBA" if "A" in image.getbands() or image.mode == "P" else "RGB")
        if image.mode == "RGBA":
          image = Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image)
        image = image.convert("RGB")
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.LANCZOS)
    except dataset_tree.DataError as e:
      raise HTTPException(404, f"catalogue entry {item_id}: {e}") from e
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _eval_results(workdir: str) -> dict | None:
  """The measured metrics of the workdir (written by training), if present."""
  try:
    with open(os.path.join(workdir, "eval_results.json")) as f:
      results = json.load(f)
  except (OSError, ValueError):
    return None
  keep = {k: v for k, v in results.items()
          if k.startswith(("map", "precision", "recall", "num_")) and isinstance(v, (int, float))}
  return keep or None


def _size(num_bytes: int) -> str:
  return f"{num_bytes / 2**20:.1f} MiB" if num_bytes >= 2**20 else f"{num_bytes:,} bytes"


def _read_upload(image: UploadFile | None, max_bytes: int) -> bytes:
  if image is None or not isinstance(image, starlette.datastructures.UploadFile):
    raise HTTPException(400, "no image: send a multipart/form-data request with the photo in "
                             "the field 'image'")
  data = image.file.read(max_bytes + 1)
  if len(data) > max_bytes:
    raise HTTPException(413, f"{image.filename or 'upload'}: larger than the "
                             f"{_size(max_bytes)} upload limit")
  if not data:
    raise HTTPException(400, f"{image.filename or 'upload'}: empty file (0 bytes)")
  return data


def create_app(workdir: str, index_path: str, *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_pixels: int = MAX_PIXELS) -> fastapi.FastAPI:
  """The app over a trained workdir and an index built with it (`deephash index`)."""
  catalogue = Catalogue(workdir, index_path)
  app = fastapi.FastAPI(
      title="deephash demo",
      description="Search a catalogue by photo with binary hash codes and Hamming distance.",
      version="1")
  app.state.catalogue = catalogue
  app.state.max_upload_bytes = max_upload_bytes  # read per request, so tests can lower them
  app.state.max_pixels = max_pixels

  @app.middleware("http")
  async def refuse_large_bodies(request: fastapi.Request, call_next):
    """Refuses a too-large upload from its Content-Length, before reading the body."""
    length = request.headers.get("content-length")
    limit = app.state.max_upload_bytes
    if request.url.path == "/api/search" and length and length.isdigit() and (
        int(length) > limit + 64 * 1024):  # room for the multipart framing
      return JSONResponse({"detail": f"request of {int(length):,} bytes: larger than the "
                                     f"{_size(limit)} upload limit"},
                          status_code=413, headers={"Connection": "close"})
    return await call_next(request)

  @app.get("/", include_in_schema=False)
  def page():
    return FileResponse(os.path.join(STATIC_DIR, "index.html"))

  app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

  @app.get("/healthz")
  def healthz():
    return {"status": "ok", "database_size": len(catalogue.index)}

  @app.get("/api/info")
  def info():
    return catalogue.info

  @app.post("/api/search")
  def search(image: UploadFile | None = File(None, description="the query photo"),
             k: int = Query(10, ge=1, le=MAX_K, description="number of results")):
    """Encodes the uploaded photo and returns its k nearest catalogue entries."""
    start = time.perf_counter()
    data = _read_upload(image, app.state.max_upload_bytes)
    name = image.filename or "upload"
    height, _, channels = catalogue.encoder.image_shape
    try:
      with dataset_tree.decode_image(data, name=name,
                                     max_pixels=app.state.max_pixels) as decoded:
        query = {"width": decoded.width, "height": decoded.height, "mode": decoded.mode,
                 "format": decoded.format}
        pixels = dataset_tree.to_model_array(decoded, height, channels)
    except dataset_tree.ImageError as e:
      raise HTTPException(STATUS_OF_IMAGE_ERROR.get(e.kind, 400), str(e)) from e
    decoded_at = time.perf_counter()
    code = catalogue.encode(pixels)
    encoded_at = time.perf_counter()
    distances, ids = catalogue.search_codes(code, k)
    done = time.perf_counter()
    return {
        "query": query, "k": k, "num_bits": catalogue.encoder.num_bits,
        "results": catalogue.results(distances, ids),
        "timing_ms": {"decode": round(1e3 * (decoded_at - start), 2),
                      "encode": round(1e3 * (encoded_at - decoded_at), 2),
                      "search": round(1e3 * (done - encoded_at), 2),
                      "total": round(1e3 * (done - start), 2)},
    }

  @app.get("/api/items")
  def items(offset: int = Query(0, ge=0), limit: int = Query(24, ge=1, le=200),
            random: bool = Query(False, description="a random sample instead of a page")):
    """Catalogue entries (paged, or a random sample for the page's picker)."""
    if random:
      rng = np.random.default_rng()
      positions = rng.choice(len(catalogue.index), min(limit, len(catalogue.index)),
                             replace=False)
    else:
      positions = range(offset, min(offset + limit, len(catalogue.index)))
    ids = [int(catalogue.index.ids[p]) for p in positions]
    return {"total": len(catalogue.index), "items": [catalogue.entry(i) for i in ids]}

  @app.get("/api/items/{item_id}")
  def item(item_id: int):
    return catalogue.entry(item_id)

  @app.get("/api/items/{item_id}/image", response_class=Response,
           responses={200: {"content": {"image/png": {}}}})
  def item_image(item_id: int):
    return Response(catalogue.thumbnail(item_id), media_type="image/png",
                    headers={"Cache-Control": "max-age=3600"})

  @app.get("/api/items/{item_id}/similar")
  def similar(item_id: int, k: int = Query(10, ge=1, le=MAX_K)):
    """The k nearest entries to a catalogue entry, by its stored code (itself first)."""
    query = catalogue.entry(item_id)
    code = catalogue.index.codes[catalogue.position[item_id]][None]
    distances, ids = catalogue.search_codes(code, k)
    return {"query": query, "k": k, "num_bits": catalogue.encoder.num_bits,
            "results": catalogue.results(distances, ids)}

  return app


def serve(workdir: str, index_path: str, *, port: int = 8000, host: str = "127.0.0.1") -> None:
  """Runs the demo with uvicorn on `host:port` (loopback by default)."""
  import uvicorn  # pylint: disable=g-import-not-at-top
  app = create_app(workdir, index_path)
  logging.info("Demo on http://%s:%d/ (API docs: /docs)", host, port)
  print(f"deephash demo: http://{host}:{port}/  (API docs: http://{host}:{port}/docs)",
        flush=True)
  uvicorn.run(app, host=host, port=port, log_level="warning")
