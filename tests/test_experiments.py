"""The experiments' diagnostics against loops over the same codes, ties included."""
import importlib.util
import pathlib
import sys
import types

import numpy as np
import pytest

from deephash_jax import config_lib
from deephash_jax.evaluators import ranking
from deephash_jax.search import packing
from deephash_jax.search.index import HammingIndex
from deephash_jax.serve import catalogue

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(path: str):
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, _ROOT / path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module     # as an import does (dataclasses look the module up)
  spec.loader.exec_module(module)
  return module


def test_where_garment_goes_matches_loops_and_the_tie_aware_recall():
  garment = _load("experiments/graded_codes/where_garment_goes.py")
  rng = np.random.default_rng(3)
  num_bits, n, m = 6, 30, 200           # 6 bits over 200 items: many exact ties
  db = np.where(rng.random((m, num_bits)) > 0.5, 1.0, -1.0).astype(np.float32)
  db[1] = db[0]                         # two originals sharing a code
  query = db[:n].copy()
  query[rng.random((n, num_bits)) < 0.2] *= -1
  db_labels = rng.integers(0, 3, m)
  query_labels = db_labels[:n]
  out = garment.garment_losses(query, db, db_labels, query_labels, chunk=7)

  d = (query[:, None, :] != db[None, :, :]).sum(-1)
  d0 = d[np.arange(n), np.arange(n)]
  hits, closer_same, closer_other, ceiling = [], [], [], []
  for i in range(n):
    closer = [j for j in range(m) if d[i, j] < d0[i]]
    tied = sum(1 for j in range(m) if j != i and d[i, j] == d0[i])
    hits.append(0.0 if closer else 1.0 / (1 + tied))
    if closer:
      closer_same.append(sum(db_labels[j] == query_labels[i] for j in closer))
      closer_other.append(sum(db_labels[j] != query_labels[i] for j in closer))
    same_code = sum(1 for j in range(m) if j != i and np.array_equal(db[j], db[i]))
    ceiling.append(1.0 / (1 + same_code))
  reference = ranking.retrieval_metrics(
      packing.pack_bits(query), None, packing.pack_bits(db), None, num_bits=num_bits,
      map_at=(), radius=(), recall_at=(1,), ties="expected", query_ids=np.arange(n),
      db_ids=np.concatenate([np.arange(n), np.full(m - n, -1)]))
  assert out["recall_at_1"] == round(float(np.mean(hits)), 4)
  assert out["recall_at_1"] == round(float(reference["recall_at_1"]), 4)
  assert out["drift_mean"] == round(float(d0.mean()), 2)
  assert out["drift_le_1"] == round(float((d0 <= 1).mean()), 4)
  assert out["misses"] == len(closer_same) > 0
  assert out["closer_same_type_mean"] == round(float(np.mean(closer_same)), 1)
  assert out["closer_other_type_mean"] == round(float(np.mean(closer_other)), 1)
  assert out["recall_at_1_if_no_drift"] == round(float(np.mean(ceiling)), 4)
  assert out["recall_at_1_if_no_drift"] < 1.0          # rows 0 and 1 share a code
  kept = d0 <= 2
  assert out["recall_at_1_drift_le_2"] == round(float(np.mean(np.array(hits)[kept])), 4)


def test_category_both_ways_agree_on_sign_queries_and_differ_on_confident_ones():
  garment = _load("experiments/graded_codes/where_garment_goes.py")
  rng = np.random.default_rng(5)
  db = rng.uniform(-1, 1, (80, 6))
  db_labels, query_labels = rng.integers(0, 3, 80), rng.integers(0, 3, 12)
  query = rng.uniform(-1, 1, (12, 6))
  eval_config = config_lib.base_config("fashion_mnist").eval     # map_at (1000,), ties expected
  signs = garment.category_both_ways(np.sign(query), query_labels, db, db_labels,
                                     eval_config=eval_config, num_bits=6)
  assert signs["asymmetric_map_all"] == signs["hamming_map_all"]
  assert signs["asymmetric_map_at_1000"] == signs["hamming_map_at_1000"]
  graded = garment.category_both_ways(query, query_labels, db, db_labels,
                                      eval_config=eval_config, num_bits=6)
  assert graded["hamming_map_all"] == signs["hamming_map_all"]
  assert graded["asymmetric_map_all"] != graded["hamming_map_all"]


