"""Exact Hamming radius search and counts (faiss ``range_search`` contract).

``range_search(xq, xb, radius) -> (lims, D, I)``: the results of query i are
``D[lims[i]:lims[i+1]]``, ``I[lims[i]:lims[i+1]]``: every database item at distance
<= radius, sorted by (distance, index). Distances come from the same database layout
as the k-NN search (layout.py), chunk by chunk.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from deephash_jax.search import layout
from deephash_jax.search import packing
from deephash_jax.search.layout import PreparedDatabase

RANGE_QUERY_BATCH_SIZE = 32     # queries per radius-search call (host gets their distances)


@functools.partial(jax.jit, static_argnames=("max_distance", "word_weights"))
def _chunk_distances(query_words, chunk, first_index, num_codes, *, max_distance,
                     word_weights=None):
  """(nq, items) distances of one chunk in index order; padding -> max_distance + 1
  (PreparedDatabase.max_distance: num_bits, or the bound of weighted words)."""
  dist = layout.all_distances(query_words, chunk, word_weights)
  index = first_index + jnp.arange(dist.shape[1], dtype=jnp.int32)
  dist = jnp.where(index[None] < num_codes, dist, max_distance + 1)
  return dist.astype(packing.distance_dtype(max_distance + 1))


@functools.partial(jax.jit, static_argnames=("max_distance", "word_weights"))
def _count_within(query_words, chunks, num_codes, radius, *, max_distance, word_weights=None):
  def body(count, xs):
    g, chunk = xs
    dist = _chunk_distances(query_words, chunk, g * int(np.prod(chunk.shape[1:])),
                            num_codes, max_distance=max_distance, word_weights=word_weights)
    return count + jnp.sum(dist.astype(jnp.int32) <= radius, axis=1), None
  init = jnp.zeros(query_words.shape[0], jnp.int32)
  chunk_ids = jnp.arange(chunks.shape[0], dtype=jnp.int32)
  return lax.scan(body, init, (chunk_ids, chunks))[0]


def _check_radius(radius) -> int:
  if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
    raise ValueError(f"radius must be a non-negative int, got {radius!r}")
  return int(radius)


def range_count_prepared(xq_packed, database: PreparedDatabase, radius: int, *,
                         query_batch_size: int = RANGE_QUERY_BATCH_SIZE) -> np.ndarray:
  """``range_count`` against a ``PreparedDatabase``."""
  radius = _check_radius(radius)
  xq_packed = packing.check_packed("xq_packed", xq_packed, database.num_bits)
  counts = np.zeros(xq_packed.shape[0], np.int64)
  if database.num_codes == 0:
    return counts
  for start, stop, words in layout.query_batches(xq_packed, database.num_bits, query_batch_size):
    c = _count_within(jnp.asarray(words), database.chunks, database.num_codes,
                      min(radius, database.max_distance), max_distance=database.max_distance,
                      word_weights=database.word_weights)
    counts[start:stop] = np.asarray(c)[:stop - start]
  return counts


def range_count(xq_packed, xb_packed, radius: int, *, num_bits: int,
                chunk_size: int = layout.DEFAULT_CHUNK_SIZE) -> np.ndarray:
  """Number of database items within Hamming distance ``radius`` of each query (int64 (nq,))."""
  database = layout.prepare_database(xb_packed, num_bits=num_bits, chunk_size=chunk_size)
  return range_count_prepared(xq_packed, database, radius)


def range_search_prepared(xq_packed, database: PreparedDatabase, radius: int, *,
                          query_batch_size: int = RANGE_QUERY_BATCH_SIZE):
  """``range_search`` against a ``PreparedDatabase``."""
  radius = _check_radius(radius)
  query_batch_size = packing.check_positive("query_batch_size", query_batch_size)
  xq_packed = packing.check_packed("xq_packed", xq_packed, database.num_bits)
  nq = xq_packed.shape[0]
  radius = min(radius, database.max_distance)  # padding slots sit at max_distance + 1
  query_parts, dist_parts, index_parts = [], [], []
  chunk_items = database.chunk_items
  if database.num_codes:
    for start, stop, words in layout.query_batches(xq_packed, database.num_bits, query_batch_size):
      words = jnp.asarray(words)
      for g in range(database.chunks.shape[0]):
        dist = np.asarray(_chunk_distances(words, database.chunks[g], g * chunk_items,
                                           database.num_codes,
                                           max_distance=database.max_distance,
                                           word_weights=database.word_weights))
        q, j = np.nonzero(dist[:stop - start] <= radius)  # row-major: index order per query
        query_parts.append(q + start)
        dist_parts.append(dist[q, j].astype(np.int32))
        index_parts.append(j.astype(np.int64) + g * chunk_items)
  query = np.concatenate(query_parts) if query_parts else np.zeros(0, np.int64)
  dist = np.concatenate(dist_parts) if dist_parts else np.zeros(0, np.int32)
  index = np.concatenate(index_parts) if index_parts else np.zeros(0, np.int64)
  order = np.lexsort((index, dist, query))
  lims = np.zeros(nq + 1, np.int64)
  np.cumsum(np.bincount(query, minlength=nq), out=lims[1:])
  return lims, dist[order], index[order]


def range_search(xq_packed, xb_packed, radius: int, *, num_bits: int,
                 chunk_size: int = layout.DEFAULT_CHUNK_SIZE,
                 query_batch_size: int = RANGE_QUERY_BATCH_SIZE):
  """All database items within Hamming distance ``radius`` (faiss ``range_search``).

  Returns:
    (lims, D, I): int64 (nq + 1,), int32 (total,), int64 (total,). The results of
    query i are ``D[lims[i]:lims[i+1]]`` and ``I[lims[i]:lims[i+1]]``, sorted by
    (distance, index); per-query counts are ``np.diff(lims)`` (or ``range_count``).
  """
  num_bits = packing.check_num_bits(num_bits)
  xq_packed = packing.check_packed("xq_packed", xq_packed, num_bits)
  database = layout.prepare_database(xb_packed, num_bits=num_bits, chunk_size=chunk_size)
  return range_search_prepared(xq_packed, database, radius, query_batch_size=query_batch_size)
