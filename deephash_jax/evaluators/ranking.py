"""Ranked-retrieval metrics for any distance: Hamming on packed codes, pixel SAD, cosine. Exact.

One implementation serves every protocol and every reference, so that the figures of learned
codes, of pixel SAD and of float codes are comparable.

Ranking: database items sorted by distance to the query, ascending. Items at equal distance
(ties: with binary codes, thousands of items can share one distance) are ordered by
``ties``:

* ``"expected"``: every order of tied items equally likely; each metric is its exact
  expectation over those orders (McSherry & Najork, ECIR 2008, for AP). No database order can
  favour one method: this is the fair protocol, and the one the evaluators use.
* ``"index"``: lower database index first, the order ``search.hamming.search`` and faiss
  ``IndexBinaryFlat`` return (what a user of an index sees).

Relevance: a database item is relevant to a query when their keys are equal (clothing type for
the category protocol, item id for the closest match). Every metric is computed per query and
averaged over queries (macro average); a query without any relevant database item scores 0.

Metrics (keys of the returned dict):
  map_all: AP over the whole ranking, AP = (1/R) sum_i P(i) rel(i), R = relevant items.
  map_at_<k>: AP@k = (1/R_k) sum_{i<=k} P(i) rel(i), R_k = relevant items in the top k (the
    DCH/HashNet deep-hashing convention, not min(k, R)); 0 when the top k holds none. k larger
    than the database is clamped to its size.
  precision_at_<k>: relevant items in the top k / k (positions past the end count as
    non-relevant).
  recall_at_<k>: Recall@k as in metric learning: 1 if any relevant item is in the top k.
  ndcg_at_<k>: binary-relevance NDCG, DCG@k = sum_{i<=k} rel(i) / log2(i + 1) over the DCG of
    the ideal ranking.
  precision_at_hamming_<r>, recall_at_hamming_<r> (Hamming only): precision (0 when nothing is
    within radius r) and recall of the items within Hamming distance r; ties do not matter.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

from deephash_jax.search import asymmetric
from deephash_jax.search import packing

__all__ = ["asymmetric_distance_rows", "hamming_distances", "one_relevant_metrics",
           "precision_recall_curve", "ranking_metrics", "retrieval_metrics", "TIES"]

TIES = ("expected", "index")
DEFAULT_QUERY_BATCH_SIZE = 128


# ------------------------------------------------------------------------------ checks


def _check_ks(name: str, values) -> tuple[int, ...]:
  values = (values,) if isinstance(values, (int, np.integer)) else tuple(values)
  for v in values:
    if not packing.is_positive_int(v):
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


def _check_ties(ties: str) -> str:
  if ties not in TIES:
    raise ValueError(f"ties={ties!r}: expected one of {TIES}")
  return ties


def _relevance_keys(query_labels, db_labels, query_ids, db_ids, num_queries, num_database):
  """The per-item keys whose equality defines relevance: ids when given, else labels."""
  if (query_ids is None) != (db_ids is None):
    raise ValueError("query_ids and db_ids must be given together, got "
                     f"query_ids={'None' if query_ids is None else 'array'}, "
                     f"db_ids={'None' if db_ids is None else 'array'}")
  if query_ids is not None:
    return (_check_keys("query_ids", query_ids, num_queries, "query_codes"),
            _check_keys("db_ids", db_ids, num_database, "db_codes"))
  return (_check_keys("query_labels", query_labels, num_queries, "query_codes"),
          _check_keys("db_labels", db_labels, num_database, "db_codes"))


def _check_codes(query_codes, db_codes, num_bits, query_batch_size):
  num_bits = packing.check_num_bits(num_bits)
  query_codes = packing.check_packed("query_codes", query_codes, num_bits)
  db_codes = packing.check_packed("db_codes", db_codes, num_bits)
  batch = packing.check_positive("query_batch_size", query_batch_size)
  if query_codes.shape[0] == 0 or db_codes.shape[0] == 0:
    raise ValueError(f"need at least one query and one database item, got "
                     f"query_codes {query_codes.shape}, db_codes {db_codes.shape}")
  return num_bits, query_codes, db_codes, batch


# --------------------------------------------------------------------- Hamming distances


def _word_distances(query_words: np.ndarray, db_words: np.ndarray, dtype) -> np.ndarray:
  """(Q, W) x (N, W) uint64 -> (Q, N) Hamming distances of the given dtype."""
  dist = np.bitwise_count(query_words[:, None, 0] ^ db_words[None, :, 0]).astype(dtype)
  for w in range(1, query_words.shape[1]):
    dist += np.bitwise_count(query_words[:, None, w] ^ db_words[None, :, w])
  return dist


def hamming_distances(a_packed, b_packed) -> np.ndarray:
  """All-pairs Hamming distances between packed codes (the NumPy reference), int32 (Na, Nb)."""
  a = packing.check_packed("a_packed", a_packed, None)
  b = packing.check_packed("b_packed", b_packed, None)
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"a_packed and b_packed byte widths differ: {a.shape[1]} vs {b.shape[1]}")
  return _word_distances(packing.to_words(a, 64), packing.to_words(b, 64), np.int32)


def _hamming_histograms(dist: np.ndarray, rel: np.ndarray, num_bits: int):
  """Per-query counts of (all, relevant) items at each distance 0..num_bits."""
  nq = dist.shape[0]
  bins = num_bits + 1
  flat = dist.astype(np.int64) + (np.arange(nq, dtype=np.int64) * bins)[:, None]
  all_counts = np.bincount(flat.ravel(), minlength=nq * bins).reshape(nq, bins)
  rel_counts = np.bincount(flat[rel], minlength=nq * bins).reshape(nq, bins)
  return all_counts, rel_counts


def _safe_div(num, den) -> np.ndarray:
  """num / den, with 0 where den == 0."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros(np.broadcast_shapes(num.shape, den.shape)),
                   where=den > 0)


