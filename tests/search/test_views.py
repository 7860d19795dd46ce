"""HammingIndex with several codes an item (view_weights) against loops in plain NumPy."""
import hashlib
import json
import struct

import numpy as np
import pytest

from deephash_jax.search import packing
from deephash_jax.search.index import HammingIndex, IndexFileError
from tests.search import brute


def _views(seed, n, views, num_bits):
  """(n, views, B) packed codes with exact ties: the second half of the items repeats the first,
  and every item's last view repeats its first."""
  rng = np.random.default_rng(seed)
  codes = np.stack([brute.codes(rng, n, num_bits) for _ in range(views)], axis=1)
  codes[:, -1] = codes[:, 0]
  return codes


def _weighted_distances(xq, views, weights, num_bits):
  """(nq, n): sum over views v of weights[v] * the Hamming distance, one view at a time."""
  total = np.zeros((len(xq), len(views)), np.int64)
  for v, w in enumerate(weights):
    total += w * brute.distances(xq, views[:, v], num_bits)
  return total


@pytest.mark.parametrize("num_bits,weights", [(12, (3, 1, 1, 1)), (48, (1, 2)), (20, (2,))])
def test_search_ranks_by_the_weighted_sum_of_view_distances(num_bits, weights):
  views = _views(0, 150, len(weights), num_bits)
  xq = brute.codes(np.random.default_rng(1), 9, num_bits)
  xq[0] = views[7, 0]                                   # a query equal to an item's own code
  ids = np.arange(150) * 3 + 1
  index = HammingIndex(num_bits, view_weights=weights)
  index.add(views, ids=ids)
  assert index.max_distance == sum(weights) * num_bits
  dist = _weighted_distances(xq, views, weights, num_bits)
  for k in (1, 10, 200):
    want_d, want_pos = brute.stable_top_k(dist, k, sum(weights) * num_bits + 1)
    d, i = index.search(xq, k)
    np.testing.assert_array_equal(d, want_d)
    np.testing.assert_array_equal(i, np.where(want_pos >= 0, ids[want_pos], -1))
    assert d.dtype == np.int32 and i.dtype == np.int64
  np.testing.assert_array_equal(index.hamming_distances(xq, np.array([[0, 5, -1]] * 9)),
                                np.stack([dist[:, 0], dist[:, 5],
                                          np.full(9, index.max_distance + 1)], axis=1))
  radius = int(np.median(dist))
  lims, d, i = index.range_search(xq, radius)
  for q in range(len(xq)):
    want = np.flatnonzero(dist[q] <= radius)           # index order, then sorted by distance
    want = want[np.argsort(dist[q, want], kind="stable")]
    np.testing.assert_array_equal(i[lims[q]:lims[q + 1]], ids[want])
    np.testing.assert_array_equal(d[lims[q]:lims[q + 1]], dist[q, want])


@pytest.mark.parametrize("num_bits,weights,candidates", [(12, (3, 1, 1), 7), (20, (1, 2), 60)])
def test_search_asymmetric_sums_the_weighted_view_distances(num_bits, weights, candidates):
  views = _views(2, 60, len(weights), num_bits)
  bits = [packing.unpack_bits(views[:, v], num_bits) for v in range(len(weights))]
  rng = np.random.default_rng(3)
  query = (np.where(rng.random((5, num_bits)) < 0.5, 1.0, -1.0)
           * rng.choice([0.0, 0.25, 0.5, 1.0], size=(5, num_bits))).astype(np.float32)
  index = HammingIndex(num_bits, view_weights=weights)
  index.add(views)
  k = 5
  d, i = index.search_asymmetric(query, k, candidates=candidates)
  hamming = _weighted_distances(packing.pack_bits(query), views, weights, num_bits)
  for row, q in enumerate(query):
    pool = list(np.argsort(hamming[row], kind="stable")[:candidates])
    score = lambda p, q=q: sum(w * brute.asymmetric_distance(q, bits[v][p])
                               for v, w in enumerate(weights))
    pool.sort(key=score)                                # stable: keeps the Hamming order
    np.testing.assert_array_equal(i[row], pool[:k])
    np.testing.assert_array_equal(d[row], [score(p) for p in pool[:k]])


