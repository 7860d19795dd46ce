"""The demo's FastAPI app: upload a photo (or pick a catalogue image), see its nearest codes.

    deephash demo --workdir=workdirs/catalogue --index=catalogue.dhidx [--port=8000]

JSON API (OpenAPI docs at /docs):
  POST /api/search              multipart field `image` (a photo), query params `k` and
                                `rerank` (0: by Hamming distance; N: the Hamming top-N
                                re-ranked by the photo's continuous code)
  GET  /api/items               catalogue entries, paged (`offset`, `limit`) or `random=true`
  GET  /api/items/{id}          metadata of one entry
  GET  /api/items/{id}/image    its thumbnail (PNG)
  GET  /api/items/{id}/similar  search with that entry's stored code
  GET  /api/info                the model's facts: bits, database size, measured mAP
  GET  /healthz                 liveness

Uploads are checked before they reach the model: an empty request, an empty file, a file over
`max_upload_bytes`, an image over `max_pixels`, a file that is not an image, or a truncated one
each get a 4xx with a message; greyscale, RGBA and palette images are converted like the
catalogue images (the one image loader, data/images.py). The model and the index are the
`Catalogue` that `deephash predict` uses too (catalogue.py).
"""

from __future__ import annotations

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
import uvicorn

from deephash_jax.data import images as images_lib
from deephash_jax.search import index as index_lib
from deephash_jax.serve import catalogue as catalogue_lib

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000
MAX_K = 100
MAX_RERANK = 10_000
# /api/search re-ranks the Hamming top DEFAULT_RERANK by the photo's continuous code (0: off).
DEFAULT_RERANK = index_lib.DEFAULT_CANDIDATES
# Upload problems -> HTTP status: the client can tell "too big" from "not an image".
STATUS_OF_IMAGE_ERROR = {"empty_file": 400, "corrupt": 400, "unreadable": 400,
                         "not_image": 415, "unsupported_format": 415, "too_large": 413}


def api_entry(catalogue: catalogue_lib.Catalogue, item_id: int) -> dict:
  """An entry as the API shows it: the image path relative to the tree, and its URLs."""
  try:
    entry = catalogue.entry(item_id)
  except catalogue_lib.EntryNotFound as e:
    raise HTTPException(404, str(e.args[0])) from e
  root, path = catalogue.metadata.get("image_root"), entry["path"]
  shown = path
  if path and root and path.startswith(root + os.sep):
    shown = os.path.relpath(path, root).replace(os.sep, "/")
  return {"id": item_id, "label": entry["label_id"], "clothing_type": entry["label"],
          "item": entry["item"], "path": shown,
          "image_url": f"/api/items/{item_id}/image" if path else None,
          "url": f"/api/items/{item_id}"}


def api_results(catalogue: catalogue_lib.Catalogue, matches: list[dict]) -> list[dict]:
  """One query's matches (`Catalogue.search_codes` or `search_embeddings`) as the API shows
  them."""
  return [dict(api_entry(catalogue, m["id"]), rank=m["rank"], distance=m["distance"],
               **{k: m[k] for k in ("asymmetric_distance",) if k in m}) for m in matches]


def _info(catalogue: catalogue_lib.Catalogue, workdir: str) -> dict:
  encoder = catalogue.encoder
  return {"num_bits": encoder.num_bits, "database_size": len(catalogue),
          "model_id": encoder.model_id, "step": encoder.step, "split": catalogue.split_name,
          "image_shape": list(encoder.image_shape), "class_names": catalogue.class_names,
          "has_images": catalogue.index.paths is not None, "eval": _eval_results(workdir),
          "max_k": MAX_K}


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


async def refuse_large_bodies(request: fastapi.Request, call_next):
  """Refuses a too-large upload from its Content-Length, before reading the body."""
  length = request.headers.get("content-length")
  limit = request.app.state.max_upload_bytes
  if request.url.path == "/api/search" and length and length.isdigit() and (
      int(length) > limit + 64 * 1024):  # room for the multipart framing
    return JSONResponse({"detail": f"request of {int(length):,} bytes: larger than the "
                                   f"{_size(limit)} upload limit"},
                        status_code=413, headers={"Connection": "close"})
  return await call_next(request)