# -------------------------------------------------------------------- the ranking core


class _Ranker:
  """Accumulates the ranked metrics of query batches against one database of `nd` items."""

  def __init__(self, nd: int, *, ties: str, map_at=(), precision_at=(), recall_at=(),
               ndcg_at=()):
    self.nd, self.ties = nd, _check_ties(ties)
    self.map_at = _check_ks("map_at", map_at)
    self.precision_at = _check_ks("precision_at", precision_at)
    self.recall_at = _check_ks("recall_at", recall_at)
    self.ndcg_at = _check_ks("ndcg_at", ndcg_at)
    self.sums: dict[str, float] = {}
    positions = np.arange(1, nd + 1, dtype=np.float64)
    discounts = 1.0 / np.log2(positions + 1.0)
    self.ranks = positions
    self.discounts = discounts
    # prefix[m]: the sum of the first m entries: harmonic numbers, DCG of m relevant items
    # first, and log m! (hypergeometric probabilities of the tied group that the top k cuts).
    self.harmonic = np.concatenate([[0.0], np.cumsum(1.0 / positions)])
    self.ideal_dcg = np.concatenate([[0.0], np.cumsum(discounts)])
    self.log_factorial = np.concatenate([[0.0], np.cumsum(np.log(positions))])

  def add(self, key: str, values) -> None:
    self.sums[key] = self.sums.get(key, 0.0) + float(np.sum(values))

  def result(self, nq: int) -> dict[str, float]:
    out = {key: value / nq for key, value in self.sums.items()}
    out["num_queries"], out["num_database"] = float(nq), float(self.nd)
    return out

  # -- ties broken by the lower database index

  def add_index_order(self, dist: np.ndarray, rel: np.ndarray) -> None:
    """A batch of distance rows (B, nd) and relevance (B, nd), ranked by (distance, index)."""
    order = np.argsort(dist, axis=1, kind="stable")
    rel_sorted = np.take_along_axis(rel, order, axis=1)
    del order
    cum_rel = np.cumsum(rel_sorted, axis=1, dtype=np.int64)
    num_relevant = cum_rel[:, -1]
    prec_rel = np.where(rel_sorted, cum_rel / self.ranks, 0.0)   # P(i) rel(i) at each rank
    self.add("map_all", _safe_div(prec_rel.sum(axis=1), num_relevant))
    for k in self.map_at:
      kk = min(k, self.nd)
      self.add(f"map_at_{k}", _safe_div(prec_rel[:, :kk].sum(axis=1), cum_rel[:, kk - 1]))
    del prec_rel
    for k in self.precision_at:
      self.add(f"precision_at_{k}", cum_rel[:, min(k, self.nd) - 1] / k)
    for k in self.recall_at:
      self.add(f"recall_at_{k}", cum_rel[:, min(k, self.nd) - 1] > 0)
    for k in self.ndcg_at:
      kk = min(k, self.nd)
      dcg = (rel_sorted[:, :kk] * self.discounts[:kk]).sum(axis=1)
      self.add(f"ndcg_at_{k}", _safe_div(dcg, self.ideal_dcg[np.minimum(num_relevant, kk)]))

  # -- the expectation over every order of tied items

  def add_tied_groups(self, counts: np.ndarray, rel_counts: np.ndarray) -> None:
    """A batch of rankings given as tied groups in rank order: counts[q, g] items, of which
    rel_counts[q, g] relevant, at the g-th smallest distance (empty groups allowed)."""
    n, r = counts.astype(np.int64), rel_counts.astype(np.float64)
    n_before = np.cumsum(n, axis=1) - n                  # items ranked before each group
    r_before = np.cumsum(r, axis=1) - r
    num_relevant = r.sum(axis=1)
    # A group of n items at ranks N+1..N+n holding r relevant ones: a rank N+j is relevant with
    # probability r/n and, given that, has (j-1)(r-1)/(n-1) relevant items of the group before
    # it, so E[sum_j P(N+j) rel(N+j)] = r/n [(R+1) S0 + (r-1)/(n-1) S1] with
    # S0 = sum_j 1/(N+j) and S1 = sum_j (j-1)/(N+j) = n - (N+1) S0.
    s0 = self.harmonic[n_before + n] - self.harmonic[n_before]
    s1 = n - (n_before + 1) * s0
    within = np.where(n > 1, _safe_div(r - 1.0, n - 1.0) * s1, 0.0)
    term = _safe_div(r, n) * ((r_before + 1.0) * s0 + within)
    self.add("map_all", _safe_div(term.sum(axis=1), num_relevant))
    for k in sorted(set(self.map_at + self.precision_at + self.recall_at)):
      kk = min(k, self.nd)
      # The group that the top kk cuts: the first whose last rank reaches kk.
      cut = np.argmax(n_before + n >= kk, axis=1)[:, None]
      take = lambda a: np.take_along_axis(a, cut, axis=1)[:, 0]
      nb, nc, rc, rb = take(n_before), take(n), take(r), take(r_before)
      m = kk - nb                                         # the cut group's ranks in the top k
      if k in self.precision_at:
        self.add(f"precision_at_{k}", (rb + m * _safe_div(rc, nc)) / k)
      if k in self.recall_at:
        self.add(f"recall_at_{k}", np.where(rb > 0, 1.0, 1.0 - self._none_drawn(nc, rc, m)))
      if k in self.map_at:
        before = np.where(np.arange(n.shape[1])[None, :] < cut, term, 0.0).sum(axis=1)
        self.add(f"map_at_{k}", self._cut_average_precision(before, nb, nc, rc, rb, m))
    for k in self.ndcg_at:
      kk = min(k, self.nd)
      last = np.minimum(n_before + n, kk)
      first = np.minimum(n_before, kk)
      dcg = (_safe_div(r, n) * (self.ideal_dcg[last] - self.ideal_dcg[first])).sum(axis=1)
      ideal = self.ideal_dcg[np.minimum(num_relevant.astype(np.int64), kk)]
      self.add(f"ndcg_at_{k}", _safe_div(dcg, ideal))

  def _log_choose(self, a, b):
    return self.log_factorial[a] - self.log_factorial[b] - self.log_factorial[a - b]

  def _none_drawn(self, n, r, m):
    """P(no relevant item among m drawn without replacement from n holding r relevant)."""
    r = r.astype(np.int64)
    possible = n - r >= m
    a = np.where(possible, n - r, m)
    log_p = (self.log_factorial[a] - self.log_factorial[a - m]
             - self.log_factorial[n] + self.log_factorial[n - m])
    return np.where(possible, np.exp(log_p), 0.0)

  def _cut_average_precision(self, before, nb, nc, rc, rb, m):
    """E[AP@k] when the top k ends m ranks into a tied group (nc items, rc relevant) after nb
    items holding rb relevant, whose expected sum of P(i) rel(i) is `before`: AP@k divides by
    the relevant items in the top k, rb + x, so the expectation is taken over x, the relevant
    items among the m drawn (hypergeometric), each with the group's expectation given x."""
    rc_i = rc.astype(np.int64)
    x = np.arange(0, int(np.max(np.minimum(m, rc_i))) + 1)[None, :]
    mm, n_, r_ = m[:, None], nc[:, None], rc_i[:, None]
    valid = (x <= r_) & (mm - x <= n_ - r_)
    xs = np.where(valid, x, 0)
    log_p = (self._log_choose(r_, np.minimum(xs, r_)) + self._log_choose(
        n_ - r_, np.where(valid, mm - xs, 0)) - self._log_choose(n_, mm))
    probability = np.where(valid, np.exp(log_p), 0.0)
    s0 = (self.harmonic[nb + m] - self.harmonic[nb])[:, None]
    s1 = m[:, None] - (nb[:, None] + 1) * s0
    within = np.where(mm > 1, _safe_div(x - 1.0, mm - 1.0) * s1, 0.0)
    cut_sum = _safe_div(x, mm) * ((rb[:, None] + 1.0) * s0 + within)
    ap = _safe_div(before[:, None] + cut_sum, rb[:, None] + x)
    return (probability * ap).sum(axis=1)

  def add_distances(self, dist: np.ndarray, rel: np.ndarray) -> None:
    """A batch of real or integer distance rows, ranked with this ranker's ties rule."""
    if self.ties == "index":
      self.add_index_order(dist, rel)
      return
    order = np.argsort(dist, axis=1, kind="stable")
    sorted_dist = np.take_along_axis(dist, order, axis=1)
    cum_rel = np.concatenate([np.zeros((len(dist), 1), np.int64), np.cumsum(
        np.take_along_axis(rel, order, axis=1), axis=1, dtype=np.int64)], axis=1)
    del order
    # Tied groups as runs of equal distances: each run's size and relevant count stand at its
    # first rank, zeros elsewhere (empty groups).
    starts = np.ones(dist.shape, bool)
    starts[:, 1:] = sorted_dist[:, 1:] != sorted_dist[:, :-1]
    positions = np.arange(self.nd)
    next_start = np.minimum.accumulate(
        np.where(starts, positions, self.nd)[:, ::-1], axis=1)[:, ::-1]
    end = np.concatenate([next_start[:, 1:], np.full((len(dist), 1), self.nd)], axis=1)
    counts = np.where(starts, end - positions, 0)
    rel_counts = np.where(starts, np.take_along_axis(cum_rel, end, axis=1) - cum_rel[:, :-1], 0)
    self.add_tied_groups(counts, rel_counts)


