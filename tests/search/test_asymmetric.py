"""search/asymmetric.py and HammingIndex.search_asymmetric against loops in plain NumPy."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from deephash_jax.search import asymmetric
from deephash_jax.search import hamming
from deephash_jax.search import packing
from deephash_jax.search.index import HammingIndex
from tests.search import brute


def _reference(query, db_bits, k, candidates):
  """Per query: the Hamming top-`candidates` (stable, ties to the lower position), ordered by the
  loop's asymmetric distance, then by their place among the candidates; the first k."""
  hamming_d = (np.asarray(query > 0)[:, None, :] != db_bits[None, :, :]).sum(-1)
  out_d, out_i = [], []
  for row, q in enumerate(query):
    pool = list(np.argsort(hamming_d[row], kind="stable")[:candidates])
    pool.sort(key=lambda p: brute.asymmetric_distance(q, db_bits[p]))   # stable: Hamming order kept
    chosen = pool[:k]
    out_d.append([brute.asymmetric_distance(q, db_bits[p]) for p in chosen]
                 + [np.inf] * (k - len(chosen)))
    out_i.append(chosen + [-1] * (k - len(chosen)))
  return np.array(out_d), np.array(out_i)


def _data(seed=0, nq=6, nd=80, num_bits=20):
  rng = np.random.default_rng(seed)
  db_bits = rng.random((nd, num_bits)) < 0.5
  db_bits[nd // 2:] = db_bits[:nd - nd // 2]          # every code twice: exact ties
  # Queries near database codes, with unsure bits (near 0) and quantized magnitudes, so that
  # different codes can tie exactly too.
  signs = np.where(db_bits[rng.integers(0, nd, nq)], 1.0, -1.0)
  magnitude = rng.choice([0.0, 0.125, 0.25, 0.5, 1.0], size=(nq, num_bits))
  query = (signs * magnitude * np.where(rng.random((nq, num_bits)) < 0.2, -1, 1))
  return query.astype(np.float32), db_bits


@pytest.mark.parametrize("candidates", [5, 17, 80, 200])
def test_search_asymmetric_matches_the_loop_reference(candidates):
  query, db_bits = _data()
  index = HammingIndex(20)
  index.add(packing.pack_bits(db_bits))
  k = min(5, candidates)
  d, i = index.search_asymmetric(query, k, candidates=candidates)
  want_d, want_i = _reference(query, db_bits, k, candidates)
  np.testing.assert_array_equal(i, want_i)
  np.testing.assert_array_equal(d, want_d)


def test_equal_codes_tie_to_the_lower_position_and_ids_are_mapped():
  query, db_bits = _data(seed=1)
  ids = np.arange(80) * 3 + 1000
  index = HammingIndex(20)
  index.add(packing.pack_bits(db_bits), ids=ids)
  d, i = index.search_asymmetric(query, 80, candidates=80)
  positions = (i - 1000) // 3
  assert np.all(np.diff(d, axis=1) >= 0)
  for row in positions:
    for a, b in zip(row[:-1], row[1:]):
      if np.array_equal(db_bits[a], db_bits[b]):   # the same code: the lower position first
        assert a < b


def test_sign_queries_rank_as_the_hamming_search():
  """+-1 queries: the asymmetric distance is the Hamming distance, the order the same."""
  rng = np.random.default_rng(2)
  xb = brute.codes(rng, 120, 24)
  query = np.where(rng.random((7, 24)) < 0.5, 1.0, -1.0)
  index = HammingIndex(24)
  index.add(xb)
  want_d, want_i = hamming.search(packing.pack_bits(query), xb, 10, num_bits=24)
  d, i = index.search_asymmetric(query, 10, candidates=120)
  np.testing.assert_array_equal(i, want_i)
  np.testing.assert_array_equal(d, want_d.astype(np.float64))


def test_distances_are_exact_in_any_order():
  """Rounded weights: the sum does not depend on the order of the bits."""
  rng = np.random.default_rng(3)
  w = asymmetric.query_weights(np.tanh(rng.normal(size=(4, 64))))
  assert np.all(np.abs(w) * 2**20 == np.round(np.abs(w) * 2**20))
  b = np.where(rng.random((9, 64)) < 0.5, 1.0, -1.0)
  perm = rng.permutation(64)
  np.testing.assert_array_equal(asymmetric.distances(w, b),
                                asymmetric.distances(w[:, perm], b[:, perm]))
  loop = [[brute.asymmetric_distance(q, bits > 0) for bits in b] for q in w]
  np.testing.assert_allclose(asymmetric.distances(w, b), loop, rtol=0, atol=1e-12)


def test_missing_results_and_empty_index():
  query, db_bits = _data(nd=4)
  index = HammingIndex(20)
  index.add(packing.pack_bits(db_bits))
  d, i = index.search_asymmetric(query, 6, candidates=10)
  assert np.all(i[:, 4:] == -1) and np.all(np.isinf(d[:, 4:]))
  assert sorted(i[0, :4]) == [0, 1, 2, 3]
  d, i = HammingIndex(20).search_asymmetric(query, 3)
  assert np.all(i == -1) and np.all(np.isinf(d))


@pytest.mark.parametrize("kwargs,codes_shape,match", [
    (dict(k=5, candidates=4), (2, 20), "candidates=4: must be at least k=5"),
    (dict(k=0), (2, 20), "k must be a positive int"),
    (dict(k=1), (2, 16), r"shape \(nq, 20\)"),
    (dict(k=1), (20,), r"shape \(nq, 20\)"),
])
def test_bad_arguments_are_named(kwargs, codes_shape, match):
  index = HammingIndex(20)
  index.add(packing.pack_bits(np.zeros((3, 20), bool)))
  with pytest.raises(ValueError, match=match):
    index.search_asymmetric(np.zeros(codes_shape, np.float32), **kwargs)


def test_non_finite_query_is_refused():
  index = HammingIndex(20)
  index.add(packing.pack_bits(np.zeros((3, 20), bool)))
  query = np.zeros((1, 20), np.float32)
  query[0, 3] = np.nan
  with pytest.raises(ValueError, match="non-finite"):
    index.search_asymmetric(query, 1)


@pytest.mark.parametrize("num_bits", [8, 13, 48])
def test_byte_tables_sum_to_the_loop_distance(num_bits):
  rng = np.random.default_rng(num_bits)
  w = asymmetric.query_weights(np.tanh(rng.normal(size=(3, num_bits))))
  bits = rng.random((11, num_bits)) < 0.5
  packed = packing.pack_bits(bits)
  tables = asymmetric.byte_tables(w)
  assert tables.shape == (3, packing.num_bytes(num_bits), 256)
  got = np.array([[sum(tables[q, j, code[j]] for j in range(len(code))) for code in packed]
                  for q in range(3)])
  want = [[brute.asymmetric_distance(q, b) for b in bits] for q in w]
  np.testing.assert_array_equal(got, want)   # exact: multiples of 2**-20


def _candidates(rng, nq, nd, c, missing=0.1):
  """Distinct positions per row in a random order, some -1 (missing) among them."""
  rows = np.array([rng.permutation(nd)[:c] for _ in range(nq)])
  return np.where(rng.random(rows.shape) < missing, -1, rows)


@pytest.mark.parametrize("nq,c,num_bits", [(1, 7, 20), (3, 40, 48), (300, 25, 13)])
def test_jitted_rerank_matches_the_loop(nq, c, num_bits):
  """Every query size (padded to a power of two, several calls past QUERY_CHUNK), missing
  candidates anywhere in a row, exact ties: the loop's distances, its stable order."""
  rng = np.random.default_rng(nq)
  query, db_bits = _data(seed=nq, nq=nq, nd=60, num_bits=num_bits)
  packed = packing.pack_bits(db_bits)
  candidates = _candidates(rng, nq, 60, c)
  d, i = asymmetric.rerank(query, packed, candidates, num_bits=num_bits)
  for row in range(nq):
    pool = [p for p in candidates[row] if p >= 0]
    pool.sort(key=lambda p: brute.asymmetric_distance(query[row], db_bits[p]))   # stable
    want_d = [brute.asymmetric_distance(query[row], db_bits[p]) for p in pool]
    np.testing.assert_array_equal(i[row], pool + [-1] * (c - len(pool)))
    np.testing.assert_array_equal(d[row], want_d + [np.inf] * (c - len(pool)))
  td, ti = asymmetric.rerank_tables(query, packed, candidates, num_bits=num_bits)
  np.testing.assert_array_equal(d, td)
  np.testing.assert_array_equal(i, ti)


def test_jitted_rerank_splits_long_candidate_lists(monkeypatch):
  """Fewer queries a call when candidates * num_bits is large: the same results."""
  rng = np.random.default_rng(5)
  query, db_bits = _data(seed=5, nq=9, nd=200, num_bits=24)
  packed = packing.pack_bits(db_bits)
  candidates = _candidates(rng, 9, 200, 150)
  want = asymmetric.rerank(query, packed, candidates, num_bits=24)
  calls = []
  jitted = asymmetric._distances_jit
  monkeypatch.setattr(asymmetric, "_CALL_ELEMENTS", 2 * 150 * 24)
  monkeypatch.setattr(asymmetric, "_distances_jit",
                      lambda *a: calls.append(a[0].shape) or jitted(*a))
  got = asymmetric.rerank(query, packed, candidates, num_bits=24)
  assert calls == [(2, 24)] * 5
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)


