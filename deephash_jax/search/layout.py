"""The database layout of the exact Hamming searches (hamming.py, radius.py).

The database is cut into *blocks* of ``rows`` consecutive items, and a chunk of
blocks is stored as ``(words, tiles, rows, tile_cols)`` with block ``b`` in column
``b % tile_cols`` of tile ``b // tile_cols``: the minimum over a block's rows is
then a chain of elementwise minima that XLA vectorises along contiguous columns,
and a tile (about 256 KiB) stays in cache while every query of a batch scans it.
Codes are 32-bit words of the packed bytes (packing.to_words).

A database may weigh its words (``word_weights``, one whole weight per word): the distance is
then the weighted sum of the words' popcounts. An index of several codes an item
(index.py ``view_weights``) lays each code out on whole words and weighs them by the code's
weight, so the scan reads each code once whatever its weight.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from deephash_jax.search import packing

DEFAULT_CHUNK_SIZE = 1 << 20    # database items per scanned chunk
GROUP = 16                      # blocks per super-block (second pruning level)


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
  word_weights: tuple[int, ...] | None = None   # None: every word weighs 1

  @property
  def max_distance(self) -> int:
    """An upper bound of every distance: num_bits, or 32 bits times each word's weight."""
    return self.num_bits if self.word_weights is None else 32 * sum(self.word_weights)

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
  tile_cols = -(-blocks // (tiles * GROUP)) * GROUP  # equal tiles, little padding
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


def put(host: np.ndarray, sharding=None) -> jax.Array:
  """``jax.device_put``, except onto devices of several processes: there each process
  copies only its own devices' shards from its host array, which must be the same on
  every process (not checked: device_put's check all-gathers every process's copy)."""
  if sharding is None or sharding.is_fully_addressable:
    return jax.device_put(host, sharding)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def check_word_weights(word_weights, num_bits: int) -> tuple[int, ...] | None:
  """None, or one whole weight > 0 per 32-bit word of num_bits (a multiple of 32)."""
  if word_weights is None:
    return None
  weights = tuple(word_weights)
  num_words = -(-num_bits // 32)
  if (num_bits % 32 or len(weights) != num_words
      or not all(packing.is_positive_int(w) for w in weights)):
    raise ValueError(f"word_weights={weights}: expected {num_words} whole weights > 0, one per "
                     f"32-bit word of num_bits={num_bits} (a multiple of 32)")
  return tuple(int(w) for w in weights)


def prepare_database(xb_packed, *, num_bits: int, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     block_rows: int | None = None, sharding=None, num_shards: int = 1,
                     word_weights=None) -> PreparedDatabase:
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
    word_weights: None, or one whole weight per 32-bit word (num_bits a multiple of 32): the
      distance is then the weighted sum of the words' popcounts (module docstring).
  """
  num_bits = packing.check_num_bits(num_bits)
  word_weights = check_word_weights(word_weights, num_bits)
  xb_packed = packing.check_packed("xb_packed", xb_packed, num_bits)
  chunk_size = packing.check_positive("chunk_size", chunk_size)
  words = packing.to_words(xb_packed)
  if words.shape[0] >= 2**31 - 2 * chunk_size * num_shards:
    raise ValueError(f"xb_packed has {words.shape[0]} codes; indices are int32, so at most "
                     f"about 2**31 codes per database (shard it into several indexes)")
  if block_rows is None:
    per_shard = -(-words.shape[0] // num_shards)
    block_rows = default_block_rows(num_bits, min(chunk_size, per_shard))
  rows = packing.check_positive("block_rows", block_rows)
  shape = _chunk_shape(words.shape[0], num_shards, chunk_size, rows, words.shape[1])
  host = _layout(words, shape[0] * num_shards, shape[1], rows, shape[2])
  chunks = put(host, sharding)
  return PreparedDatabase(chunks, int(xb_packed.shape[0]), num_bits, word_weights)


def weighted_popcounts(counts, word_weights=None):
  """The sum over words of `counts` (a sequence of one array per word), each times its word's
  weight (static; None: all 1): the distance of a database of weighted words."""
  if word_weights is None:
    return sum(counts)
  return sum(c if weight == 1 else c * weight for c, weight in zip(counts, word_weights))


def all_distances(query_words, chunk, word_weights=None):
  """(nq, W) x chunk (W, tiles, rows, tile_cols) -> (nq, items) int32, index order."""
  dist = weighted_popcounts(
      [lax.population_count(query_words[None, :, w, None, None] ^ chunk[w][:, None])
       for w in range(chunk.shape[0])], word_weights)  # (tiles, nq, rows, tile_cols)
  dist = jnp.transpose(dist, (1, 0, 3, 2))  # (nq, tiles, tile_cols, rows)
  return dist.reshape(query_words.shape[0], -1).astype(jnp.int32)


def row_batches(arrays, max_rows: int):
  """Yields (start, stop, parts): rows start:stop of each of `arrays` (equal lengths) in batches
  of one size, min(max_rows, the power of two at or above their count), the last padded with
  zeros: few distinct shapes for a jitted call to compile."""
  n = len(arrays[0])
  batch = min(max_rows, 1 << max(0, (n - 1).bit_length()))
  for start in range(0, n, batch):
    parts = [a[start:start + batch] for a in arrays]
    pad = batch - len(parts[0])
    if pad:
      parts = [np.concatenate([p, np.zeros((pad, *p.shape[1:]), p.dtype)]) for p in parts]
    yield start, min(start + batch, n), parts


def query_batches(xq_packed, num_bits, query_batch_size):
  """Yields (start, stop, padded query words) with few distinct batch shapes."""
  for start, stop, (words,) in row_batches([packing.to_words(xq_packed)], query_batch_size):
    yield start, stop, words


def empty_results(nq, k, num_bits):
  return (np.full((nq, k), num_bits + 1, np.int32), np.full((nq, k), -1, np.int64))

