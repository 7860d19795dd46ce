"""evaluators/closest_match.py: the rendered queries, the database and the metrics."""
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




def test_the_database_holds_the_originals_then_the_distractors_and_ties_are_fair():
  rng = np.random.default_rng(1)
  originals = fake_data.class_images(np.arange(10) % 10, rng)[..., None]
  cm_config = config_lib.base_config("fashion_mnist").eval.closest_match
  cm_config.num_queries = 4
  protocol = closest_match.prepare(originals, 6, cm_config)
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
