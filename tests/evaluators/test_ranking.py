"""evaluators/ranking.py against brute-force per-query references: ties by index, and the exact
expectation over every order of tied items (checked by enumerating the orders)."""
import itertools
import math

import numpy as np
import pytest

from deephash_jax.evaluators import ranking


def _pack(bits):
  return np.packbits(np.asarray(bits, bool), axis=1, bitorder="little")


def _reference(q_bits, q_keys, db_bits, db_keys, *, map_at=(), radii=(), precision_at=(),
               recall_at=(), ndcg_at=()):
  """Per-query loops on unpacked bits, written from the definitions."""
  out = {}
  def add(key, value):
    out[key] = out.get(key, 0.0) + value / len(q_bits)
  nd = len(db_bits)
  for qb, qk in zip(q_bits, q_keys):
    dist = [int(np.sum(qb != db)) for db in db_bits]
    order = sorted(range(nd), key=lambda j: (dist[j], j))
    rel = [int(db_keys[j] == qk) for j in order]
    total = sum(rel)
    def ap(k):
      hits, s = 0, 0.0
      for i in range(min(k, nd)):
        if rel[i]:
          hits += 1
          s += hits / (i + 1)
      return s / hits if hits else 0.0
    add("map_all", sum(hits / (i + 1) for i, hits in
                       ((i, sum(rel[:i + 1])) for i in range(nd)) if rel[i]) / total
        if total else 0.0)
    for k in map_at:
      add(f"map_at_{k}", ap(k))
    for r in radii:
      within = [j for j in range(nd) if dist[j] <= r]
      good = sum(db_keys[j] == qk for j in within)
      add(f"precision_at_hamming_{r}", good / len(within) if within else 0.0)
      add(f"recall_at_hamming_{r}", good / total if total else 0.0)
    for k in precision_at:
      add(f"precision_at_{k}", sum(rel[:k]) / k)
    for k in recall_at:
      add(f"recall_at_{k}", float(any(rel[:k])))
    for k in ndcg_at:
      dcg = sum(rel[i] / math.log2(i + 2) for i in range(min(k, nd)))
      idcg = sum(1 / math.log2(i + 2) for i in range(min(k, total)))
      add(f"ndcg_at_{k}", dcg / idcg if idcg else 0.0)
  return out


def _assert_close(got, want):
  for key, value in want.items():
    assert got[key] == pytest.approx(value, abs=1e-12), key


# Query 0000 against a database with distance ties whose order decides AP.
_TIE_DB = [[1, 0, 0, 0],   # idx0: d=1, label 1
           [0, 0, 0, 0],   # idx1: d=0, label 0
           [0, 1, 0, 0],   # idx2: d=1, label 0
           [0, 0, 0, 0],   # idx3: d=0, label 1
           [1, 1, 1, 1]]   # idx4: d=4, label 0
_TIE_DB_LABELS = [1, 0, 0, 1, 0]


def test_hand_made_ties_follow_lower_index_first():
  # Ranking idx1, idx3, idx0, idx2, idx4 -> relevance 1, 0, 0, 1, 1 (R = 3).
  got = ranking.retrieval_metrics(_pack([[0, 0, 0, 0]]), np.array([0]), _pack(_TIE_DB),
                                  np.array(_TIE_DB_LABELS), num_bits=4, map_at=(2, 4, 1000),
                                  radius=(0, 1, 4), precision_at=(2, 10), recall_at=(1, 2),
                                  ndcg_at=(3,), ties="index")
  want = {
      "map_all": (1 + 2 / 4 + 3 / 5) / 3,
      "map_at_2": 1.0,                 # R_2 = 1: (1/1) * 1
      "map_at_4": (1 + 2 / 4) / 2,     # R_4 = 2
      "map_at_1000": (1 + 2 / 4 + 3 / 5) / 3,  # clamped to the database size
      "precision_at_hamming_0": 1 / 2,
      "recall_at_hamming_0": 1 / 3,
      "precision_at_hamming_1": 2 / 4,
      "recall_at_hamming_1": 2 / 3,
      "precision_at_hamming_4": 3 / 5,
      "recall_at_hamming_4": 1.0,
      "precision_at_2": 1 / 2,
      "precision_at_10": 3 / 10,       # past the end counts as non-relevant
      "recall_at_1": 1.0,
      "recall_at_2": 1.0,
      "ndcg_at_3": 1 / (1 + 1 / math.log2(3) + 1 / 2),
      "num_queries": 1.0,
      "num_database": 5.0,
  }
  _assert_close(got, want)
  assert set(got) == set(want)
  assert all(type(v) is float for v in got.values())