def test_large_query_weights_take_the_exact_tables(monkeypatch):
  """A query whose sum of |q_i| would overflow the int32 sums: the NumPy tables, still exact."""
  query, db_bits = _data(seed=7, nq=4, nd=30, num_bits=40)
  query = query * 256.0           # sums of 3,600-5,200 > 2**11
  assert np.abs(query).sum(axis=1).max() >= asymmetric.MAX_JIT_WEIGHT
  candidates = np.tile(np.arange(30), (4, 1))
  monkeypatch.setattr(asymmetric, "_distances_jit", None)     # would fail if called
  d, i = asymmetric.rerank(query, packing.pack_bits(db_bits), candidates, num_bits=40)
  for row in range(4):
    want = sorted(range(30), key=lambda p: brute.asymmetric_distance(query[row], db_bits[p]))
    np.testing.assert_array_equal(i[row], want)
    np.testing.assert_array_equal(d[row], [brute.asymmetric_distance(query[row], db_bits[p])
                                           for p in want])


def test_jitted_rerank_is_exact_at_its_largest_sums():
  """2,047 bits of weight 1 (tanh codes' limit): sums up to 2047 * 2**20 quanta, under int32's
  maximum; the distances are the Hamming distances, the order theirs."""
  rng = np.random.default_rng(8)
  db_bits = rng.random((12, 2047)) < 0.5
  db_bits[0] = ~db_bits[1]                                     # the farthest code: 2,047
  query = np.where(db_bits[[1, 0]], 1.0, -1.0)
  candidates = np.tile(np.arange(12), (2, 1))
  d, i = asymmetric.rerank(query, packing.pack_bits(db_bits), candidates, num_bits=2047)
  hamming_d = (db_bits[None, :, :] != (query > 0)[:, None, :]).sum(-1)
  np.testing.assert_array_equal(i, np.argsort(hamming_d, axis=1, kind="stable"))
  np.testing.assert_array_equal(d, np.sort(hamming_d, axis=1))
  assert d[0, -1] == 2047 and d[1, -1] == 2047


def test_the_rerank_benchmark_checks_both_rerankings_agree(tmp_path):
  """benchmarks/rerank_benchmark.py on a tiny database: a row per depth, each checked identical;
  the views' table, each checked against NumPy's weighted sums."""
  out = tmp_path / "rerank.md"
  result = subprocess.run(
      [sys.executable, "benchmarks/rerank_benchmark.py", "--database_sizes=400", "--bits=20",
       "--depths=5,60", "--num_queries=40", "--repeats=1", "--view_weights=3,1",
       f"--markdown={out}"],
      cwd=pathlib.Path(__file__).resolve().parents[2], capture_output=True, text=True,
      timeout=600, env={**os.environ, "XLA_FLAGS": ""})
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line for line in out.read_text().splitlines() if line.startswith("| 400 |")]
  assert len(rows) == 2 + 3 and all(row.endswith("| yes |") for row in rows)
  # The views' table: one 20-bit code (one 32-bit word scanned), 2 views weighted 3 and 1 (a
  # word each, weighed, not repeated), one 40-bit code (two words).
  assert [row.split(" | ")[2:4] for row in rows[2:]] == [
      ["one code", "4"], ["views 3,1", "8"], ["one code of 40 bits", "8"]]
