"""The non-learned references the learned codes are measured against.

* Pixel-space SAD, the seed paper's simple approach: exact nearest neighbours by the sum of
  absolute pixel differences (`sad_search`, a jitted, chunked JAX scan, faiss-style (D, I)).
* Float codes: the continuous codes of a trained model before binarisation, ranked by cosine
  (`cosine_distance_rows`).

Both are ranked by evaluators/ranking.py, with the same definitions and ties rule as the codes.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from deephash_jax import encoder as encoder_lib
from deephash_jax.data import registry
from deephash_jax.evaluators import closest_match
from deephash_jax.evaluators import ranking
from deephash_jax.search import hamming
from deephash_jax.search import layout
from deephash_jax.search import packing


# float32 sums of up to this many |uint8 differences| are exact integers (< 2**24).
_EXACT_PIXELS = (1 << 24) // 255 - 1
_FAR = 1 << 30        # distance of padding / missing results, exact in float32 and int32


@dataclasses.dataclass(frozen=True)
class SadDatabase:
  """Images laid out for `sad_search`: (chunks, blocks, block_pixels, chunk_size) uint8 on device,
  pixels first so that the inner loop runs along contiguous database items."""
  tiles: jax.Array
  num_images: int
  num_pixels: int


def prepare_sad_database(images: np.ndarray, *, chunk_size: int = 4096) -> SadDatabase:
  flat = np.asarray(images, np.uint8).reshape(len(images), -1)
  n, pixels = flat.shape
  block = min(pixels, _EXACT_PIXELS)
  blocks = -(-pixels // block)
  chunk_size = max(1, min(chunk_size, n))
  chunks = max(1, -(-n // chunk_size))
  padded = np.zeros((chunks * chunk_size, blocks * block), np.uint8)
  padded[:n, :pixels] = flat   # zero pixels add |0 - 0| = 0 to every distance
  tiles = padded.reshape(chunks, chunk_size, blocks, block).transpose(0, 2, 3, 1)
  return SadDatabase(jnp.asarray(np.ascontiguousarray(tiles)), n, pixels)


def _sad_tile(queries_t, tile):
  """(blocks, block, Q) float32 queries x (blocks, block, C) uint8 tile -> (Q, C) int32 SAD.

  A loop over pixels adding one (Q, C) plane of |differences|: XLA vectorises it along the
  tile's items, ~5x faster on CPU than broadcasting (Q, C, pixels) and reducing. Each block of
  pixels is summed exactly in float32, the blocks in int32.
  """
  num_blocks, block, q = queries_t.shape
  c = tile.shape[-1]

  def add_block(b, total):
    def add_pixel(p, acc):
      return acc + jnp.abs(queries_t[b, p][:, None] - tile[b, p].astype(jnp.float32)[None, :])
    part = lax.fori_loop(0, block, add_pixel, jnp.zeros((q, c), jnp.float32))
    return total + part.astype(jnp.int32)

  return lax.fori_loop(0, num_blocks, add_block, jnp.zeros((q, c), jnp.int32))


def _queries_t(queries, blocks, block):
  q = queries.shape[0]
  padded = jnp.zeros((q, blocks * block), jnp.float32).at[:, :queries.shape[1]].set(
      queries.astype(jnp.float32))
  return padded.reshape(q, blocks, block).transpose(1, 2, 0)


@jax.jit
def _sad_rows(queries, tiles):
  _, blocks, block, _ = tiles.shape
  qt = _queries_t(queries, blocks, block)
  rows = lax.map(lambda tile: _sad_tile(qt, tile), tiles)        # (chunks, Q, C)
  return jnp.transpose(rows, (1, 0, 2)).reshape(queries.shape[0], -1)


@functools.partial(jax.jit, static_argnames=("k", "num_images"))
def _sad_top_k(queries, tiles, *, k, num_images):
  num_chunks, blocks, block, chunk_size = tiles.shape
  qt = _queries_t(queries, blocks, block)
  q = queries.shape[0]
  # XLA:CPU's float32 top_k is a partial sort (~100x faster than its int32 top_k, a full sort);
  # it is exact while every distance is an integer below 2**24.
  key_dtype = jnp.float32 if queries.shape[1] * 255 < (1 << 24) else jnp.int32

  def scan_chunk(best, xs):
    tile, first = xs
    index = first + jnp.arange(chunk_size, dtype=jnp.int32)
    dist = jnp.where(index < num_images, _sad_tile(qt, tile), _FAR).astype(key_dtype)
    # The running best hold lower indices than this chunk and come first: top_k keeps the lower
    # position on ties, so ties go to the lower database index.
    all_dist = jnp.concatenate([best[0], dist], axis=1)
    all_index = jnp.concatenate([best[1], jnp.broadcast_to(index, (q, chunk_size))], axis=1)
    neg, pos = lax.top_k(-all_dist, k)
    return (-neg, jnp.take_along_axis(all_index, pos, axis=1)), None

  init = (jnp.full((q, k), _FAR, key_dtype), jnp.full((q, k), -1, jnp.int32))
  firsts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk_size
  (dist, index), _ = lax.scan(scan_chunk, init, (tiles, firsts))
  dist = dist.astype(jnp.int32)
  return dist, jnp.where(dist == _FAR, -1, index)


def _query_batches(queries, database: SadDatabase, batch_size: int):
  flat = np.asarray(queries, np.uint8).reshape(len(queries), -1)
  if flat.shape[1] != database.num_pixels:
    raise ValueError(f"queries have {flat.shape[1]} pixels per image, the database "
                     f"{database.num_pixels}")
  batch_size = max(1, min(batch_size, len(flat)))
  for start in range(0, len(flat), batch_size):
    chunk = flat[start:start + batch_size]
    pad = batch_size - len(chunk)          # one compiled shape for every batch
    yield len(chunk), np.pad(chunk, ((0, pad), (0, 0)))


def sad_distances(queries, database: SadDatabase, *, query_batch_size: int = 256) -> np.ndarray:
  """All sums of absolute pixel differences, int64 (Q, N)."""
  out = [np.asarray(_sad_rows(jnp.asarray(chunk), database.tiles))[:n, :database.num_images]
         for n, chunk in _query_batches(queries, database, query_batch_size)]
  return (np.concatenate(out).astype(np.int64) if out
          else np.zeros((0, database.num_images), np.int64))


def sad_search(queries, database: SadDatabase, k: int, *,
               query_batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Exact k-NN by sum of absolute pixel differences, faiss-style `(D, I)`.

  D: int64 (Q, k) distances, I: int64 (Q, k) database indices, each row sorted by (distance,
  index); missing results (k > database size) have index -1 and distance 2**30.
  """
  packing.check_positive("k", k)
  dists, indices = [], []
  for n, chunk in _query_batches(queries, database, query_batch_size):
    d, i = _sad_top_k(jnp.asarray(chunk), database.tiles, k=int(k),
                      num_images=database.num_images)
    dists.append(np.asarray(d)[:n])
    indices.append(np.asarray(i)[:n])
  if not dists:
    return np.zeros((0, k), np.int64), np.zeros((0, k), np.int64)
  return np.concatenate(dists).astype(np.int64), np.concatenate(indices).astype(np.int64)


