"""Retrieval metrics on packed binary codes: pure NumPy, exact.

Every function here takes codes packed to bytes as produced by
``deephash_jax.hamming.pack_bits`` (``np.packbits(bits, axis=1, bitorder="little")``:
bit ``j`` of a code is bit ``j % 8`` of byte ``j // 8``, padding bits are zero).

Ranking rule (shared by all ranked metrics): database items are sorted by Hamming
distance to the query, ascending; ties are broken by lower database index. This is
the order faiss ``IndexBinaryFlat`` and ``deephash_jax.hamming.search`` return, and
it is what a stable sort of the distance row gives.

Relevance: a database item is relevant to a query when their labels are equal, or,
when ``query_ids``/``db_ids`` are given (closest-match protocol), when their ids are
equal.

Averaging: every metric is computed per query and then averaged over queries
(macro average); queries without any relevant database item stay in the average
and score 0 on every metric.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from deephash_jax import hamming

__all__ = ["hamming_distances", "precision_recall_curve", "retrieval_metrics"]


def _to_words(packed: np.ndarray) -> np.ndarray:
  """(N, B) uint8 -> (N, ceil(B/8)) uint64, zero-padded: one popcount per 64 bits."""
  n, num_bytes = packed.shape
  num_words = max(1, -(-num_bytes // 8))
  padded = np.zeros((n, num_words * 8), np.uint8)
  padded[:, :num_bytes] = packed
  return padded.view(np.uint64)


def _distance_dtype(num_bits: int):
  # Smallest unsigned type: numpy's stable sort is a radix sort for <= 16-bit ints.
  return np.uint8 if num_bits < 256 else np.uint16 if num_bits < 65536 else np.uint32


def _word_distances(query_words: np.ndarray, db_words: np.ndarray, dtype) -> np.ndarray:
  """(Q, W) x (N, W) uint64 -> (Q, N) Hamming distances of the given dtype."""
  dist = np.bitwise_count(query_words[:, None, 0] ^ db_words[None, :, 0]).astype(dtype)
  for w in range(1, query_words.shape[1]):
    dist += np.bitwise_count(query_words[:, None, w] ^ db_words[None, :, w])
  return dist


def hamming_distances(a_packed, b_packed) -> np.ndarray:
  """All-pairs Hamming distances between packed codes (NumPy reference).

  Args:
    a_packed: uint8 array (Na, B) of packed codes.
    b_packed: uint8 array (Nb, B) of packed codes, same byte width B.

  Returns:
    int32 array (Na, Nb): popcount(a[i] XOR b[j]).
  """
  a = hamming.check_packed("a_packed", a_packed, None)
  b = hamming.check_packed("b_packed", b_packed, None)
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"a_packed and b_packed byte widths differ: {a.shape[1]} vs {b.shape[1]}")
  return _word_distances(_to_words(a), _to_words(b), np.int32)


def _check_ks(name: str, values) -> tuple[int, ...]:
  values = (values,) if isinstance(values, (int, np.integer)) else tuple(values)
  for v in values:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name} must hold positive ints, got {v!r} in {values!r}")
  return tuple(int(v) for v in values)


def _check_radii(radius) -> tuple[int, ...]:
  radii = (radius,) if isinstance(radius, (int, np.integer)) else tuple(radius)
  for r in radii:
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0:
      raise ValueError(f"radius must be a non-negative int or ints, got {r!r}")
  return tuple(int(r) for r in radii)


def _check_keys(name: str, keys, n: int, codes_name: str) -> np.ndarray:
  keys = np.asarray(keys)
  if keys.ndim != 1 or keys.shape[0] != n:
    raise ValueError(f"{name} must have shape ({n},) to match {codes_name}, got {keys.shape}")
  return keys


def _relevance_keys(query_labels, db_labels, query_ids, db_ids, num_queries, num_database):
  """Returns the per-item keys whose equality defines relevance."""
  if (query_ids is None) != (db_ids is None):
    raise ValueError("query_ids and db_ids must be given together, got "
                     f"query_ids={'None' if query_ids is None else 'array'}, "
                     f"db_ids={'None' if db_ids is None else 'array'}")
  if query_ids is not None:
    return (_check_keys("query_ids", query_ids, num_queries, "query_codes"),
            _check_keys("db_ids", db_ids, num_database, "db_codes"))
  return (_check_keys("query_labels", query_labels, num_queries, "query_codes"),
          _check_keys("db_labels", db_labels, num_database, "db_codes"))


def _check_batch_size(query_batch_size) -> int:
  if (isinstance(query_batch_size, bool) or not isinstance(query_batch_size, (int, np.integer))
      or query_batch_size < 1):
    raise ValueError(f"query_batch_size must be a positive int, got {query_batch_size!r}")
  return int(query_batch_size)


def _hamming_histograms(dist: np.ndarray, rel: np.ndarray, num_bits: int):
  """Per-query counts of (all, relevant) items at each distance 0..num_bits."""
  nq = dist.shape[0]
  bins = num_bits + 1
  flat = dist.astype(np.int64) + (np.arange(nq, dtype=np.int64) * bins)[:, None]
  all_counts = np.bincount(flat.ravel(), minlength=nq * bins).reshape(nq, bins)
  rel_counts = np.bincount(flat[rel], minlength=nq * bins).reshape(nq, bins)
  return all_counts, rel_counts


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  """num / den, with 0 where den == 0."""
  num = np.asarray(num, np.float64)
  den = np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros(np.broadcast_shapes(num.shape, den.shape)),
                   where=den > 0)


def _check_inputs(query_codes, query_labels, db_codes, db_labels, query_ids, db_ids, num_bits,
                  query_batch_size):
  """The checks shared by the metric functions; returns the validated values."""
  num_bits = hamming.check_num_bits(num_bits)
  query_codes = hamming.check_packed("query_codes", query_codes, num_bits)
  db_codes = hamming.check_packed("db_codes", db_codes, num_bits)
  batch = _check_batch_size(query_batch_size)
  nq, nd = query_codes.shape[0], db_codes.shape[0]
  query_keys, db_keys = _relevance_keys(query_labels, db_labels, query_ids, db_ids, nq, nd)
  if nq == 0 or nd == 0:
    raise ValueError(f"need at least one query and one database item, got "
                     f"query_codes {query_codes.shape}, db_codes {db_codes.shape}")
  return num_bits, query_codes, db_codes, batch, query_keys, db_keys


def retrieval_metrics(query_codes,
                      query_labels,
                      db_codes,
                      db_labels,
                      *,
                      num_bits: int,
                      map_at: Iterable[int] = (1000,),
                      radius: int | Sequence[int] = 2,
                      precision_at: Iterable[int] = (),
                      recall_at: Iterable[int] = (),
                      ndcg_at: Iterable[int] = (),
                      query_batch_size: int = 256,
                      query_ids=None,
                      db_ids=None) -> dict[str, float]:
  """Hamming-ranking and Hamming-radius retrieval metrics, exact.

  Ranking: database items sorted by Hamming distance ascending, ties broken by
  lower database index. Relevant: same label (or same id when ``query_ids`` and
  ``db_ids`` are given). Every metric is averaged over all queries (macro);
  a query without any relevant database item scores 0.

  Metrics (each a key of the returned dict):
    map_all: mean over queries of AP over the whole ranked database,
      AP = (1/R) * sum_i P(i) * rel(i), R = number of relevant database items.
    map_at_<k>: AP@k = (1/R_k) * sum_{i<=k} P(i) * rel(i), where R_k is the number
      of relevant items in the top k (the DCH/HashNet deep-hashing convention, not
      min(k, R)); AP@k is 0 when the top k holds no relevant item. k larger than
      the database is clamped to its size (then AP@k == AP over the whole ranking).
    precision_at_hamming_<r>: P@H<=r, precision of the database items within
      Hamming distance r of the query; a query with no item within radius r counts
      as precision 0 (it stays in the average).
    recall_at_hamming_<r>: fraction of the query's relevant items within radius r.
    precision_at_<k>: (number of relevant items in the top k) / k; positions past
      the end of the database count as non-relevant.
    recall_at_<k>: Recall@k as in metric learning: 1 if any relevant item is in
      the top k, else 0, averaged over queries.
    ndcg_at_<k>: binary-relevance NDCG, DCG@k = sum_{i<=k} rel(i) / log2(i + 1)
      divided by the DCG of the ideal ranking (min(k, R) relevant items first).
    num_queries, num_database: the sizes, as floats.

  Args:
    query_codes: uint8 (Nq, ceil(num_bits/8)) packed codes.
    query_labels: int array (Nq,).
    db_codes: uint8 (Nd, ceil(num_bits/8)) packed codes.
    db_labels: int array (Nd,).
    num_bits: code length in bits.
    map_at: the k values of map_at_<k>.
    radius: one radius or a sequence of radii for the *_at_hamming_<r> keys.
    precision_at, recall_at, ndcg_at: the k values of the matching keys.
    query_batch_size: queries ranked at once; memory is about
      24 * query_batch_size * Nd bytes.
    query_ids, db_ids: optional id arrays (Nq,), (Nd,); when given, relevance is
      same id instead of same label (the labels are then not used).

  Returns:
    A dict of python floats.
  """
  num_bits, query_codes, db_codes, batch, query_keys, db_keys = _check_inputs(
      query_codes, query_labels, db_codes, db_labels, query_ids, db_ids, num_bits,
      query_batch_size)
  map_at = _check_ks("map_at", map_at)
  precision_at = _check_ks("precision_at", precision_at)
  recall_at = _check_ks("recall_at", recall_at)
  ndcg_at = _check_ks("ndcg_at", ndcg_at)
  radii = _check_radii(radius)
  nq, nd = query_codes.shape[0], db_codes.shape[0]

  ranked_ks = sorted(set(map_at) | set(precision_at) | set(recall_at) | set(ndcg_at))
  sums = {}
  def accumulate(key, values):
    sums[key] = sums.get(key, 0.0) + float(np.sum(values))

  query_words, db_words = _to_words(query_codes), _to_words(db_codes)
  dtype = _distance_dtype(num_bits)
  ranks = np.arange(1, nd + 1, dtype=np.float64)
  discounts = 1.0 / np.log2(ranks + 1.0)
  ideal_dcg = np.concatenate([[0.0], np.cumsum(discounts)])  # ideal_dcg[m]: m relevant first

  for start in range(0, nq, batch):
    stop = min(start + batch, nq)
    dist = _word_distances(query_words[start:stop], db_words, dtype)
    rel = db_keys[None, :] == query_keys[start:stop, None]
    num_relevant = rel.sum(axis=1)

    # Hamming-radius metrics come from per-distance histograms, no sort needed.
    all_counts, rel_counts = _hamming_histograms(dist, rel, num_bits)
    all_within = np.cumsum(all_counts, axis=1)
    rel_within = np.cumsum(rel_counts, axis=1)
    for r in radii:
      r_clip = min(r, num_bits)
      accumulate(f"precision_at_hamming_{r}",
                 _safe_div(rel_within[:, r_clip], all_within[:, r_clip]))
      accumulate(f"recall_at_hamming_{r}", _safe_div(rel_within[:, r_clip], num_relevant))

    # Hamming ranking: stable sort == ties by lower index (radix sort on uint8/16).
    order = np.argsort(dist, axis=1, kind="stable")
    del dist
    rel_sorted = np.take_along_axis(rel, order, axis=1)
    del order, rel
    cum_rel = np.cumsum(rel_sorted, axis=1, dtype=np.int32)
    # P(i) * rel(i) at every rank i; its prefix sums give AP@k for every k.
    prec_rel = np.where(rel_sorted, cum_rel / ranks, 0.0)

    accumulate("map_all", _safe_div(prec_rel.sum(axis=1), num_relevant))
    for k in map_at:
      kk = min(k, nd)
      accumulate(f"map_at_{k}", _safe_div(prec_rel[:, :kk].sum(axis=1), cum_rel[:, kk - 1]))
    del prec_rel
    for k in ranked_ks:
      kk = min(k, nd)
      hits = cum_rel[:, kk - 1]
      if k in precision_at:
        accumulate(f"precision_at_{k}", hits / k)
      if k in recall_at:
        accumulate(f"recall_at_{k}", hits > 0)
      if k in ndcg_at:
        dcg = (rel_sorted[:, :kk] * discounts[:kk]).sum(axis=1)
        accumulate(f"ndcg_at_{k}", _safe_div(dcg, ideal_dcg[np.minimum(num_relevant, kk)]))

  result = {key: value / nq for key, value in sums.items()}
  result["num_queries"] = float(nq)
  result["num_database"] = float(nd)
  return result


def precision_recall_curve(query_codes, query_labels, db_codes, db_labels, *,
                           num_bits: int, query_batch_size: int = 256,
                           query_ids=None, db_ids=None) -> tuple[np.ndarray, np.ndarray]:
  """Precision and recall of Hamming-radius retrieval at every radius 0..num_bits.

  Macro-averaged with the same rules as ``retrieval_metrics``: at radius r each
  query retrieves the database items within Hamming distance r; its precision is
  0 when it retrieves nothing, its recall is 0 when it has no relevant item; both
  are averaged over all queries. So ``precision[r]`` equals
  ``retrieval_metrics(..., radius=r)["precision_at_hamming_<r>"]``, and
  ``recall[num_bits]`` is the fraction of queries with at least one relevant item.

  Returns:
    (precision, recall): float64 arrays of shape (num_bits + 1,), index = radius.
  """
  num_bits, query_codes, db_codes, batch, query_keys, db_keys = _check_inputs(
      query_codes, query_labels, db_codes, db_labels, query_ids, db_ids, num_bits,
      query_batch_size)
  nq = query_codes.shape[0]
  query_words, db_words = _to_words(query_codes), _to_words(db_codes)
  dtype = _distance_dtype(num_bits)
  precision = np.zeros(num_bits + 1)
  recall = np.zeros(num_bits + 1)
  for start in range(0, nq, batch):
    stop = min(start + batch, nq)
    dist = _word_distances(query_words[start:stop], db_words, dtype)
    rel = db_keys[None, :] == query_keys[start:stop, None]
    all_counts, rel_counts = _hamming_histograms(dist, rel, num_bits)
    rel_within = np.cumsum(rel_counts, axis=1)
    precision += _safe_div(rel_within, np.cumsum(all_counts, axis=1)).sum(axis=0)
    recall += _safe_div(rel_within, rel.sum(axis=1)[:, None]).sum(axis=0)
  return precision / nq, recall / nq
