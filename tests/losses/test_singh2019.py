"""losses/singh2019.py: each term of the paper's objective against a plain NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deephash_jax import config_lib
from deephash_jax.losses import distance
from deephash_jax.losses import singh2019 as losses


def np_cauchy(d, similar, valid, gamma):
  pos, neg = [], []
  for i in range(d.shape[0]):
    for j in range(d.shape[1]):
      if not valid[i, j]:
        continue
      sigma = gamma / (gamma + d[i, j])
      if similar[i, j]:
        pos.append(-np.log(sigma))
      else:
        neg.append(-np.log(max(1 - sigma, 1e-300)))
  mean = lambda v: np.mean(v) if v else 0.0
  return 0.5 * (mean(pos) + mean(neg))


def test_cauchy_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  d = rng.uniform(0, 48, size=(6, 9)).astype(np.float32)
  d[0, 0] = 0.0  # A similar pair at distance 0: loss exactly 0, no NaN.
  similar = rng.uniform(size=(6, 9)) < 0.3
  similar[0, 0] = True
  valid = rng.uniform(size=(6, 9)) < 0.8
  valid[0, 0] = True
  for gamma in (1.0, 10.0, 20.0):
    got = losses.cauchy_cross_entropy(jnp.asarray(d), similar, valid, gamma=gamma)
    np.testing.assert_allclose(got, np_cauchy(d, similar, valid, gamma), rtol=1e-5)


def test_cauchy_threshold_is_a_dead_zone_for_similar_pairs_only():
  """threshold t: a similar pair counts at max(d - t, 0); dissimilar pairs are unchanged."""
  rng = np.random.default_rng(3)
  d = rng.uniform(0, 24, size=(5, 7)).astype(np.float32)
  d[0, 0], d[1, 1] = 10.0, 4.0    # exactly at the threshold, inside it
  similar = rng.uniform(size=(5, 7)) < 0.4
  similar[0, 0] = similar[1, 1] = True
  valid = np.ones((5, 7), bool)
  want = 0.5 * (np.mean(np.log1p(np.maximum(d[similar] - 10.0, 0.0) / 4.0))
                + np.mean(-np.log(d[~similar] / (4.0 + d[~similar]))))
  got = losses.cauchy_cross_entropy(jnp.asarray(d), similar, valid, gamma=4.0, threshold=10.0)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Inside the band a similar pair has no gradient; beyond it, a positive one.
  grad = jax.grad(lambda x: losses.cauchy_cross_entropy(x, similar, valid, gamma=4.0,
                                                        threshold=10.0))(jnp.asarray(d))
  assert float(grad[1, 1]) == 0.0
  beyond = similar & (d > 10.5)
  assert beyond.any() and np.all(np.asarray(grad)[beyond] > 0)


def test_cauchy_min_distance_continues_the_dissimilar_log_as_its_tangent():
  """min_distance m: a dissimilar pair below m counts f(m) + f'(m) (d - m), f(d) = log((gamma +
  d) / d), finite with slope f'(m) at d = 0 (distances between signs: identical codes are 0
  apart); at and above m, and for similar pairs, the term is unchanged."""
  gamma, m = 10.0, 1.0
  d = np.array([[0.0, 0.5, 1.0, 3.0], [2.0, 0.0, 7.0, 0.25]], np.float32)
  similar = np.array([[False, False, False, True], [False, True, False, False]])
  valid = np.ones_like(similar)
  f = lambda x: np.log((gamma + x) / x)
  slope = -1.0 / m + 1.0 / (gamma + m)                      # f'(m)
  per = np.where(d < m, f(m) + slope * (d - m), f(np.maximum(d, m)))
  want = 0.5 * (np.mean(np.log1p(d[similar] / gamma)) + np.mean(per[~similar]))
  loss = lambda x: losses.cauchy_cross_entropy(x, similar, valid, gamma=gamma, min_distance=m)
  np.testing.assert_allclose(loss(jnp.asarray(d)), want, rtol=1e-6)
  grad = np.asarray(jax.grad(loss)(jnp.asarray(d)))
  n_dis = (~similar).sum()
  np.testing.assert_allclose(grad[0, 0], 0.5 * slope / n_dis, rtol=1e-5)    # d = 0: finite
  np.testing.assert_allclose(grad[0, 1], grad[0, 0], rtol=1e-5)            # linear below m
  np.testing.assert_allclose(grad[1, 0], 0.5 * (-1 / 2.0 + 1 / 12.0) / n_dis, rtol=1e-5)
  np.testing.assert_allclose(grad[0, 2], 0.5 * slope / n_dis, rtol=1e-5)    # d = m: the log's
  # Where every dissimilar pair is at or above m, the same loss as without it.
  d_far = np.maximum(d, 1.0)
  np.testing.assert_allclose(loss(jnp.asarray(d_far)), np_cauchy(d_far, similar, valid, gamma),
                             rtol=1e-6)


def test_cauchy_cross_entropy_edge_cases():
  d = np.array([[0.0, 3.0], [5.0, 0.0]], np.float32)
  valid = np.ones((2, 2), bool)
  # No similar pair: only the dissimilar mean counts (halved); all similar: likewise.
  none_similar = np.zeros((2, 2), bool)
  got = losses.cauchy_cross_entropy(d, none_similar, ~np.eye(2, dtype=bool), gamma=2.0)
  np.testing.assert_allclose(got, np_cauchy(d, none_similar, ~np.eye(2, dtype=bool), 2.0),
                             rtol=1e-6)
  got = losses.cauchy_cross_entropy(d, valid, valid, gamma=2.0)
  np.testing.assert_allclose(got, np_cauchy(d, valid, valid, 2.0), rtol=1e-6)
  # Nothing valid: zero, finite.
  assert float(losses.cauchy_cross_entropy(d, valid, np.zeros((2, 2), bool), gamma=2.0)) == 0.0
  # Ties (equal distances) give equal per-pair terms: the loss is invariant to swapping them.
  d_tie = np.full((2, 2), 4.0, np.float32)
  a = losses.cauchy_cross_entropy(d_tie, np.eye(2, dtype=bool), valid, gamma=2.0)
  b = losses.cauchy_cross_entropy(d_tie, ~np.eye(2, dtype=bool), valid, gamma=2.0)
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_cauchy_block_sums_equal_whole_batch():
  """The sharded step's decomposition: rows split in blocks with global counts sum to the whole."""
  rng = np.random.default_rng(1)
  d = rng.uniform(0, 32, size=(8, 8)).astype(np.float32)
  similar = rng.uniform(size=(8, 8)) < 0.4
  valid = ~np.eye(8, dtype=bool)
  whole = losses.cauchy_cross_entropy(d, similar, valid, gamma=5.0)
  n_pos, n_neg = np.sum(similar & valid), np.sum(~similar & valid)
  parts = sum(losses.cauchy_cross_entropy(d[i:i + 2], similar[i:i + 2], valid[i:i + 2], gamma=5.0,
                                          num_similar=n_pos, num_dissimilar=n_neg)
              for i in range(0, 8, 2))
  np.testing.assert_allclose(parts, whole, rtol=1e-5)


