"""The graded objective (`method = "graded"`): same item < same type < other type in Hamming space.

Three forces, one per level (train/step.py `graded_loss` weights and combines them):
* category level: the Cauchy cross-entropy of losses/singh2019.py on every pair of views, with a
  dead zone for same-type pairs (`threshold` bits): other types are pushed apart, but same-type
  items are not pulled onto one code once they are within the band, so they keep room to differ;
* item level: InfoNCE of each query view against the gallery views of the whole batch (in-batch
  negatives of every type), on the relaxed Hamming distance (`item_infonce_on_codes`) and on
  the encoder's features (`item_infonce_on_features`): the query's own garment must be the
  nearest, not only a neighbour;
* the classifier (on the features, so that it does not pull every bit towards its class) and
  the quantization term, as in the paper.

Rows are this device's anchors, columns the gathered candidates, sums divided by a normaliser
passed in, as in losses/singh2019.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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


def item_infonce_on_codes(anchor_codes, candidate_codes, positive, negative, *, temperature,
                          num_bits, normaliser=None):
  """`info_nce` with logits = -d / temperature, d the relaxed Hamming distance in bits."""
  d = distance.relaxed_hamming(anchor_codes, candidate_codes, num_bits=num_bits)
  return info_nce(-d / temperature, positive, negative, normaliser=normaliser)


def item_infonce_on_features(anchor_features, candidate_features, positive, negative, *,
                             temperature, normaliser=None):
  """`info_nce` with logits = cos(a, c) / temperature on the encoder's features."""
  a, _ = distance.normalize(anchor_features)
  c, _ = distance.normalize(candidate_features)
  cos = jnp.matmul(a, c.T, precision=jax.lax.Precision.HIGHEST)
  return info_nce(cos / temperature, positive, negative, normaliser=normaliser)
