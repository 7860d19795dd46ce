"""HammingIndex: the persistent index of packed codes that users keep and search.

Catalogue views: an item may be indexed by several codes, its own image's and renderings of it
(``deephash index --view_weights=5,1,1,1``, serve/catalogue.py), and is then ranked by the
weighted sum of their distances to the query: ``view_weights`` (whole numbers, one per view) are
the weights. The scan stays the one packed Hamming scan: each view is laid out on whole 32-bit
words side by side, the query tiled to match, and each word's popcount weighed by its view's
weight (layout.py ``word_weights``), so the scan reads each view once. The asymmetric re-ranking
and ``to_faiss`` read each view repeated by its weight instead: the Hamming distance of those
long codes is the same weighted sum, and so is the asymmetric one, a sum over bits too.

File format (version 3), little-endian, written atomically (temp file + rename)::

  magic          8 bytes   b"DHHIDX\\x00\\x01"
  format_version uint32    read before anything else, so newer files fail clearly
  header_nbytes  uint64
  header_sha256  32 bytes  sha256 of the header bytes
  header         JSON: format_version, num_bits, model_id, count, custom_ids, view_weights,
                 metadata (a JSON object: what the catalogue says about its entries, e.g.
                 class names, the split and the model's workdir), array table (name, dtype,
                 shape, offset, nbytes), payload_nbytes, payload_sha256
  payload        the arrays back to back: codes uint8 (count, views * ceil(num_bits/8)),
                 ids int64 (count,), then optional labels int64 (count,) and
                 paths (UTF-8 JSON list)

Every byte is covered by a check: the magic, the version, the header checksum,
the payload size and the payload checksum. A truncated or altered file raises
``IndexFileError`` naming the file; it never loads. Version 2 files (one code an item)
and version 1 files (no metadata in the header; it lay in a ``<index>.json`` file
beside them) still load.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Sequence

import numpy as np

from deephash_jax.search import asymmetric
from deephash_jax.search import hamming
from deephash_jax.search import layout
from deephash_jax.search import packing
from deephash_jax.search import radius as radius_lib

__all__ = ["FORMAT_VERSION", "HammingIndex", "IndexFileError", "check_view_weights"]

FORMAT_VERSION = 3
_MAGIC = b"DHHIDX\x00\x01"
# Hamming candidates per query that search_asymmetric re-ranks (experiments/graded_codes/README.md,
# "The asymmetric ranking as a re-ranking").
DEFAULT_CANDIDATES = 100
_PREFIX = struct.Struct("<8sIQ32s")  # magic, format_version, header_nbytes, header_sha256


class IndexFileError(ValueError):
  """An index file is missing, truncated, corrupted, or from a newer version."""


class HammingIndex:
  """Exact Hamming index over packed codes, with optional ids, labels and paths.

  ``search`` and ``range_search`` follow ``deephash_jax.hamming`` (faiss
  contracts, ties broken by insertion order) but return the item *ids*: the ids
  given to ``add``, or the insertion positions 0, 1, ... when none were given.
  Missing neighbours have id -1, so ids must be non-negative.

  Args:
    num_bits: code length in bits.
    model_id: identifies the encoder that produced the codes (e.g. the checkpoint
      name and step); saved with the index and checked by ``load`` on request,
      since codes of different models are not comparable.
    metadata: a JSON-serialisable dict saved with the index (e.g. class names,
      the split, the workdir of the model); ``HammingIndex.load`` returns it.
    view_weights: whole weights > 0, one per code an item has (see the module
      docstring); the default, one code an item.
    chunk_size, block_rows: search layout knobs (see ``hamming.search``).
  """

  def __init__(self, num_bits: int, model_id: str = "", *, metadata: dict | None = None,
               view_weights: Sequence[int] = (1,),
               chunk_size: int = layout.DEFAULT_CHUNK_SIZE,
               block_rows: int | None = None):
    self.num_bits = packing.check_num_bits(num_bits)
    if not isinstance(model_id, str):
      raise TypeError(f"model_id must be a str, got {type(model_id).__name__}")
    self.model_id = model_id
    metadata = dict(metadata or {})
    try:
      json.dumps(metadata)
    except (TypeError, ValueError) as e:
      raise TypeError(f"metadata must be JSON-serialisable: {e}") from e
    self.metadata = metadata
    self.view_weights = check_view_weights(view_weights)
    self.chunk_size = chunk_size
    self.block_rows = block_rows
    self._codes = np.zeros((0, self.views * packing.num_bytes(self.num_bits)), np.uint8)
    self._ids = np.zeros(0, np.int64)
    self._labels: np.ndarray | None = None
    self._paths: list[str] | None = None
    self._custom_ids = False
    self._prepared: layout.PreparedDatabase | None = None
    self._repeated: np.ndarray | None = None

  # ----------------------------------------------------------------------- contents

  @property
  def views(self) -> int:
    """Codes per item."""
    return len(self.view_weights)

  @property
  def max_distance(self) -> int:
    """The largest distance an item can have: sum(view_weights) * num_bits."""
    return sum(self.view_weights) * self.num_bits

  @property
  def _view_words(self) -> int:
    """32-bit words a view's code takes in the scan."""
    return -(-packing.num_bytes(self.num_bits) // 4)

  @property
  def scanned_bytes(self) -> int:
    """Bytes the Hamming scan reads an item: each view's code on whole 32-bit words."""
    return 4 * self.views * self._view_words

  def __len__(self) -> int:
    return self._codes.shape[0]

  @property
  def ntotal(self) -> int:
    """Number of items (faiss name)."""
    return len(self)

  @property
  def codes(self) -> np.ndarray:
    """uint8 (ntotal, views * ceil(num_bits/8)) packed codes in insertion order, an item's
    views side by side (one view: (ntotal, ceil(num_bits/8)), each item's code)."""
    return self._codes

  def view_codes(self, view: int = 0) -> np.ndarray:
    """uint8 (ntotal, ceil(num_bits/8)): every item's code of one view (0: the first given)."""
    if not 0 <= view < self.views:
      raise ValueError(f"view={view}: the index has views 0..{self.views - 1}")
    width = packing.num_bytes(self.num_bits)
    return self._codes[:, view * width:(view + 1) * width]

  @property
  def ids(self) -> np.ndarray:
    """int64 (ntotal,) item ids, in insertion order."""
    return self._ids

  @property
  def labels(self) -> np.ndarray | None:
    """int64 (ntotal,) labels, or None when added without labels."""
    return self._labels

  @property
  def paths(self) -> list[str] | None:
    """Item paths (e.g. image files), or None when added without paths."""
    return self._paths

  def __repr__(self):
    views = "" if self.views == 1 else f", view_weights={self.view_weights}"
    return (f"HammingIndex(num_bits={self.num_bits}, model_id={self.model_id!r}, "
            f"ntotal={self.ntotal}{views})")

  def add(self, codes_packed, ids=None, labels=None, paths: Sequence[str] | None = None):
    """Appends packed codes and their metadata.

    codes_packed: uint8 (n, ceil(num_bits/8)) for an index of one view, or (n, views,
    ceil(num_bits/8)): each item's codes in the order of ``view_weights``.
    ids, labels and paths are given for all items or for none: the first call
    decides (an empty index accepts either), later calls must match.
    """
    codes = self._check_views(codes_packed)
    n = codes.shape[0]
    fresh = len(self) == 0
    if ids is None:
      if self._custom_ids and not fresh:
        raise ValueError("ids must be given: earlier items were added with ids")
      new_ids = np.arange(len(self), len(self) + n, dtype=np.int64)
    else:
      if not (self._custom_ids or fresh):
        raise ValueError("ids=... given but earlier items were added without ids")
      new_ids = self._check_column("ids", ids, n)
      if new_ids.size and new_ids.min() < 0:
        raise ValueError(f"ids must be non-negative (-1 marks a missing result), "
                         f"got {int(new_ids.min())}")
    new_labels = None
    if labels is not None:
      if self._labels is None and not fresh:
        raise ValueError("labels=... given but earlier items were added without labels")
      new_labels = self._check_column("labels", labels, n)
    elif self._labels is not None and not fresh:
      raise ValueError("labels must be given: earlier items were added with labels")
    new_paths = None
    if paths is not None:
      if self._paths is None and not fresh:
        raise ValueError("paths=... given but earlier items were added without paths")
      new_paths = [str(p) for p in paths]
      if len(new_paths) != n:
        raise ValueError(f"paths has {len(new_paths)} entries for {n} codes")
    elif self._paths is not None and not fresh:
      raise ValueError("paths must be given: earlier items were added with paths")

    self._codes = np.concatenate([self._codes, codes])
    self._ids = np.concatenate([self._ids, new_ids])
    if fresh:
      self._custom_ids = ids is not None
      self._labels = None if new_labels is None else np.zeros(0, np.int64)
      self._paths = None if new_paths is None else []
    if new_labels is not None:
      self._labels = np.concatenate([self._labels, new_labels])
    if new_paths is not None:
      self._paths = self._paths + new_paths
    self._prepared = self._repeated = None  # re-laid out on the next search

  def _check_views(self, codes_packed) -> np.ndarray:
    """(n, views * B) from (n, views, B), or from (n, B) for one view; each view checked."""
    codes = np.asarray(codes_packed)
    width = packing.num_bytes(self.num_bits)
    if codes.ndim == 3:
      if codes.shape[1:] != (self.views, width):
        raise ValueError(f"codes_packed: expected (n, {self.views}, {width}) packed codes, "
                         f"{self.views} views of {self.num_bits} bits, got shape {codes.shape}")
      packing.check_packed("codes_packed", codes.reshape(-1, width), self.num_bits)
      return codes.reshape(len(codes), self.views * width)
    if self.views != 1:
      raise ValueError(f"codes_packed: this index has {self.views} views an item; expected "
                       f"(n, {self.views}, {width}) packed codes, got shape {codes.shape}")
    return packing.check_packed("codes_packed", codes, self.num_bits)

  @staticmethod
  def _check_column(name, values, n):
    values = np.asarray(values)
    if values.shape != (n,):
      raise ValueError(f"{name} must have shape ({n},) to match codes_packed, got {values.shape}")
    if not np.issubdtype(values.dtype, np.integer):
      raise TypeError(f"{name} must be integers, got dtype {values.dtype}")
    return values.astype(np.int64)

  # ------------------------------------------------------------------------- search

  def _scan_layout(self, packed: np.ndarray) -> np.ndarray:
    """(n, views * B) packed codes -> (n, views * 4 * ceil(B / 4)): each view on whole 32-bit
    words, its padding bits 0 (one view: unchanged; the scan pads its last word itself)."""
    if self.view_weights == (1,):
      return packed
    width = packing.num_bytes(self.num_bits)
    out = np.zeros((len(packed), self.views, 4 * self._view_words), np.uint8)
    out[:, :, :width] = packed.reshape(len(packed), self.views, width)
    return out.reshape(len(packed), -1)

  def _scan_queries(self, xq_packed) -> np.ndarray:
    """Packed queries as the scan compares them: laid out as one item's views, tiled."""
    xq = packing.check_packed("xq_packed", xq_packed, self.num_bits)
    return self._scan_layout(np.tile(xq, (1, self.views)))

  def _database(self) -> layout.PreparedDatabase:
    if self._prepared is None:
      if self.view_weights == (1,):
        bits, weights = self.num_bits, None
      else:
        words = self._view_words
        bits, weights = 32 * words * self.views, np.repeat(self.view_weights, words).tolist()
      self._prepared = layout.prepare_database(
          self._scan_layout(self._codes), num_bits=bits, chunk_size=self.chunk_size,
          block_rows=self.block_rows, word_weights=weights)
    return self._prepared

  @property
  def _repeated_bits(self) -> int:
    """Bits of the repeated codes: num_bits, or every repeated view's whole bytes."""
    if self.view_weights == (1,):
      return self.num_bits
    return 8 * packing.num_bytes(self.num_bits) * sum(self.view_weights)

  def _repeated_codes(self) -> np.ndarray:
    """uint8 (ntotal, sum(view_weights) * B): each view repeated by its weight (the codes of
    one view of weight 1 as they are), for the asymmetric re-ranking and faiss. Padding bits
    are 0 in these and in the queries."""
    if self._repeated is None:
      width = packing.num_bytes(self.num_bits)
      self._repeated = (self._codes if self.view_weights == (1,) else np.repeat(
          self._codes.reshape(len(self), self.views, width), self.view_weights,
          axis=1).reshape(len(self), -1))
    return self._repeated

  def expand_queries(self, xq_packed) -> np.ndarray:
    """Packed queries (nq, ceil(num_bits/8)) as the codes of ``to_faiss`` are laid out: tiled
    once per unit of view weight (unchanged for one view of weight 1)."""
    xq = packing.check_packed("xq_packed", xq_packed, self.num_bits)
    return xq if self.view_weights == (1,) else np.tile(xq, (1, sum(self.view_weights)))

  def _missing(self, dist, positions):
    """Missing results at max_distance + 1 (the scan pads at its own bound + 1)."""
    return np.where(positions >= 0, dist, self.max_distance + 1).astype(dist.dtype)

  def _to_ids(self, positions):
    return np.where(positions >= 0, self._ids[np.maximum(positions, 0)], -1) \
        if self._ids.size else positions

  def search(self, xq_packed, k: int):
    """Exact k-NN: (D int32 (nq, k), I int64 (nq, k) item ids), ties by insertion order.

    D is the Hamming distance (with several views: the weighted sum of the item's views'
    distances); missing results have distance max_distance + 1 and id -1."""
    dist, positions = hamming.search_prepared(self._scan_queries(xq_packed), self._database(), k)
    return self._missing(dist, positions), self._to_ids(positions)

  def hamming_distances(self, xq_packed, positions) -> np.ndarray:
    """int32 (nq, c): the distance ``search`` gives between query i and the item at insertion
    position positions[i, j] (-1: max_distance + 1), counted in NumPy."""
    xq = packing.check_packed("xq_packed", xq_packed, self.num_bits)
    positions = np.asarray(positions, np.int64)
    if positions.ndim != 2 or len(positions) != len(xq):
      raise ValueError(f"positions: expected ({len(xq)}, c) insertion positions, got shape "
                       f"{positions.shape}")
    if positions.size and positions.max() >= len(self):
      raise ValueError(f"positions: {int(positions.max())} is past the index's {len(self)} items")
    codes = self._codes.reshape(len(self), self.views, -1)[np.maximum(positions, 0)]
    per_view = np.bitwise_count(codes ^ xq[:, None, None, :]).sum(axis=-1, dtype=np.int32)
    dist = per_view @ np.asarray(self.view_weights, np.int32)   # (nq, c)
    return self._missing(dist, positions)

  def search_asymmetric(self, query_codes, k: int, *, candidates: int = DEFAULT_CANDIDATES):
    """k-NN by the asymmetric distance of continuous query codes (search/asymmetric.py).

    The packed scan finds each query's ``candidates`` nearest codes by the Hamming distance of
    its signs (ties by insertion order, as ``search``); these are re-ranked by the asymmetric
    distance and the first k kept. Exact over the whole index when ``candidates >= ntotal``;
    with fewer, an item beyond the Hamming candidates is not seen. With several views, both
    distances are the weighted sums over the item's views.

    Args:
      query_codes: float (nq, num_bits) continuous codes (``HashEncoder.embed``), not packed.
      k: results per query; candidates: Hamming candidates per query (at least k).

    Returns:
      (D float64 (nq, k), I int64 (nq, k) item ids): sorted by asymmetric distance, ties by
      Hamming distance, then insertion order; missing results have distance inf and id -1.
    """
    k = packing.check_positive("k", k)
    candidates = packing.check_positive("candidates", candidates)
    if candidates < k:
      raise ValueError(f"candidates={candidates}: must be at least k={k}")
    query_codes = np.asarray(query_codes)
    if query_codes.ndim != 2 or query_codes.shape[1] != self.num_bits:
      raise ValueError(f"query_codes: expected continuous codes of shape (nq, {self.num_bits}), "
                       f"got {query_codes.dtype} {query_codes.shape}")
    _, positions = hamming.search_prepared(self._scan_queries(packing.pack_bits(query_codes)),
                                           self._database(), min(candidates, max(len(self), k)))
    if self.view_weights != (1,):   # each view's bits, its padding weighing 0, tiled
      padded = np.zeros((len(query_codes), 8 * packing.num_bytes(self.num_bits)))
      padded[:, :self.num_bits] = query_codes
      query_codes = np.tile(padded, (1, sum(self.view_weights)))
    dist, positions = asymmetric.rerank(query_codes, self._repeated_codes(), positions,
                                        num_bits=self._repeated_bits)
    return dist[:, :k], self._to_ids(positions[:, :k])

  def range_search(self, xq_packed, radius: int):
    """Items within Hamming ``radius`` (of the weighted sum, with several views): (lims, D, I
    ids), faiss contract (see hamming)."""
    lims, dist, positions = radius_lib.range_search_prepared(self._scan_queries(xq_packed),
                                                             self._database(), radius)
    return lims, dist, self._to_ids(positions)

  def to_faiss(self):
    """A ``faiss.IndexBinaryFlat`` holding the same codes.

    faiss needs a multiple of 8 bits: the index has ``8 * ceil(num_bits/8)`` bits
    whose padding bits are zero in every code, so distances are unchanged. faiss
    returns insertion positions; map them to ids with ``self.ids[I]``. With several views
    it holds each view repeated by its weight, whose Hamming distances are the weighted sums:
    search it with ``expand_queries(xq)``.
    """
    try:
      import faiss  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("HammingIndex.to_faiss needs faiss: pip install faiss-cpu") from e
    codes = self._repeated_codes()
    index = faiss.IndexBinaryFlat(8 * codes.shape[1])
    if len(self):
      index.add(np.ascontiguousarray(codes))
    return index

  # ---------------------------------------------------------------------- save/load

  def _arrays(self):
    arrays = [("codes", self._codes), ("ids", self._ids)]
    if self._labels is not None:
      arrays.append(("labels", self._labels))
    if self._paths is not None:
      arrays.append(("paths", np.frombuffer(json.dumps(self._paths).encode(), np.uint8)))
    return arrays

  def save(self, path: str | os.PathLike):
    """Writes the index to ``path`` (exactly that name), atomically."""
    path = os.fspath(path)
    table, blobs, offset = [], [], 0
    for name, array in self._arrays():
      array = np.ascontiguousarray(array)
      little = array.astype(array.dtype.newbyteorder("<"))
      blob = little.tobytes()
      table.append(dict(name=name, dtype=little.dtype.str, shape=list(array.shape),
                        offset=offset, nbytes=len(blob)))
      blobs.append(blob)
      offset += len(blob)
    payload = b"".join(blobs)
    header = json.dumps(dict(
        format_version=FORMAT_VERSION, num_bits=self.num_bits, model_id=self.model_id,
        count=len(self), custom_ids=self._custom_ids, view_weights=list(self.view_weights),
        metadata=self.metadata, arrays=table,
        payload_nbytes=len(payload), payload_sha256=hashlib.sha256(payload).hexdigest(),
    ), sort_keys=True).encode()
    prefix = _PREFIX.pack(_MAGIC, FORMAT_VERSION, len(header), hashlib.sha256(header).digest())
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
      f.write(prefix + header)
      f.write(payload)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str | os.PathLike, *, expected_model_id: str | None = None,
           **kwargs) -> "HammingIndex":
    """Reads an index written by ``save``; every corruption raises ``IndexFileError``.

    Args:
      path: the file.
      expected_model_id: when given, the file's model_id must equal it.
      **kwargs: search layout knobs for the new index (chunk_size, block_rows).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
      data = f.read()
    def fail(why):
      return IndexFileError(f"{path}: {why}")
    if len(data) < len(_MAGIC) or data[:len(_MAGIC)] != _MAGIC:
      raise fail("not a HammingIndex file (bad magic bytes)" if len(data) >= len(_MAGIC)
                 else f"truncated: {len(data)} bytes, not even the magic bytes")
    if len(data) < _PREFIX.size:
      raise fail(f"truncated: {len(data)} bytes, shorter than the {_PREFIX.size}-byte prefix")
    _, version, header_nbytes, header_sha = _PREFIX.unpack_from(data)
    if version > FORMAT_VERSION:
      raise fail(f"format version {version} was written by a newer deephash-jax; this "
                 f"version reads format versions up to {FORMAT_VERSION}: upgrade to load it")
    if version < 1:
      raise fail(f"invalid format version {version}")
    header_end = _PREFIX.size + header_nbytes
    if len(data) < header_end:
      raise fail(f"truncated: {len(data)} bytes, the header alone needs {header_end}")
    header_bytes = data[_PREFIX.size:header_end]
    if hashlib.sha256(header_bytes).digest() != header_sha:
      raise fail("header checksum mismatch: the file is corrupted")
    header = json.loads(header_bytes)
    payload = data[header_end:]
    if len(payload) != header["payload_nbytes"]:
      state = "truncated" if len(payload) < header["payload_nbytes"] else "has trailing bytes"
      raise fail(f"{state}: payload is {len(payload)} bytes, header says "
                 f"{header['payload_nbytes']}")
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
      raise fail("payload checksum (sha256) mismatch: the file is corrupted")
    if expected_model_id is not None and header["model_id"] != expected_model_id:
      raise fail(f"model_id {header['model_id']!r} != expected_model_id "
                 f"{expected_model_id!r}: codes of another model")

    arrays = {}
    for entry in header["arrays"]:
      blob = payload[entry["offset"]:entry["offset"] + entry["nbytes"]]
      arrays[entry["name"]] = np.frombuffer(blob, np.dtype(entry["dtype"])).reshape(
          entry["shape"])
    metadata = header.get("metadata", {}) if version >= 2 else _legacy_metadata(path)
    try:
      index = cls(header["num_bits"], header["model_id"], metadata=metadata,
                  view_weights=header.get("view_weights", (1,)) if version >= 3 else (1,),
                  **kwargs)
    except (TypeError, ValueError) as e:
      raise fail(f"invalid header: {e}") from e
    count = header["count"]
    codes = arrays["codes"]
    width = packing.num_bytes(index.num_bits)
    if codes.shape != (count, index.views * width):
      raise fail(f"codes shape {codes.shape} does not match count={count}, "
                 f"num_bits={index.num_bits}, views={index.views}")
    paths = json.loads(arrays["paths"].tobytes()) if "paths" in arrays else None
    index.add(codes.reshape(count, index.views, width).copy(),
              ids=arrays["ids"].copy() if header["custom_ids"] else None,
              labels=arrays["labels"].copy() if "labels" in arrays else None, paths=paths)
    return index


def check_view_weights(view_weights) -> tuple[int, ...]:
  """A non-empty tuple of whole weights >= 1; ValueError naming the value otherwise."""
  try:
    weights = tuple(view_weights)
  except TypeError:
    raise ValueError(f"view_weights must be a sequence of whole numbers >= 1 (one per view), "
                     f"got {view_weights!r}") from None
  if not weights or not all(packing.is_positive_int(w) for w in weights):
    raise ValueError(f"view_weights must be a non-empty sequence of whole numbers >= 1 (one per "
                     f"view), got {view_weights!r}")
  return tuple(int(w) for w in weights)


def _legacy_metadata(path: str) -> dict:
  """The ``<index>.json`` file that held a version 1 index's metadata, or {}."""
  try:
    with open(f"{path}.json") as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}