# ------------------------------------------------------------------------------ public


def ranking_metrics(distance_rows: Callable[[int, int], np.ndarray], query_keys, db_keys, *,
                    map_at: Iterable[int] = (), recall_at: Iterable[int] = (),
                    precision_at: Iterable[int] = (), ndcg_at: Iterable[int] = (),
                    ties: str = "expected",
                    query_batch_size: int = DEFAULT_QUERY_BATCH_SIZE) -> dict[str, float]:
  """Ranked-retrieval metrics for any distance (module docstring), exact.

  `distance_rows(start, stop)` returns the (stop - start, Nd) distances of those queries to the
  whole database (real or integer). Relevant: equal keys. Returns a dict of floats, with
  num_queries and num_database.
  """
  query_keys, db_keys = np.asarray(query_keys), np.asarray(db_keys)
  nq, nd = len(query_keys), len(db_keys)
  if nq == 0 or nd == 0:
    raise ValueError(f"need at least one query and one database item, got {nq} and {nd}")
  ranker = _Ranker(nd, ties=ties, map_at=map_at, precision_at=precision_at,
                   recall_at=recall_at, ndcg_at=ndcg_at)
  for start, stop, dist in _distance_batches(distance_rows, nq, nd, query_batch_size):
    ranker.add_distances(dist, db_keys[None, :] == query_keys[start:stop, None])
  return ranker.result(nq)


