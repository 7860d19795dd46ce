"""search/layout.py: the tiled database layout keeps every code once and pads with what never wins."""
import numpy as np
import pytest

from deephash_jax.search import layout
from deephash_jax.search import packing


@pytest.mark.parametrize("n,num_bits,chunk_size,rows", [(1, 8, 64, 4), (1000, 48, 256, 8),
                                                          (3001, 130, 1024, None)])
def test_every_code_is_laid_out_once_in_index_order(n, num_bits, chunk_size, rows):
  codes = packing.pack_bits(np.random.default_rng(n).random((n, num_bits)) < 0.5)
  database = layout.prepare_database(codes, num_bits=num_bits, chunk_size=chunk_size,
                                     block_rows=rows)
  chunks = np.asarray(database.chunks)    # (chunks, words, tiles, rows, tile_cols)
  g, w, tiles, r, cols = chunks.shape
  # Back to (index, words): block b = tile * cols + col holds indices b * rows + row.
  items = chunks.transpose(0, 2, 4, 3, 1).reshape(g * tiles * cols * r, w)
  words = packing.to_words(codes)
  np.testing.assert_array_equal(items[:n], words)
  assert not items[n:].any()              # padding: zero codes, masked by num_codes
  assert database.num_codes == n and database.num_bits == num_bits
  assert database.chunk_items == tiles * cols * r and database.rows == r


def test_block_rows_shrink_for_long_codes_and_small_chunks():
  assert layout.default_block_rows(32) == 32
  assert layout.default_block_rows(256) == 8          # 8 words a code: a compact pass 1
  assert layout.default_block_rows(32, chunk_items=1000) == 4


def test_query_batches_have_few_shapes_and_cover_every_query():
  codes = packing.pack_bits(np.ones((37, 16), bool))
  batches = list(layout.query_batches(codes, 16, 16))
  assert [(a, b) for a, b, _ in batches] == [(0, 16), (16, 32), (32, 37)]
  assert {words.shape for _, _, words in batches} == {(16, 1)}
  dist, index = layout.empty_results(2, 3, 16)
  assert (dist == 17).all() and (index == -1).all() and index.dtype == np.int64
