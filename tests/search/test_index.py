"""search/index.py: HammingIndex search, metadata, file format (v3; v2, v1 read), faiss export."""
import hashlib
import json
import struct

import numpy as np
import pytest

from deephash_jax.search import hamming
from deephash_jax.search import packing
from deephash_jax.search import radius
from deephash_jax.search.index import FORMAT_VERSION, HammingIndex, IndexFileError


def _codes(seed, n, num_bits):
  return packing.pack_bits(np.random.default_rng(seed).random((n, num_bits)) < 0.5)


def _filled(num_bits=24, n=300, **add_kwargs):
  index = HammingIndex(num_bits, model_id="enc-test@step10")
  index.add(_codes(0, n, num_bits), **add_kwargs)
  return index


def test_search_matches_hamming_search_and_maps_ids():
  xb, xq = _codes(0, 300, 24), _codes(1, 7, 24)
  ids = np.arange(300) * 10 + 5
  index = HammingIndex(24)
  index.add(xb, ids=ids)
  want_d, want_pos = hamming.search(xq, xb, 12, num_bits=24)
  d, i = index.search(xq, 12)
  np.testing.assert_array_equal(d, want_d)
  np.testing.assert_array_equal(i, ids[want_pos])
  d, i = index.search(xq, 400)  # k > ntotal: missing results keep id -1
  assert np.all(i[:, 300:] == -1) and np.all(d[:, 300:] == 25)
  want = radius.range_search(xq, xb, 8, num_bits=24)
  lims, d, i = index.range_search(xq, 8)
  np.testing.assert_array_equal(lims, want[0])
  np.testing.assert_array_equal(d, want[1])
  np.testing.assert_array_equal(i, ids[want[2]])