def _distance_batches(distance_rows, nq: int, nd: int, query_batch_size: int):
  """(start, stop, the (stop - start, nd) distances) of each batch of queries, shape checked."""
  batch = packing.check_positive("query_batch_size", query_batch_size)
  for start in range(0, nq, batch):
    stop = min(start + batch, nq)
    dist = np.asarray(distance_rows(start, stop))
    if dist.shape != (stop - start, nd):
      raise ValueError(f"distance_rows({start}, {stop}) returned shape {dist.shape}, expected "
                       f"{(stop - start, nd)}")
    yield start, stop, dist


def one_relevant_metrics(distance_rows: Callable[[int, int], np.ndarray], query_ids, db_ids, *,
                         map_at: Iterable[int] = (), recall_at: Iterable[int] = (),
                         precision_at: Iterable[int] = (), ndcg_at: Iterable[int] = (),
                         ties: str = "expected",
                         query_batch_size: int = DEFAULT_QUERY_BATCH_SIZE) -> dict[str, float]:
  """`ranking_metrics` where a query has at most one relevant item (the closest match), unsorted.

  Relevant: `db_ids` equal to the query's id; an id may occur at most once in `db_ids` (-1 or
  any id no query has marks a distractor). Each distance row is cut into three groups, the items
  nearer than the relevant one, its tied group (with `ties="index"` the tied items of lower
  index join the first group and the relevant item stands alone) and the rest, and ranked as
  the tied groups of a Hamming histogram: O(Nd) a query against `ranking_metrics`' sort, with the
  same figures (tests/evaluators/test_ranking.py).
  """
  query_ids, db_ids = np.asarray(query_ids), np.asarray(db_ids)
  nq, nd = len(query_ids), len(db_ids)
  if nq == 0 or nd == 0:
    raise ValueError(f"need at least one query and one database item, got {nq} and {nd}")
  relevant = np.flatnonzero(np.isin(db_ids, query_ids))
  ids, counts = np.unique(db_ids[relevant], return_counts=True)
  if (counts > 1).any():
    raise ValueError(f"db_ids: query id {ids[counts > 1][0].item()!r} occurs "
                     f"{counts[counts > 1][0]} times; one relevant item a query at most")
  position = dict(zip(db_ids[relevant].tolist(), relevant.tolist()))
  ranker = _Ranker(nd, ties=ties, map_at=map_at, precision_at=precision_at,
                   recall_at=recall_at, ndcg_at=ndcg_at)
  for start, stop, dist in _distance_batches(distance_rows, nq, nd, query_batch_size):
    where = np.array([position.get(q, -1) for q in query_ids[start:stop].tolist()])
    found = where >= 0
    own = dist[np.arange(stop - start), np.maximum(where, 0)][:, None]
    nearer = (dist < own).sum(axis=1)
    tied = (dist == own).sum(axis=1)
    if ties == "index":
      nearer += ((dist == own) & (np.arange(nd)[None, :] < where[:, None])).sum(axis=1)
      tied = np.ones_like(tied)
    groups = np.stack([nearer, tied, nd - nearer - tied], axis=1)
    groups = np.where(found[:, None], groups, [[nd, 0, 0]])
    ranker.add_tied_groups(groups, np.where(found[:, None], [[0, 1, 0]], 0))
  return ranker.result(nq)