def test_queries_without_relevant_items_or_neighbours_score_zero():
  # Query 1: label 9 (no relevant item) and nothing at distance 0.
  query_bits = [[0, 0, 0, 0], [0, 1, 1, 1]]
  got = ranking.retrieval_metrics(_pack(query_bits), np.array([0, 9]), _pack(_TIE_DB),
                                  np.array(_TIE_DB_LABELS), num_bits=4, map_at=(2,), radius=0,
                                  recall_at=(5,), ndcg_at=(5,), ties="index")
  assert got["map_all"] == pytest.approx((1 + 2 / 4 + 3 / 5) / 3 / 2)
  assert got["map_at_2"] == pytest.approx(0.5)
  assert got["precision_at_hamming_0"] == pytest.approx(0.25)
  assert got["recall_at_5"] == pytest.approx(0.5)
  assert got["num_queries"] == 2.0


@pytest.mark.parametrize("num_bits", [4, 12, 48, 64, 70])
@pytest.mark.parametrize("query_batch_size", [1, 7, 256])
def test_matches_brute_force(num_bits, query_batch_size):
  rng = np.random.default_rng(num_bits * 1000 + query_batch_size)
  q_bits = rng.random((13, num_bits)) < 0.5
  db_bits = rng.random((40, num_bits)) < 0.5
  db_bits[20:] = db_bits[:20]  # exact duplicates: ties at every distance
  q_bits[:3] = db_bits[:3]
  q_labels = rng.integers(0, 4, 13)
  db_labels = rng.integers(0, 4, 40)
  kwargs = dict(map_at=(1, 5, 40, 100), precision_at=(1, 3, 50), recall_at=(1, 4),
                ndcg_at=(1, 6, 45))
  radii = (0, 1, num_bits // 2, num_bits)
  got = ranking.retrieval_metrics(_pack(q_bits), q_labels, _pack(db_bits), db_labels,
                                  num_bits=num_bits, radius=radii, ties="index",
                                  query_batch_size=query_batch_size, **kwargs)
  want = _reference(q_bits, q_labels, db_bits, db_labels, radii=radii, **kwargs)
  _assert_close(got, want)


def test_ids_replace_labels_for_relevance():
  rng = np.random.default_rng(0)
  q_bits = rng.random((9, 16)) < 0.5
  db_bits = rng.random((30, 16)) < 0.5
  q_ids = rng.integers(0, 5, 9)
  db_ids = rng.integers(0, 5, 30)
  labels_q = np.zeros(9, int)  # every item would be relevant by label
  labels_db = np.zeros(30, int)
  got = ranking.retrieval_metrics(_pack(q_bits), labels_q, _pack(db_bits), labels_db,
                                  num_bits=16, map_at=(5,), radius=3, recall_at=(1,),
                                  query_ids=q_ids, db_ids=db_ids, ties="index")
  want = _reference(q_bits, q_ids, db_bits, db_ids, map_at=(5,), radii=(3,), recall_at=(1,))
  _assert_close(got, want)
  # Labels may be absent when ids are given; empty metric lists give only the sizes + map_all.
  got = ranking.retrieval_metrics(_pack(q_bits), None, _pack(db_bits), None, num_bits=16,
                                  map_at=(), radius=(), recall_at=(1,), query_ids=q_ids,
                                  db_ids=db_ids, ties="index")
  assert set(got) == {"map_all", "recall_at_1", "num_queries", "num_database"}
  assert got["recall_at_1"] == pytest.approx(want["recall_at_1"])


@pytest.mark.parametrize("num_bits", [6, 32])
def test_precision_recall_curve_matches_radius_metrics(num_bits):
  rng = np.random.default_rng(num_bits)
  q_bits = rng.random((11, num_bits)) < 0.5
  db_bits = rng.random((50, num_bits)) < 0.5
  q_labels = rng.integers(0, 3, 11)
  q_labels[0] = 99  # a query with no relevant item
  db_labels = rng.integers(0, 3, 50)
  precision, recall = ranking.precision_recall_curve(
      _pack(q_bits), q_labels, _pack(db_bits), db_labels, num_bits=num_bits,
      query_batch_size=4)
  assert precision.shape == recall.shape == (num_bits + 1,)
  radii = tuple(range(num_bits + 1))
  want = _reference(q_bits, q_labels, db_bits, db_labels, radii=radii)
  np.testing.assert_allclose(precision, [want[f"precision_at_hamming_{r}"] for r in radii],
                             atol=1e-12)
  np.testing.assert_allclose(recall, [want[f"recall_at_hamming_{r}"] for r in radii],
                             atol=1e-12)
  assert recall[-1] == pytest.approx(10 / 11)
  assert np.all(np.diff(recall) >= 0)


@pytest.mark.parametrize("num_bits", [8, 12, 64, 130])
def test_hamming_distances_matches_unpacked(num_bits):
  rng = np.random.default_rng(num_bits)
  a = rng.random((7, num_bits)) < 0.5
  b = rng.random((9, num_bits)) < 0.5
  got = ranking.hamming_distances(_pack(a), _pack(b))
  want = (a[:, None, :] != b[None, :, :]).sum(-1)
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, want)


