"""search/hamming.py: the exact k-NN search, one device and sharded, against NumPy and faiss."""
import jax
import numpy as np
import pytest

from deephash_jax.search import hamming
from deephash_jax.search import layout
from deephash_jax.search import radius as radius_lib
from tests.search import brute


@pytest.mark.parametrize("num_bits", [8, 12, 16, 32, 48, 64, 128])
def test_search_matches_brute_force(num_bits):
  rng = np.random.default_rng(num_bits)
  xb = brute.codes(rng, 777, num_bits)
  xq = np.concatenate([xb[:3], brute.codes(rng, 10, num_bits, duplicate=False)])
  want = brute.search(xq, xb, 10, num_bits)
  # Default layout (one small chunk, direct top-k) and the pruned layout
  # (4-row blocks, several chunks with a padded last one).
  brute.assert_same(hamming.search(xq, xb, 10, num_bits=num_bits), want)
  brute.assert_same(hamming.search(xq, xb, 10, num_bits=num_bits, chunk_size=256, block_rows=4),
               want)


@pytest.mark.parametrize("k", [1, 5, 64])
def test_pruned_search_many_ties(k):
  # Few distinct codes: the k-th neighbour sits inside a huge tie.
  rng = np.random.default_rng(k)
  distinct = brute.codes(rng, 6, 16, duplicate=False)
  xb = distinct[rng.integers(0, 6, 3000)]
  xq = brute.codes(rng, 9, 16, duplicate=False)
  want = brute.search(xq, xb, k, 16)
  for block_rows in (2, 8, 32):
    brute.assert_same(hamming.search(xq, xb, k, num_bits=16, chunk_size=1024, block_rows=block_rows),
                 want)


@pytest.mark.parametrize("n,num_bits,k,chunk_size,block_rows,levels", [
    (700, 16, 8, 1 << 20, 32, 0),    # 32 blocks (22 used): plain top-k
    (3001, 16, 15, 1 << 20, 4, 1),   # 752 blocks: block pruning
    (3001, 16, 3, 1 << 20, 2, 2),    # 1501 blocks: blocks and super-blocks
    (5003, 64, 2, 1500, 3, 2),       # several chunks, two levels, padded last block
    (5003, 40, 9, 2100, 4, 1),       # several chunks, one level
])
def test_every_pruning_level_is_exact(n, num_bits, k, chunk_size, block_rows, levels):
  rng = np.random.default_rng(n + k)
  xb = brute.codes(rng, n, num_bits)
  xb[xb.sum(axis=1) == 0, 0] = 1  # no zero code: padding (zeros) would beat everything
  zero = np.zeros((1, xb.shape[1]), np.uint8)
  xq = np.concatenate([zero, xb[:2], brute.codes(rng, 6, num_bits, duplicate=False)])
  database = layout.prepare_database(xb, num_bits=num_bits, chunk_size=chunk_size,
                                      block_rows=block_rows)
  _, _, tiles, _, tile_cols = database.chunks.shape
  assert hamming._pruning_levels(tiles * tile_cols, k) == levels
  brute.assert_same(hamming.search_prepared(xq, database, k), brute.search(xq, xb, k, num_bits))


def _weighted_distances(xq, xb, word_weights):
  """sum over 32-bit words of weight * popcount(q ^ b), one word at a time in NumPy."""
  q, b = xq.reshape(len(xq), -1, 4), xb.reshape(len(xb), -1, 4)
  return sum(weight * np.bitwise_count(q[:, None, w] ^ b[None, :, w]).sum(-1, dtype=np.int64)
             for w, weight in enumerate(word_weights))


@pytest.mark.parametrize("n,word_weights,k,chunk_size,block_rows", [
    (300, (3,), 7, 1 << 20, None),                # one word, plain top-k
    (3001, (5, 5, 1, 1, 2, 2), 15, 1 << 20, 4),   # block pruning
    (3001, (1, 4), 3, 1 << 20, 2),                # blocks and super-blocks
    (5003, (2, 1, 1), 9, 2100, 4),                # several chunks
])
def test_weighted_words_rank_by_the_weighted_sum_of_popcounts(n, word_weights, k, chunk_size,
                                                              block_rows):
  rng = np.random.default_rng(n + k)
  num_bits = 32 * len(word_weights)
  xb = brute.codes(rng, n, num_bits)            # half the items duplicated: ties
  xb[xb.sum(axis=1) == 0, 0] = 1
  xq = np.concatenate([np.zeros((1, xb.shape[1]), np.uint8), xb[:2],
                       brute.codes(rng, 6, num_bits, duplicate=False)])
  database = layout.prepare_database(xb, num_bits=num_bits, chunk_size=chunk_size,
                                     block_rows=block_rows, word_weights=word_weights)
  max_distance = 32 * sum(word_weights)
  assert database.max_distance == max_distance
  dist = _weighted_distances(xq, xb, word_weights)
  brute.assert_same(hamming.search_prepared(xq, database, k),
                    brute.stable_top_k(dist, k, max_distance + 1))
  # k past the database: missing results at max_distance + 1.
  small = layout.prepare_database(xb[:5], num_bits=num_bits, word_weights=word_weights)
  brute.assert_same(hamming.search_prepared(xq, small, 8),
                    brute.stable_top_k(dist[:, :5], 8, max_distance + 1))
  # Radius search and counts over the same weighted distances, ties in index order.
  radius = int(np.median(dist))
  lims, d, i = radius_lib.range_search_prepared(xq, database, radius)
  for q in range(len(xq)):
    want = np.flatnonzero(dist[q] <= radius)
    want = want[np.argsort(dist[q, want], kind="stable")]
    np.testing.assert_array_equal(i[lims[q]:lims[q + 1]], want)
    np.testing.assert_array_equal(d[lims[q]:lims[q + 1]], dist[q, want])
  np.testing.assert_array_equal(radius_lib.range_count_prepared(xq, database, radius),
                                np.diff(lims))