def asymmetric_distance_rows(query_codes, db_codes) -> Callable[[int, int], np.ndarray]:
  """`distance_rows` of continuous query codes against the signs of the database's codes.

  d(q, b) = sum of |q_i| over the bits where sign(q_i) differs from b_i: a Hamming distance in
  which each bit counts the query's confidence in it (an asymmetric distance: the database keeps
  its bits, the query its continuous code). Equals the Hamming distance for +-1 queries, and
  ranks as the inner product q . b does (search/asymmetric.py: |q_i| rounded so that every sum
  is exact in float64 and equal codes tie in any summation order).
  """
  signed = asymmetric.query_weights(query_codes)
  b = np.where(np.asarray(db_codes) > 0, 1.0, -1.0)
  return lambda start, stop: asymmetric.distances(signed[start:stop], b)


def retrieval_metrics(query_codes, query_labels, db_codes, db_labels, *, num_bits: int,
                      map_at: Iterable[int] = (1000,), radius: int | Sequence[int] = 2,
                      precision_at: Iterable[int] = (), recall_at: Iterable[int] = (),
                      ndcg_at: Iterable[int] = (), ties: str = "expected",
                      query_batch_size: int = DEFAULT_QUERY_BATCH_SIZE, query_ids=None,
                      db_ids=None) -> dict[str, float]:
  """Hamming-ranking and Hamming-radius metrics of packed codes (module docstring), exact.

  Args:
    query_codes, db_codes: uint8 (N, ceil(num_bits/8)) packed codes (search.packing).
    query_labels, db_labels: int arrays; relevant = same label, unless `query_ids` and
      `db_ids` are given (then relevant = same id, and the labels are not used).
    num_bits: code length in bits.
    map_at, precision_at, recall_at, ndcg_at: the k values of the matching keys.
    radius: one radius or several, for the *_at_hamming_<r> keys.
    ties: "expected" or "index" (module docstring).
    query_batch_size: queries ranked at once (memory ~ 40 * query_batch_size * Nd bytes).
  """
  num_bits, query_codes, db_codes, batch = _check_codes(query_codes, db_codes, num_bits,
                                                        query_batch_size)
  nq, nd = query_codes.shape[0], db_codes.shape[0]
  query_keys, db_keys = _relevance_keys(query_labels, db_labels, query_ids, db_ids, nq, nd)
  radii = _check_radii(radius)
  ranker = _Ranker(nd, ties=ties, map_at=map_at, precision_at=precision_at,
                   recall_at=recall_at, ndcg_at=ndcg_at)
  query_words, db_words = packing.to_words(query_codes, 64), packing.to_words(db_codes, 64)
  dtype = packing.distance_dtype(num_bits)   # uint8/16: NumPy's stable sort is a radix sort
  for start in range(0, nq, batch):
    stop = min(start + batch, nq)
    dist = _word_distances(query_words[start:stop], db_words, dtype)
    rel = db_keys[None, :] == query_keys[start:stop, None]
    all_counts, rel_counts = _hamming_histograms(dist, rel, num_bits)
    all_within, rel_within = np.cumsum(all_counts, axis=1), np.cumsum(rel_counts, axis=1)
    for r in radii:
      r_clip = min(r, num_bits)
      ranker.add(f"precision_at_hamming_{r}",
                 _safe_div(rel_within[:, r_clip], all_within[:, r_clip]))
      ranker.add(f"recall_at_hamming_{r}", _safe_div(rel_within[:, r_clip], rel.sum(axis=1)))
    if ties == "expected":   # the tied groups are the distances 0..num_bits
      ranker.add_tied_groups(all_counts, rel_counts)
    else:
      ranker.add_index_order(dist, rel)
  return ranker.result(nq)


