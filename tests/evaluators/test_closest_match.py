"""evaluators/closest_match.py: the rendered queries, the database and the metrics."""
import dataclasses

import numpy as np
import pytest

from deephash_jax import config_lib
from deephash_jax.evaluators import closest_match
from tests import fake_data


def test_closest_match_queries_are_fixed_by_the_seed():
  rng = np.random.default_rng(0)
  images = fake_data.class_images(np.arange(12) % 10, rng)[..., None]
  recipe = config_lib.base_config("fashion_mnist").eval.closest_match.recipe
  a = closest_match.render_queries(images, recipe, seed=3, batch_size=4)
  b = closest_match.render_queries(images, recipe, seed=3, batch_size=12)
  assert a.dtype == np.uint8 and a.shape == images.shape
  np.testing.assert_array_equal(a, b)   # independent of the batching
  np.testing.assert_array_equal(   # and of N
      a[:5], closest_match.render_queries(images[:5], recipe, 3, batch_size=4))
  for original, query in zip(images, a):
    assert np.abs(original.astype(int) - query.astype(int)).mean() > 5
  other = closest_match.render_queries(images, recipe, seed=4, batch_size=4)
  assert all(np.any(x != y) for x, y in zip(a, other))




def _protocol(num_queries: int, num_distractors: int, seed: int):
  """The closest match of 10 fake originals rendered by the default recipe."""
  originals = fake_data.class_images(np.arange(10) % 10, np.random.default_rng(seed))[..., None]
  cm_config = config_lib.base_config("fashion_mnist").eval.closest_match
  cm_config.num_queries = num_queries
  return closest_match.prepare(originals, num_distractors, cm_config)


def test_the_database_holds_the_originals_then_the_distractors_and_ties_are_fair():
  protocol = _protocol(4, 6, seed=1)
  assert protocol.queries.shape == (4, 28, 28, 1)
  np.testing.assert_array_equal(protocol.query_ids, np.arange(4))
  np.testing.assert_array_equal(protocol.db_ids, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] + [-1] * 6)
  assert protocol.fingerprint["num_queries"] == 4 and len(protocol.fingerprint["sha256"]) == 16
  # Collapsed codes: every query and database item share one code. Ties by index would put
  # each original first among the 16 (R@1 1 for query 0); the expectation gives 1/16.
  codes = lambda n: np.ones((n, 8), np.float32)
  result = closest_match.metrics(protocol, codes(4), codes(10), codes(6), num_bits=8,
                                 ties="expected")
  assert result["recall_at_1"] == pytest.approx(1 / 16)
  assert result["recall_at_10"] == pytest.approx(10 / 16)
  assert result["num_queries"] == 4 and result["num_database"] == 16
  asymmetric = closest_match.asymmetric_metrics(protocol, codes(4), codes(10), codes(6),
                                                ties="expected")
  assert asymmetric == {k: pytest.approx(result[k]) for k in closest_match.METRICS}


def test_asymmetric_ranking_is_hamming_on_signs_and_counts_a_bit_by_the_query_confidence():
  rng = np.random.default_rng(2)
  protocol = _protocol(6, 30, seed=2)
  signs = lambda n: np.where(rng.random((n, 6)) > 0.5, 1.0, -1.0)   # 6 bits: many ties
  query, original, distractor = signs(6), signs(10), signs(30)
  hamming = closest_match.metrics(protocol, query, original, distractor, num_bits=6,
                                  ties="expected")
  asymmetric = closest_match.asymmetric_metrics(protocol, query, original, distractor,
                                                ties="expected")
  assert asymmetric == {k: pytest.approx(hamming[k], abs=1e-12) for k in closest_match.METRICS}
  # Query 0 one bit from its original (bit 5, which it is unsure of) and from a distractor
  # (bit 0, which it is sure of), every other item 4 or more bits away: a tie for the Hamming
  # distance, won by the asymmetric one.
  original[:], distractor[:] = -1.0, -1.0
  original[0] = [1, 1, 1, 1, 1, 1]
  distractor[0] = [-1, 1, 1, 1, 1, -1]
  query = np.array([[0.9, 0.9, 0.9, 0.9, 0.9, -0.1]])
  first = dataclasses.replace(protocol, queries=protocol.queries[:1])
  assert closest_match.metrics(first, query, original, distractor, num_bits=6,
                               ties="expected")["recall_at_1"] == pytest.approx(0.5)
  assert closest_match.asymmetric_metrics(first, query, original, distractor,
                                          ties="expected")["recall_at_1"] == 1.0


