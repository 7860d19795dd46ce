"""search/radius.py: radius search and counts against NumPy."""
import numpy as np
import pytest

from deephash_jax.search import packing
from deephash_jax.search import radius as radius_lib
from tests.search import brute


@pytest.mark.parametrize("num_bits,radius", [(12, 0), (12, 3), (12, 12), (12, 40), (64, 0),
                                             (64, 28), (64, 64)])
def test_range_search_matches_brute_force(num_bits, radius):
  rng = np.random.default_rng(num_bits + radius)
  xb = brute.codes(rng, 600, num_bits)
  xq = np.concatenate([xb[:2], brute.codes(rng, 7, num_bits, duplicate=False)])
  lims, d, i = radius_lib.range_search(xq, xb, radius, num_bits=num_bits, chunk_size=128,
                                    query_batch_size=4)
  dist = brute.distances(xq, xb, num_bits)
  assert lims.shape == (10,) and lims[0] == 0 and lims[-1] == d.size == i.size
  for q in range(xq.shape[0]):
    want_i = np.flatnonzero(dist[q] <= radius)
    want_i = want_i[np.argsort(dist[q, want_i], kind="stable")]  # by (distance, index)
    np.testing.assert_array_equal(i[lims[q]:lims[q + 1]], want_i)
    np.testing.assert_array_equal(d[lims[q]:lims[q + 1]], dist[q, want_i])
  np.testing.assert_array_equal(
      radius_lib.range_count(xq, xb, radius, num_bits=num_bits, chunk_size=128), np.diff(lims))
  if radius >= num_bits:
    assert np.all(np.diff(lims) == 600)


def test_range_search_no_results():
  xb = packing.pack_bits(np.ones((5, 16), bool))
  xq = packing.pack_bits(np.zeros((2, 16), bool))
  lims, d, i = radius_lib.range_search(xq, xb, 3, num_bits=16)
  np.testing.assert_array_equal(lims, [0, 0, 0])
  assert d.size == i.size == 0
