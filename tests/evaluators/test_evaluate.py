"""evaluators/evaluate.py: both protocols of a model, as `deephash train` and `evaluate` print."""
import jax
import numpy as np
import pytest

from deephash_jax.evaluators import evaluate
from deephash_jax.train import state as state_lib

# The fake Fashion-MNIST reaches the evaluators through our TFDS builder, which needs TensorFlow
# (an accelerator image may lack it; .ci/run installs it).
pytest.importorskip("tensorflow", reason="TFDS builds the fake dataset with TensorFlow")


def _variables(config):
  state = state_lib.create_train_state(config, jax.random.key(0), 10, (28, 28, 1))
  return {"params": state.params, "batch_stats": state.batch_stats}


def test_both_protocols_and_the_curve_are_in_the_results(config):
  config.eval.num_queries = 30
  results = evaluate.evaluate_variables(config, _variables(config))
  assert results["num_queries"] == 30 and results["num_database"] == 320
  assert results["num_bits"] == 16 and 0.0 <= results["map_all"] <= 1.0
  assert results["closest_match_num_queries"] == 20
  assert results["closest_match_num_database"] == 80 + 320       # originals + distractors
  for key in ("closest_match_recall_at_1", "closest_match_recall_at_10", "closest_match_map",
              "closest_match_asymmetric_recall_at_1", "closest_match_asymmetric_recall_at_10",
              "closest_match_asymmetric_map", "closest_match_reranked_recall_at_1",
              "closest_match_reranked_recall_at_10"):
    assert 0.0 <= results[key] <= 1.0, key
  assert results["closest_match_reranked_candidates"] == 100
  curve = results["pr_curve"]
  assert len(curve["precision"]) == len(curve["recall"]) == 17
  assert np.all(np.diff(curve["recall"]) >= 0)
  # The closest match can be left out.
  config.eval.closest_match.num_queries = 0
  assert not any(k.startswith("closest_match") for k in evaluate.evaluate_variables(
      config, _variables(config)))