def test_pair_kinds():
  labels = np.array([0, 0, 1, 0])
  items = np.array([7, 8, 9, 7])
  expected = np.array([[0, 1, 2, 0], [1, 0, 2, 1], [2, 2, 0, 2], [0, 1, 2, 0]])
  np.testing.assert_array_equal(losses.pair_kinds(labels, items, labels, items), expected)


def test_classification_quantization_discriminator_match_numpy():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(5, 4)).astype(np.float32)
  labels = np.array([0, 3, 1, 1, 2])
  log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -log_softmax[np.arange(5), labels].mean()
  np.testing.assert_allclose(losses.classification_loss(logits, labels), expected, rtol=1e-5)
  np.testing.assert_allclose(losses.classification_loss(logits, labels, normaliser=10),
                             expected / 2, rtol=1e-5)
  # A mask: the mean over the rows kept, or the sum over them divided by the normaliser given.
  where = np.array([True, False, True, False, False])
  kept = -log_softmax[[0, 2], labels[[0, 2]]]
  np.testing.assert_allclose(losses.classification_loss(logits, labels, where=where),
                             kept.mean(), rtol=1e-5)
  np.testing.assert_allclose(
      losses.classification_loss(logits, labels, where=where, normaliser=5), kept.sum() / 5,
      rtol=1e-5)

  codes = np.array([[1.0, -1.0, 0.0], [0.5, -0.25, 1.0]], np.float32)
  expected = np.mean((np.abs(codes) - 1) ** 2)
  np.testing.assert_allclose(losses.quantization_loss(codes), expected, rtol=1e-6)
  assert float(losses.quantization_loss(np.sign(codes[:, :2]))) == 0.0

  d_logits = np.array([2.0, -1.0, 0.0, 30.0], np.float32)
  query_first = np.array([True, False, True, False])
  x = d_logits.astype(np.float64)
  neg_log_p, neg_log_1mp = np.logaddexp(0, -x), np.logaddexp(0, x)  # -log p, -log(1-p), stable
  bce = query_first * neg_log_p + (~query_first) * neg_log_1mp
  np.testing.assert_allclose(losses.discriminator_loss(d_logits, query_first), bce.mean(),
                             rtol=1e-5)
  entropy = 0.5 * neg_log_p + 0.5 * neg_log_1mp - np.log(2)
  np.testing.assert_allclose(losses.scramble_loss(d_logits, query_first, mode="entropy"),
                             entropy.mean(), rtol=1e-5)
  flipped = (~query_first) * neg_log_p + query_first * neg_log_1mp
  np.testing.assert_allclose(losses.scramble_loss(d_logits, query_first, mode="flip"),
                             flipped.mean(), rtol=1e-5)
  # The entropy form is minimal, 0, exactly when the discriminator says 1/2.
  assert abs(float(losses.scramble_loss(np.zeros(3, np.float32), query_first[:3]))) < 1e-7
  with pytest.raises(ValueError, match="adversarial_mode"):
    losses.scramble_loss(d_logits, query_first, mode="nope")