def _served_reference(query, database, candidates, seed):
  """The served search in loops: the database in the seeded order, per query the Hamming top
  `candidates` by a stable sort, these by the asymmetric distance (stable), the first 10, as
  the protocol's positions."""
  order = np.random.default_rng(seed).permutation(len(database))
  shuffled = database[order] > 0
  found = []
  for q in query:
    hamming_d = [int(np.sum((q > 0) != b)) for b in shuffled]
    pool = sorted(range(len(shuffled)), key=lambda p: hamming_d[p])[:candidates]
    pool.sort(key=lambda p: sum(abs(float(x)) for x, b in zip(q, shuffled[p]) if (x > 0) != b))
    found.append(order[pool[:10]])
  return found


@pytest.mark.parametrize("candidates,seed", [(10, 0), (12, 3), (46, 0)])
def test_reranked_metrics_are_the_served_search_in_loops(candidates, seed):
  """6 bits and quantized confidences: Hamming ties at the candidates' boundary, equal codes and
  equal asymmetric distances, each broken by the shuffled order."""
  rng = np.random.default_rng(candidates)
  protocol = _protocol(10, 36, seed=4)
  codes = lambda n: (np.where(rng.random((n, 6)) > 0.5, 1.0, -1.0)
                     * rng.choice([0.25, 0.5, 1.0], size=(n, 6)))
  query, original, distractor = codes(10), codes(10), codes(36)
  got = closest_match.reranked_metrics(protocol, query, original, distractor,
                                       candidates=candidates, seed=seed)
  found = _served_reference(query, np.concatenate([original, distractor]), candidates, seed)
  assert got["recall_at_1"] == pytest.approx(np.mean([f[0] == i for i, f in enumerate(found)]))
  assert got["recall_at_10"] == pytest.approx(np.mean([i in f for i, f in enumerate(found)]))
  assert got["candidates"] == candidates


def test_reranked_metrics_of_an_index_of_views_are_the_weighted_search_in_loops():
  """Two codes an item weighted (2, 1): both distances are 2 d(view 0) + d(view 1)."""
  rng = np.random.default_rng(5)
  protocol = _protocol(8, 30, seed=2)
  codes = lambda *shape: (np.where(rng.random((*shape, 6)) > 0.5, 1.0, -1.0)
                          * rng.choice([0.25, 0.5, 1.0], size=(*shape, 6)))
  query, original, distractor = codes(8), codes(8, 2), codes(30, 2)
  got = closest_match.reranked_metrics(protocol, query, original, distractor, candidates=12,
                                       view_weights=(2, 1))
  database = np.concatenate([original, distractor]) > 0
  order = np.random.default_rng(closest_match.RERANK_SHUFFLE_SEED).permutation(len(database))
  distance = lambda q, item, cost: sum(
      w * sum(cost(x) for x, b in zip(q, item[v]) if (x > 0) != b) for v, w in enumerate((2, 1)))
  found = []
  for q in query:
    pool = sorted(range(len(order)), key=lambda p: distance(q, database[order[p]], lambda x: 1))
    pool = sorted(pool[:12], key=lambda p: distance(q, database[order[p]], abs))
    found.append(order[pool[:10]])
  assert got["recall_at_1"] == pytest.approx(np.mean([f[0] == i for i, f in enumerate(found)]))
  assert got["recall_at_10"] == pytest.approx(np.mean([i in f for i, f in enumerate(found)]))


def test_reranked_metrics_give_the_originals_no_ties():
  """Collapsed codes: by the protocol's order every original would come first; shuffled, query
  i finds it first only where the seeded order puts it first among the 16."""
  protocol = _protocol(4, 6, seed=1)
  ones = lambda n: np.ones((n, 8), np.float32)
  got = closest_match.reranked_metrics(protocol, ones(4), ones(10), ones(6), candidates=16)
  order = np.random.default_rng(closest_match.RERANK_SHUFFLE_SEED).permutation(16)
  assert got["recall_at_1"] == np.mean(order[0] == np.arange(4))
  assert got["recall_at_10"] == np.mean(np.isin(np.arange(4), order[:10]))