def test_bad_inputs_name_the_argument():
  codes = _pack(np.zeros((3, 12), bool))
  labels = np.zeros(3, int)
  call = lambda q, d, **kw: ranking.retrieval_metrics(
      q, labels, d, labels, **{"num_bits": 12, **kw})
  with pytest.raises(TypeError, match="query_codes.*int64"):
    call(codes.astype(np.int64), codes)
  with pytest.raises(ValueError, match="db_codes has 3 bytes.*num_bits=12"):
    call(codes, np.zeros((3, 3), np.uint8))
  padded = codes.copy()
  padded[0, -1] = 0x80
  with pytest.raises(ValueError, match="db_codes has nonzero padding bits"):
    call(codes, padded)
  with pytest.raises(ValueError, match=r"db_labels must have shape \(4,\)"):
    ranking.retrieval_metrics(codes, labels, np.zeros((4, 2), np.uint8), labels, num_bits=12)
  with pytest.raises(ValueError, match="query_ids and db_ids"):
    call(codes, codes, query_ids=labels)
  with pytest.raises(ValueError, match="map_at"):
    call(codes, codes, map_at=(0,))
  with pytest.raises(ValueError, match="num_bits"):
    call(codes, codes, num_bits=0)
  with pytest.raises(ValueError, match="ties='random'"):
    call(codes, codes, ties="random")
  with pytest.raises(ValueError, match="byte widths differ"):
    ranking.hamming_distances(codes, np.zeros((2, 3), np.uint8))


# ------------------------------------------------------------ the expectation over tie orders


def _enumerated(dist_row, rel_row, *, map_at=(), precision_at=(), recall_at=(), ndcg_at=()):
  """Every metric averaged over every order of the database that sorts it by distance (each
  such order equally likely: uniform tie-breaking), written from the definitions."""
  nd = len(dist_row)
  orders = [o for o in itertools.permutations(range(nd))
            if all(dist_row[o[i]] <= dist_row[o[i + 1]] for i in range(nd - 1))]
  total = sum(rel_row)
  out = {}
  for order in orders:
    rel = [int(rel_row[j]) for j in order]
    def ap(k):
      hits, s = 0, 0.0
      for i in range(min(k, nd)):
        if rel[i]:
          hits += 1
          s += hits / (i + 1)
      return s, hits
    values = {"map_all": ap(nd)[0] / total if total else 0.0}
    for k in map_at:
      s, hits = ap(k)
      values[f"map_at_{k}"] = s / hits if hits else 0.0
    for k in precision_at:
      values[f"precision_at_{k}"] = sum(rel[:k]) / k
    for k in recall_at:
      values[f"recall_at_{k}"] = float(any(rel[:k]))
    for k in ndcg_at:
      dcg = sum(rel[i] / math.log2(i + 2) for i in range(min(k, nd)))
      idcg = sum(1 / math.log2(i + 2) for i in range(min(k, total)))
      values[f"ndcg_at_{k}"] = dcg / idcg if idcg else 0.0
    for key, value in values.items():
      out[key] = out.get(key, 0.0) + value / len(orders)
  return out


_KS = dict(map_at=(1, 2, 3, 5, 8), precision_at=(1, 3, 9), recall_at=(1, 2, 4),
           ndcg_at=(2, 5))