@pytest.mark.parametrize("num_bits", [16, 32, 48, 64])
def test_hamming_loss_keeps_its_gradient_when_codes_start_nearly_equal(num_bits):
  """The failure that collapses DCH at 32 bits: near-parallel codes must still get a gradient."""
  rng = np.random.default_rng(num_bits)
  base = rng.normal(size=(1, num_bits))
  codes = jnp.asarray(np.tanh(base + 1e-3 * rng.normal(size=(8, num_bits))), jnp.float32)
  labels = np.arange(8) % 2
  kinds = losses.pair_kinds(labels, np.arange(8), labels, np.arange(8))
  valid = ~np.eye(8, dtype=bool)

  def loss(c):
    d = distance.relaxed_hamming(c, c, num_bits=num_bits)
    return losses.cauchy_cross_entropy(d, kinds <= 1, valid, gamma=10.0)

  grad = jax.grad(loss)(codes)
  assert np.all(np.isfinite(grad))
  assert float(jnp.linalg.norm(grad)) > 1e-3


def test_cauchy_gammas_scale_with_the_code_length_only_when_asked():
  loss = config_lib.base_config("fashion_mnist").loss
  loss.gamma, loss.gamma_item = 10.0, 6.0
  assert loss.gamma_reference_bits == 0                    # default: as given at every length
  assert losses.cauchy_gammas(loss, 16) == (10.0, 6.0)
  loss.gamma_reference_bits = 48
  assert losses.cauchy_gammas(loss, 48) == (10.0, 6.0)      # unchanged at the reference length
  assert losses.cauchy_gammas(loss, 16) == pytest.approx((10.0 / 3, 2.0))
  assert losses.cauchy_gammas(loss, 64) == pytest.approx((40.0 / 3, 8.0))
