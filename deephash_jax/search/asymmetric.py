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
scan finds the candidates, this re-ranks a few hundred per query);
evaluators/ranking.py `asymmetric_distance_rows` ranks the whole database by it.
"""
from __future__ import annotations

import numpy as np

from deephash_jax.search import packing

WEIGHT_QUANTUM = 2.0**-20


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
    distance inf and position -1.
  """
  w = query_weights(query_codes)
  if w.shape[1] != num_bits:
    raise ValueError(f"query_codes: {w.shape[1]} bits per code, the database has {num_bits}")
  candidates = np.asarray(candidates, np.int64)
  if candidates.ndim != 2 or candidates.shape[0] != w.shape[0]:
    raise ValueError(f"candidates: expected ({w.shape[0]}, c) positions, got shape "
                     f"{candidates.shape}")
  present = candidates >= 0
  if not present.any():      # an empty database, or nothing found
    return np.full(candidates.shape, np.inf), np.full(candidates.shape, -1, np.int64)
  bits = packing.unpack_bits(db_packed[np.where(present, candidates, 0)].reshape(
      -1, db_packed.shape[-1]), num_bits).reshape(*candidates.shape, num_bits)
  signs = np.where(bits, 1.0, -1.0)
  d = (np.abs(w).sum(axis=1)[:, None] - np.einsum("qk,qck->qc", w, signs)) / 2.0
  d = np.where(present, d, np.inf)
  order = np.argsort(d, axis=1, kind="stable")
  return (np.take_along_axis(d, order, axis=1),
          np.take_along_axis(np.where(present, candidates, -1), order, axis=1))
