"""evaluators/category.py: the category metrics of codes and the collapse watch."""
import numpy as np
import pytest

from deephash_jax import config_lib
from deephash_jax.evaluators import category
from deephash_jax.evaluators import ranking
from deephash_jax.search import packing


def test_collapse_is_flagged_by_too_few_codes_or_too_many_dead_bits():
  rng = np.random.default_rng(0)
  healthy = category.code_statistics(rng.random((500, 16)) < 0.5, num_classes=10)
  assert not healthy["collapsed"] and healthy["dead_bits"] == 0 and healthy["unique_codes"] > 400
  few = category.code_statistics(np.repeat(rng.random((5, 16)) < 0.5, 100, axis=0), 10)
  assert few["collapsed"] and few["unique_codes"] == 5
  dead = rng.random((500, 16)) < 0.5
  dead[:, :8] = True
  stats = category.code_statistics(dead, 10)
  assert stats["collapsed"] and stats["dead_bits"] == 8 and stats["bit_imbalance"] > 0.5


@pytest.mark.parametrize("ties", ["expected", "index"])
def test_metrics_follow_the_eval_config(ties):
  rng = np.random.default_rng(1)
  query, db = rng.normal(size=(9, 12)), rng.normal(size=(40, 12))
  q_labels, db_labels = rng.integers(0, 3, 9), rng.integers(0, 3, 40)
  eval_config = config_lib.base_config("tiny").eval
  eval_config.ties = ties
  got = category.metrics(query, q_labels, db, db_labels, eval_config=eval_config, num_bits=12)
  want = ranking.retrieval_metrics(packing.pack_bits(query), q_labels, packing.pack_bits(db),
                                   db_labels, num_bits=12, map_at=(10,), radius=2, ties=ties)
  assert got == want and set(got) >= {"map_all", "map_at_10", "precision_at_hamming_2"}
