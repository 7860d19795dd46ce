"""Packed binary codes: the one layout every search, index and metric uses.

Codes are packed to bytes with ``np.packbits(bits, axis=1, bitorder="little")`` (faiss
``IndexBinaryFlat``'s layout): bit ``j`` of a code is bit ``j % 8`` of byte ``j // 8``, and the
padding bits of the last byte are zero.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def num_bytes(num_bits: int) -> int:
  """Bytes per packed code: ceil(num_bits / 8)."""
  return (num_bits + 7) // 8


def check_num_bits(num_bits) -> int:
  return check_positive("num_bits", num_bits)


def pack_bits(codes) -> np.ndarray:
  """Packs (N, K) codes to uint8 (N, ceil(K/8)), faiss bit order.

  Args:
    codes: bool array, or a real array whose bit is ``code > 0`` (+-1 codes,
      continuous pre-binarisation codes, or 0/1 integers).

  Returns:
    uint8 array; bit j of a code is bit ``j % 8`` (little-endian) of byte ``j // 8``,
    the padding bits of the last byte are zero.
  """
  codes = np.asarray(codes)
  if codes.ndim != 2:
    raise ValueError(f"codes must be 2-D (num_codes, num_bits), got shape {codes.shape}")
  if codes.dtype != np.bool_:
    # jnp.issubdtype also knows the ml_dtypes floats (bfloat16 codes from a model).
    if not (jnp.issubdtype(codes.dtype, jnp.integer) or jnp.issubdtype(codes.dtype, jnp.floating)):
      raise TypeError(f"codes must be bool, integer or floating, got dtype {codes.dtype}")
    codes = codes > 0
  return np.packbits(codes, axis=1, bitorder="little")


def unpack_bits(packed, num_bits: int) -> np.ndarray:
  """Inverse of ``pack_bits``: uint8 (N, ceil(K/8)) -> bool (N, num_bits)."""
  num_bits = check_num_bits(num_bits)
  packed = check_packed("packed", packed, num_bits)
  return np.unpackbits(packed, axis=1, count=num_bits, bitorder="little").astype(bool)


def check_packed(name: str, codes, num_bits: int | None) -> np.ndarray:
  """Validates packed codes: uint8, 2-D, and, given num_bits, ceil(num_bits/8) bytes with zero
  padding bits."""
  codes = np.asarray(codes)
  if codes.dtype != np.uint8:
    raise TypeError(f"{name} must be packed uint8 codes (see pack_bits), got dtype {codes.dtype}")
  if codes.ndim != 2:
    raise ValueError(f"{name} must be 2-D (num_codes, num_bytes), got shape {codes.shape}")
  if num_bits is None:
    return codes
  if codes.shape[1] != num_bytes(num_bits):
    raise ValueError(f"{name} has {codes.shape[1]} bytes per code but num_bits={num_bits} "
                     f"needs {num_bytes(num_bits)}")
  spare = 8 * codes.shape[1] - num_bits
  if spare and codes.shape[0] and np.any(codes[:, -1] >> (8 - spare)):
    raise ValueError(f"{name} has nonzero padding bits beyond num_bits={num_bits}; "
                     "pack codes with pack_bits")
  return codes




def to_words(packed: np.ndarray, word_bits: int = 32) -> np.ndarray:
  """(N, B) uint8 -> (N, ceil(B * 8 / word_bits)) uint32 or uint64 words, zero-padded (zero
  padding adds no distance). The jitted kernels take 32-bit words, NumPy's popcount 64."""
  dtype = {32: np.uint32, 64: np.uint64}[word_bits]
  word_bytes = word_bits // 8
  n, width = packed.shape
  num_words = max(1, -(-width // word_bytes))
  if width == word_bytes * num_words:
    return np.ascontiguousarray(packed).view(dtype)
  padded = np.zeros((n, word_bytes * num_words), np.uint8)
  padded[:, :width] = packed
  return padded.view(dtype)


def distance_dtype(max_value: int):
  """The smallest unsigned NumPy dtype that holds Hamming distances up to ``max_value``
  (callers that mark missing results with ``num_bits + 1`` pass that)."""
  for dtype in (np.uint8, np.uint16, np.uint32):
    if max_value <= np.iinfo(dtype).max:
      return dtype
  raise ValueError(f"distances up to {max_value} do not fit 32 bits")


def is_positive_int(value) -> bool:
  """A whole number >= 1 (a Python or NumPy int, not a bool)."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def check_positive(name, value) -> int:
  if not is_positive_int(value):
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  return int(value)
