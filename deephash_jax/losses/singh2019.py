"""The paper's objective (Singh, Sheet & Dasgupta 2019; `method = "singh2019"`), as small pure
functions: classification, the two-level Cauchy loss on the relaxed Hamming distance
(losses/distance.py), the discriminator's loss and the encoder's scramble term, quantization.

Each function documents its reduction. Pairwise terms are written for a block of rows (this
device's codes) against all columns (the global batch, gathered), with normalisers passed in, so
that the sum of the per-device values equals the loss of the whole batch on one device.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

PAIR_SAME_ITEM, PAIR_SAME_TYPE, PAIR_OTHER_TYPE = 0, 1, 2


def pair_kinds(row_labels, row_items, col_labels, col_items):
  """t[i, j]: 0 same item, 1 same clothing type but another item, 2 another type."""
  same_item = (row_items[:, None] == col_items[None, :]) & (
      row_labels[:, None] == col_labels[None, :])
  same_type = row_labels[:, None] == col_labels[None, :]
  return jnp.where(same_item, PAIR_SAME_ITEM,
                   jnp.where(same_type, PAIR_SAME_TYPE, PAIR_OTHER_TYPE))


def cauchy_gammas(loss_config, num_bits: int) -> tuple[float, float]:
  """(gamma, gamma_item) of the Cauchy losses at `num_bits`.

  With `loss.gamma_reference_bits` = R > 0 the configured values hold at R bits and scale with
  the code length (gamma * num_bits / R): the relaxed Hamming distance ranges over [0, num_bits],
  so a fixed gamma is a looser scale on short codes than on long ones. 0 uses them as given.
  """
  reference = loss_config.get("gamma_reference_bits", 0) or 0
  scale = num_bits / reference if reference else 1.0
  return loss_config.gamma * scale, loss_config.gamma_item * scale


def cauchy_cross_entropy(distances, similar, valid, *, gamma, num_similar=None,
                         num_dissimilar=None, threshold=0.0, min_distance=0.0):
  """Balanced Cauchy cross-entropy on relaxed Hamming distances (Cao et al., DCH 2018).

  sigma = gamma / (gamma + d) is the probability that a pair is similar;
  loss = 1/2 [mean over similar pairs of -log sigma + mean over dissimilar pairs of
  -log(1 - sigma)], pairs taken where `valid`. The two means balance the rarity of similar
  pairs (DCH's w = |S| / |S1| weights, divided by 2|S|). `num_similar` / `num_dissimilar`
  default to the counts in this block; the sharded step passes global counts. A side with no
  pair contributes 0. `threshold` > 0 (method "graded") gives similar pairs a dead zone: their
  distance counts as max(d - threshold, 0), so pairs within `threshold` bits are not pulled.
  `min_distance` > 0: below it the dissimilar term -log(1 - sigma) = log((gamma + d) / d) goes on
  as its tangent at `min_distance`, finite with a finite slope at d = 0 (for distances between
  signs, which are 0 exactly for identical codes: 1 bit); 0 keeps the log down to 1e-12.
  """
  similar = similar & valid
  dissimilar = (~similar) & valid
  pulled = jnp.maximum(distances - threshold, 0.0) if threshold else distances
  log_sigma = jnp.log(gamma) - jnp.log(gamma + pulled)
  if min_distance:
    # jnp.where, not jnp.maximum: the gradient at d == min_distance (sign distances sit on
    # integers) must be the log's, not half of it.
    below = distances < min_distance
    far = jnp.where(below, min_distance, distances)
    at_min = np.log(min_distance) - np.log(gamma + min_distance)
    slope = 1.0 / min_distance - 1.0 / (gamma + min_distance)
    log_one_minus_sigma = jnp.where(below, at_min + slope * (distances - min_distance),
                                    jnp.log(far) - jnp.log(gamma + far))
  else:
    log_one_minus_sigma = jnp.log(distances + 1e-12) - jnp.log(gamma + distances)
  if num_similar is None:
    num_similar = jnp.sum(similar)
  if num_dissimilar is None:
    num_dissimilar = jnp.sum(dissimilar)
  pos = -jnp.sum(jnp.where(similar, log_sigma, 0.0)) / jnp.maximum(num_similar, 1)
  neg = -jnp.sum(jnp.where(dissimilar, log_one_minus_sigma, 0.0)) / jnp.maximum(num_dissimilar, 1)
  return 0.5 * (pos + neg)


def classification_loss(logits, labels, *, normaliser=None, where=None):
  """Softmax cross-entropy, summed over the rows where `where` (default: every row) and divided
  by `normaliser` (default: the number of rows summed)."""
  per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  rows = labels.shape[0]
  if where is not None:
    per_example, rows = jnp.where(where, per_example, 0.0), jnp.sum(where)
  return jnp.sum(per_example) / (rows if normaliser is None else normaliser)


def quantization_loss(codes, *, normaliser=None):
  """sum (|h| - 1)^2 / normaliser (default: the number of entries): pulls codes to +-1."""
  per_entry = jnp.square(jnp.abs(codes) - 1.0)
  return jnp.sum(per_entry) / (codes.size if normaliser is None else normaliser)


def discriminator_loss(logits, query_first, *, normaliser=None):
  """Sigmoid cross-entropy of the discriminator: predict whether the first code is the query."""
  per_pair = optax.sigmoid_binary_cross_entropy(logits, query_first.astype(logits.dtype))
  return jnp.sum(per_pair) / (logits.shape[0] if normaliser is None else normaliser)


def scramble_loss(logits, query_first, *, mode="entropy", normaliser=None):
  """The encoder's adversarial term against a fixed discriminator.

  mode="entropy": KL(uniform || p) = BCE(logits, 1/2) - log 2, minimal (0) when the
  discriminator's prediction is 1/2 for every pair, i.e. it cannot tell query from gallery.
  mode="flip": cross-entropy against the flipped labels (the GAN-style alternative).
  """
  if mode == "entropy":
    per_pair = optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, 0.5)) - jnp.log(2.0)
  elif mode == "flip":
    per_pair = optax.sigmoid_binary_cross_entropy(logits, 1.0 - query_first.astype(logits.dtype))
  else:
    raise ValueError(f"config.loss.adversarial_mode={mode!r}: expected 'entropy' or 'flip'")
  return jnp.sum(per_pair) / (logits.shape[0] if normaliser is None else normaliser)