def precision_recall_curve(query_codes, query_labels, db_codes, db_labels, *,
                           num_bits: int, query_batch_size: int = DEFAULT_QUERY_BATCH_SIZE,
                           query_ids=None, db_ids=None) -> tuple[np.ndarray, np.ndarray]:
  """Precision and recall of Hamming-radius retrieval at every radius 0..num_bits.

  Macro-averaged as `retrieval_metrics`: `precision[r]` equals its
  "precision_at_hamming_<r>", and `recall[num_bits]` is the fraction of queries with at least
  one relevant item. Returns float64 arrays of shape (num_bits + 1,), index = radius.
  """
  num_bits, query_codes, db_codes, batch = _check_codes(query_codes, db_codes, num_bits,
                                                        query_batch_size)
  nq, nd = query_codes.shape[0], db_codes.shape[0]
  query_keys, db_keys = _relevance_keys(query_labels, db_labels, query_ids, db_ids, nq, nd)
  query_words, db_words = packing.to_words(query_codes, 64), packing.to_words(db_codes, 64)
  dtype = packing.distance_dtype(num_bits)
  precision, recall = np.zeros(num_bits + 1), np.zeros(num_bits + 1)
  for start in range(0, nq, batch):
    stop = min(start + batch, nq)
    dist = _word_distances(query_words[start:stop], db_words, dtype)
    rel = db_keys[None, :] == query_keys[start:stop, None]
    all_counts, rel_counts = _hamming_histograms(dist, rel, num_bits)
    rel_within = np.cumsum(rel_counts, axis=1)
    precision += _safe_div(rel_within, np.cumsum(all_counts, axis=1)).sum(axis=0)
    recall += _safe_div(rel_within, rel.sum(axis=1)[:, None]).sum(axis=0)
  return precision / nq, recall / nq