def test_rerank_depth_figures_match_loops_over_the_shuffled_index():
  """rerank_depth.index_figures: R@1, R@10, found_in_D and the category P@10 of the Hamming
  search and of the re-ranked top-D against loops over the same codes, ranked the index's way
  (distance, then insertion order in the seeded shuffle)."""
  rerank = _load("experiments/graded_codes/rerank_depth.py")
  rng = np.random.default_rng(4)
  num_bits, n, m = 8, 25, 120
  db = np.where(rng.random((m, num_bits)) > 0.5, 1.0, -1.0) * rng.uniform(0.2, 1.0, (m, num_bits))
  flipped = rng.random((n, num_bits)) < 0.25    # the flips, on bits the query is unsure of
  query = np.sign(db[:n]) * np.where(flipped, -rng.uniform(0.05, 0.3, (n, num_bits)),
                                     rng.uniform(0.5, 1.0, (n, num_bits)))
  labels = rng.integers(0, 3, m)
  depths = (10, 40)
  out = rerank.index_figures(query, db, query, labels[:n], db[n:], labels[n:], depths=depths,
                             seed=7)
  assert out["rerank_40_recall_at_1"] > out["hamming_recall_at_1"]   # the re-ranking matters

  def ranked(q, codes):   # by Hamming distance, then insertion order (the seeded permutation)
    order = np.random.default_rng(7).permutation(len(codes))
    hamming = lambda row: int(((q > 0) != (codes[row] > 0)).sum())
    return [order[p] for p in sorted(range(len(order)), key=lambda p: (hamming(order[p]), p))]

  def asym(q, row, codes):
    return sum(abs(x) for x, b in zip(q, codes[row]) if (x > 0) != (b > 0))

  for prefix, depth in (("hamming", None), *((f"rerank_{d}", d) for d in depths)):
    r1, r10, p10, found = [], [], [], []
    for i, q in enumerate(query):
      cm, cat = ranked(q, db), ranked(q, db[n:])
      if depth is not None:
        found.append(i in cm[:depth])
        cm = sorted(cm[:depth], key=lambda row: asym(q, row, db))        # stable
        cat = sorted(cat[:depth], key=lambda row: asym(q, row, db[n:]))
      r1.append(cm[0] == i)
      r10.append(i in cm[:10])
      p10.append(np.mean(labels[n:][cat[:10]] == labels[i]))
    assert out[f"{prefix}_recall_at_1"] == round(float(np.mean(r1)), 4), prefix
    assert out[f"{prefix}_recall_at_10"] == round(float(np.mean(r10)), 4), prefix
    assert out[f"{prefix}_category_precision_at_10"] == round(float(np.mean(p10)), 4), prefix
    if depth is not None:
      assert out[f"found_in_{depth}"] == round(float(np.mean(found)), 4)
      assert out[f"{prefix}_queries_per_second"] > 0


def test_database_views_rows_are_the_minimum_or_mean_over_an_items_codes():
  views = _load("experiments/graded_codes/database_views.py")
  rng = np.random.default_rng(9)
  query = rng.uniform(-1, 1, (7, 10)).astype(np.float32)
  codes = rng.uniform(-1, 1, (3, 25, 10)).astype(np.float32)
  codes[1, 4] = codes[0, 4]                     # an item whose two codes are equal
  hamming_of = lambda i, v, j: int(np.sum((query[i] > 0) != (codes[v, j] > 0)))
  asym_of = lambda i, v, j: sum(float(np.round(abs(x) * 2**20) / 2**20)
                                for x, b in zip(query[i], codes[v, j]) if (x > 0) != (b > 0))
  for aggregate, weight, reduce in (("min", 1, min), ("mean", 1, sum),    # the mean as a sum
                                    ("mean", 3, lambda d: 3 * d[0] + d[1] + d[2])):
    rows = lambda metric: views.view_distance_rows(query, codes, metric=metric,
                                                   aggregate=aggregate, clean_weight=weight)
    hamming, asym = rows("hamming")(0, 7), rows("asymmetric")(2, 7)
    for i in range(7):
      for j in range(25):
        assert hamming[i, j] == pytest.approx(reduce([hamming_of(i, v, j) for v in range(3)]),
                                              abs=1e-12)
        if i >= 2:
          assert asym[i - 2, j] == pytest.approx(reduce([asym_of(i, v, j) for v in range(3)]),
                                                 abs=1e-12)
  # Whole weights: equal weighted means tie exactly, whatever the per-view distances (1, 3, 3
  # and 2, 2, 1 at weight 3: 9 both), as the tie-aware metrics need.
  tie = views.view_distance_rows(np.ones((1, 4)), np.array(
      [[[-1, 1, 1, 1], [-1, -1, 1, 1]], [[-1, -1, -1, 1], [-1, -1, 1, 1]],
       [[-1, -1, -1, 1], [-1, 1, 1, 1]]]), aggregate="mean", clean_weight=3)(0, 1)
  assert tie[0, 0] == tie[0, 1] == 9
  # One view, either aggregate: the evaluation's Hamming distances.
  bits = lambda x: packing.unpack_bits(packing.pack_bits(x), 10)
  for aggregate in ("min", "mean"):
    one = views.view_distance_rows(query, codes[:1], aggregate=aggregate)(0, 7)
    np.testing.assert_array_equal(one, (bits(query)[:, None, :] != bits(codes[0])[None]).sum(-1))
  with pytest.raises(ValueError, match="aggregate"):
    views.view_distance_rows(query, codes, aggregate="max")
  # The weighted mean's Hamming rows are the distances of the library's index of these views.
  index = HammingIndex(10, view_weights=(3, 1, 1))
  index.add(np.stack([packing.pack_bits(c) for c in codes], axis=1))
  np.testing.assert_array_equal(
      index.hamming_distances(packing.pack_bits(query), np.tile(np.arange(25), (7, 1))),
      views.view_distance_rows(query, codes, aggregate="mean", clean_weight=3)(0, 7))