def cosine_distance_rows(query_embeddings, db_embeddings) -> Callable[[int, int], np.ndarray]:
  """`distance_rows` for `ranking_metrics`: 1 - cosine similarity, in float64."""
  def normalise(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  q, d = normalise(query_embeddings), normalise(db_embeddings)
  return lambda start, stop: 1.0 - q[start:stop] @ d.T


# ----------------------------------------------------------------- the references' metrics

SEARCH_K = 10   # k of the timed k-NN searches


def _timed(fn, *args, **kwargs):
  started = time.perf_counter()
  result = fn(*args, **kwargs)
  return result, time.perf_counter() - started


def _both_protocols(distance_rows, cm_rows, query, database, protocol, *, num_queries,
                    map_at, ties, batch):
  """(category, closest-match) metrics of one distance, ranked as the learned codes are."""
  category = ranking.ranking_metrics(
      distance_rows, query.labels[:num_queries], database.labels, map_at=map_at,
      recall_at=(1, 10), ties=ties, query_batch_size=batch)
  cm = ranking.ranking_metrics(cm_rows, protocol.query_ids, protocol.db_ids, recall_at=(1, 10),
                               ties=ties, query_batch_size=batch)
  return category, cm


def pixel_sad(config, *, num_category_queries: int, timing_queries: int,
              chunk_size: int = 4096, batch: int = 256) -> dict:
  """Both protocols by exact pixel SAD, and its k-NN queries/s on the closest-match database."""
  query = registry.load_split(config.input, config.input.query_split)
  database = registry.load_split(config.input, config.input.database_split)
  protocol = closest_match.prepare(query.images, len(database), config.eval.closest_match)
  nq = min(num_category_queries or len(query), len(query))
  started = time.time()
  category_db = prepare_sad_database(database.images, chunk_size=chunk_size)
  cm_db = prepare_sad_database(np.concatenate([query.images, database.images]),
                               chunk_size=chunk_size)
  category, cm = _both_protocols(
      lambda a, b: sad_distances(query.images[a:b], category_db, query_batch_size=batch),
      lambda a, b: sad_distances(protocol.queries[a:b], cm_db, query_batch_size=batch),
      query, database, protocol, num_queries=nq, map_at=tuple(config.eval.map_at),
      ties=config.eval.get("ties", "expected"), batch=batch)
  timed = protocol.queries[:min(timing_queries, len(protocol.queries))]
  sad_search(timed[:batch], cm_db, SEARCH_K, query_batch_size=batch)   # compile first
  _, seconds = _timed(sad_search, timed, cm_db, SEARCH_K, query_batch_size=batch)
  return {"category": category, "closest_match": cm, "num_category_queries": nq,
          "queries_per_second": len(timed) / seconds, "timing_queries": len(timed),
          "seconds": time.time() - started}


def float_codes(encoder: encoder_lib.HashEncoder, *, num_category_queries: int,
                timing_queries: int, batch: int = 256) -> dict:
  """Both protocols by cosine on a trained model's continuous codes (`HashEncoder.from_workdir`),
  and the Hamming k-NN queries/s of its binary codes on the closest-match database."""
  started = time.time()
  config = encoder.config
  query = registry.load_split(config.input, config.input.query_split)
  database = registry.load_split(config.input, config.input.database_split)
  protocol = closest_match.prepare(query.images, len(database), config.eval.closest_match)
  nq = min(num_category_queries or len(query), len(query))
  query_codes, db_codes = encoder.embed(query.images), encoder.embed(database.images)
  cm_codes = encoder.embed(protocol.queries)
  cm_db_codes = np.concatenate([query_codes, db_codes])
  category, cm = _both_protocols(
      cosine_distance_rows(query_codes[:nq], db_codes), cosine_distance_rows(cm_codes,
                                                                            cm_db_codes),
      query, database, protocol, num_queries=nq, map_at=tuple(config.eval.map_at),
      ties=config.eval.get("ties", "expected"), batch=batch)
  timed = packing.pack_bits(cm_codes[:min(timing_queries, len(cm_codes))])
  prepared = layout.prepare_database(packing.pack_bits(cm_db_codes), num_bits=encoder.num_bits)
  hamming.search_prepared(timed, prepared, SEARCH_K)   # compile first
  _, seconds = _timed(hamming.search_prepared, timed, prepared, SEARCH_K)
  return {"category": category, "closest_match": cm, "num_category_queries": nq,
          "step": encoder.step, "hamming_queries_per_second": len(timed) / seconds,
          "timing_queries": len(timed), "seconds": time.time() - started}
