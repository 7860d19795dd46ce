"""losses/distance.py: the relaxed Hamming distance against float64 NumPy, at its edges too."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deephash_jax.losses import distance


def np_relaxed_hamming(a, b, num_bits, eps=1e-6):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  a = a / np.sqrt((a * a).sum(-1, keepdims=True) + eps)
  b = b / np.sqrt((b * b).sum(-1, keepdims=True) + eps)
  return 0.5 * num_bits * (1 - a @ b.T)


@pytest.mark.parametrize("num_bits", [8, 16, 48, 64])
def test_matches_numpy_and_is_the_hamming_distance_on_binary_codes(num_bits):
  rng = np.random.default_rng(num_bits)
  a = rng.normal(size=(5, num_bits)).astype(np.float32)
  b = rng.normal(size=(7, num_bits)).astype(np.float32)
  np.testing.assert_allclose(distance.relaxed_hamming(a, b, num_bits=num_bits),
                             np_relaxed_hamming(a, b, num_bits), rtol=1e-4, atol=1e-4)
  bits_a, bits_b = np.sign(a), np.sign(b)
  hamming = (bits_a[:, None, :] != bits_b[None, :, :]).sum(-1)
  np.testing.assert_allclose(distance.relaxed_hamming(bits_a, bits_b), hamming, atol=1e-3)


def test_identical_and_near_parallel_codes_keep_an_accurate_distance_and_gradient():
  rng = np.random.default_rng(0)
  codes = np.tanh(rng.normal(size=(4, 48))).astype(np.float32)
  same = distance.relaxed_hamming(codes, codes)
  diagonal = np.diag(np.asarray(same))
  assert np.all(diagonal >= 0) and np.all(diagonal < 1e-5)       # exactly identical: ~0
  close = codes + 1e-3 * rng.normal(size=codes.shape).astype(np.float32)
  want = np_relaxed_hamming(codes, close, 48)
  got = np.asarray(distance.relaxed_hamming(codes, close))
  # The 1 - cos form loses these to float32 cancellation; this one keeps 3 significant digits.
  np.testing.assert_allclose(np.diag(got), np.diag(want), rtol=1e-3)
  grad = jax.grad(lambda c: jnp.sum(distance.relaxed_hamming(c, c)))(jnp.asarray(codes))
  assert np.all(np.isfinite(grad))
  assert np.all(np.asarray(distance.relaxed_hamming(codes, -codes)) >= 0)


@pytest.mark.parametrize("num_bits", [1, 16, 48])
def test_sign_hamming_counts_differing_bits_exactly_and_pushes_on_every_bit(num_bits):
  """The inner-product form on +-1 codes: NumPy's count of differing bits (identical rows 0,
  opposite rows K, exactly), the relaxed distance's values; its gradient is -b / 2 on every bit,
  the relaxed form's is 0 for identical rows (every bit agrees)."""
  rng = np.random.default_rng(num_bits + 7)
  a = rng.choice([-1.0, 1.0], size=(5, num_bits)).astype(np.float32)
  b = np.concatenate([a[:2], -a[2:3], rng.choice([-1.0, 1.0], size=(3, num_bits))]).astype(
      np.float32)
  want = (a[:, None, :] != b[None, :, :]).sum(-1)
  got = np.asarray(distance.sign_hamming(a, b))
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, want)
  assert got[0, 0] == 0 and got[2, 2] == num_bits
  np.testing.assert_allclose(distance.relaxed_hamming(a, b), got, atol=1e-4)
  np.testing.assert_array_equal(distance.sign_hamming(jnp.asarray(a, jnp.bfloat16), b), want)
  # One pair: d(a_0, b_j) as a function of a_0.
  grad = lambda form, j: np.asarray(jax.grad(lambda x: form(x[None], b[j:j + 1])[0, 0])(a[0]))
  for j in range(len(b)):
    np.testing.assert_array_equal(grad(distance.sign_hamming, j), -b[j] / 2)
  # Identical rows (every bit agrees): the relaxed form's gradient is 0 but for its eps
  # residual (about 1e-6 of the inner product's 0.5 per bit).
  assert (a[0] == b[0]).all()
  np.testing.assert_allclose(grad(distance.relaxed_hamming, 0), 0.0, atol=1e-5)


