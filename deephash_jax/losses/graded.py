"""The graded objective (`method = "graded"`): same item < same type < other type in Hamming space.

Three forces, one per level (train/step.py `graded_loss` weights and combines them):
* category level: the Cauchy cross-entropy of losses/singh2019.py on every pair of views, with a
  dead zone for same-type pairs (`threshold` bits): other types are pushed apart, but same-type
  items are not pulled onto one code once they are within the band, so they keep room to differ;
  and (`ap_weight`) FastAP of the type order (`fast_ap_loss`): the same type ahead of other
  types, wherever the two bands sit;
* item level: InfoNCE of each query view against the gallery views of the whole batch (in-batch
  negatives of every type), on the relaxed Hamming distance (`item_infonce_on_codes`) and on
  the encoder's features (`item_infonce_on_features`): the query's own garment must be the
  nearest, not only a neighbour; and (`item_bit_weight`) a hinge on the query view's signs
  against its gallery view's (`bit_agreement_loss`): the bits the search reads must not flip;
* the classifier (on the features, so that it does not pull every bit towards its class) and
  the quantization term, as in the paper.

Rows are this device's anchors, columns the gathered candidates, sums divided by a normaliser
passed in, as in losses/singh2019.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from deephash_jax.losses import baselines
from deephash_jax.losses import distance


def info_nce(logits, positive, negative, *, normaliser=None):
  """InfoNCE: per anchor (row), logsumexp over its positive column and its `negative` columns,
  minus the positive's logit; summed over anchors and divided by `normaliser` (default: the
  number of anchors).

  logits: (A, C) float; positive: int (A,) column of each anchor's positive; negative: bool
  (A, C), the columns each anchor competes with (its positive column is always counted, whatever
  `negative` says there).
  """
  logits = jnp.asarray(logits, jnp.float32)
  columns = jnp.arange(logits.shape[1])
  is_positive = columns[None, :] == positive[:, None]
  masked = jnp.where(negative | is_positive, logits, -jnp.inf)
  positive_logit = jnp.sum(jnp.where(is_positive, logits, 0.0), axis=-1)
  per_anchor = jax.nn.logsumexp(masked, axis=-1) - positive_logit
  return jnp.sum(per_anchor) / (logits.shape[0] if normaliser is None else normaliser)


def _triangular_histogram(d, weights, num_bits: int):
  """(A, num_bits + 1): per row, sum over columns of weights * max(0, 1 - |d - l|) in bin l.

  A distance touches two bins, floor(d) with 1 - frac and floor(d) + 1 with frac, so the counts
  are two scatter-adds of A*C values each rather than an (A, C, num_bits + 1) tensor of weights
  and its products; the gradient flows through frac. Bins outside 0..num_bits get nothing, as
  with the dense form.
  """
  lo = jnp.floor(jax.lax.stop_gradient(d))
  frac = d - lo
  lo = lo.astype(jnp.int32)
  rows = jnp.broadcast_to(jnp.arange(d.shape[0])[:, None], d.shape)
  hist = jnp.zeros((d.shape[0], num_bits + 1), jnp.float32)
  for index, share in ((lo, 1.0 - frac), (lo + 1, frac)):
    inside = (index >= 0) & (index <= num_bits)
    hist = hist.at[rows, jnp.clip(index, 0, num_bits)].add(
        jnp.where(inside, weights * share, 0.0))
  return hist


def fast_ap_loss(distances, similar, valid, *, num_bits, normaliser=None):
  """1 - FastAP (Cakir et al., "Deep metric learning to rank", CVPR 2019) per anchor (row):
  average precision of the ranking by distance, relaxed by a histogram with one triangular bin
  per bit (centres 0, 1, ..., num_bits; a distance d counts max(0, 1 - |d - l|) in bin l).

  With h+ (h) the soft counts of similar (all) valid columns per bin and H+ (H) their cumulative
  sums, FastAP = sum_l h+_l H+_l / H_l / N+. It scores the order of the two levels, not how close
  similar pairs are: the type's items may spread as long as they stay ahead of other types.
  Anchors with no similar column add 0; summed over anchors, divided by `normaliser` (default:
  the number of anchors).

  distances: (A, C) relaxed Hamming distances in [0, num_bits]; similar, valid: bool (A, C).
  """
  d = jnp.asarray(distances, jnp.float32)
  positive = (similar & valid).astype(jnp.float32)
  h_pos = _triangular_histogram(d, positive, num_bits)                  # (A, bins)
  h_all = _triangular_histogram(d, valid.astype(jnp.float32), num_bits)
  cum_pos, cum_all = jnp.cumsum(h_pos, axis=-1), jnp.cumsum(h_all, axis=-1)
  ratio = jnp.where(cum_all > 0, cum_pos / jnp.where(cum_all > 0, cum_all, 1.0), 0.0)
  num_pos = jnp.sum(positive, axis=-1)
  ap = jnp.sum(h_pos * ratio, axis=-1) / jnp.maximum(num_pos, 1.0)
  per_anchor = jnp.where(num_pos > 0, 1.0 - ap, 0.0)
  return jnp.sum(per_anchor) / (d.shape[0] if normaliser is None else normaliser)


def type_bit_weights(codes, labels, *, num_classes: int, discount: float):
  """(T, K) per-bit weights of the item distance of an anchor of each type t, mean 1 over the
  bits: 1 - discount * |m_tb|, m_t the mean code of type t over `codes` (N, K) with `labels`
  (N,) (no gradient), rescaled to mean 1; index it by the anchors' labels. A bit on which the
  type agrees (|m_tb| near 1: a bit that places the type) weighs little, so the item term
  spreads a type's items on the bits its views do not agree on and leaves the type's place
  alone. A type absent from `codes` has m = 0, uniform weights; discount 0 gives all ones."""
  codes = jax.lax.stop_gradient(jnp.asarray(codes, jnp.float32))
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)            # (N, T)
  counts = jnp.sum(onehot, axis=0)[:, None]
  means = jnp.matmul(onehot.T, codes, precision=jax.lax.Precision.HIGHEST) / jnp.maximum(
      counts, 1.0)
  w = 1.0 - discount * jnp.abs(means)
  return w / jnp.maximum(jnp.mean(w, axis=-1, keepdims=True), 1e-6)


def item_infonce_on_codes(anchor_codes, candidate_codes, positive, negative, *, temperature,
                          num_bits, normaliser=None, memory=None, memory_negative=None,
                          bit_weights=None):
  """`info_nce` with logits = -d / temperature, d the relaxed Hamming distance in bits.

  `memory` (M, K) codes, `memory_negative` bool (A, M): more candidates after the batch's (the
  cross-batch memory of earlier steps' gallery views), no gradient through them; their
  distances by `distance.relaxed_hamming_matmul`. `bit_weights` (A, K): d weighted per bit
  (`distance.relaxed_hamming`'s row_weights, e.g. rows of `type_bit_weights`); not with `memory`.
  """
  if bit_weights is not None and memory is not None:
    raise ValueError("item_infonce_on_codes: bit_weights and memory together are not supported")
  logits = -distance.relaxed_hamming(anchor_codes, candidate_codes, num_bits=num_bits,
                                     row_weights=bit_weights)
  if memory is not None:
    stored = distance.relaxed_hamming_matmul(anchor_codes, jax.lax.stop_gradient(memory),
                                             num_bits=num_bits)
    logits = jnp.concatenate([logits, -stored], axis=1)
    negative = jnp.concatenate([negative, memory_negative], axis=1)
  return info_nce(logits / temperature, positive, negative, normaliser=normaliser)


def item_infonce_on_features(anchor_features, candidate_features, positive, negative, *,
                             temperature, normaliser=None, memory=None, memory_negative=None):
  """`info_nce` with logits = cos(a, c) / temperature on the encoder's features; `memory` (M, F)
  features and `memory_negative` as in `item_infonce_on_codes`."""
  a, _ = distance.normalize(anchor_features)
  c, _ = distance.normalize(candidate_features)
  if memory is not None:
    stored, _ = distance.normalize(jax.lax.stop_gradient(memory))
    c = jnp.concatenate([c, stored], axis=0)
    negative = jnp.concatenate([negative, memory_negative], axis=1)
  cos = jnp.matmul(a, c.T, precision=jax.lax.Precision.HIGHEST)
  return info_nce(cos / temperature, positive, negative, normaliser=normaliser)


def bit_agreement_loss(anchor_pre_codes, target_codes, *, margin, normaliser=None):
  """A hinge on each bit's sign: per anchor (row), the mean over bits of
  `max(0, margin - p_b * sign(t_b))`, p the anchor's pre-codes, t its target's codes (no gradient
  through them; a target bit of exactly 0 gives the constant `margin`); summed over anchors and
  divided by `normaliser` (default: the number of anchors).

  The item InfoNCE scores the relaxed distance, a cosine: a bit near 0 in both codes weighs
  nearly nothing there, yet its sign is what the search reads. This term scores the signs: a
  query view's bit is pushed across 0 to its gallery view's sign and `margin` beyond it, with the
  same slope however far it is on the wrong side (on the pre-codes, where tanh does not flatten).
  anchor_pre_codes, target_codes: (A, K).
  """
  p = jnp.asarray(anchor_pre_codes, jnp.float32)
  target = jnp.sign(jax.lax.stop_gradient(jnp.asarray(target_codes, jnp.float32)))
  per_anchor = jnp.mean(jax.nn.relu(margin - p * target), axis=-1)
  return jnp.sum(per_anchor) / (p.shape[0] if normaliser is None else normaliser)


def centres_fit(num_classes: int, class_bits: int) -> bool:
  """Whether `class_centres(num_classes, class_bits)` exists: class_bits a power of 2 with
  2 * (class_bits - 1) >= num_classes (the one rule; config_lib checks configs with it)."""
  return class_bits >= 2 and not class_bits & (class_bits - 1) and (
      num_classes <= 2 * (class_bits - 1))


def class_centres(num_classes: int, class_bits: int):
  """(num_classes, class_bits) +-1 centres of the code's class prefix, read-only.

  Rows 1, 2, ... of the Sylvester Hadamard matrix H, each followed by its negation (row 0, all
  ones, is not used): any two centres are class_bits / 2 apart (a row and its negation
  class_bits), and no prefix bit is the same for every class (a row and its negation differ in
  every bit), so none is dead. class_bits a power of 2 with 2 * (class_bits - 1) >= num_classes;
  other sizes raise: the split code's guarantee (other types beyond every same-type item) needs
  that distance.
  """
  if not centres_fit(num_classes, class_bits):
    raise ValueError(f"class_bits={class_bits}: need a power of 2 with 2 * (class_bits - 1) >= "
                     f"num_classes={num_classes} (Hadamard centres, class_bits / 2 apart)")
  rows = baselines.sylvester_hadamard(class_bits)[1:(num_classes + 1) // 2 + 1]
  centres = np.stack([rows, -rows], axis=1).reshape(-1, class_bits)[:num_classes]
  centres = centres.astype(np.float32)
  centres.flags.writeable = False
  return centres


def class_centre_loss(pre_codes, labels, centres, *, scale, margin, normaliser=None):
  """Softmax cross-entropy over the cosines of the pre-codes to the class centres, an additive
  margin on the true class (OrthoHash's form on Hadamard centres): per anchor
  `logsumexp_k s (cos(v, c_k) - m [k == y]) - s (cos(v, c_y) - m)`, summed and divided by
  `normaliser` (default: the number of anchors).
  """
  v, _ = distance.normalize(jnp.asarray(pre_codes, jnp.float32))
  c = jnp.asarray(centres, jnp.float32) / np.sqrt(centres.shape[1])
  cosine = jnp.matmul(v, c.T, precision=jax.lax.Precision.HIGHEST)
  onehot = jax.nn.one_hot(labels, centres.shape[0], dtype=jnp.float32)
  logits = scale * (cosine - margin * onehot)
  per_anchor = jax.nn.logsumexp(logits, axis=-1) - jnp.sum(logits * onehot, axis=-1)
  return jnp.sum(per_anchor) / (pre_codes.shape[0] if normaliser is None else normaliser)


def centre_bit_loss(pre_codes, labels, centres, *, normaliser=None):
  """Per-bit binary cross-entropy of sigmoid(2 v) against the class centre's bits (CSQ's form,
  `softplus(-2 c v)`): every prefix bit takes its centre's sign, not only the direction on
  average. Mean over bits, summed over anchors, divided by `normaliser` (default: anchors)."""
  v = jnp.asarray(pre_codes, jnp.float32)
  targets = jnp.asarray(centres, jnp.float32)[labels]
  per_anchor = jnp.mean(jax.nn.softplus(-2.0 * targets * v), axis=-1)
  return jnp.sum(per_anchor) / (v.shape[0] if normaliser is None else normaliser)
