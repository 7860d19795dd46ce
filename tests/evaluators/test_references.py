"""evaluators/references.py: the pixel-SAD search and the cosine ranking against brute force."""
import numpy as np
import pytest

from deephash_jax.evaluators import ranking
from deephash_jax.evaluators import references


def _sad_brute_force(queries, database):
  q = queries.reshape(len(queries), -1).astype(np.int64)
  d = database.reshape(len(database), -1).astype(np.int64)
  return np.abs(q[:, None, :] - d[None, :, :]).sum(-1)


@pytest.mark.parametrize("shape", [(5, 5, 1), (300, 240, 1)])  # 1 pixel block; 2 blocks, int32
def test_sad_search_equals_numpy_brute_force_with_ties(shape):
  rng = np.random.default_rng(1)
  n = 37 if shape[0] < 10 else 11
  database = rng.integers(0, 3, (n, *shape), dtype=np.uint8)
  database[9] = database[2]          # exact duplicates: ties at distance 0 and elsewhere
  database[n - 1] = database[2]
  queries = np.concatenate([database[[2, 0]], rng.integers(0, 3, (5, *shape), dtype=np.uint8)])
  expected = _sad_brute_force(queries, database)
  prepared = references.prepare_sad_database(database, chunk_size=8)   # several chunks
  np.testing.assert_array_equal(
      references.sad_distances(queries, prepared, query_batch_size=3), expected)
  k = n + 3
  dist, index = references.sad_search(queries, prepared, k, query_batch_size=3)
  order = np.lexsort((np.broadcast_to(np.arange(n), expected.shape), expected), axis=1)
  np.testing.assert_array_equal(index[:, :n], order)   # ties -> lower index
  np.testing.assert_array_equal(dist[:, :n], np.take_along_axis(expected, order, axis=1))
  assert np.all(index[:, n:] == -1) and np.all(dist[:, n:] == 2 ** 30)
  assert list(index[0, :3]) == [2, 9, n - 1] and list(dist[0, :3]) == [0, 0, 0]
  _, i1 = references.sad_search(queries, prepared, 1)
  np.testing.assert_array_equal(i1[:, 0], np.argmin(expected, axis=1))


def test_cosine_ranking_equals_brute_force():
  rng = np.random.default_rng(3)
  q, d = rng.normal(size=(6, 8)), rng.normal(size=(30, 8))
  d[7] = 4.0 * d[4]   # same direction (a power of 2: exact): a cosine tie, the lower index first
  q[0] = d[4]
  q_keys, d_keys = np.arange(6) % 3, np.arange(30) % 3
  rows = references.cosine_distance_rows(q, d)
  cos = (q @ d.T) / np.linalg.norm(q, axis=1)[:, None] / np.linalg.norm(d, axis=1)[None]
  np.testing.assert_allclose(rows(0, 6), 1.0 - cos, atol=1e-12)
  got = ranking.ranking_metrics(rows, q_keys, d_keys, recall_at=(1,), ties="index")
  expected = np.mean([_ap_brute_force(1.0 - cos[i], d_keys == q_keys[i]) for i in range(6)])
  assert got["map_all"] == pytest.approx(expected, abs=1e-12)
  assert rows(0, 1)[0, 4] == rows(0, 1)[0, 7] and np.argsort(rows(0, 1)[0], kind="stable")[0] == 4




def _ap_brute_force(dist_row, rel_row):
  order = sorted(range(len(dist_row)), key=lambda j: (dist_row[j], j))
  hits, total = 0, 0.0
  for rank, j in enumerate(order, start=1):
    if rel_row[j]:
      hits += 1
      total += hits / rank
  return total / hits if hits else 0.0