def search_upload(catalogue: catalogue_lib.Catalogue, image: UploadFile | None, k: int, *,
                  rerank: int, max_bytes: int, max_pixels: int) -> dict:
  """The response of POST /api/search: the upload decoded, encoded and searched, timed."""
  start = time.perf_counter()
  data = _read_upload(image, max_bytes)
  name = image.filename or "upload"
  height, _, channels = catalogue.encoder.image_shape
  try:
    with images_lib.decode_image(data, name=name, max_pixels=max_pixels) as decoded:
      query = {"width": decoded.width, "height": decoded.height, "mode": decoded.mode,
               "format": decoded.format}
      pixels = images_lib.to_model_array(decoded, height, channels)
  except images_lib.ImageError as e:
    raise HTTPException(STATUS_OF_IMAGE_ERROR.get(e.kind, 400), str(e)) from e
  decoded_at = time.perf_counter()
  code = catalogue.encoder.embed(pixels[None])
  encoded_at = time.perf_counter()
  results = api_results(catalogue, catalogue.search_embeddings(code, k, rerank=rerank)[0])
  done = time.perf_counter()
  return {
      "query": query, "k": k, "rerank": rerank, "num_bits": catalogue.encoder.num_bits,
      "results": results,
      "timing_ms": {"decode": round(1e3 * (decoded_at - start), 2),
                    "encode": round(1e3 * (encoded_at - decoded_at), 2),
                    "search": round(1e3 * (done - encoded_at), 2),
                    "total": round(1e3 * (done - start), 2)},
  }


def create_app(workdir: str, index_path: str, *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_pixels: int = MAX_PIXELS) -> fastapi.FastAPI:
  """The app over a trained workdir and an index built with it (`deephash index`)."""
  catalogue = catalogue_lib.Catalogue.open(workdir, index_path)
  info_dict = _info(catalogue, workdir)
  # Compile the embedding and the search once, before the first request.
  catalogue.search_codes(catalogue.encoder.encode(
      np.zeros((1, *catalogue.encoder.image_shape), np.uint8)), 1)
  app = fastapi.FastAPI(
      title="deephash demo",
      description="Search a catalogue by photo with binary hash codes and Hamming distance.",
      version="1")
  app.state.catalogue = catalogue
  app.state.max_upload_bytes = max_upload_bytes  # read per request, so tests can lower them
  app.state.max_pixels = max_pixels

  app.middleware("http")(refuse_large_bodies)

  @app.get("/", include_in_schema=False)
  def page():
    return FileResponse(os.path.join(STATIC_DIR, "index.html"))

  app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

  @app.get("/healthz")
  def healthz():
    return {"status": "ok", "database_size": len(catalogue.index)}

  @app.get("/api/info")
  def info():
    return info_dict

  @app.post("/api/search")
  def search(image: UploadFile | None = File(None, description="the query photo"),
             k: int = Query(10, ge=1, le=MAX_K, description="number of results"),
             rerank: int = Query(DEFAULT_RERANK, ge=0, le=MAX_RERANK, description=(
                 "0: rank by Hamming distance; N: re-rank the Hamming top N by the photo's "
                 "continuous code (asymmetric distance)"))):
    """Encodes the uploaded photo and returns its k nearest catalogue entries."""
    return search_upload(catalogue, image, k, rerank=rerank,
                         max_bytes=app.state.max_upload_bytes, max_pixels=app.state.max_pixels)

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
    return {"total": len(catalogue.index), "items": [api_entry(catalogue, i) for i in ids]}

  @app.get("/api/items/{item_id}")
  def item(item_id: int):
    return api_entry(catalogue, item_id)

  @app.get("/api/items/{item_id}/image", response_class=Response,
           responses={200: {"content": {"image/png": {}}}})
  def item_image(item_id: int):
    try:
      thumbnail = catalogue.thumbnail(item_id)
    except catalogue_lib.EntryNotFound as e:
      raise HTTPException(404, str(e.args[0])) from e
    return Response(thumbnail, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

  @app.get("/api/items/{item_id}/similar")
  def similar(item_id: int, k: int = Query(10, ge=1, le=MAX_K)):
    """The k nearest entries to a catalogue entry, by its stored code (itself first)."""
    query = api_entry(catalogue, item_id)
    code = catalogue.index.view_codes(0)[catalogue.position[item_id]][None]   # its own code
    return {"query": query, "k": k, "num_bits": catalogue.encoder.num_bits,
            "results": api_results(catalogue, catalogue.search_codes(code, k)[0])}

  return app


def serve(workdir: str, index_path: str, *, port: int = 8000, host: str = "127.0.0.1") -> None:
  """Runs the demo with uvicorn on `host:port` (loopback by default)."""
  app = create_app(workdir, index_path)
  logging.info("Demo on http://%s:%d/ (API docs: /docs)", host, port)
  print(f"deephash demo: http://{host}:{port}/  (API docs: http://{host}:{port}/docs)",
        flush=True)
  uvicorn.run(app, host=host, port=port, log_level="warning")
