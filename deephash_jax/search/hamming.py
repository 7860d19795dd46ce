"""Exact, jitted Hamming k-NN search over packed codes (packing.py), one device or sharded.

Naming and contracts follow faiss ``IndexBinaryFlat``:

* ``search(xq, xb, k) -> (D, I)``: int32 distances and int64 database indices,
  each row sorted by (distance, index): ties are broken by lower database index,
  so results equal a brute-force stable sort of the NumPy popcount distances;
  missing results (k larger than the database) have index -1 and distance
  ``num_bits + 1`` (radius search: radius.py).

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
* Layout for pass 1: see layout.py (tiles of blocks that stay in cache).
* The database is processed chunk by chunk under ``lax.scan`` with a running
  top-k merge, so memory stays bounded by one chunk's block minima
  (queries x chunk_size / rows bytes).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from deephash_jax.search import layout
from deephash_jax.search import packing
from deephash_jax.search.layout import GROUP, PreparedDatabase

DEFAULT_QUERY_BATCH_SIZE = 256  # queries per compiled k-NN call


def _top_k_smallest(dist, k):
  """Row-wise k smallest small-integer distances, ties -> lower position.

  float32 holds these integers exactly, and XLA:CPU's float32 top-k is a fast
  partial sort (integer top-k is a full sort).
  """
  neg, pos = lax.top_k(-dist.astype(jnp.float32), k)
  return (-neg).astype(jnp.int32), pos



def _block_minima(query_words, chunk, dtype, word_weights=None):
  """Pass 1: (tiles, nq, tile_cols) minimum distance of every block.

  Written as a chain of elementwise minima over the rows (not a reduce) so that
  XLA:CPU vectorises along tile_cols with contiguous loads, and with the tile
  axis outermost so that one tile serves every query from cache.
  """
  best = None
  for r in range(chunk.shape[2]):
    dist = layout.weighted_popcounts(
        [lax.population_count(query_words[None, :, w, None] ^ chunk[w, :, r][:, None])
         for w in range(chunk.shape[0])], word_weights)
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
  if num_blocks // GROUP >= 4 * (k + 1):
    return 2
  return 1 if num_blocks >= 4 * (k + 1) else 0


def _chunk_top_k(query_words, chunk, first_index, num_codes, *, k, max_distance,
                 word_weights=None):
  """Exact top-k of one chunk (W, tiles, rows, tile_cols): (nq, k) distances, indices.

  max_distance: at least every distance (num_bits, or the bound of weighted words:
  PreparedDatabase.max_distance); padding and missing results sit at max_distance + 1."""
  _, tiles, rows, tile_cols = chunk.shape
  nq = query_words.shape[0]
  items = tiles * rows * tile_cols
  num_blocks = tiles * tile_cols
  invalid = max_distance + 1
  count = k + 1  # k, plus the one partly padded block (module docstring)
  levels = _pruning_levels(num_blocks, k)
  if levels == 0:
    # Small chunk: one top-k over all items.
    index = first_index + jnp.arange(items, dtype=jnp.int32)
    dist = jnp.where(index[None] < num_codes,
                     layout.all_distances(query_words, chunk, word_weights), invalid)
    dist, pos = _k_smallest(dist, min(k, items), invalid)
    index = first_index + pos
    if k > items:
      pad = ((0, 0), (0, k - items))
      dist = jnp.pad(dist, pad, constant_values=invalid)
      index = jnp.pad(index, pad, constant_values=-1)
    return dist, index

  dtype = packing.distance_dtype(invalid)

  def pass_1():
    block_min = _block_minima(query_words, chunk, dtype, word_weights)  # (tiles, nq, tile_cols)
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
    # Second level: the k+1 best super-blocks of GROUP consecutive blocks hold
    # the k+1 best blocks (same argument one level up).
    group_min = block_min.reshape(tiles, nq, tile_cols // GROUP, GROUP).min(axis=3)
    groups = _select(jnp.swapaxes(group_min, 0, 1).reshape(nq, -1), count, invalid)
    cand = (groups[:, :, None] * GROUP + jnp.arange(GROUP)).reshape(nq, count * GROUP)
    cand_min = block_min[cand // tile_cols, query, cand % tile_cols]
    blocks = jnp.take_along_axis(cand, _select(cand_min, count, invalid), axis=1)
  else:
    blocks = _select(jnp.swapaxes(block_min, 0, 1).reshape(nq, num_blocks), count, invalid)
  # Pass 2: exact distances of the selected blocks' items, in index order.
  words = chunk[:, blocks // tile_cols, :, blocks % tile_cols]  # (nq, count, W, rows)
  dist = layout.weighted_popcounts(
      [lax.population_count(query_words[:, None, w, None] ^ words[:, :, w])
       for w in range(chunk.shape[0])], word_weights).astype(jnp.int32)  # (nq, count, rows)
  index = first_index + blocks[:, :, None] * rows + jnp.arange(rows, dtype=jnp.int32)
  dist = jnp.where(index < num_codes, dist, invalid).reshape(nq, count * rows)
  dist, pos = _k_smallest(dist, k, invalid)
  return dist, jnp.take_along_axis(index.reshape(nq, count * rows), pos, axis=1)


def _merge(dist_a, index_a, dist_b, index_b, k, max_value):
  """Merges two sorted top-k lists; on equal distance ``a`` (lower indices) wins."""
  dist, pos = _k_smallest(jnp.concatenate([dist_a, dist_b], axis=1), k, max_value)
  index = jnp.take_along_axis(jnp.concatenate([index_a, index_b], axis=1), pos, axis=1)
  return dist, index


def _scan_top_k(query_words, chunks, first_chunk, num_codes, *, k, max_distance,
                word_weights=None):
  """Top-k over chunks (G, W, tiles, rows, tile_cols) whose first global chunk is first_chunk;
  missing results at max_distance + 1 (see _chunk_top_k)."""
  nq = query_words.shape[0]
  chunk_items = int(np.prod(chunks.shape[2:]))

  def body(carry, xs):
    g, chunk = xs
    dist, index = _chunk_top_k(query_words, chunk, g * chunk_items, num_codes,
                               k=k, max_distance=max_distance, word_weights=word_weights)
    return _merge(*carry, dist, index, k, max_distance + 1), None

  if chunks.shape[0] == 1:
    dist, index = _chunk_top_k(query_words, chunks[0], first_chunk * chunk_items, num_codes,
                               k=k, max_distance=max_distance, word_weights=word_weights)
  else:
    init = (jnp.full((nq, k), max_distance + 1, jnp.int32), jnp.full((nq, k), -1, jnp.int32))
    chunk_ids = first_chunk + jnp.arange(chunks.shape[0], dtype=jnp.int32)
    (dist, index), _ = lax.scan(body, init, (chunk_ids, chunks))
  return dist, jnp.where(dist > max_distance, -1, index)


_search_jit = jax.jit(_scan_top_k, static_argnames=("k", "max_distance", "word_weights"))


# ------------------------------------------------------------------------ public API


def search_prepared(xq_packed, database: PreparedDatabase, k: int, *,
                    query_batch_size: int = DEFAULT_QUERY_BATCH_SIZE):
  """``search`` against a ``PreparedDatabase`` (no per-call layout cost). With word weights
  the distances are the weighted sums, and missing results sit at max_distance + 1."""
  k = packing.check_positive("k", k)
  query_batch_size = packing.check_positive("query_batch_size", query_batch_size)
  xq_packed = packing.check_packed("xq_packed", xq_packed, database.num_bits)
  dist, index = layout.empty_results(xq_packed.shape[0], k, database.max_distance)
  if database.num_codes == 0:
    return dist, index
  pending = []
  for start, stop, words in layout.query_batches(xq_packed, database.num_bits, query_batch_size):
    pending.append((start, stop, _search_jit(jnp.asarray(words), database.chunks, 0,
                                             database.num_codes, k=k,
                                             max_distance=database.max_distance,
                                             word_weights=database.word_weights)))
  for start, stop, (d, i) in pending:  # dispatched asynchronously above
    dist[start:stop] = np.asarray(d)[:stop - start]
    index[start:stop] = np.asarray(i)[:stop - start]
  return dist, index


def search(xq_packed, xb_packed, k: int, *, num_bits: int,
           chunk_size: int = layout.DEFAULT_CHUNK_SIZE, block_rows: int | None = None,
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
  num_bits = packing.check_num_bits(num_bits)
  xq_packed = packing.check_packed("xq_packed", xq_packed, num_bits)
  database = layout.prepare_database(xb_packed, num_bits=num_bits, chunk_size=chunk_size,
                              block_rows=block_rows)
  return search_prepared(xq_packed, database, k, query_batch_size=query_batch_size)


@functools.lru_cache(maxsize=32)
def _sharded_search_fn(mesh: Mesh, k: int, num_bits: int):
  """Jitted shard_map: local top-k with global indices, all_gather, merge."""

  def local(query_words, chunks, num_codes):
    first_chunk = lax.axis_index("data") * chunks.shape[0]
    dist, index = _scan_top_k(query_words, chunks, first_chunk, num_codes,
                              k=k, max_distance=num_bits)
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
                   chunk_size: int = layout.DEFAULT_CHUNK_SIZE, block_rows: int | None = None,
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
  num_bits = packing.check_num_bits(num_bits)
  k = packing.check_positive("k", k)
  if "data" not in mesh.axis_names:
    raise ValueError(f"mesh must have an axis named 'data', got axes {mesh.axis_names}")
  xq_packed = packing.check_packed("xq_packed", xq_packed, num_bits)
  num_shards = mesh.shape["data"]
  database = layout.prepare_database(xb_packed, num_bits=num_bits, chunk_size=chunk_size,
                              block_rows=block_rows, num_shards=num_shards,
                              sharding=NamedSharding(mesh, P("data")))
  dist, index = layout.empty_results(xq_packed.shape[0], k, num_bits)
  if database.num_codes == 0:
    return dist, index
  fn = _sharded_search_fn(mesh, k, num_bits)
  replicated = NamedSharding(mesh, P())
  num_codes = layout.put(np.array(database.num_codes, np.int32), replicated)
  for start, stop, words in layout.query_batches(xq_packed, num_bits, query_batch_size):
    d, i = fn(layout.put(words, replicated), database.chunks, num_codes)
    dist[start:stop] = np.asarray(d)[:stop - start]
    index[start:stop] = np.asarray(i)[:stop - start]
  return dist, index


