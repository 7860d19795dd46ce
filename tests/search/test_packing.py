"""search/packing.py: the faiss bit layout, and the checks of packed codes."""
import jax
import numpy as np
import pytest

from deephash_jax.search import packing


def test_pack_bits_faiss_order_and_padding():
  bits = np.zeros((2, 12), bool)
  bits[0, 0] = bits[0, 9] = bits[1, 11] = True
  packed = packing.pack_bits(bits)
  np.testing.assert_array_equal(packed, [[0b1, 0b10], [0, 0b1000]])
  np.testing.assert_array_equal(packing.unpack_bits(packed, 12), bits)


@pytest.mark.parametrize("make", [
    lambda b: np.where(b, 1.0, -1.0).astype(np.float32),   # +-1 codes
    lambda b: np.where(b, 0.3, -2.0),                       # continuous
    lambda b: b.astype(np.int32),                           # 0/1 integers
    lambda b: jax.numpy.asarray(np.where(b, 1.0, -1.0)),    # jax arrays
    lambda b: jax.numpy.asarray(np.where(b, 0.5, -0.5), jax.numpy.bfloat16),
])
def test_pack_bits_accepts_sign_codes(make):
  bits = np.random.default_rng(0).random((5, 20)) < 0.5
  np.testing.assert_array_equal(packing.pack_bits(make(bits)), packing.pack_bits(bits))


def test_pack_bits_bad_input():
  with pytest.raises(ValueError, match="codes must be 2-D"):
    packing.pack_bits(np.zeros(8))
  with pytest.raises(TypeError, match="complex"):
    packing.pack_bits(np.zeros((2, 8), np.complex64))



@pytest.mark.parametrize("word_bits", [32, 64])
@pytest.mark.parametrize("num_bytes", [1, 3, 4, 6, 8, 9])
def test_to_words_keeps_the_bits_and_pads_with_zeros(word_bits, num_bytes):
  packed = np.random.default_rng(num_bytes).integers(0, 256, (5, num_bytes), dtype=np.uint8)
  words = packing.to_words(packed, word_bits)
  assert words.dtype == {32: np.uint32, 64: np.uint64}[word_bits]
  back = words.view(np.uint8)
  np.testing.assert_array_equal(back[:, :num_bytes], packed)
  assert not back[:, num_bytes:].any()


def test_distance_dtype_holds_its_maximum():
  assert packing.distance_dtype(255) == np.uint8
  assert packing.distance_dtype(256) == np.uint16
  assert packing.distance_dtype(65536) == np.uint32
  with pytest.raises(ValueError, match="do not fit"):
    packing.distance_dtype(2 ** 40)