@pytest.mark.parametrize("seed", range(6))
def test_expected_ties_equal_the_average_over_every_tie_order(seed):
  rng = np.random.default_rng(seed)
  num_bits, nd, nq = 3, 8, 4          # 3 bits over 8 items: ties at every distance
  q_bits, db_bits = rng.random((nq, num_bits)) < 0.5, rng.random((nd, num_bits)) < 0.5
  q_labels, db_labels = rng.integers(0, 3, nq), rng.integers(0, 3, nd)
  q_labels[0] = 7                     # a query without any relevant item
  got = ranking.retrieval_metrics(_pack(q_bits), q_labels, _pack(db_bits), db_labels,
                                  num_bits=num_bits, radius=(), ties="expected",
                                  query_batch_size=3, **_KS)
  dist = ranking.hamming_distances(_pack(q_bits), _pack(db_bits))
  want = {}
  for i in range(nq):
    for key, value in _enumerated(dist[i], db_labels == q_labels[i], **_KS).items():
      want[key] = want.get(key, 0.0) + value / nq
  _assert_close(got, want)
  # Real-valued distances (SAD, cosine) take the same path through their runs of equal values.
  real = ranking.ranking_metrics(lambda a, b: dist[a:b] * 0.5, q_labels, db_labels,
                                 ties="expected", query_batch_size=3, **_KS)
  _assert_close(real, want)


def test_expected_ties_do_not_depend_on_the_database_order():
  """With ties by index, putting the relevant items first in the database wins every tie; the
  expectation gives every order the same figures."""
  rng = np.random.default_rng(5)
  q_bits = rng.random((20, 6)) < 0.5
  db_bits = rng.random((300, 6)) < 0.5
  q_ids, db_ids = np.arange(20), np.concatenate([np.arange(20), np.full(280, -1)])
  db_bits[:20] = q_bits                  # every query's original is at distance 0
  args = dict(num_bits=6, map_at=(), radius=(), recall_at=(1, 10))
  order = rng.permutation(300)
  first = ranking.retrieval_metrics(_pack(q_bits), None, _pack(db_bits), None, query_ids=q_ids,
                                    db_ids=db_ids, ties="expected", **args)
  shuffled = ranking.retrieval_metrics(_pack(q_bits), None, _pack(db_bits[order]), None,
                                       query_ids=q_ids, db_ids=db_ids[order], ties="expected",
                                       **args)
  _assert_close(shuffled, first)
  by_index = ranking.retrieval_metrics(_pack(q_bits), None, _pack(db_bits), None,
                                       query_ids=q_ids, db_ids=db_ids, ties="index", **args)
  assert by_index["recall_at_1"] > first["recall_at_1"] + 0.5