def test_bfloat16_inputs_are_measured_in_float32():
  rng = np.random.default_rng(1)
  a = jnp.asarray(rng.normal(size=(6, 32)), jnp.bfloat16)
  got = distance.relaxed_hamming(a, a[::-1])
  assert got.dtype == jnp.float32
  want = np_relaxed_hamming(np.asarray(a.astype(jnp.float32)), np.asarray(a[::-1].astype(
      jnp.float32)), 32)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert np.all(np.diag(np.asarray(distance.relaxed_hamming(a, a))) < 1e-5)


@pytest.mark.parametrize("num_bits", [8, 48])
def test_matmul_form_is_the_same_distance_clamped_at_zero(num_bits):
  rng = np.random.default_rng(num_bits + 1)
  a = rng.normal(size=(5, num_bits)).astype(np.float32)
  b = rng.normal(size=(7, num_bits)).astype(np.float32)
  b[3] = a[0]                               # identical codes: 0, never negative
  b[4] = np.sign(a[1])                      # and binary ones
  got = np.asarray(distance.relaxed_hamming_matmul(a, b, num_bits=num_bits))
  np.testing.assert_allclose(got, np_relaxed_hamming(a, b, num_bits), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got, distance.relaxed_hamming(a, b, num_bits=num_bits), atol=1e-4)
  assert got.min() >= 0.0
  bits_a, bits_b = np.sign(a), np.sign(b)
  hamming = (bits_a[:, None, :] != bits_b[None, :, :]).sum(-1)
  np.testing.assert_allclose(distance.relaxed_hamming_matmul(bits_a, bits_b), hamming, atol=1e-3)
  # bfloat16 inputs: measured in float32.
  np.testing.assert_allclose(
      distance.relaxed_hamming_matmul(jnp.asarray(bits_a, jnp.bfloat16),
                                      jnp.asarray(bits_b, jnp.bfloat16)), hamming, atol=1e-3)


def np_weighted_relaxed_hamming(a, b, w, num_bits, eps=1e-6):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  na = (a * a).sum(-1, keepdims=True) + eps
  nb = (b * b).sum(-1, keepdims=True) + eps
  a_hat, b_hat = a / np.sqrt(na), b / np.sqrt(nb)
  out = np.zeros((len(a), len(b)))
  for i in range(len(a)):
    for j in range(len(b)):
      out[i, j] = 0.25 * num_bits * (np.sum(w[i] * (a_hat[i] - b_hat[j]) ** 2)
                                     + eps / na[i, 0] + eps / nb[j, 0])
  return out


def test_weighted_form_matches_numpy_is_weighted_hamming_on_binary_codes_and_ones_are_plain():
  rng = np.random.default_rng(7)
  a = rng.normal(size=(5, 12)).astype(np.float32)
  b = rng.normal(size=(6, 12)).astype(np.float32)
  b[2] = a[1]                                        # identical codes
  w = rng.uniform(0.1, 2.0, size=(5, 12)).astype(np.float32)
  w /= w.mean(-1, keepdims=True)
  got = np.asarray(distance.relaxed_hamming(a, b, row_weights=w))
  np.testing.assert_allclose(got, np_weighted_relaxed_hamming(a, b, w, 12), rtol=1e-4,
                             atol=1e-5)
  assert got[1, 2] >= 0 and got[1, 2] < 1e-5 and got.min() >= 0
  np.testing.assert_allclose(distance.relaxed_hamming(a, b, row_weights=np.ones_like(w)),
                             distance.relaxed_hamming(a, b), rtol=1e-6, atol=1e-6)
  bits_a, bits_b = np.sign(a), np.sign(b)
  weighted = ((bits_a[:, None, :] != bits_b[None, :, :]) * w[:, None, :]).sum(-1)
  np.testing.assert_allclose(distance.relaxed_hamming(bits_a, bits_b, row_weights=w), weighted,
                             rtol=1e-4, atol=1e-3)
  half = jnp.asarray(a, jnp.bfloat16)
  got16 = distance.relaxed_hamming(half, half[::-1], row_weights=w)
  assert got16.dtype == jnp.float32
  np.testing.assert_allclose(got16, np_weighted_relaxed_hamming(
      np.asarray(half.astype(jnp.float32)), np.asarray(half[::-1].astype(jnp.float32)), w, 12),
                             rtol=1e-4, atol=1e-4)
  grad = jax.grad(lambda c: jnp.sum(distance.relaxed_hamming(c, c, row_weights=w)))(jnp.asarray(a))
  assert np.all(np.isfinite(grad))