def test_add_in_two_batches_equals_add_once(tmp_path):
  xb, xq = _codes(0, 300, 24), _codes(1, 5, 24)
  labels = np.arange(300) % 7
  paths = [f"img/{j}.png" for j in range(300)]
  once = HammingIndex(24, model_id="m")
  once.add(xb, labels=labels, paths=paths)
  twice = HammingIndex(24, model_id="m")
  twice.add(xb[:120], labels=labels[:120], paths=paths[:120])
  twice.search(xq, 3)  # a search between adds must not go stale
  twice.add(xb[120:], labels=labels[120:], paths=paths[120:])
  for a, b in zip(once.search(xq, 9), twice.search(xq, 9)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(once.ids, twice.ids)
  np.testing.assert_array_equal(once.labels, twice.labels)
  assert once.paths == twice.paths
  once.save(tmp_path / "once.idx")
  twice.save(tmp_path / "twice.idx")
  assert (tmp_path / "once.idx").read_bytes() == (tmp_path / "twice.idx").read_bytes()


def test_add_metadata_must_be_consistent():
  index = _filled(labels=np.zeros(300, int))
  with pytest.raises(ValueError, match="labels must be given"):
    index.add(_codes(2, 3, 24))
  with pytest.raises(ValueError, match="ids=... given but earlier items were added without"):
    index.add(_codes(2, 3, 24), ids=[1, 2, 3], labels=[0, 0, 0])
  with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
    index.add(_codes(2, 3, 24), labels=[0, 0])
  with pytest.raises(ValueError, match="non-negative"):
    HammingIndex(24).add(_codes(2, 3, 24), ids=[0, -1, 2])
  with pytest.raises(ValueError, match="codes_packed has 4 bytes.*num_bits=24"):
    index.add(np.zeros((2, 4), np.uint8), labels=[0, 0])
  assert index.ntotal == 300


@pytest.mark.parametrize("num_bits", [12, 64])
def test_save_load_round_trip(tmp_path, num_bits):
  index = HammingIndex(num_bits, model_id="enc-v2")
  index.add(_codes(0, 200, num_bits), ids=np.arange(200) + 1000, labels=np.arange(200) % 3,
            paths=[f"ümlaut/{j}.jpg" for j in range(200)])
  path = tmp_path / "codes.hidx"
  index.save(path)
  loaded = HammingIndex.load(path, expected_model_id="enc-v2")
  assert (loaded.num_bits, loaded.model_id, loaded.ntotal) == (num_bits, "enc-v2", 200)
  assert loaded.metadata == {}
  np.testing.assert_array_equal(loaded.codes, index.codes)
  np.testing.assert_array_equal(loaded.ids, index.ids)
  np.testing.assert_array_equal(loaded.labels, index.labels)
  assert loaded.paths == index.paths
  xq = _codes(1, 6, num_bits)
  for a, b in zip(index.search(xq, 10), loaded.search(xq, 10)):
    np.testing.assert_array_equal(a, b)
  loaded.add(_codes(3, 2, num_bits), ids=[1, 2], labels=[0, 0], paths=["a", "b"])
  assert loaded.ntotal == 202


def test_metadata_is_kept_in_the_file(tmp_path):
  metadata = {"class_names": ["T-shirt/top", "Trouser"], "split": "gallery", "items": [3, 4],
              "step": 12}
  index = HammingIndex(16, model_id="m", metadata=metadata)
  index.add(_codes(0, 2, 16), labels=[0, 1])
  index.save(tmp_path / "i.hidx")
  assert not (tmp_path / "i.hidx.json").exists()     # no sidecar
  assert HammingIndex.load(tmp_path / "i.hidx").metadata == metadata
  with pytest.raises(TypeError, match="JSON-serialisable"):
    HammingIndex(16, metadata={"bad": object()})


def test_a_version_1_file_loads_with_the_metadata_beside_it(tmp_path):
  """Version 1 kept the metadata in `<index>.json` next to the index file."""
  index = HammingIndex(16, model_id="m")
  index.add(_codes(0, 5, 16), labels=np.arange(5) % 2)
  path = tmp_path / "old.hidx"
  index.save(path)
  data = path.read_bytes()
  prefix = struct.Struct("<8sIQ32s")
  magic, _, header_nbytes, _ = prefix.unpack_from(data)
  header = json.loads(data[prefix.size:prefix.size + header_nbytes])
  del header["metadata"]
  header["format_version"] = 1
  header_bytes = json.dumps(header, sort_keys=True).encode()
  path.write_bytes(prefix.pack(magic, 1, len(header_bytes), hashlib.sha256(header_bytes).digest())
                   + header_bytes + data[prefix.size + header_nbytes:])
  assert HammingIndex.load(path).metadata == {}
  (tmp_path / "old.hidx.json").write_text(json.dumps({"split": "gallery"}))
  loaded = HammingIndex.load(path)
  assert loaded.metadata == {"split": "gallery"}
  np.testing.assert_array_equal(loaded.codes, index.codes)


def test_empty_index_round_trip(tmp_path):
  HammingIndex(32, model_id="x").save(tmp_path / "empty")
  loaded = HammingIndex.load(tmp_path / "empty")
  assert loaded.ntotal == 0 and loaded.model_id == "x"
  d, i = loaded.search(_codes(0, 2, 32), 3)
  assert np.all(i == -1) and np.all(d == 33)


@pytest.fixture
def saved(tmp_path):
  path = tmp_path / "index.hidx"
  _filled(labels=np.arange(300) % 5, paths=[str(j) for j in range(300)]).save(path)
  return path


def test_truncated_file_raises_naming_the_file(saved):
  data = saved.read_bytes()
  for size in (0, 5, 30, 60, len(data) // 2, len(data) - 1):
    saved.write_bytes(data[:size])
    with pytest.raises(IndexFileError, match=f"{saved}.*truncated"):
      HammingIndex.load(saved)
  saved.write_bytes(data + b"\0")
  with pytest.raises(IndexFileError, match="trailing bytes"):
    HammingIndex.load(saved)


def test_flipped_byte_raises_naming_the_file(saved):
  data = saved.read_bytes()
  for position in (0, 60, 100, len(data) - 4000, len(data) - 1):
    altered = bytearray(data)
    altered[position] ^= 0x10
    saved.write_bytes(bytes(altered))
    with pytest.raises(IndexFileError, match=str(saved)):
      HammingIndex.load(saved)


def test_newer_format_version_raises(saved):
  data = bytearray(saved.read_bytes())
  struct.pack_into("<I", data, 8, FORMAT_VERSION + 1)
  saved.write_bytes(bytes(data))
  with pytest.raises(IndexFileError, match=f"format version {FORMAT_VERSION + 1}.*newer"):
    HammingIndex.load(saved)


def test_wrong_model_id_raises(saved):
  with pytest.raises(IndexFileError, match="expected_model_id 'other'"):
    HammingIndex.load(saved, expected_model_id="other")


@pytest.mark.parametrize("num_bits", [12, 48])
def test_to_faiss_gives_same_distances(num_bits):
  pytest.importorskip("faiss")
  index = _filled(num_bits=num_bits, n=500)
  xq = _codes(1, 8, num_bits)
  faiss_index = index.to_faiss()
  assert faiss_index.ntotal == 500
  want_d, want_i = faiss_index.search(xq, 20)
  d, i = index.search(xq, 20)
  np.testing.assert_array_equal(d, want_d)
  np.testing.assert_array_equal(i, index.ids[want_i])