def test_one_relevant_item_among_ties_scores_its_expected_rank():
  # The original at distance 0 with 3 other items there: rank 1..4 with probability 1/4 each.
  q = _pack([[0, 0, 0, 0]])
  db = _pack([[0, 0, 0, 0]] * 4 + [[1, 1, 0, 0]] * 9)
  got = ranking.retrieval_metrics(q, None, db, None, num_bits=4, map_at=(), radius=(),
                                  recall_at=(1, 2, 10), query_ids=[2], db_ids=np.arange(13),
                                  ties="expected")
  assert got["recall_at_1"] == pytest.approx(1 / 4)
  assert got["recall_at_2"] == pytest.approx(2 / 4)
  assert got["recall_at_10"] == pytest.approx(1.0)
  assert got["map_all"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def _ap_brute_force(dist_row, rel_row):
  order = sorted(range(len(dist_row)), key=lambda j: (dist_row[j], j))
  hits, total = 0, 0.0
  for rank, j in enumerate(order, start=1):
    if rel_row[j]:
      hits += 1
      total += hits / rank
  return (total / hits if hits else 0.0), order


def test_ranking_metrics_of_any_distance_equal_brute_force_and_the_hamming_metrics():
  rng = np.random.default_rng(2)
  nq, nd = 9, 40
  dist = rng.integers(0, 6, (nq, nd)).astype(np.float64)   # many ties
  query_keys, db_keys = rng.integers(0, 4, nq), rng.integers(0, 4, nd)
  db_keys[:] = np.where(db_keys == 3, 2, db_keys)          # key 3 has no relevant item
  got = ranking.ranking_metrics(lambda a, b: dist[a:b], query_keys, db_keys, map_at=(5, 100),
                                recall_at=(1, 3), precision_at=(4,), query_batch_size=4,
                                ties="index")
  aps, ap5, r1, r3, p4 = [], [], [], [], []
  for i in range(nq):
    rel = db_keys == query_keys[i]
    ap, order = _ap_brute_force(dist[i], rel)
    aps.append(ap)
    top = [rel[j] for j in order]
    hits5 = sum(top[:5])
    ap5.append(sum(sum(top[:r + 1]) / (r + 1) for r in range(5) if top[r]) / hits5
               if hits5 else 0.0)
    r1.append(float(any(top[:1])))
    r3.append(float(any(top[:3])))
    p4.append(sum(top[:4]) / 4)
  assert got["map_all"] == pytest.approx(np.mean(aps), abs=1e-12)
  assert got["map_at_5"] == pytest.approx(np.mean(ap5), abs=1e-12)
  assert got["map_at_100"] == pytest.approx(np.mean(aps), abs=1e-12)
  assert got["recall_at_1"] == pytest.approx(np.mean(r1))
  assert got["recall_at_3"] == pytest.approx(np.mean(r3))
  assert got["precision_at_4"] == pytest.approx(np.mean(p4))
  assert got["num_queries"] == nq and got["num_database"] == nd

  # On Hamming distances it equals retrieval_metrics (same ranking and definitions).
  bits_q, bits_d = rng.random((nq, 12)) > 0.5, rng.random((nd, 12)) > 0.5
  pack = lambda b: np.packbits(b, axis=1, bitorder="little")
  hamming_dist = ranking.hamming_distances(pack(bits_q), pack(bits_d))
  for ties in ("index", "expected"):
    ours = ranking.ranking_metrics(lambda a, b: hamming_dist[a:b], query_keys, db_keys,
                                   map_at=(5,), recall_at=(1, 3), ties=ties)
    ref = ranking.retrieval_metrics(pack(bits_q), query_keys, pack(bits_d), db_keys,
                                    num_bits=12, map_at=(5,), radius=(), recall_at=(1, 3),
                                    ties=ties)
    for key in ("map_all", "map_at_5", "recall_at_1", "recall_at_3"):
      assert ours[key] == pytest.approx(ref[key], abs=1e-12), (ties, key)


@pytest.mark.parametrize("ties", ["expected", "index"])
def test_one_relevant_metrics_equal_ranking_metrics(ties):
  rng = np.random.default_rng(7)
  nq, nd = 12, 50
  dist = rng.integers(0, 5, (nq, nd)).astype(np.float64)   # many ties, the original among them
  query_ids = np.arange(nq)
  db_ids = np.full(nd, -1)
  db_ids[rng.permutation(nd)[:nq - 2]] = np.arange(nq - 2)  # queries 10 and 11: no original
  ks = dict(map_at=(1, 3, 100), recall_at=(1, 2, 10), precision_at=(1, 5), ndcg_at=(3,))
  got = ranking.one_relevant_metrics(lambda a, b: dist[a:b], query_ids, db_ids, ties=ties,
                                     query_batch_size=5, **ks)
  want = ranking.ranking_metrics(lambda a, b: dist[a:b], query_ids, db_ids, ties=ties, **ks)
  assert got.keys() == want.keys()
  _assert_close(got, want)
  assert got["recall_at_1"] <= got["recall_at_2"] < got["recall_at_10"] < 1   # not all 0 or 1


def test_one_relevant_metrics_refuse_a_second_relevant_item():
  with pytest.raises(ValueError, match="db_ids: query id 1 occurs 2 times"):
    ranking.one_relevant_metrics(lambda a, b: np.zeros((b - a, 4)), [0, 1], [1, -1, 1, 0])


def test_asymmetric_distance_weighs_each_bit_by_the_query_confidence():
  rng = np.random.default_rng(8)
  query = rng.uniform(-1, 1, (6, 10))
  db = rng.uniform(-1, 1, (30, 10))
  db[7] = db[3] * 0.5                  # the same signs as item 3: the same distance, exactly
  rows = ranking.asymmetric_distance_rows(query, db)
  got = rows(0, 6)
  want = [[sum(abs(q[i]) for i in range(10) if (q[i] > 0) != (d[i] > 0)) for d in db]
          for q in query]
  np.testing.assert_allclose(got, want, atol=10 * 2.0**-20)
  assert (got[:, 7] == got[:, 3]).all()
  np.testing.assert_array_equal(rows(2, 4), got[2:4])
  # Ranks as the inner product with the signs; on +-1 queries it is the Hamming distance.
  inner = query @ np.where(db > 0, 1.0, -1.0).T
  np.testing.assert_array_equal(np.argsort(got, axis=1, kind="stable"),
                                np.argsort(-np.round(inner, 5), axis=1, kind="stable"))
  signs = np.where(query > 0, 1.0, -1.0)
  hamming = ranking.hamming_distances(_pack(query > 0), _pack(db > 0))
  np.testing.assert_array_equal(ranking.asymmetric_distance_rows(signs, db)(0, 6), hamming)
