"""The relaxed Hamming distance every pairwise loss uses (ours and the peers'), one implementation.

For +-1 codes of K bits the Hamming distance is K/2 * (1 - cos(a, b)). On relaxed codes (tanh
outputs, pre-activations) the same expression is the relaxation; it is computed here as
K/4 * (|a_hat - b_hat|^2 + res_a + res_b) with a_hat = a / sqrt(|a|^2 + eps) and the residual
res_a = eps / (|a|^2 + eps) = 1 - |a_hat|^2, which equals K/2 * (1 - <a, b> / (sqrt(|a|^2 + eps)
sqrt(|b|^2 + eps))) exactly but never subtracts two numbers close to 1: near-parallel codes (a
fresh network's, or two views of one item) keep an accurate distance and a gradient, in float32
and in bfloat16 inputs alike (computed in float32). It is never negative and never clipped (a clip
such as DCH's cosine cap at 0.99 zeroes the gradient of every near-parallel pair). Memory is
O(Na * Nb * K).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NORM_EPS = 1e-6


def normalize(x, eps: float = NORM_EPS):
  """Rows divided by sqrt(|x|^2 + eps), and the residual 1 - |x_hat|^2 = eps / (|x|^2 + eps)."""
  x = jnp.asarray(x, jnp.float32)
  denom = jnp.sum(x * x, axis=-1, keepdims=True) + eps
  return x * jax.lax.rsqrt(denom), eps / denom[..., 0]


def relaxed_hamming(row_codes, col_codes, *, num_bits: int | None = None,
                    eps: float = NORM_EPS, row_weights=None):
  """(Na, Nb) relaxed Hamming distances K/2 * (1 - cos) between the rows of two code matrices,
  float32, >= 0 (module docstring); K = `num_bits`, by default the codes' width.

  `row_weights` (Na, K) non-negative, optional: each bit's term weighted per row, K/4 * (sum_b
  w_ab (a_hat_b - b_hat_b)^2 + res_a + res_b); for +-1 codes and weights of mean 1 the weighted
  Hamming distance sum_b w_ab [a_b != b_b], all-ones weights the plain distance."""
  num_bits = row_codes.shape[-1] if num_bits is None else num_bits
  a_hat, a_res = normalize(row_codes, eps)
  b_hat, b_res = normalize(col_codes, eps)
  diff = a_hat[:, None, :] - b_hat[None, :, :]
  squared = diff * diff
  if row_weights is not None:
    squared = jnp.asarray(row_weights, jnp.float32)[:, None, :] * squared
  squared = jnp.sum(squared, axis=-1) + a_res[:, None] + b_res[None, :]
  return 0.25 * num_bits * jnp.maximum(squared, 0.0)


def relaxed_hamming_matmul(row_codes, col_codes, *, num_bits: int | None = None,
                           eps: float = NORM_EPS):
  """`relaxed_hamming` as K/2 * (1 - <a_hat, b_hat>), one matmul at Precision.HIGHEST, clamped
  at 0: the same function with O(Na * Nb) memory, exact but for float32 round-off near
  distance 0, where the subtraction cancels. For columns that are other items' codes (the
  cross-batch memory of the graded objective: thousands of columns, none of them the anchor's
  own view), not for pairs that are meant to coincide."""
  num_bits = row_codes.shape[-1] if num_bits is None else num_bits
  a_hat, _ = normalize(row_codes, eps)
  b_hat, _ = normalize(col_codes, eps)
  cos = jnp.matmul(a_hat, b_hat.T, precision=jax.lax.Precision.HIGHEST)
  return 0.5 * num_bits * jnp.maximum(1.0 - cos, 0.0)


def sign_hamming(row_signs, col_signs, *, num_bits: int | None = None):
  """(Na, Nb) Hamming distances (K - <a, b>) / 2 between +-1 codes, float32, one matmul at
  Precision.HIGHEST: integer sums, so exact (0 for identical rows).

  Equal to `relaxed_hamming` on +-1 codes, but not its gradient there: d/da_b is -b_b / 2 on
  every bit, where the relaxed form's, for codes m bits apart, is 1 - m/K on each bit that
  differs and m/K on each that agrees (0 for identical codes, but for its eps residual). Under a
  straight-through estimator (losses read the signs, the gradient goes to the tanh codes) the
  relaxed form spends a push on the bits that already differ, which moves no sign; this one
  reaches every bit that could flip. K = `num_bits`, by default the codes' width (its distances
  are then within [0, K])."""
  a = jnp.asarray(row_signs, jnp.float32)
  b = jnp.asarray(col_signs, jnp.float32)
  num_bits = a.shape[-1] if num_bits is None else num_bits
  return 0.5 * (num_bits - jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST))