def test_database_views_code_is_the_sign_of_the_weighted_mean_of_an_items_codes():
  views = _load("experiments/graded_codes/database_views.py")
  rng = np.random.default_rng(4)
  query = rng.uniform(-1, 1, (5, 8)).astype(np.float32)
  codes = rng.uniform(-1, 1, (4, 30, 8)).astype(np.float32)
  for weight in (1, 5):
    c = codes.astype(np.float64)
    mean = np.array([[(weight * c[0, j, b] + c[1, j, b] + c[2, j, b] + c[3, j, b]) / (weight + 3)
                      for b in range(8)] for j in range(30)])
    np.testing.assert_allclose(views.averaged_codes(codes, weight), mean, rtol=1e-12)
    hamming = views.view_distance_rows(query, codes, aggregate="code", clean_weight=weight)(0, 5)
    for i in range(5):
      for j in range(30):
        assert hamming[i, j] == sum((query[i, b] > 0) != (mean[j, b] > 0) for b in range(8))
  # An item's own code at a weight no three renderings outvote is its one code.
  np.testing.assert_array_equal(
      views.view_distance_rows(query, np.sign(codes), aggregate="code", clean_weight=4)(0, 5),
      views.view_distance_rows(query, np.sign(codes[:1]), aggregate="min")(0, 5))
  # One view: the view's own code.
  np.testing.assert_array_equal(views.averaged_codes(codes[:1], 3), codes[0])


def test_database_views_cache_is_reused_for_its_model_only(tmp_path, monkeypatch):
  views = _load("experiments/graded_codes/database_views.py")
  cache = str(tmp_path / "views.npz")
  codes = np.arange(24, dtype=np.float32).reshape(3, 4, 2)
  np.savez(cache, views=codes)
  same = types.SimpleNamespace(encoder=types.SimpleNamespace(model_id="model-a"))
  with pytest.raises(ValueError, match="views.npz: holds no model id"):
    views.view_codes(same, 2, cache)
  np.savez(cache, views=codes, model_id="model-a")
  same = types.SimpleNamespace(encoder=types.SimpleNamespace(model_id="model-a"))
  np.testing.assert_array_equal(views.view_codes(same, 2, cache), codes[:2])   # no rendering
  # A cache of fewer views is extended: only the missing renderings are embedded, by their seeds.
  seeds = []
  def render(images, recipe, seed):
    seeds.append(seed)
    return np.full((len(images), 2), seed, np.float32)
  monkeypatch.setattr(views.closest_match, "render_queries", render)
  config = types.SimpleNamespace(eval=types.SimpleNamespace(
      closest_match=types.SimpleNamespace(recipe="r", seed=7)))
  grow = types.SimpleNamespace(
      encoder=types.SimpleNamespace(model_id="model-a", config=config, embed=lambda x: x + 0.5),
      query=types.SimpleNamespace(images=np.zeros((1, 2))),
      database=types.SimpleNamespace(images=np.zeros((3, 2))))
  grown = views.view_codes(grow, 5, cache)
  expected_seeds = views.catalogue.view_seeds(7, 5)[2:]
  assert seeds == expected_seeds
  np.testing.assert_array_equal(grown[:3], codes)
  np.testing.assert_array_equal(grown[3:], np.array(expected_seeds)[:, None, None] + 0.5
                                + np.zeros((2, 4, 2)))
  np.testing.assert_array_equal(views.view_codes(grow, 5, cache), grown)        # stored
  assert len(seeds) == 2
  other = types.SimpleNamespace(encoder=types.SimpleNamespace(model_id="model-b"))
  with pytest.raises(ValueError, match="views.npz: codes of model model-a, not of this "
                                       "workdir's model-b"):
    views.view_codes(other, 2, cache)


