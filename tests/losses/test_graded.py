"""losses/graded.py: the InfoNCE terms against a plain NumPy reference, ties and masks included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deephash_jax.losses import graded


def np_info_nce(logits, positive, negative):
  total = 0.0
  for i in range(logits.shape[0]):
    cols = [j for j in range(logits.shape[1]) if negative[i, j] or j == positive[i]]
    row = logits[i, cols].astype(np.float64)
    top = row.max()
    total += top + np.log(np.sum(np.exp(row - top))) - logits[i, positive[i]]
  return total / logits.shape[0]


def test_info_nce_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 9)).astype(np.float32) * 3
  positive = rng.integers(0, 9, size=6)
  negative = rng.uniform(size=(6, 9)) < 0.6
  negative[0, positive[0]] = False     # the positive counts whether or not marked a negative
  negative[1, positive[1]] = True
  got = graded.info_nce(jnp.asarray(logits), jnp.asarray(positive), jnp.asarray(negative))
  np.testing.assert_allclose(got, np_info_nce(logits, positive, negative), rtol=1e-5)


def test_info_nce_edge_cases():
  positive = np.array([0, 1])
  # No negatives: log(1) = 0 for every anchor.
  none = np.zeros((2, 3), bool)
  assert float(graded.info_nce(jnp.zeros((2, 3)), positive, none)) == 0.0
  # Ties: the positive tied with m negatives gives log(m + 1).
  all_neg = np.ones((2, 3), bool)
  np.testing.assert_allclose(graded.info_nce(jnp.ones((2, 3)), positive, all_neg), np.log(3.0),
                             rtol=1e-6)
  # A masked-out negative with a huge logit does not count.
  logits = np.array([[0.0, 1e4, 0.0]], np.float32)
  np.testing.assert_allclose(
      graded.info_nce(logits, np.array([0]), np.array([[False, False, True]])), np.log(2.0),
      rtol=1e-6)
  # normaliser: the sum divided by it.
  np.testing.assert_allclose(
      graded.info_nce(jnp.ones((2, 3)), positive, all_neg, normaliser=4.0), np.log(3.0) / 2,
      rtol=1e-6)


def test_item_infonce_on_codes_uses_hamming_distance_over_temperature():
  rng = np.random.default_rng(1)
  anchors = np.sign(rng.normal(size=(4, 16))).astype(np.float32)
  candidates = np.sign(rng.normal(size=(5, 16))).astype(np.float32)
  candidates[2] = anchors[0]            # exactly identical codes: distance 0
  positive = np.array([2, 0, 1, 3])
  negative = np.ones((4, 5), bool)
  hamming = (anchors[:, None, :] != candidates[None, :, :]).sum(-1).astype(np.float32)
  got = graded.item_infonce_on_codes(anchors, candidates, positive, negative, temperature=2.0,
                                     num_bits=16)
  np.testing.assert_allclose(got, np_info_nce(-hamming / 2.0, positive, negative), rtol=1e-4)
  # bfloat16 codes: the same value (the distance is computed in float32).
  got16 = graded.item_infonce_on_codes(jnp.asarray(anchors, jnp.bfloat16),
                                       jnp.asarray(candidates, jnp.bfloat16), positive,
                                       negative, temperature=2.0, num_bits=16)
  np.testing.assert_allclose(got16, got, rtol=1e-4)


def test_type_bit_weights_match_numpy_have_mean_one_and_are_uniform_without_the_type():
  codes = np.array([[1.0, 1.0, -1.0, 0.5], [1.0, -1.0, -1.0, -0.5], [-1.0, 1.0, 1.0, 0.0]],
                   np.float32)
  labels = np.array([0, 0, 1])
  anchor_labels = np.array([0, 1, 2])            # type 2 is not in `codes`
  got = np.asarray(graded.type_bit_weights(codes, labels, num_classes=3,
                                           discount=0.5))[anchor_labels]
  means = np.array([[1.0, 0.0, -1.0, 0.0], [-1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
  want = 1.0 - 0.5 * np.abs(means[anchor_labels])
  want /= want.mean(-1, keepdims=True)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(got.mean(-1), 1.0, rtol=1e-6)
  assert got[0, 1] > got[0, 0]                   # the bit type 0 disagrees on weighs more
  np.testing.assert_allclose(got[2], 1.0)
  np.testing.assert_allclose(graded.type_bit_weights(codes, labels, num_classes=3,
                                                     discount=0.0), 1.0)
  # The weighted item InfoNCE: ones are the plain one; weights change the distances it reads.
  rng = np.random.default_rng(4)
  anchors = np.tanh(rng.normal(size=(3, 4)) * 2).astype(np.float32)
  positive, negative = np.array([0, 1, 2]), np.ones((3, 3), bool)
  plain = graded.item_infonce_on_codes(anchors, codes, positive, negative, temperature=1.0,
                                       num_bits=4)
  ones = graded.item_infonce_on_codes(anchors, codes, positive, negative, temperature=1.0,
                                      num_bits=4, bit_weights=np.ones((3, 4), np.float32))
  np.testing.assert_allclose(ones, plain, rtol=1e-6)
  with pytest.raises(ValueError, match="bit_weights and memory"):
    graded.item_infonce_on_codes(anchors, codes, positive, negative, temperature=1.0,
                                 num_bits=4, bit_weights=got, memory=codes,
                                 memory_negative=negative)


def test_item_infonce_on_features_uses_cosine_and_pulls_the_positive_closer():
  rng = np.random.default_rng(2)
  a = rng.normal(size=(3, 8)).astype(np.float32)
  c = rng.normal(size=(4, 8)).astype(np.float32)
  positive, negative = np.array([0, 1, 2]), np.ones((3, 4), bool)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  cos = unit(a) @ unit(c).T
  got = graded.item_infonce_on_features(a, c, positive, negative, temperature=0.5)
  np.testing.assert_allclose(got, np_info_nce(cos / 0.5, positive, negative), rtol=1e-4)
  # A gradient step on the anchors raises each anchor's cosine to its positive.
  grad = jax.grad(lambda x: graded.item_infonce_on_features(x, c, positive, negative,
                                                            temperature=0.5))(jnp.asarray(a))
  moved = np.asarray(a - 0.1 * grad)
  after = unit(moved) @ unit(c).T
  assert np.all(after[np.arange(3), positive] > cos[np.arange(3), positive])


@pytest.mark.parametrize("num_classes,class_bits", [(10, 16), (10, 32), (9, 8), (2, 2)])
def test_class_centres_are_half_the_prefix_apart_with_no_dead_bit(num_classes, class_bits):
  centres = graded.class_centres(num_classes, class_bits)
  assert centres.shape == (num_classes, class_bits)
  assert set(np.unique(centres)) == {-1.0, 1.0} and not centres.flags.writeable
  d = (class_bits - centres.astype(np.float64) @ centres.T) / 2
  off = d[~np.eye(num_classes, dtype=bool)]
  assert off.min() >= class_bits / 2 and set(np.unique(off)) <= {class_bits / 2, class_bits}
  # No bit is the same for every class: each one tells some types apart.
  assert np.all(np.abs(centres.sum(axis=0)) < num_classes)


@pytest.mark.parametrize("class_bits", [12, 4, 1])   # not a power of 2; too few rows; too short
def test_class_centres_refuse_sizes_without_the_spacing(class_bits):
  with pytest.raises(ValueError, match=f"class_bits={class_bits}"):
    graded.class_centres(10, class_bits)


def np_class_centre_loss(pre, labels, centres, scale, margin):
  total = 0.0
  for v, y in zip(pre.astype(np.float64), labels):
    cos = centres @ v / (np.linalg.norm(v) * np.sqrt(centres.shape[1]))
    logits = scale * (cos - margin * (np.arange(len(centres)) == y))
    total += np.log(np.sum(np.exp(logits))) - logits[y]
  return total / len(labels)


def test_class_centre_loss_matches_numpy_and_prefers_the_own_centre():
  centres = graded.class_centres(4, 8)
  rng = np.random.default_rng(1)
  pre = rng.normal(size=(5, 8)).astype(np.float32)
  labels = np.array([0, 1, 2, 3, 3])
  got = graded.class_centre_loss(jnp.asarray(pre), jnp.asarray(labels), centres, scale=8.0,
                                 margin=0.2)
  np.testing.assert_allclose(got, np_class_centre_loss(pre, labels, centres, 8.0, 0.2),
                             rtol=1e-5)
  # A pre-code on its own centre: lower loss than on another class's centre.
  at_own = graded.class_centre_loss(jnp.asarray(centres[:1]), jnp.array([0]), centres,
                                    scale=8.0, margin=0.0)
  at_other = graded.class_centre_loss(jnp.asarray(centres[1:2]), jnp.array([0]), centres,
                                      scale=8.0, margin=0.0)
  assert float(at_own) < float(at_other)
  # ~1e-3: float32's logsumexp - logit cancels to ~1e-7 absolute.
  np.testing.assert_allclose(at_own, np_class_centre_loss(centres[:1], [0], centres, 8.0, 0.0),
                             rtol=0, atol=1e-6)


def test_centre_bit_loss_matches_numpy_and_is_log2_at_zero():
  centres = graded.class_centres(4, 8)
  rng = np.random.default_rng(2)
  pre = rng.normal(size=(6, 8)).astype(np.float32) * 3
  labels = np.array([0, 1, 2, 3, 0, 1])
  t = centres[labels].astype(np.float64)
  # BCE of p = (1 + tanh v) / 2 = sigmoid(2v) against (t + 1) / 2, in the naive form.
  p = 1 / (1 + np.exp(-2 * pre.astype(np.float64)))
  want = -np.mean((t > 0) * np.log(p) + (t < 0) * np.log(1 - p), axis=1).sum() / 6
  got = graded.centre_bit_loss(jnp.asarray(pre), jnp.asarray(labels), centres)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  zero = graded.centre_bit_loss(jnp.zeros((2, 8)), jnp.array([0, 1]), centres, normaliser=2.0)
  np.testing.assert_allclose(zero, np.log(2.0), rtol=1e-6)
  # Far on the right side of every bit: ~0, finite (no log of 0).
  far = graded.centre_bit_loss(jnp.asarray(centres[:2] * 50), jnp.array([0, 1]), centres)
  assert 0.0 <= float(far) < 1e-20


def test_bit_agreement_loss_matches_a_loop_with_ties_and_its_gradient():
  """A loop over bits: max(0, margin - p * sign(t)); a target bit of 0 gives the margin and no
  gradient; the gradient is -sign(t) / K per active bit (constant on the wrong side), none
  reaches the targets."""
  rng = np.random.default_rng(5)
  pre = rng.normal(size=(5, 8)).astype(np.float32)
  target = np.tanh(rng.normal(size=(5, 8))).astype(np.float32)
  target[0, :3] = 0.0
  pre[1, 2] = 0.5 * np.sign(target[1, 2])           # exactly at the margin: inactive
  margin = 0.5
  want = sum(max(0.0, margin - float(p) * float(np.sign(t)))
             for row_p, row_t in zip(pre, target) for p, t in zip(row_p, row_t)) / 8 / 5
  loss = lambda p, t: graded.bit_agreement_loss(p, t, margin=margin)
  np.testing.assert_allclose(loss(jnp.asarray(pre), jnp.asarray(target)), want, rtol=1e-6)
  np.testing.assert_allclose(
      graded.bit_agreement_loss(jnp.asarray(pre), jnp.asarray(target), margin=margin,
                                normaliser=2.0), want * 5 / 2, rtol=1e-6)
  grad_p, grad_t = jax.grad(loss, argnums=(0, 1))(jnp.asarray(pre), jnp.asarray(target))
  active = margin - pre * np.sign(target) > 0
  np.testing.assert_allclose(grad_p, np.where(active, -np.sign(target), 0.0) / 8 / 5, atol=1e-7)
  assert not np.any(np.asarray(grad_t))
  assert grad_p[1, 2] == 0.0 and np.all(np.asarray(grad_p)[0, :3] == 0.0)
  # Every bit on its target's side beyond the margin: 0.
  assert float(loss(jnp.asarray(np.sign(target[1:]) * 2), jnp.asarray(target[1:]))) == 0.0


def np_fast_ap_loss(distances, similar, valid, num_bits):
  """Per anchor, with loops: triangular soft counts per bin, cumulative precision, 1 - AP."""
  total = 0.0
  for i in range(distances.shape[0]):
    h_pos = np.zeros(num_bits + 1)
    h_all = np.zeros(num_bits + 1)
    for j in range(distances.shape[1]):
      if not valid[i, j]:
        continue
      for b in range(num_bits + 1):
        w = max(0.0, 1.0 - abs(float(distances[i, j]) - b))
        h_all[b] += w
        if similar[i, j]:
          h_pos[b] += w
    n_pos = np.sum(similar[i] & valid[i])
    if n_pos == 0:
      continue
    cum_pos, cum_all = np.cumsum(h_pos), np.cumsum(h_all)
    ap = sum(h_pos[b] * cum_pos[b] / cum_all[b] for b in range(num_bits + 1) if cum_all[b] > 0)
    total += 1.0 - ap / n_pos
  return total / distances.shape[0]


def test_fast_ap_loss_matches_numpy_with_masks_and_fractional_distances():
  rng = np.random.default_rng(3)
  distances = rng.uniform(0, 8, size=(5, 7)).astype(np.float32)
  distances[0, :3] = 2.0                 # ties on a bin centre
  distances[1, 2] = 8.0                  # the last bin
  similar = rng.uniform(size=(5, 7)) < 0.4
  valid = rng.uniform(size=(5, 7)) < 0.8
  similar[4] = False                     # an anchor with no similar column adds 0
  got = graded.fast_ap_loss(jnp.asarray(distances), jnp.asarray(similar), jnp.asarray(valid),
                            num_bits=8)
  np.testing.assert_allclose(got, np_fast_ap_loss(distances, similar, valid, 8), rtol=1e-5)
  np.testing.assert_allclose(
      graded.fast_ap_loss(distances, similar, valid, num_bits=8, normaliser=10.0),
      np_fast_ap_loss(distances, similar, valid, 8) * 5 / 10, rtol=1e-5)


def test_fast_ap_loss_gradient_matches_finite_differences_and_ignores_bins_outside():
  """The histogram is two scatter-adds (floor(d) and floor(d) + 1): its gradient flows through
  the fraction. Central differences of the NumPy reference at distances off the bin centres, and
  distances just outside 0..num_bits count in the edge bin only as the triangle says."""
  rng = np.random.default_rng(4)
  distances = (rng.integers(0, 8, size=(4, 6)) + rng.uniform(0.1, 0.9, size=(4, 6)))
  distances[0, 0], distances[1, 1], distances[2, 2] = -0.4, 8.3, 11.5   # outside 0..8
  similar = rng.uniform(size=(4, 6)) < 0.5
  similar[:, 0] = True
  valid = np.ones((4, 6), bool)
  got = jax.grad(lambda d: graded.fast_ap_loss(d, similar, valid, num_bits=8))(
      jnp.asarray(distances, jnp.float32))
  eps = 1e-4
  expected = np.zeros_like(distances)
  for i, j in np.ndindex(*distances.shape):
    up, down = distances.copy(), distances.copy()
    up[i, j] += eps
    down[i, j] -= eps
    expected[i, j] = (np_fast_ap_loss(up, similar, valid, 8)
                      - np_fast_ap_loss(down, similar, valid, 8)) / (2 * eps)
  np.testing.assert_allclose(got, expected, atol=2e-3)
  assert float(got[2, 2]) == 0.0       # 11.5: in no bin, no gradient
  np.testing.assert_allclose(graded.fast_ap_loss(distances.astype(np.float32), similar, valid,
                                                 num_bits=8),
                             np_fast_ap_loss(distances, similar, valid, 8), rtol=1e-5)


def test_fast_ap_loss_scores_the_order_not_the_closeness():
  similar = np.array([[True, True, False, False]])
  valid = np.ones((1, 4), bool)
  # Every similar column ahead of every other one: AP 1, loss 0, however far apart the levels.
  for near, far in ((0.0, 16.0), (5.0, 6.0), (7.0, 9.0)):
    d = np.array([[near, near, far, far]], np.float32)
    assert float(graded.fast_ap_loss(d, similar, valid, num_bits=16)) == 0.0
  # All four tied: the precision of the tie, 2 / 4.
  d = np.full((1, 4), 3.0, np.float32)
  np.testing.assert_allclose(graded.fast_ap_loss(d, similar, valid, num_bits=16), 0.5, rtol=1e-6)
  # Other types first: AP = (1/3 + 2/4) / 2; a similar column moved ahead of one raises it.
  d = np.array([[4.0, 5.0, 1.0, 2.0]], np.float32)
  loss = lambda x: float(graded.fast_ap_loss(np.array([x], np.float32), similar, valid,
                                             num_bits=16))
  np.testing.assert_allclose(loss(d[0]), 1 - (1 / 3 + 2 / 4) / 2, rtol=1e-6)
  assert loss([0.0, 5.0, 1.0, 2.0]) < loss([0.5, 5.0, 1.0, 2.0]) < loss(d[0])
  # Its gradient on the whole row: the similar columns pulled nearer on the whole.
  grad = jax.grad(lambda x: graded.fast_ap_loss(x, similar, valid, num_bits=16))(jnp.asarray(d))
  assert float(grad[0, 0] + grad[0, 1]) > 0, grad


def test_memory_columns_are_more_negatives_without_gradient():
  """The cross-batch memory: its rows are extra columns of the InfoNCE (codes and features),
  masked per anchor by `memory_negative`, and nothing flows back into them."""
  rng = np.random.default_rng(4)
  anchors = np.tanh(2 * rng.normal(size=(3, 16))).astype(np.float32)
  candidates = np.tanh(2 * rng.normal(size=(3, 16))).astype(np.float32)
  memory = np.tanh(2 * rng.normal(size=(5, 16))).astype(np.float32)
  memory[1] = anchors[0]                       # a tie at distance 0, masked for anchor 0 only
  positive, negative = np.arange(3), ~np.eye(3, dtype=bool)
  memory_negative = np.ones((3, 5), bool)
  memory_negative[0, 1] = False
  memory_negative[:, 4] = False                # an empty row
  unit = lambda x: x / np.sqrt((x * x).sum(-1, keepdims=True) + 1e-6)
  d = lambda x, y: 8.0 * (1 - unit(x) @ unit(y).T)
  want = np_info_nce(-np.concatenate([d(anchors, candidates), d(anchors, memory)], 1) / 2.0,
                     positive, np.concatenate([negative, memory_negative], 1))
  codes = lambda m: graded.item_infonce_on_codes(
      anchors, candidates, positive, negative, temperature=2.0, num_bits=16, memory=m,
      memory_negative=memory_negative)
  np.testing.assert_allclose(codes(memory), want, rtol=1e-4)
  assert not np.isclose(float(codes(memory)), float(graded.item_infonce_on_codes(
      anchors, candidates, positive, negative, temperature=2.0, num_bits=16)))
  cos = np.concatenate([unit(anchors) @ unit(candidates).T, unit(anchors) @ unit(memory).T], 1)
  features = lambda m: graded.item_infonce_on_features(
      anchors, candidates, positive, negative, temperature=0.5, memory=m,
      memory_negative=memory_negative)
  np.testing.assert_allclose(features(memory), np_info_nce(
      cos / 0.5, positive, np.concatenate([negative, memory_negative], 1)), rtol=1e-4)
  for fn in (codes, features):
    assert not np.any(np.asarray(jax.grad(fn)(jnp.asarray(memory))))