def test_save_load_keeps_the_views(tmp_path):
  views = _views(4, 40, 3, 12)
  index = HammingIndex(12, model_id="m", view_weights=(3, 1, 1))
  index.add(views[:25], labels=np.arange(25) % 4)
  index.add(views[25:], labels=np.arange(15) % 4)
  index.save(tmp_path / "v.hidx")
  loaded = HammingIndex.load(tmp_path / "v.hidx")
  assert loaded.view_weights == (3, 1, 1) and loaded.views == 3
  np.testing.assert_array_equal(loaded.codes, views.reshape(40, -1))
  for v in range(3):
    np.testing.assert_array_equal(loaded.view_codes(v), views[:, v])
  xq = views[:6, 1]
  for got, want in zip(loaded.search(xq, 8), index.search(xq, 8)):
    np.testing.assert_array_equal(got, want)
  assert "view_weights=(3, 1, 1)" in repr(loaded)


def _rewrite_header(path, **changes):
  data = path.read_bytes()
  prefix = struct.Struct("<8sIQ32s")
  magic, version, header_nbytes, _ = prefix.unpack_from(data)
  header = json.loads(data[prefix.size:prefix.size + header_nbytes])
  header.update(changes)
  for key in [k for k, v in changes.items() if v is None]:
    del header[key]
  version = header["format_version"]
  header_bytes = json.dumps(header, sort_keys=True).encode()
  path.write_bytes(prefix.pack(magic, version, len(header_bytes),
                               hashlib.sha256(header_bytes).digest())
                   + header_bytes + data[prefix.size + header_nbytes:])


def test_a_version_2_file_loads_as_one_view(tmp_path):
  index = HammingIndex(16, model_id="m", metadata={"split": "gallery"})
  index.add(brute.codes(np.random.default_rng(5), 9, 16))
  path = tmp_path / "v2.hidx"
  index.save(path)
  _rewrite_header(path, format_version=2, view_weights=None)
  loaded = HammingIndex.load(path)
  assert loaded.view_weights == (1,) and loaded.metadata == {"split": "gallery"}
  np.testing.assert_array_equal(loaded.codes, index.codes)


@pytest.mark.parametrize("weights,match", [([0, 1], "view_weights"), ([1.5], "view_weights"),
                                           ([], "view_weights")])
def test_a_file_with_bad_view_weights_is_refused_by_name(tmp_path, weights, match):
  path = tmp_path / "bad.hidx"
  index = HammingIndex(16, view_weights=(1, 1))
  index.add(_views(6, 4, 2, 16))
  index.save(path)
  _rewrite_header(path, view_weights=weights)
  with pytest.raises(IndexFileError, match=f"{path}.*{match}"):
    HammingIndex.load(path)
  _rewrite_header(path, view_weights=[1, 1, 1])       # more views than the codes hold
  with pytest.raises(IndexFileError, match=f"{path}.*views=3"):
    HammingIndex.load(path)


@pytest.mark.parametrize("weights", [(), (0,), (1, -2), (1.0, 2), (True,), "31", None])
def test_bad_view_weights_are_named(weights):
  with pytest.raises(ValueError, match="view_weights"):
    HammingIndex(16, view_weights=weights)


def test_codes_of_the_wrong_shape_are_named():
  index = HammingIndex(12, view_weights=(2, 1, 1))
  with pytest.raises(ValueError, match=r"3 views an item; expected \(n, 3, 2\)"):
    index.add(brute.codes(np.random.default_rng(0), 5, 12))
  with pytest.raises(ValueError, match=r"expected \(n, 3, 2\).*got shape \(5, 2, 2\)"):
    index.add(_views(0, 5, 2, 12))
  bad = _views(0, 5, 3, 12)
  bad[2, 1, 1] |= 0x80                                  # a padding bit set in one view
  with pytest.raises(ValueError, match="padding"):
    index.add(bad)
  with pytest.raises(ValueError, match="views 0..2"):
    index.view_codes(3)
  assert len(index) == 0                                # nothing half-added


def test_to_faiss_with_expanded_queries_gives_the_same_distances():
  pytest.importorskip("faiss")
  views = _views(7, 300, 4, 12)
  index = HammingIndex(12, view_weights=(3, 1, 1, 1))
  index.add(views)
  xq = brute.codes(np.random.default_rng(8), 6, 12)
  want_d, want_i = index.to_faiss().search(index.expand_queries(xq), 20)
  d, i = index.search(xq, 20)
  np.testing.assert_array_equal(d, want_d)
  np.testing.assert_array_equal(i, want_i)