@pytest.mark.parametrize("word_weights,num_bits", [((1,), 48), ((1, 0), 64), ((1,), 64),
                                                   ((1.5, 1), 64), ((True, 1), 64)])
def test_bad_word_weights_are_named(word_weights, num_bits):
  xb = np.zeros((3, num_bits // 8), np.uint8)
  with pytest.raises(ValueError, match=r"word_weights=.*whole weights > 0, one per 32-bit word"):
    layout.prepare_database(xb, num_bits=num_bits, word_weights=word_weights)


@pytest.mark.parametrize("n,count,max_value", [(1, 1, 1), (37, 37, 5), (300, 1, 9),
                                               (300, 101, 65), (1500, 101, 17),
                                               (5000, 101, 33)])
def test_counting_selection_equals_stable_top_k(n, count, max_value):
  rng = np.random.default_rng(n + count)
  rows = [rng.integers(0, max_value + 1, n),            # random
          np.full(n, max_value),                        # one big tie
          np.minimum(rng.integers(0, 4, n), max_value)]  # few distinct values
  values = jax.numpy.asarray(np.stack(rows).astype(np.int32))
  want = np.sort(np.argsort(np.asarray(values), axis=1, kind="stable")[:, :count], axis=1)
  np.testing.assert_array_equal(hamming._select(values, count, max_value), want)
  dist, pos = hamming._k_smallest(values, count, max_value)
  want_pos = np.argsort(np.asarray(values), axis=1, kind="stable")[:, :count]
  np.testing.assert_array_equal(pos, want_pos)
  np.testing.assert_array_equal(dist, np.take_along_axis(np.asarray(values), want_pos, axis=1))


@pytest.mark.parametrize("n,k", [(50, 50), (50, 80), (1, 3)])
def test_search_k_equal_or_larger_than_database(n, k):
  rng = np.random.default_rng(n + k)
  xb = brute.codes(rng, n, 24)
  xq = brute.codes(rng, 4, 24, duplicate=False)
  got = hamming.search(xq, xb, k, num_bits=24, chunk_size=16, block_rows=2)
  brute.assert_same(got, brute.search(xq, xb, k, 24))
  assert np.all(got[1][:, n:] == -1) and np.all(got[0][:, n:] == 25)


def test_search_query_batches_and_empty_database():
  rng = np.random.default_rng(0)
  xb = brute.codes(rng, 300, 32)
  xq = brute.codes(rng, 23, 32, duplicate=False)
  brute.assert_same(hamming.search(xq, xb, 7, num_bits=32, query_batch_size=4),
               brute.search(xq, xb, 7, 32))
  d, i = hamming.search(xq, xb[:0], 3, num_bits=32)
  assert np.all(i == -1) and np.all(d == 33)
  d, i = hamming.search(xq[:0], xb, 3, num_bits=32)
  assert d.shape == i.shape == (0, 3)


def test_search_matches_faiss():
  faiss = pytest.importorskip("faiss")
  rng = np.random.default_rng(1)
  xb = brute.codes(rng, 5000, 64)
  xq = brute.codes(rng, 16, 64, duplicate=False)
  index = faiss.IndexBinaryFlat(64)
  index.add(xb)
  want_d, want_i = index.search(xq, 20)
  got_d, got_i = hamming.search(xq, xb, 20, num_bits=64, chunk_size=2048, block_rows=8)
  np.testing.assert_array_equal(got_d, want_d)
  np.testing.assert_array_equal(got_i, want_i)


def test_search_bad_input_names_the_argument():
  xb = np.zeros((4, 2), np.uint8)
  with pytest.raises(TypeError, match="xq_packed.*float32"):
    hamming.search(np.zeros((1, 2), np.float32), xb, 1, num_bits=16)
  with pytest.raises(ValueError, match="xb_packed has 3 bytes.*num_bits=16"):
    hamming.search(xb, np.zeros((4, 3), np.uint8), 1, num_bits=16)
  with pytest.raises(ValueError, match="xq_packed has nonzero padding bits"):
    hamming.search(np.full((1, 2), 255, np.uint8), xb, 1, num_bits=12)
  with pytest.raises(ValueError, match="k must be a positive int, got 0"):
    hamming.search(xb, xb, 0, num_bits=16)
  with pytest.raises(ValueError, match="block_rows"):
    hamming.search(xb, xb, 1, num_bits=16, block_rows=0)


@pytest.mark.parametrize("n,k,num_bits", [(1001, 10, 32), (37, 5, 12), (37, 50, 12),
                                          (4000, 16, 64), (4001, 3, 64)])
def test_sharded_search_matches_single_device(n, k, num_bits):
  mesh = jax.make_mesh((jax.device_count(),), ("data",))   # 8 forced CPU devices; all GPUs
  rng = np.random.default_rng(n)
  xb = brute.codes(rng, n, num_bits)
  xq = np.concatenate([xb[:2], brute.codes(rng, 9, num_bits, duplicate=False)])
  want = brute.search(xq, xb, k, num_bits)
  brute.assert_same(hamming.search(xq, xb, k, num_bits=num_bits), want)
  brute.assert_same(hamming.sharded_search(xq, xb, k, num_bits=num_bits, mesh=mesh, chunk_size=128,
                                      block_rows=4), want)


def test_sharded_search_needs_data_axis():
  mesh = jax.make_mesh((jax.device_count(),), ("model",))
  xb = np.zeros((4, 1), np.uint8)
  with pytest.raises(ValueError, match="'data'"):
    hamming.sharded_search(xb, xb, 1, num_bits=8, mesh=mesh)
