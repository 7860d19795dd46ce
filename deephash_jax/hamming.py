"""Packed binary codes and exact, jitted Hamming k-NN and radius search.

Naming and contracts follow faiss ``IndexBinaryFlat``:

* codes are packed to bytes with ``np.packbits(bits, axis=1, bitorder="little")``:
  bit ``j`` of a code is bit ``j % 8`` of byte ``j // 8``, padding bits are zero;
* ``search(xq, xb, k) -> (D, I)``: int32 distances and int64 database indices,
  each row sorted by (distance, index): ties are broken by lower database index,
  so results equal a brute-force stable sort of the NumPy popcount distances;
  missing results (k larger than the database) have index -1 and distance
  ``num_bits + 1``;
* ``range_search(xq, xb, radius) -> (lims, D, I)``: the results of query i are
  ``D[lims[i]:lims[i+1]]``, ``I[lims[i]:lims[i+1]]``, every item at distance
  <= radius, sorted by (distance, index).

How the exact k-NN search stays fast on CPU (block-minimum pruning):

* The database is cut into *blocks* of ``rows`` consecutive items. Pass 1, one
  fused XOR + popcount + minimum loop, gives every block's minimum distance to
  every query; it is the only pass over all items.
* Selection: take the k+1 blocks with the smallest minima, ties to the lower
  block. This is exact: if item e is among the k best (order: distance, then
  index), every fully valid block ranked before e's block holds its own item
  ranked before e (blocks are index ranges), so there are at most k-1 of them;
  the one partly padded block of a chunk may rank early by accident, hence k+1.
  With many blocks the same argument is applied once more to super-blocks of
  16 consecutive blocks, so every ``top_k`` runs on short rows.
* Pass 2: exact distances of the (k+1) * rows items of the selected blocks, laid
  out in index order, and a final selection of the k best.
* Selections exploit the small integer range of distances: on rows of up to
  4096 values a binary search on counts finds the k-th smallest value, and
  running counts (two small exact matmuls) place the winners: several times
  cheaper than XLA:CPU's top-k, a heap per row. Longer rows use ``lax.top_k``
  on float32 distances (exact for these integers, ties to the lower position).
* Layout for pass 1: a chunk is stored as ``(words, tiles, rows, tile_cols)``
  with block ``b`` in column ``b % tile_cols`` of tile ``b // tile_cols``; the
  minimum over rows is a chain of elementwise minima, which XLA vectorises along
  contiguous columns, and a tile (about 256 KiB) stays in cache while every
  query of the batch scans it.
* The database is processed chunk by chunk under ``lax.scan`` with a running
  top-k merge, so memory stays bounded by one chunk's block minima
  (queries x chunk_size / rows bytes).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = [
    "PreparedDatabase", "check_packed", "default_block_rows", "num_bytes", "pack_bits",
    "prepare_database", "range_count", "range_count_prepared", "range_search",
    "range_search_prepared", "search", "search_prepared", "sharded_search", "unpack_bits",
]

DEFAULT_CHUNK_SIZE = 1 << 20    # database items per scanned chunk
DEFAULT_QUERY_BATCH_SIZE = 256  # queries per compiled k-NN call
RANGE_QUERY_BATCH_SIZE = 32     # queries per radius-search call (host gets their distances)
_GROUP = 16                     # blocks per super-block (second pruning level)


# ----------------------------------------------------------------------------- packing


def num_bytes(num_bits: int) -> int:
  """Bytes per packed code: ceil(num_bits / 8)."""
  return (num_bits + 7) // 8


def check_num_bits(num_bits) -> int:
  if isinstance(num_bits, bool) or not isinstance(num_bits, (int, np.integer)) or num_bits < 1:
    raise ValueError(f"num_bits must be a positive int, got {num_bits!r}")
  return int(num_bits)


def pack_bits(codes) -> np.ndarray:
  """Packs (N, K) codes to uint8 (N, ceil(K/8)), faiss bit order.

  Args:
    codes: bool array, or a real array whose bit is ``code > 0`` (+-1 codes,
      continuous pre-binarisation codes, or 0/1 integers).

  Returns:
    uint8 array; bit j of a code is bit ``j % 8`` (little-endian) of byte ``j // 8``,
    the padding bits of the last byte are zero.
  """
  codes = np.asarray(codes)
  if codes.ndim != 2:
    raise ValueError(f"codes must be 2-D (num_codes, num_bits), got shape {codes.shape}")
  if codes.dtype != np.bool_:
    # jnp.issubdtype also knows the ml_dtypes floats (bfloat16 codes from a model).
    if not (jnp.issubdtype(codes.dtype, jnp.integer) or jnp.issubdtype(codes.dtype, jnp.floating)):
      raise TypeError(f"codes must be bool, integer or floating, got dtype {codes.dtype}")
    codes = codes > 0
  return np.packbits(codes, axis=1, bitorder="little")


def unpack_bits(packed, num_bits: int) -> np.ndarray:
  """Inverse of ``pack_bits``: uint8 (N, ceil(K/8)) -> bool (N, num_bits)."""
  num_bits = check_num_bits(num_bits)
  packed = check_packed("packed", packed, num_bits)
  return np.unpackbits(packed, axis=1, count=num_bits, bitorder="little").astype(bool)


def check_packed(name: str, codes, num_bits: int | None) -> np.ndarray:
  """Validates packed codes: uint8, 2-D, and, given num_bits, ceil(num_bits/8) bytes with zero
  padding bits."""
  codes = np.asarray(codes)
  if codes.dtype != np.uint8:
    raise TypeError(f"{name} must be packed uint8 codes (see pack_bits), got dtype {codes.dtype}")
  if codes.ndim != 2:
    raise ValueError(f"{name} must be 2-D (num_codes, num_bytes), got shape {codes.shape}")
  if num_bits is None:
    return codes
  if codes.shape[1] != num_bytes(num_bits):
    raise ValueError(f"{name} has {codes.shape[1]} bytes per code but num_bits={num_bits} "
                     f"needs {num_bytes(num_bits)}")
  spare = 8 * codes.shape[1] - num_bits
  if spare and codes.shape[0] and np.any(codes[:, -1] >> (8 - spare)):
    raise ValueError(f"{name} has nonzero padding bits beyond num_bits={num_bits}; "
                     "pack codes with pack_bits")
  return codes


def _to_words(packed: np.ndarray) -> np.ndarray:
  """(N, B) uint8 -> (N, ceil(B/4)) uint32, zero-padded (zeros add no distance)."""
  n, width = packed.shape
  num_words = -(-width // 4)
  if width == 4 * num_words:
    return np.ascontiguousarray(packed).view(np.uint32)
  padded = np.zeros((n, 4 * num_words), np.uint8)
  padded[:, :width] = packed
  return padded.view(np.uint32)


def _check_positive(name, value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  return int(value)


# ------------------------------------------------------------------- database layout


class PreparedDatabase(NamedTuple):
  """A database laid out for ``search_prepared`` (see the module docstring).

  chunks: uint32 (num_chunks, num_words, tiles, rows, tile_cols). Block
    ``b = tile * tile_cols + col`` of chunk g holds database indices
    ``(g * blocks_per_chunk + b) * rows + r`` for r < rows; slots past
    ``num_codes`` are padding that never wins.
  """
  chunks: jax.Array
  num_codes: int
  num_bits: int

  @property
  def rows(self) -> int:
    return self.chunks.shape[3]

  @property
  def chunk_items(self) -> int:
    return int(np.prod(self.chunks.shape[2:]))


def default_block_rows(num_bits: int, chunk_items: int = DEFAULT_CHUNK_SIZE) -> int:
  """Items per block: 32, fewer for long codes (a compact fused pass 1) and for
  small chunks, where about sqrt(chunk_items / 100) balances the two top-k sizes
  (chunk_items / rows block minima, (k + 1) * rows candidates) for k near 100."""
  num_words = -(-num_bits // 32)
  balanced = 1 << max(2, round(np.log2(max(1.0, chunk_items / 100) ** 0.5)))
  return max(4, min(32, 64 // num_words, balanced))


def _tile_cols(rows: int, num_words: int) -> int:
  # A tile (num_words * rows * tile_cols words) stays in L2 while every query of a
  # batch scans it; 16 below a power of two avoids cache-set aliasing of the rows.
  target = (256 << 10) // (4 * rows * num_words)
  return max(16, (1 << max(4, target.bit_length() - 1)) - 16)


def _chunk_shape(num_codes, num_shards, chunk_size, rows, num_words):
  """(chunks per shard, tiles, tile_cols): every shard holds whole, equal chunks."""
  per_shard = max(1, -(-num_codes // num_shards))
  blocks = -(-min(chunk_size, per_shard) // rows)
  tiles = -(-blocks // _tile_cols(rows, num_words))
  tile_cols = -(-blocks // (tiles * _GROUP)) * _GROUP  # equal tiles, little padding
  chunks_per_shard = -(-per_shard // (tiles * tile_cols * rows))
  return chunks_per_shard, tiles, tile_cols


def _layout(words, num_chunks, tiles, rows, tile_cols):
  """(N, W) words -> (num_chunks, W, tiles, rows, tile_cols), zero padded.

  Filled chunk by chunk, so the only full-size host array is the result.
  """
  num_words = words.shape[1]
  items = tiles * tile_cols * rows
  out = np.zeros((num_chunks, num_words, tiles, rows, tile_cols), np.uint32)
  for g in range(num_chunks):
    part = words[g * items:(g + 1) * items]
    if part.shape[0] < items:
      part = np.concatenate([part, np.zeros((items - part.shape[0], num_words), np.uint32)])
    out[g] = part.reshape(tiles, tile_cols, rows, num_words).transpose(3, 0, 2, 1)
  return out


def _put(host: np.ndarray, sharding=None) -> jax.Array:
  """``jax.device_put``, except onto devices of several processes: there each process
  copies only its own devices' shards from its host array, which must be the same on
  every process (not checked: device_put's check all-gathers every process's copy)."""
  if sharding is None or sharding.is_fully_addressable:
    return jax.device_put(host, sharding)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def prepare_database(xb_packed, *, num_bits: int, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     block_rows: int | None = None, sharding=None,
                     num_shards: int = 1) -> PreparedDatabase:
  """Lays packed database codes out for repeated searches (an index keeps this).

  Args:
    xb_packed: uint8 (N, ceil(num_bits/8)) packed codes.
    num_bits: code length.
    chunk_size: database items per scanned chunk (rounded up to whole tiles).
    block_rows: items per pruning block (default ``default_block_rows``, from the
      code length and the chunk size).
    sharding: optional ``jax.sharding.Sharding`` for the chunk axis.
    num_shards: number of shards the chunk axis is split into (chunks per shard
      are equal; padding never wins).
  """
  num_bits = check_num_bits(num_bits)
  xb_packed = check_packed("xb_packed", xb_packed, num_bits)
  chunk_size = _check_positive("chunk_size", chunk_size)
  words = _to_words(xb_packed)
  if words.shape[0] >= 2**31 - 2 * chunk_size * num_shards:
    raise ValueError(f"xb_packed has {words.shape[0]} codes; indices are int32, so at most "
                     f"about 2**31 codes per database (shard it into several indexes)")
  if block_rows is None:
    per_shard = -(-words.shape[0] // num_shards)
    block_rows = default_block_rows(num_bits, min(chunk_size, per_shard))
  rows = _check_positive("block_rows", block_rows)
  shape = _chunk_shape(words.shape[0], num_shards, chunk_size, rows, words.shape[1])
  host = _layout(words, shape[0] * num_shards, shape[1], rows, shape[2])
  chunks = _put(host, sharding)
  return PreparedDatabase(chunks, int(xb_packed.shape[0]), num_bits)


# ---------------------------------------------------------------------- jitted core


def _distance_dtype(num_bits):
  return jnp.uint8 if num_bits < 255 else jnp.int32


def _top_k_smallest(dist, k):
  """Row-wise k smallest small-integer distances, ties -> lower position.

  float32 holds these integers exactly, and XLA:CPU's float32 top-k is a fast
  partial sort (integer top-k is a full sort).
  """
  neg, pos = lax.top_k(-dist.astype(jnp.float32), k)
  return (-neg).astype(jnp.int32), pos


def _all_distances(query_words, chunk):
  """(nq, W) x chunk (W, tiles, rows, tile_cols) -> (nq, items) int32, index order."""
  dist = sum(lax.population_count(query_words[None, :, w, None, None] ^ chunk[w][:, None])
             for w in range(chunk.shape[0]))  # (tiles, nq, rows, tile_cols)
  dist = jnp.transpose(dist, (1, 0, 3, 2))  # (nq, tiles, tile_cols, rows)
  return dist.reshape(query_words.shape[0], -1).astype(jnp.int32)


def _block_minima(query_words, chunk, dtype):
  """Pass 1: (tiles, nq, tile_cols) minimum distance of every block.

  Written as a chain of elementwise minima over the rows (not a reduce) so that
  XLA:CPU vectorises along tile_cols with contiguous loads, and with the tile
  axis outermost so that one tile serves every query from cache.
  """
  best = None
  for r in range(chunk.shape[2]):
    dist = sum(lax.population_count(query_words[None, :, w, None] ^ chunk[w, :, r][:, None])
               for w in range(chunk.shape[0]))
    best = dist if best is None else jnp.minimum(best, dist)
  return best.astype(dtype)


_COUNTING_MAX_ROW = 4096  # rows up to this length select by counting, longer by top_k


def _prefix_count(mask):
  """Inclusive running count of True along rows, exact.

  Two small float32 matmuls (within segments, then across segment totals): XLA:CPU
  lowers cumsum to a slow reduce-window. Integer counts < 2**24 are exact in float32.
  """
  nq, n = mask.shape
  seg = 16 if n <= 256 else 32 if n <= 1024 else 64
  num_segs = -(-n // seg)
  padded = jnp.pad(mask.astype(jnp.float32), ((0, 0), (0, num_segs * seg - n)))
  i, j = jnp.arange(seg), jnp.arange(num_segs)
  within = jnp.einsum("qas,st->qat", padded.reshape(nq, num_segs, seg),
                      (i[:, None] <= i[None, :]).astype(jnp.float32),
                      precision=lax.Precision.HIGHEST)
  before = jnp.einsum("qa,ab->qb", within[:, :, -1],
                      (j[:, None] < j[None, :]).astype(jnp.float32),
                      precision=lax.Precision.HIGHEST)
  return (within + before[:, :, None]).reshape(nq, -1)[:, :n].astype(jnp.int32)


def _select(values, count, max_value):
  """Positions of the `count` smallest values per row (ties: lower position),
  ascending, for integer values in [0, max_value].

  Short rows count instead of sorting, several times cheaper than XLA:CPU's
  top-k (a heap per row): the count-th smallest value t comes from a binary
  search on counts, then every position with a value < t and the first ones
  equal to t are kept, and running counts place them.
  """
  n = values.shape[1]
  if n > _COUNTING_MAX_ROW:
    _, pos = _top_k_smallest(values, count)
    return jnp.sort(pos, axis=1)
  values = values.astype(jnp.int32)

  def bisect(_, bounds):
    low, high = bounds
    mid = (low + high) // 2
    enough = jnp.sum(values <= mid, axis=1, keepdims=True, dtype=jnp.int32) >= count
    return jnp.where(enough, low, mid + 1), jnp.where(enough, mid, high)

  # A loop, not unrolled: its operand `values` is then computed once, instead of
  # XLA fusing (recomputing) its producer into every count.
  bounds = (jnp.zeros((values.shape[0], 1), jnp.int32),
            jnp.full((values.shape[0], 1), max_value, jnp.int32))
  _, high = lax.fori_loop(0, max_value.bit_length(), bisect, bounds)
  less = jnp.sum(values < high, axis=1, keepdims=True, dtype=jnp.int32)
  equal = values == high
  keep = (values < high) | (equal & (_prefix_count(equal) <= count - less))
  rank = _prefix_count(keep)
  targets = jnp.arange(1, count + 1, dtype=jnp.int32)
  return jax.vmap(lambda r: jnp.searchsorted(r, targets, side="left"))(rank).astype(jnp.int32)


def _k_smallest(dist, k, max_value):
  """Like ``_top_k_smallest`` (sorted by distance, ties -> lower position)."""
  n = dist.shape[1]
  if n > _COUNTING_MAX_ROW:
    return _top_k_smallest(dist, k)
  pos = _select(dist, k, max_value)
  key = jnp.take_along_axis(dist.astype(jnp.int32), pos, axis=1) * n + pos  # unique
  key = jnp.sort(key, axis=1)
  return key // n, key % n


def _pruning_levels(num_blocks: int, k: int) -> int:
  """0: plain top-k over the chunk; 1: block pruning; 2: blocks and super-blocks."""
  if num_blocks // _GROUP >= 4 * (k + 1):
    return 2
  return 1 if num_blocks >= 4 * (k + 1) else 0


def _chunk_top_k(query_words, chunk, first_index, num_codes, *, k, num_bits):
  """Exact top-k of one chunk (W, tiles, rows, tile_cols): (nq, k) distances, indices."""
  _, tiles, rows, tile_cols = chunk.shape
  nq = query_words.shape[0]
  items = tiles * rows * tile_cols
  num_blocks = tiles * tile_cols
  invalid = num_bits + 1
  count = k + 1  # k, plus the one partly padded block (module docstring)
  levels = _pruning_levels(num_blocks, k)
  if levels == 0:
    # Small chunk: one top-k over all items.
    index = first_index + jnp.arange(items, dtype=jnp.int32)
    dist = jnp.where(index[None] < num_codes, _all_distances(query_words, chunk), invalid)
    dist, pos = _k_smallest(dist, min(k, items), invalid)
    index = first_index + pos
    if k > items:
      pad = ((0, 0), (0, k - items))
      dist = jnp.pad(dist, pad, constant_values=invalid)
      index = jnp.pad(index, pad, constant_values=-1)
    return dist, index

  dtype = _distance_dtype(num_bits)

  def pass_1():
    block_min = _block_minima(query_words, chunk, dtype)  # (tiles, nq, tile_cols)
    block = (lax.broadcasted_iota(jnp.int32, (tiles, 1, tile_cols), 0) * tile_cols
             + lax.broadcasted_iota(jnp.int32, (tiles, 1, tile_cols), 2))
    return jnp.where(first_index + block * rows < num_codes, block_min,
                     jnp.asarray(invalid, dtype))

  # The conditional (which also skips all-padding chunks) is a fusion barrier:
  # without it XLA fuses pass 1 into the gathers below and recomputes block
  # minima one gathered element at a time, several times slower.
  block_min = lax.cond(first_index < num_codes, pass_1,
                       lambda: jnp.full((tiles, nq, tile_cols), invalid, dtype))
  query = jnp.arange(nq)[:, None]
  if levels == 2:
    # Second level: the k+1 best super-blocks of _GROUP consecutive blocks hold
    # the k+1 best blocks (same argument one level up).
    group_min = block_min.reshape(tiles, nq, tile_cols // _GROUP, _GROUP).min(axis=3)
    groups = _select(jnp.swapaxes(group_min, 0, 1).reshape(nq, -1), count, invalid)
    cand = (groups[:, :, None] * _GROUP + jnp.arange(_GROUP)).reshape(nq, count * _GROUP)
    cand_min = block_min[cand // tile_cols, query, cand % tile_cols]
    blocks = jnp.take_along_axis(cand, _select(cand_min, count, invalid), axis=1)
  else:
    blocks = _select(jnp.swapaxes(block_min, 0, 1).reshape(nq, num_blocks), count, invalid)
  # Pass 2: exact distances of the selected blocks' items, in index order.
  words = chunk[:, blocks // tile_cols, :, blocks % tile_cols]  # (nq, count, W, rows)
  dist = sum(lax.population_count(query_words[:, None, w, None] ^ words[:, :, w])
             for w in range(chunk.shape[0])).astype(jnp.int32)  # (nq, count, rows)
  index = first_index + blocks[:, :, None] * rows + jnp.arange(rows, dtype=jnp.int32)
  dist = jnp.where(index < num_codes, dist, invalid).reshape(nq, count * rows)
  dist, pos = _k_smallest(dist, k, invalid)
  return dist, jnp.take_along_axis(index.reshape(nq, count * rows), pos, axis=1)


def _merge(dist_a, index_a, dist_b, index_b, k, max_value):
  """Merges two sorted top-k lists; on equal distance ``a`` (lower indices) wins."""
  dist, pos = _k_smallest(jnp.concatenate([dist_a, dist_b], axis=1), k, max_value)
  index = jnp.take_along_axis(jnp.concatenate([index_a, index_b], axis=1), pos, axis=1)
  return dist, index


def _scan_top_k(query_words, chunks, first_chunk, num_codes, *, k, num_bits):
  """Top-k over chunks (G, W, tiles, rows, tile_cols) whose first global chunk is first_chunk."""
  nq = query_words.shape[0]
  chunk_items = int(np.prod(chunks.shape[2:]))

  def body(carry, xs):
    g, chunk = xs
    dist, index = _chunk_top_k(query_words, chunk, g * chunk_items, num_codes,
                               k=k, num_bits=num_bits)
    return _merge(*carry, dist, index, k, num_bits + 1), None

  if chunks.shape[0] == 1:
    dist, index = _chunk_top_k(query_words, chunks[0], first_chunk * chunk_items, num_codes,
                               k=k, num_bits=num_bits)
  else:
    init = (jnp.full((nq, k), num_bits + 1, jnp.int32), jnp.full((nq, k), -1, jnp.int32))
    chunk_ids = first_chunk + jnp.arange(chunks.shape[0], dtype=jnp.int32)
    (dist, index), _ = lax.scan(body, init, (chunk_ids, chunks))
  return dist, jnp.where(dist > num_bits, -1, index)


_search_jit = jax.jit(_scan_top_k, static_argnames=("k", "num_bits"))


# ------------------------------------------------------------------------ public API


def _query_batches(xq_packed, num_bits, query_batch_size):
  """Yields (start, stop, padded query words) with few distinct batch shapes."""
  words = _to_words(xq_packed)
  nq = words.shape[0]
  batch = min(query_batch_size, 1 << max(0, (nq - 1).bit_length()))
  for start in range(0, nq, batch):
    part = words[start:start + batch]
    if part.shape[0] < batch:
      part = np.concatenate([part, np.zeros((batch - part.shape[0], part.shape[1]), np.uint32)])
    yield start, min(start + batch, nq), part


def _empty_results(nq, k, num_bits):
  return (np.full((nq, k), num_bits + 1, np.int32), np.full((nq, k), -1, np.int64))


def search_prepared(xq_packed, database: PreparedDatabase, k: int, *,
                    query_batch_size: int = DEFAULT_QUERY_BATCH_SIZE):
  """``search`` against a ``PreparedDatabase`` (no per-call layout cost)."""
  k = _check_positive("k", k)
  query_batch_size = _check_positive("query_batch_size", query_batch_size)
  xq_packed = check_packed("xq_packed", xq_packed, database.num_bits)
  dist, index = _empty_results(xq_packed.shape[0], k, database.num_bits)
  if database.num_codes == 0:
    return dist, index
  pending = []
  for start, stop, words in _query_batches(xq_packed, database.num_bits, query_batch_size):
    pending.append((start, stop, _search_jit(jnp.asarray(words), database.chunks, 0,
                                             database.num_codes, k=k,
                                             num_bits=database.num_bits)))
  for start, stop, (d, i) in pending:  # dispatched asynchronously above
    dist[start:stop] = np.asarray(d)[:stop - start]
    index[start:stop] = np.asarray(i)[:stop - start]
  return dist, index


def search(xq_packed, xb_packed, k: int, *, num_bits: int,
           chunk_size: int = DEFAULT_CHUNK_SIZE, block_rows: int | None = None,
           query_batch_size: int = DEFAULT_QUERY_BATCH_SIZE):
  """Exact Hamming k-nearest-neighbour search, jitted (faiss ``knn_hamming``).

  Args:
    xq_packed: uint8 (nq, ceil(num_bits/8)) packed query codes.
    xb_packed: uint8 (N, ceil(num_bits/8)) packed database codes.
    k: neighbours per query; k > N pads with index -1, distance num_bits + 1.
    num_bits: code length.
    chunk_size: database items per scanned chunk (bounds memory).
    block_rows: items per pruning block (speed knob, results do not change;
      default ``default_block_rows(num_bits)``).
    query_batch_size: queries per compiled call.

  Returns:
    (D, I): int32 (nq, k) Hamming distances ascending, int64 (nq, k) database
    indices; ties are broken by lower database index, so the result equals a
    stable sort of the brute-force distances.
  """
  num_bits = check_num_bits(num_bits)
  xq_packed = check_packed("xq_packed", xq_packed, num_bits)
  database = prepare_database(xb_packed, num_bits=num_bits, chunk_size=chunk_size,
                              block_rows=block_rows)
  return search_prepared(xq_packed, database, k, query_batch_size=query_batch_size)


@functools.lru_cache(maxsize=32)
def _sharded_search_fn(mesh: Mesh, k: int, num_bits: int):
  """Jitted shard_map: local top-k with global indices, all_gather, merge."""

  def local(query_words, chunks, num_codes):
    first_chunk = lax.axis_index("data") * chunks.shape[0]
    dist, index = _scan_top_k(query_words, chunks, first_chunk, num_codes,
                              k=k, num_bits=num_bits)
    # Shards hold increasing index ranges, so the gathered lists are in index
    # order and the stable top-k keeps lower indices first on equal distance.
    all_dist = lax.all_gather(dist, "data", axis=1, tiled=True)
    all_index = lax.all_gather(index, "data", axis=1, tiled=True)
    dist, pos = _k_smallest(all_dist, k, num_bits + 1)
    return dist, jnp.take_along_axis(all_index, pos, axis=1)

  # check_vma=False: after the all_gather every device holds the same result.
  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data"), P()),
                               out_specs=(P(), P()), check_vma=False))


def sharded_search(xq_packed, xb_packed, k: int, *, num_bits: int, mesh: Mesh,
                   chunk_size: int = DEFAULT_CHUNK_SIZE, block_rows: int | None = None,
                   query_batch_size: int = DEFAULT_QUERY_BATCH_SIZE):
  """``search`` with the database split over the mesh axis ``"data"``.

  Each device holds a contiguous range of database indices (padded to equal
  sizes with slots that never win), computes its local exact top-k with global
  indices, then one all_gather and a merge give every device the global top-k.
  Results are identical to ``search``.

  Multi-process (a mesh over several hosts' devices): every process calls this
  with the same ``xq_packed`` and ``xb_packed`` (the whole gallery, not only its
  own part; each process copies only its own devices' shards) and gets the full
  (D, I). Differing inputs are not detected (see ``_put``).
  """
  num_bits = check_num_bits(num_bits)
  k = _check_positive("k", k)
  if "data" not in mesh.axis_names:
    raise ValueError(f"mesh must have an axis named 'data', got axes {mesh.axis_names}")
  xq_packed = check_packed("xq_packed", xq_packed, num_bits)
  num_shards = mesh.shape["data"]
  database = prepare_database(xb_packed, num_bits=num_bits, chunk_size=chunk_size,
                              block_rows=block_rows, num_shards=num_shards,
                              sharding=NamedSharding(mesh, P("data")))
  dist, index = _empty_results(xq_packed.shape[0], k, num_bits)
  if database.num_codes == 0:
    return dist, index
  fn = _sharded_search_fn(mesh, k, num_bits)
  replicated = NamedSharding(mesh, P())
  num_codes = _put(np.array(database.num_codes, np.int32), replicated)
  for start, stop, words in _query_batches(xq_packed, num_bits, query_batch_size):
    d, i = fn(_put(words, replicated), database.chunks, num_codes)
    dist[start:stop] = np.asarray(d)[:stop - start]
    index[start:stop] = np.asarray(i)[:stop - start]
  return dist, index


# ---------------------------------------------------------------------- radius search


@functools.partial(jax.jit, static_argnames=("num_bits",))
def _chunk_distances(query_words, chunk, first_index, num_codes, *, num_bits):
  """(nq, items) distances of one chunk in index order; padding -> num_bits + 1."""
  dist = _all_distances(query_words, chunk)
  index = first_index + jnp.arange(dist.shape[1], dtype=jnp.int32)
  dist = jnp.where(index[None] < num_codes, dist, num_bits + 1)
  dtype = jnp.uint8 if num_bits < 255 else jnp.uint16 if num_bits < 65535 else jnp.int32
  return dist.astype(dtype)


@functools.partial(jax.jit, static_argnames=("num_bits",))
def _count_within(query_words, chunks, num_codes, radius, *, num_bits):
  def body(count, xs):
    g, chunk = xs
    dist = _chunk_distances(query_words, chunk, g * int(np.prod(chunk.shape[1:])),
                            num_codes, num_bits=num_bits)
    return count + jnp.sum(dist.astype(jnp.int32) <= radius, axis=1), None
  init = jnp.zeros(query_words.shape[0], jnp.int32)
  chunk_ids = jnp.arange(chunks.shape[0], dtype=jnp.int32)
  return lax.scan(body, init, (chunk_ids, chunks))[0]


def _check_radius(radius) -> int:
  if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
    raise ValueError(f"radius must be a non-negative int, got {radius!r}")
  return int(radius)


def range_count_prepared(xq_packed, database: PreparedDatabase, radius: int, *,
                         query_batch_size: int = DEFAULT_QUERY_BATCH_SIZE) -> np.ndarray:
  """``range_count`` against a ``PreparedDatabase``."""
  radius = _check_radius(radius)
  xq_packed = check_packed("xq_packed", xq_packed, database.num_bits)
  counts = np.zeros(xq_packed.shape[0], np.int64)
  if database.num_codes == 0:
    return counts
  for start, stop, words in _query_batches(xq_packed, database.num_bits, query_batch_size):
    c = _count_within(jnp.asarray(words), database.chunks, database.num_codes,
                      min(radius, database.num_bits), num_bits=database.num_bits)
    counts[start:stop] = np.asarray(c)[:stop - start]
  return counts


def range_count(xq_packed, xb_packed, radius: int, *, num_bits: int,
                chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
  """Number of database items within Hamming distance ``radius`` of each query (int64 (nq,))."""
  database = prepare_database(xb_packed, num_bits=num_bits, chunk_size=chunk_size)
  return range_count_prepared(xq_packed, database, radius)


def range_search_prepared(xq_packed, database: PreparedDatabase, radius: int, *,
                          query_batch_size: int = RANGE_QUERY_BATCH_SIZE):
  """``range_search`` against a ``PreparedDatabase``."""
  radius = _check_radius(radius)
  query_batch_size = _check_positive("query_batch_size", query_batch_size)
  xq_packed = check_packed("xq_packed", xq_packed, database.num_bits)
  nq = xq_packed.shape[0]
  radius = min(radius, database.num_bits)  # padding slots sit at num_bits + 1
  query_parts, dist_parts, index_parts = [], [], []
  chunk_items = database.chunk_items
  if database.num_codes:
    for start, stop, words in _query_batches(xq_packed, database.num_bits, query_batch_size):
      words = jnp.asarray(words)
      for g in range(database.chunks.shape[0]):
        dist = np.asarray(_chunk_distances(words, database.chunks[g], g * chunk_items,
                                           database.num_codes, num_bits=database.num_bits))
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
                 chunk_size: int = DEFAULT_CHUNK_SIZE,
                 query_batch_size: int = RANGE_QUERY_BATCH_SIZE):
  """All database items within Hamming distance ``radius`` (faiss ``range_search``).

  Returns:
    (lims, D, I): int64 (nq + 1,), int32 (total,), int64 (total,). The results of
    query i are ``D[lims[i]:lims[i+1]]`` and ``I[lims[i]:lims[i+1]]``, sorted by
    (distance, index); per-query counts are ``np.diff(lims)`` (or ``range_count``).
  """
  num_bits = check_num_bits(num_bits)
  xq_packed = check_packed("xq_packed", xq_packed, num_bits)
  database = prepare_database(xb_packed, num_bits=num_bits, chunk_size=chunk_size)
  return range_search_prepared(xq_packed, database, radius, query_batch_size=query_batch_size)
