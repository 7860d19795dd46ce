"""NumPy references for the search tests: brute-force Hamming distances and stable top-k."""
import numpy as np

from deephash_jax.search import packing


def distances(xq, xb, num_bits):
  q = np.unpackbits(xq, axis=1, count=num_bits, bitorder="little").astype(bool)
  b = np.unpackbits(xb, axis=1, count=num_bits, bitorder="little").astype(bool)
  return (q[:, None, :] != b[None, :, :]).sum(-1)


def search(xq, xb, k, num_bits):
  return stable_top_k(distances(xq, xb, num_bits), k, num_bits + 1)


def stable_top_k(dist, k, missing_distance):
  """Each row's k smallest distances and their positions, ties -> lower position; past the
  row's end, distance `missing_distance` and position -1."""
  order = np.argsort(dist, axis=1, kind="stable")[:, :k]  # ties -> lower index
  d = np.take_along_axis(dist, order, axis=1)
  missing = k - order.shape[1]
  d = np.pad(d, ((0, 0), (0, missing)), constant_values=missing_distance)
  i = np.pad(order, ((0, 0), (0, missing)), constant_values=-1)
  return d, i


def asymmetric_distance(q, bits):
  """sum of |q_i| over the bits where (q_i > 0) != bits_i, one bit at a time."""
  return sum(abs(float(x)) for x, b in zip(q, bits) if (x > 0) != bool(b))


def codes(rng, n, num_bits, duplicate=True):
  codes = packing.pack_bits(rng.random((n, num_bits)) < 0.5)
  if duplicate and n > 1:
    codes[n // 2:] = codes[:n - n // 2]  # many exact ties at every distance
  return codes


def assert_same(got, want):
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])
  assert got[0].dtype == np.int32 and got[1].dtype == np.int64
