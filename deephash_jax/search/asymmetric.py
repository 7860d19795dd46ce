"""The asymmetric distance: a query's continuous code against the database's bits.

The database keeps its packed bits; the query keeps its continuous code q (the encoder's tanh
outputs, `HashEncoder.embed`). d(q, b) = the sum of |q_i| over the bits where sign(q_i) differs
from b_i: a Hamming distance in which each bit counts the query's confidence in it, so that a bit
the shopper's photo is unsure of (near 0) costs little when it flips. It equals the Hamming
distance for +-1 queries and ranks the database as the inner product q . (2b - 1) does.

|q_i| is rounded to a multiple of 2**-20 (`query_weights`), so every sum is exact in float64:
equal database codes get equal distances in any summation order, and their ties go to the
lower position, as in the Hamming search (hamming.py).

`rerank` orders a Hamming search's candidates by it (HammingIndex.search_asymmetric: the packed
scan finds the candidates, this re-ranks a few hundred per query), jitted: the weights as integer
multiples of the quantum, each candidate's distance an int32 sum, exact while a query's sum of
|q_i| stays under 2**11 (tanh codes of up to 2047 bits; beyond, the NumPy lookup tables of
`rerank_tables`, also exact), then sorted on the host.
evaluators/ranking.py `asymmetric_distance_rows` ranks the whole database by it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from deephash_jax.search import layout
from deephash_jax.search import packing

WEIGHT_QUANTUM = 2.0**-20
QUERY_CHUNK = 256   # queries re-ranked by one call (`rerank`) or one set of lookup tables
_CALL_ELEMENTS = 1 << 24   # bits (queries * candidates * num_bits) one jitted call unpacks
_MISSING = np.iinfo(np.int32).max   # the int32 distance of a missing candidate
MAX_JIT_WEIGHT = _MISSING * WEIGHT_QUANTUM   # a query's sum of |q_i| that `rerank` jits below


def query_weights(query_codes) -> np.ndarray:
  """(nq, K) float64: each bit's |q_i| rounded to a multiple of WEIGHT_QUANTUM, signed like q_i
  (0 where q_i rounds to 0). Raises ValueError for a non-finite or non-2-D input."""
  q = np.asarray(query_codes, np.float64)
  if q.ndim != 2:
    raise ValueError(f"query_codes: expected (num_queries, num_bits) continuous codes, got "
                     f"shape {q.shape}")
  if not np.all(np.isfinite(q)):
    raise ValueError("query_codes: non-finite values (NaN or inf)")
  weights = np.round(np.abs(q) / WEIGHT_QUANTUM) * WEIGHT_QUANTUM
  return np.where(q > 0, weights, -weights)


def distances(signed_weights: np.ndarray, db_signs: np.ndarray) -> np.ndarray:
  """(nq, nd) float64 asymmetric distances of `query_weights` rows against +-1 database rows
  (nd, K): (sum_i |w_i| - w . b) / 2, exact."""
  total = np.abs(signed_weights).sum(axis=1)
  return (total[:, None] - signed_weights @ np.asarray(db_signs, np.float64).T) / 2.0


_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1,
                           bitorder="little").astype(np.float64)      # (256, 8): bit t of byte v


def byte_tables(signed_weights: np.ndarray) -> np.ndarray:
  """(nq, B, 256) float64 lookup tables: entry [q, j, v] is the asymmetric distance that byte
  value v at byte j of a packed code (packing.py's bit order) adds for query q. A code's distance
  is the sum over its B bytes of table[q, j, code[j]], as product quantization's asymmetric
  distance computation sums a table per sub-vector: B lookups per code rather than K bits, and
  exact, as every entry is a multiple of WEIGHT_QUANTUM. Padding bits (beyond K) weigh 0."""
  nq, num_bits = signed_weights.shape
  width = packing.num_bytes(num_bits)
  w = np.zeros((nq, 8 * width))
  w[:, :num_bits] = signed_weights
  w = w.reshape(nq, width, 8)
  # A bit adds |w| when it differs from the query's sign: |w| * (b + s - 2 b s), s = [w > 0].
  positive = (w > 0).astype(np.float64)
  base = np.sum(np.abs(w) * positive, axis=-1)                            # every bit b = 0
  slope = (np.abs(w) * (1.0 - 2.0 * positive)).reshape(-1, 8)
  return base[..., None] + (slope @ _BYTE_BITS.T).reshape(nq, width, 256)


def _check_rerank_args(query_codes, candidates, num_bits):
  w = query_weights(query_codes)
  if w.shape[1] != num_bits:
    raise ValueError(f"query_codes: {w.shape[1]} bits per code, the database has {num_bits}")
  candidates = np.asarray(candidates, np.int64)
  if candidates.ndim != 2 or candidates.shape[0] != w.shape[0]:
    raise ValueError(f"candidates: expected ({w.shape[0]}, c) positions, got shape "
                     f"{candidates.shape}")
  return w, candidates


def _nothing_found(shape):
  return np.full(shape, np.inf), np.full(shape, -1, np.int64)


@jax.jit
def _distances_jit(weights, codes):
  """weights int32 (n, K): signed multiples of WEIGHT_QUANTUM; codes uint8 (n, c, B): the
  candidates' packed codes. Returns int32 (n, c) asymmetric distances in quanta."""
  n, c, width = codes.shape
  bits = (codes[..., None] >> jnp.arange(8, dtype=jnp.uint8)) & 1            # packing's order
  bits = bits.reshape(n, c, 8 * width)[..., :weights.shape[1]].astype(jnp.int32)
  # A bit adds |w| where it differs from the query's sign: the distance to the all-zero code,
  # sum(max(w, 0)), less w . b.
  base = jnp.sum(jnp.maximum(weights, 0), axis=1)
  return base[:, None] - jnp.sum(bits * weights[:, None, :], axis=-1)


def rerank(query_codes, db_packed: np.ndarray, candidates: np.ndarray, *, num_bits: int):
  """The candidates of each query ordered by the asymmetric distance.

  Args:
    query_codes: (nq, num_bits) continuous codes.
    db_packed: uint8 (nd, ceil(num_bits/8)) packed database codes (packing.py).
    candidates: int (nq, c) database positions, each row in the order of a Hamming search
      (distance, then position); -1 marks a missing one.
    num_bits: code length.

  Returns:
    (D float64 (nq, c), I int64 (nq, c)): each row sorted by the asymmetric distance, ties kept
    in the candidates' order (so by Hamming distance, then position); missing ones last, with
    distance inf and position -1. The distances are jitted in calls of a power-of-two number
    of queries (at most QUERY_CHUNK, fewer where candidates * num_bits is large), so that few
    shapes compile; `rerank_tables` where a query's sum of |q_i| reaches MAX_JIT_WEIGHT.
  """
  w, candidates = _check_rerank_args(query_codes, candidates, num_bits)
  nq, c = candidates.shape
  present = candidates >= 0
  if not present.any():      # an empty database, or nothing found
    return _nothing_found(candidates.shape)
  if np.abs(w).sum(axis=1).max() >= MAX_JIT_WEIGHT:       # int32 sums would overflow
    return _rerank_tables(w, candidates, db_packed)
  weights = np.round(w / WEIGHT_QUANTUM).astype(np.int32)        # whole quanta, exact
  codes = db_packed[np.where(present, candidates, 0)]             # (nq, c, B)
  rows = max(1, min(QUERY_CHUNK, _CALL_ELEMENTS // (c * num_bits)))
  pending = [(start, stop, _distances_jit(*parts))   # calls of a power of two of queries
             for start, stop, parts in layout.row_batches([weights, codes],
                                                          1 << (rows.bit_length() - 1))]
  d = np.empty((nq, c), np.int64)
  for start, stop, part in pending:                 # dispatched asynchronously above
    d[start:stop] = np.asarray(part)[:stop - start]
  d = np.where(present, d, _MISSING)
  # Sorted on the host: XLA:CPU's sort of (distance, place) is several times slower than
  # NumPy's argsort of the unique keys distance * c + place (ties in the candidates' order).
  order = np.argsort(d * c + np.arange(c), axis=1)
  d = np.take_along_axis(d, order, axis=1)
  return (np.where(d == _MISSING, np.inf, d * WEIGHT_QUANTUM),
          np.take_along_axis(np.where(present, candidates, -1), order, axis=1))


def rerank_tables(query_codes, db_packed: np.ndarray, candidates: np.ndarray, *,
                  num_bits: int):
  """`rerank` in NumPy by `byte_tables` (float64, exact at any length): the path of queries
  whose sum of |q_i| reaches MAX_JIT_WEIGHT (about 2**11), and the reference that
  benchmarks/rerank_benchmark.py times."""
  return _rerank_tables(*_check_rerank_args(query_codes, candidates, num_bits), db_packed)


def _rerank_tables(w, candidates, db_packed):
  """`rerank_tables` of checked `query_weights` rows and candidates."""
  present = candidates >= 0
  if not present.any():      # an empty database, or nothing found
    return _nothing_found(candidates.shape)
  codes = db_packed[np.where(present, candidates, 0)]                  # (nq, c, B)
  d = np.empty(candidates.shape)
  for start in range(0, len(w), QUERY_CHUNK):    # tables of a chunk stay in cache
    rows = slice(start, start + QUERY_CHUNK)
    tables = byte_tables(w[rows])                                     # (chunk, B, 256)
    d[rows] = tables[np.arange(len(tables))[:, None, None], np.arange(codes.shape[-1]),
                     codes[rows]].sum(axis=-1)
  d = np.where(present, d, np.inf)
  order = np.argsort(d, axis=1, kind="stable")
  return (np.take_along_axis(d, order, axis=1),
          np.take_along_axis(np.where(present, candidates, -1), order, axis=1))