def test_query_views_merge_each_side_and_score_both_protocols_as_loops():
  """query_views.py: a side merged at weight w is the sign of (w * own + renderings) / (w + V - 1),
  at 0 its own code; the closest match's tie-aware R@1 of each pair matches a loop over the
  signs, its category mAP@all `ranking_metrics` of Hamming distances counted by a loop; the
  queries' renderings never take the catalogue views' or the evaluation's seeds."""
  qv = _load("experiments/graded_codes/query_views.py")
  rng = np.random.default_rng(6)
  num_bits, n_orig, n_dist, n_q = 5, 6, 14, 6
  db_views = rng.uniform(-1, 1, (3, n_orig + n_dist, num_bits))
  # Each query near its original: every pair below has hits, ties and misses.
  q_views = db_views[:, :n_q] + rng.normal(0, 0.4, (3, n_q, num_bits))
  labels = rng.integers(0, 2, n_orig + n_dist)
  e = types.SimpleNamespace(
      originals=np.zeros((n_orig, num_bits)),
      protocol=types.SimpleNamespace(query_ids=np.arange(n_q),
                                     db_ids=np.concatenate([np.arange(n_orig),
                                                            np.full(n_dist, -1)])),
      query=types.SimpleNamespace(labels=labels[:n_orig]),
      database=types.SimpleNamespace(labels=labels[n_orig:]))

  def merge(v, w):
    return v[0] if w == 0 else (w * v[0] + v[1:].sum(0)) / (w + len(v) - 1)

  for wq, wd in ((0, 0), (2, 0), (0, 3), (1, 1)):
    np.testing.assert_allclose(qv.merged(q_views, wq), merge(q_views, wq), rtol=1e-12)
    got = qv.score(e, db_views, q_views, wq, wd)
    q, d = merge(q_views, wq) > 0, merge(db_views, wd) > 0
    ham = (q[:, None, :] != d[None, :, :]).sum(-1)
    hits = []
    for i in range(n_q):
      own = ham[i, i]
      closer = (ham[i] < own).sum()
      tied = (ham[i] == own).sum() - 1
      hits.append(0.0 if closer else 1.0 / (1 + tied))
    assert got["cm_recall_at_1"] == round(float(np.mean(hits)), 4)
    assert 0.0 in hits and any(0.0 < h < 1.0 for h in hits)
    cat_q = merge(db_views[:, :n_orig], wq) > 0
    cat_d = d[n_orig:]
    cat = (cat_q[:, None, :] != cat_d[None, :, :]).sum(-1)
    want = ranking.ranking_metrics(lambda s, t: cat[s:t].astype(np.float64), labels[:n_orig],
                                   labels[n_orig:], ties="expected")
    assert got["map_all"] == round(float(want["map_all"]), 4)
  seeds = qv.query_view_seeds(7, 8)
  assert len(seeds) == 7 and 7 not in seeds
  assert not set(seeds) & set(catalogue.view_seeds(7, 64))


def test_query_views_cache_is_used_for_its_model_and_views_only(tmp_path):
  qv = _load("experiments/graded_codes/query_views.py")
  cache = str(tmp_path / "q.npz")
  codes = np.arange(24, dtype=np.float32).reshape(3, 4, 2)
  e = types.SimpleNamespace(encoder=types.SimpleNamespace(model_id="model-a"))
  np.savez(cache, views=codes)
  with pytest.raises(ValueError, match="q.npz: not 2 views of model model-a; delete it"):
    qv.query_codes(e, 2, cache)
  np.savez(cache, views=codes, model_id="model-a")
  np.testing.assert_array_equal(qv.query_codes(e, 2, cache), codes[:2])
  with pytest.raises(ValueError, match="q.npz: not 4 views of model model-a"):
    qv.query_codes(e, 4, cache)
  other = types.SimpleNamespace(encoder=types.SimpleNamespace(model_id="model-b"))
  with pytest.raises(ValueError, match="q.npz: not 2 views of model model-b"):
    qv.query_codes(other, 2, cache)
