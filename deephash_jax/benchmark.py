"""The paper's comparison and the hash-length sweep in one command: `deephash benchmark`.

    deephash benchmark --config=configs/benchmark.py --workdir=workdirs/benchmark

`run_benchmark(config, workdir)` trains every (method, bits, seed) of `config.benchmark` with the
shared training loop (train.train_and_evaluate), each in `workdir/runs/<method>_<bits>b_s<seed>`,
then evaluates each run on two protocols and adds two non-learned references:

* **category retrieval** (from train_and_evaluate, evaluate.py): queries = the query split,
  database = the database split, relevant = same clothing type; mAP@all, mAP@k, P@H<=r.
* **closest-match retrieval**: queries = the first N query-split images re-rendered by a fixed,
  seeded recipe (`closest_match_queries`: a new background, pose and illumination, as a shopper's
  photo of the same garment), database = all original query-split images plus the database split
  as distractors, relevant = the original item only; R@1, R@10, mAP (= mean reciprocal rank with
  one relevant item).
* **references** at `benchmark.reference_bits`: (a) the seed paper's simple approach, exact
  nearest neighbour by the sum of absolute pixel differences (`sad_search`, a jitted, chunked JAX
  scan), timed in queries/s next to the Hamming k-NN of our codes; (b) the continuous codes of
  the `ours` run before binarisation, ranked by cosine (`ranking_metrics`, exact).

Every ranking here (Hamming, SAD, cosine) is ascending distance with ties broken by the lower
database index, and every metric has the definitions of metrics.retrieval_metrics, so the
numbers of the learned codes and of the references are comparable.

Outputs in `workdir`, rewritten after every run (partial progress is readable, a rerun resumes):
results.json, results.md, mAP_vs_bits.png, pr_curves.png. A run whose eval_results.json exists
is not retrained; its closest-match evaluation is cached in the run's benchmark_eval.json.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import os
import platform
import time
from typing import Any, Callable, Sequence

from absl import logging
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deephash_jax import augment
from deephash_jax import config_lib
from deephash_jax import evaluate as evaluate_lib
from deephash_jax import hamming
from deephash_jax import input_pipeline
from deephash_jax import metrics
from deephash_jax import train as train_lib

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
MAP_VS_BITS_PNG = "mAP_vs_bits.png"
PR_CURVES_PNG = "pr_curves.png"
RUN_EVAL_JSON = "benchmark_eval.json"      # per run: closest-match metrics, PR curve, timings
REFERENCES_JSON = "references.json"        # cache of the two references
CLAIM_FILE = "benchmark_claim.json"        # per run: the process training/evaluating it now
CLOSEST_MATCH_METRICS = ("recall_at_1", "recall_at_10", "map_all")
SEARCH_K = 10                              # k of the timed k-NN searches


# ------------------------------------------------------------------------------ the plan


def run_name(method: str, bits: int, seed: int) -> str:
  return f"{method}_{bits}b_s{seed}"


def method_lengths(bench, method: str) -> tuple[int, ...]:
  """The code lengths `method` runs at: `benchmark.method_bits[method]` where given (e.g. the
  ablations at the reference length only), else every length of `benchmark.bits`."""
  only = (bench.get("method_bits") or {}).get(method)
  return tuple(int(b) for b in (bench.bits if only is None else only))


def planned_runs(bench) -> list[tuple[str, int, int]]:
  """(method, bits, seed) in run order: the reference length first, then the other lengths,
  then the extra seeds of `multi_seed`; each triple once."""
  ordered_bits = [bench.reference_bits] + [b for b in bench.bits if b != bench.reference_bits]
  plan = [(m, int(b), int(s)) for b in ordered_bits for m in bench.methods for s in bench.seeds
          if int(b) in method_lengths(bench, m)]
  multi = bench.get("multi_seed") or {}
  for b in multi.get("bits", ()):
    for m in multi.get("methods", ()):
      for s in multi.get("seeds", ()):
        if (m, int(b), int(s)) not in plan:
          plan.append((m, int(b), int(s)))
  return plan


def validate_benchmark(config) -> None:
  """Fails early, naming the field, before hours of training."""
  require = config_lib._require  # pylint: disable=protected-access
  bench = config.get("benchmark")
  require(bench is not None, "benchmark", None, "a benchmark section (see configs/benchmark.py)")
  variants = bench.variants
  require(len(bench.methods) > 0, "benchmark.methods", bench.methods, "at least one method")
  multi = bench.get("multi_seed") or {}
  for method in (*bench.methods, *multi.get("methods", ())):
    require(method in variants, "benchmark.methods", method,
            f"a key of benchmark.variants {tuple(variants)}")
  for bits in (*bench.bits, *multi.get("bits", ())):
    require(isinstance(bits, int) and 4 <= bits <= 4096, "benchmark.bits", bits,
            "integers in [4, 4096]")
  require(bench.reference_bits in bench.bits, "benchmark.reference_bits", bench.reference_bits,
          f"one of benchmark.bits {tuple(bench.bits)}")
  for method in bench.get("lead_methods") or ():   # (one not in `methods` gets no table)
    require(method in variants and method.startswith("ours"), "benchmark.lead_methods",
            method, f"a variant of ours in benchmark.variants {tuple(variants)}")
  # A method_bits entry of a variant left out of `methods` plans nothing (so a config that
  # names fewer methods keeps its parent's entries); one of no variant is a typo.
  for method, lengths in (bench.get("method_bits") or {}).items():
    require(method in variants, f"benchmark.method_bits.{method}", method,
            f"a key of benchmark.variants {tuple(variants)}")
    planned_lengths_ok = len(lengths) > 0 and all(b in bench.bits for b in lengths)
    require(method not in bench.methods or planned_lengths_ok, f"benchmark.method_bits.{method}",
            lengths,
            f"a non-empty subset of benchmark.bits {tuple(bench.bits)}")
  require(len(bench.seeds) > 0, "benchmark.seeds", bench.seeds, "at least one seed")
  require(bench.closest_match.num_queries >= 0, "benchmark.closest_match.num_queries",
          bench.closest_match.num_queries, ">= 0 (0: all)")
  refs = bench.references
  require(refs.num_category_queries >= 0, "benchmark.references.num_category_queries",
          refs.num_category_queries, ">= 0 (0: all)")
  for field in ("timing_queries", "query_batch_size", "sad_chunk_size"):
    require(refs[field] > 0, f"benchmark.references.{field}", refs[field], "positive")
  # Every run config must be a valid training config.
  for method, bits, seed in planned_runs(bench):
    config_lib.validate_config(run_config(config, method, bits, seed))


def _apply_overrides(node: ml_collections.ConfigDict, overrides, where: str) -> None:
  for key, value in overrides.items():
    if key not in node:
      raise config_lib.ConfigError(f"config.{where}.{key}: the training config has no such field")
    target = node[key]
    if isinstance(target, ml_collections.ConfigDict) and len(target) and hasattr(value, "items"):
      _apply_overrides(target, value, f"{where}.{key}")
    else:
      node[key] = value


def run_config(config, method: str, bits: int, seed: int) -> ml_collections.ConfigDict:
  """The training config of one run: the benchmark config without its `benchmark` section, with
  the method's `benchmark.variants` overrides, `model.num_bits` and `seed`."""
  cfg = config.copy_and_resolve_references()
  cfg.unlock()
  variants = cfg.benchmark.variants
  if method not in variants:
    raise config_lib.ConfigError(f"config.benchmark.variants has no {method!r}; methods with "
                                 f"overrides: {tuple(variants)}")
  overrides = variants[method]
  del cfg["benchmark"]
  _apply_overrides(cfg, overrides, f"benchmark.variants.{method}")
  cfg.model.num_bits = int(bits)
  cfg.seed = int(seed)
  return cfg


# ------------------------------------------------------------------- closest-match queries


def closest_match_queries(images: np.ndarray, recipe, seed: int, *,
                          batch_size: int = 1000) -> np.ndarray:
  """Shopper's-photo copies of `images` (uint8 NHWC) by a fixed recipe, as uint8 images.

  Query i is `augment.query_view(images[i], fold_in(key(seed), i), recipe)`: a new background
  (with `recipe.background_prob`), then pose (rotation, scale, shift, mirror), then illumination
  (gamma, contrast, brightness), rendered in float and rounded to uint8 like a stored photo. The
  key of an image depends on its index only, so a query does not change with N or the batching.
  """
  render = _renderer(json.dumps(dict(recipe), sort_keys=True, default=_json_default))
  base = jax.random.key(seed)
  batch_size = max(1, min(batch_size, len(images)))
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk)           # one compiled shape for every batch
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(
        jnp.arange(start, start + batch_size))
    chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
    out.append(np.asarray(render(chunk, keys))[:batch_size - pad])
  return np.concatenate(out) if out else np.zeros((0, *images.shape[1:]), np.uint8)


@functools.lru_cache(maxsize=4)
def _renderer(recipe_json: str):
  recipe = ml_collections.ConfigDict(json.loads(recipe_json))
  return jax.jit(jax.vmap(lambda image, key: jnp.round(
      augment.query_view(image, key, recipe) * 255.0).astype(jnp.uint8)))


# --------------------------------------------------------- reference (a): pixel-space SAD

# float32 sums of up to this many |uint8 differences| are exact integers (< 2**24).
_EXACT_PIXELS = (1 << 24) // 255 - 1
_FAR = 1 << 30        # distance of padding / missing results, exact in float32 and int32


@dataclasses.dataclass(frozen=True)
class SadDatabase:
  """Images laid out for `sad_search`: (chunks, blocks, block_pixels, chunk_size) uint8 on device,
  pixels first so that the inner loop runs along contiguous database items."""
  tiles: jax.Array
  num_images: int
  num_pixels: int


def prepare_sad_database(images: np.ndarray, *, chunk_size: int = 4096) -> SadDatabase:
  flat = np.asarray(images, np.uint8).reshape(len(images), -1)
  n, pixels = flat.shape
  block = min(pixels, _EXACT_PIXELS)
  blocks = -(-pixels // block)
  chunk_size = max(1, min(chunk_size, n))
  chunks = max(1, -(-n // chunk_size))
  padded = np.zeros((chunks * chunk_size, blocks * block), np.uint8)
  padded[:n, :pixels] = flat   # zero pixels add |0 - 0| = 0 to every distance
  tiles = padded.reshape(chunks, chunk_size, blocks, block).transpose(0, 2, 3, 1)
  return SadDatabase(jnp.asarray(np.ascontiguousarray(tiles)), n, pixels)


def _sad_tile(queries_t, tile):
  """(blocks, block, Q) float32 queries x (blocks, block, C) uint8 tile -> (Q, C) int32 SAD.

  A loop over pixels adding one (Q, C) plane of |differences|: XLA vectorises it along the
  tile's items, ~5x faster on CPU than broadcasting (Q, C, pixels) and reducing. Each block of
  pixels is summed exactly in float32, the blocks in int32.
  """
  num_blocks, block, q = queries_t.shape
  c = tile.shape[-1]

  def add_block(b, total):
    def add_pixel(p, acc):
      return acc + jnp.abs(queries_t[b, p][:, None] - tile[b, p].astype(jnp.float32)[None, :])
    part = lax.fori_loop(0, block, add_pixel, jnp.zeros((q, c), jnp.float32))
    return total + part.astype(jnp.int32)

  return lax.fori_loop(0, num_blocks, add_block, jnp.zeros((q, c), jnp.int32))


def _queries_t(queries, blocks, block):
  q = queries.shape[0]
  padded = jnp.zeros((q, blocks * block), jnp.float32).at[:, :queries.shape[1]].set(
      queries.astype(jnp.float32))
  return padded.reshape(q, blocks, block).transpose(1, 2, 0)


@jax.jit
def _sad_rows(queries, tiles):
  _, blocks, block, _ = tiles.shape
  qt = _queries_t(queries, blocks, block)
  rows = lax.map(lambda tile: _sad_tile(qt, tile), tiles)        # (chunks, Q, C)
  return jnp.transpose(rows, (1, 0, 2)).reshape(queries.shape[0], -1)


@functools.partial(jax.jit, static_argnames=("k", "num_images"))
def _sad_top_k(queries, tiles, *, k, num_images):
  num_chunks, blocks, block, chunk_size = tiles.shape
  qt = _queries_t(queries, blocks, block)
  q = queries.shape[0]
  # XLA:CPU's float32 top_k is a partial sort (~100x faster than its int32 top_k, a full sort);
  # it is exact while every distance is an integer below 2**24.
  key_dtype = jnp.float32 if queries.shape[1] * 255 < (1 << 24) else jnp.int32

  def scan_chunk(best, xs):
    tile, first = xs
    index = first + jnp.arange(chunk_size, dtype=jnp.int32)
    dist = jnp.where(index < num_images, _sad_tile(qt, tile), _FAR).astype(key_dtype)
    # The running best hold lower indices than this chunk and come first: top_k keeps the lower
    # position on ties, so ties go to the lower database index.
    all_dist = jnp.concatenate([best[0], dist], axis=1)
    all_index = jnp.concatenate([best[1], jnp.broadcast_to(index, (q, chunk_size))], axis=1)
    neg, pos = lax.top_k(-all_dist, k)
    return (-neg, jnp.take_along_axis(all_index, pos, axis=1)), None

  init = (jnp.full((q, k), _FAR, key_dtype), jnp.full((q, k), -1, jnp.int32))
  firsts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk_size
  (dist, index), _ = lax.scan(scan_chunk, init, (tiles, firsts))
  dist = dist.astype(jnp.int32)
  return dist, jnp.where(dist == _FAR, -1, index)


def _query_batches(queries, database: SadDatabase, batch_size: int):
  flat = np.asarray(queries, np.uint8).reshape(len(queries), -1)
  if flat.shape[1] != database.num_pixels:
    raise ValueError(f"queries have {flat.shape[1]} pixels per image, the database "
                     f"{database.num_pixels}")
  batch_size = max(1, min(batch_size, len(flat)))
  for start in range(0, len(flat), batch_size):
    chunk = flat[start:start + batch_size]
    pad = batch_size - len(chunk)          # one compiled shape for every batch
    yield len(chunk), np.pad(chunk, ((0, pad), (0, 0)))


def sad_distances(queries, database: SadDatabase, *, query_batch_size: int = 256) -> np.ndarray:
  """All sums of absolute pixel differences, int64 (Q, N)."""
  out = [np.asarray(_sad_rows(jnp.asarray(chunk), database.tiles))[:n, :database.num_images]
         for n, chunk in _query_batches(queries, database, query_batch_size)]
  return (np.concatenate(out).astype(np.int64) if out
          else np.zeros((0, database.num_images), np.int64))


def sad_search(queries, database: SadDatabase, k: int, *,
               query_batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Exact k-NN by sum of absolute pixel differences, faiss-style `(D, I)`.

  D: int64 (Q, k) distances, I: int64 (Q, k) database indices, each row sorted by (distance,
  index); missing results (k > database size) have index -1 and distance 2**30.
  """
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be a positive int, got {k!r}")
  dists, indices = [], []
  for n, chunk in _query_batches(queries, database, query_batch_size):
    d, i = _sad_top_k(jnp.asarray(chunk), database.tiles, k=int(k),
                      num_images=database.num_images)
    dists.append(np.asarray(d)[:n])
    indices.append(np.asarray(i)[:n])
  if not dists:
    return np.zeros((0, k), np.int64), np.zeros((0, k), np.int64)
  return np.concatenate(dists).astype(np.int64), np.concatenate(indices).astype(np.int64)


# ------------------------------------------------- exact ranking metrics for any distance


def _safe_div(num, den):
  """num / den, 0 where den == 0 (a query without relevant items scores 0)."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros(np.broadcast_shapes(num.shape, den.shape)),
                   where=den > 0)


def ranking_metrics(distance_rows: Callable[[int, int], np.ndarray], query_keys, db_keys, *,
                    map_at: Sequence[int] = (), recall_at: Sequence[int] = (),
                    precision_at: Sequence[int] = (),
                    query_batch_size: int = 256) -> dict[str, float]:
  """Exact ranked-retrieval metrics for real-valued distances (SAD, cosine, ...).

  `distance_rows(start, stop)` returns the (stop - start, Nd) distances of those queries to the
  whole database. Ranking: ascending distance, ties broken by the lower database index (a stable
  sort). Relevant: equal keys. The definitions (map_all, map_at_<k> normalised by the relevant
  items in the top k, recall_at_<k> = any relevant in the top k, precision_at_<k>, macro
  average, a query without relevant items scores 0) are those of metrics.retrieval_metrics,
  which this equals on Hamming distances.
  """
  query_keys, db_keys = np.asarray(query_keys), np.asarray(db_keys)
  nq, nd = len(query_keys), len(db_keys)
  if nq == 0 or nd == 0:
    raise ValueError(f"need at least one query and one database item, got {nq} and {nd}")
  ranks = np.arange(1, nd + 1, dtype=np.float64)
  sums: dict[str, float] = {}

  def accumulate(key, values):
    sums[key] = sums.get(key, 0.0) + float(np.sum(values))

  for start in range(0, nq, query_batch_size):
    stop = min(start + query_batch_size, nq)
    dist = np.asarray(distance_rows(start, stop))
    if dist.shape != (stop - start, nd):
      raise ValueError(f"distance_rows({start}, {stop}) returned shape {dist.shape}, expected "
                       f"{(stop - start, nd)}")
    order = np.argsort(dist, axis=1, kind="stable")
    rel = db_keys[order] == query_keys[start:stop, None]
    cum_rel = np.cumsum(rel, axis=1, dtype=np.int64)
    prec_rel = np.where(rel, cum_rel / ranks, 0.0)
    accumulate("map_all", _safe_div(prec_rel.sum(axis=1), cum_rel[:, -1]))
    for k in map_at:
      kk = min(k, nd)
      accumulate(f"map_at_{k}", _safe_div(prec_rel[:, :kk].sum(axis=1), cum_rel[:, kk - 1]))
    for k in recall_at:
      accumulate(f"recall_at_{k}", cum_rel[:, min(k, nd) - 1] > 0)
    for k in precision_at:
      accumulate(f"precision_at_{k}", cum_rel[:, min(k, nd) - 1] / k)
  result = {key: value / nq for key, value in sums.items()}
  result.update(num_queries=float(nq), num_database=float(nd))
  return result


def cosine_distance_rows(query_embeddings, db_embeddings) -> Callable[[int, int], np.ndarray]:
  """`distance_rows` for `ranking_metrics`: 1 - cosine similarity, in float64."""
  def normalise(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  q, d = normalise(query_embeddings), normalise(db_embeddings)
  return lambda start, stop: 1.0 - q[start:stop] @ d.T


# ---------------------------------------------------------------------------- protocols


@dataclasses.dataclass
class Protocols:
  """The data of both protocols, loaded and rendered once per session."""
  query: input_pipeline.Split          # category queries; originals of the closest match
  database: input_pipeline.Split       # category database; closest-match distractors
  num_category_queries: int            # config.eval.num_queries (0: all)
  closest_match_queries: np.ndarray    # uint8 (N, H, W, C)
  fingerprint: dict                    # what a cached evaluation must have been made with

  @property
  def closest_match_query_ids(self) -> np.ndarray:
    return np.arange(len(self.closest_match_queries))

  @property
  def closest_match_db_ids(self) -> np.ndarray:
    # Originals keep their index (= the id of their query); distractors match no query.
    return np.concatenate([np.arange(len(self.query)), np.full(len(self.database), -1)])

  def closest_match_database(self) -> np.ndarray:
    return np.concatenate([self.query.images, self.database.images])


def load_protocols(config) -> Protocols:
  cm = config.benchmark.closest_match
  query = input_pipeline.load_split(config.input, config.input.query_split)
  database = input_pipeline.load_split(config.input, config.input.database_split)
  num_cm = min(cm.num_queries or len(query), len(query))
  started = time.time()
  queries = closest_match_queries(query.images[:num_cm], cm.recipe, cm.seed)
  logging.info("Rendered %d closest-match queries in %.1f s.", num_cm, time.time() - started)
  num_category = min(config.eval.get("num_queries", 0) or len(query), len(query))
  fingerprint = _json_round_trip(dict(
      dataset=config.input.dataset, query_split=config.input.query_split,
      database_split=config.input.database_split, num_query_split=len(query),
      num_database_split=len(database), num_category_queries=num_category,
      closest_match=dict(num_queries=num_cm, seed=cm.seed, recipe=dict(cm.recipe),
                         # What was rendered, so that a cached evaluation never mixes renderings.
                         sha256=hashlib.sha256(queries.tobytes()).hexdigest()[:16])))
  return Protocols(query, database, num_category, queries, fingerprint)


def _json_round_trip(obj):
  return json.loads(json.dumps(obj, sort_keys=True, default=_json_default))


def _json_default(obj):
  if isinstance(obj, ml_collections.ConfigDict):
    return obj.to_dict()
  if isinstance(obj, (np.integer, np.floating, np.bool_)):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def evaluate_run(run_dir: str, protocols: Protocols, *, pr_curve: bool,
                 codes: evaluate_lib.Codes | None = None) -> dict:
  """Closest-match metrics of a trained run (and its category PR curve when asked).

  `codes`: the category evaluation's codes of the same model (from `train_and_evaluate(...,
  return_codes=True)`), reused when they cover every query-split image; otherwise (a resumed
  sweep, or `eval.num_queries` > 0) the query and database images are embedded here.
  """
  from deephash_jax import inference  # pylint: disable=g-import-not-at-top
  started = time.time()
  encoder = inference.HashEncoder.from_workdir(run_dir)
  if (codes is not None and len(codes.query) == len(protocols.query)
      and len(codes.database) == len(protocols.database)):
    query_codes, db_codes = codes.query, codes.database
  else:
    query_codes = encoder.embed(protocols.query.images)
    db_codes = encoder.embed(protocols.database.images)
  cm_codes = encoder.embed(protocols.closest_match_queries)
  cm = metrics.retrieval_metrics(
      hamming.pack_bits(cm_codes), None,
      hamming.pack_bits(np.concatenate([query_codes, db_codes])), None,
      num_bits=encoder.num_bits, map_at=(), radius=(), recall_at=(1, 10),
      query_ids=protocols.closest_match_query_ids, db_ids=protocols.closest_match_db_ids)
  out = {"closest_match": {k: cm[k] for k in (*CLOSEST_MATCH_METRICS, "num_queries",
                                               "num_database")},
         "step": encoder.step, "protocol": protocols.fingerprint}
  if pr_curve:
    nq = protocols.num_category_queries
    precision, recall = metrics.precision_recall_curve(
        hamming.pack_bits(query_codes[:nq]), protocols.query.labels[:nq],
        hamming.pack_bits(db_codes), protocols.database.labels, num_bits=encoder.num_bits)
    out["pr_curve"] = {"precision": precision.tolist(), "recall": recall.tolist()}
  out["eval_seconds"] = time.time() - started
  return out


# ---------------------------------------------------------------------------- references


def _timed(fn, *args, **kwargs):
  started = time.perf_counter()
  result = fn(*args, **kwargs)
  return result, time.perf_counter() - started


def compute_references(config, protocols: Protocols, float_run_dir: str | None) -> dict:
  """(a) pixel SAD exact NN and (b) cosine on the continuous codes of `float_run_dir`."""
  refs = config.benchmark.references
  batch = refs.query_batch_size
  query, database = protocols.query, protocols.database
  nq = min(refs.num_category_queries or len(query), len(query))
  map_at = tuple(config.eval.map_at)
  cm_keys = dict(query_keys=protocols.closest_match_query_ids,
                 db_keys=protocols.closest_match_db_ids)
  cm_queries = protocols.closest_match_queries
  num_timed = min(refs.timing_queries, len(cm_queries))
  out = {"num_category_queries": nq, "timing": {
      "num_queries": num_timed, "k": SEARCH_K,
      "num_database": len(query) + len(database)}}

  started = time.time()
  category_db = prepare_sad_database(database.images, chunk_size=refs.sad_chunk_size)
  sad_category = ranking_metrics(
      lambda a, b: sad_distances(query.images[a:b], category_db, query_batch_size=batch),
      query.labels[:nq], database.labels, map_at=map_at, recall_at=(1, 10),
      query_batch_size=batch)
  del category_db
  cm_db = prepare_sad_database(protocols.closest_match_database(), chunk_size=refs.sad_chunk_size)
  sad_cm = ranking_metrics(
      lambda a, b: sad_distances(cm_queries[a:b], cm_db, query_batch_size=batch),
      map_at=(), recall_at=(1, 10), query_batch_size=batch, **cm_keys)
  # Compile first (same batch shape as the timed call), then time the search alone.
  sad_search(cm_queries[:min(batch, num_timed)], cm_db, SEARCH_K, query_batch_size=batch)
  _, seconds = _timed(sad_search, cm_queries[:num_timed], cm_db, SEARCH_K,
                      query_batch_size=batch)
  del cm_db
  out["sad"] = {"category": sad_category, "closest_match": sad_cm,
                "queries_per_second": num_timed / seconds, "load_average": os.getloadavg()[0],
                "seconds": time.time() - started}
  logging.info("Reference SAD: category mAP@all %.4f on %d queries, closest-match R@1 %.4f, "
               "%.1f queries/s.", sad_category["map_all"], nq, sad_cm["recall_at_1"],
               out["sad"]["queries_per_second"])

  if float_run_dir is None:
    return out
  from deephash_jax import inference  # pylint: disable=g-import-not-at-top
  started = time.time()
  encoder = inference.HashEncoder.from_workdir(float_run_dir)
  query_codes = encoder.embed(query.images)
  db_codes = encoder.embed(database.images)
  cm_codes = encoder.embed(cm_queries)
  float_category = ranking_metrics(
      cosine_distance_rows(query_codes[:nq], db_codes), query.labels[:nq], database.labels,
      map_at=map_at, recall_at=(1, 10), query_batch_size=batch)
  cm_db_codes = np.concatenate([query_codes, db_codes])
  float_cm = ranking_metrics(cosine_distance_rows(cm_codes, cm_db_codes), map_at=(),
                             recall_at=(1, 10), query_batch_size=batch, **cm_keys)
  out["float_cosine"] = {"run": os.path.basename(float_run_dir), "step": encoder.step,
                         "category": float_category, "closest_match": float_cm,
                         "seconds": time.time() - started}
  # The same run's binary codes through the Hamming k-NN, timed like the SAD search.
  xq = hamming.pack_bits(cm_codes[:num_timed])
  xb = hamming.prepare_database(hamming.pack_bits(cm_db_codes), num_bits=encoder.num_bits)
  hamming.search_prepared(xq, xb, SEARCH_K)   # compile
  _, seconds = _timed(hamming.search_prepared, xq, xb, SEARCH_K)
  out["hamming_search"] = {"run": os.path.basename(float_run_dir),
                           "queries_per_second": num_timed / seconds,
                           "load_average": os.getloadavg()[0]}
  logging.info("Reference float cosine (%s): category mAP@all %.4f, closest-match R@1 %.4f; "
               "Hamming k-NN %.1f queries/s.", out["float_cosine"]["run"],
               float_category["map_all"], float_cm["recall_at_1"],
               out["hamming_search"]["queries_per_second"])
  return out


# -------------------------------------------------------------------------------- results


def machine_info() -> dict:
  cpu = platform.processor() or None
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                 cpu)
  except OSError:
    pass
  devices = jax.devices()
  return {"hostname": platform.node(), "platform": platform.platform(), "cpu": cpu,
          "cpu_count": os.cpu_count(), "python": platform.python_version(),
          "jax": jax.__version__, "backend": jax.default_backend(),
          "devices": f"{len(devices)} x {devices[0].device_kind}",
          "load_average_at_start": list(os.getloadavg())}


def category_metric_names(config) -> tuple[str, ...]:
  radius = config.eval.radius
  radius = radius if isinstance(radius, int) else tuple(radius)[0]
  return ("map_all", f"map_at_{tuple(config.eval.map_at)[0]}", f"precision_at_hamming_{radius}")


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def _write_atomic(path: str, data: bytes | str) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
    f.write(data)
  os.replace(tmp, path)


# Where the data lies on one machine, not what it is: left out of a run config's digest, so
# that runs trained on another host (another TFDS dir) can be merged (`merge_recorded_runs`).
_MACHINE_FIELDS = ("input.data_dir", "input.source_dir")


def run_config_digest(run_cfg: ml_collections.ConfigDict) -> str:
  """A short SHA-256 of a run's training config, less `_MACHINE_FIELDS`."""
  tree = _json_round_trip(run_cfg.to_dict())
  for field in _MACHINE_FIELDS:
    node = tree
    *parents, leaf = field.split(".")
    for key in parents:
      node = node.get(key, {})
    node.pop(leaf, None)
  return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def _run_record(method, bits, seed, run_dir, category_names, eval_results, run_eval, *,
                config_sha256: str | None = None) -> dict:
  record = {"method": method, "bits": bits, "seed": seed,
            "workdir": os.path.join("runs", os.path.basename(run_dir)), "status": "done",
            "config_sha256": config_sha256,
            "category": {k: eval_results.get(k) for k in category_names},
            "codes_collapsed": eval_results.get("codes_collapsed"),
            "codes_unique_codes": eval_results.get("codes_unique_codes"),
            "train_steps": eval_results.get("train_steps"),
            "train_seconds": eval_results.get("train_seconds")}
  if run_eval:
    record["closest_match"] = run_eval["closest_match"]
    record["eval_seconds"] = run_eval.get("eval_seconds")
    record["wall_seconds"] = run_eval.get("train_wall_seconds")
    if "pr_curve" in run_eval:
      record["pr_curve"] = run_eval["pr_curve"]
  return record


def _run_seconds(record) -> float | None:
  train = record.get("wall_seconds") or record.get("train_seconds")
  return None if train is None else train + (record.get("eval_seconds") or 0.0)


def _mean_std(values):
  values = [float(v) for v in values if v is not None]
  if not values:
    return None
  return {"mean": float(np.mean(values)),
          "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
          "n": len(values), "values": values}


def aggregate(runs: dict, category_names) -> dict:
  """{method: {bits: {"category/<m>" | "closest_match/<m>": {mean, std (ddof=1), n, values}}}}."""
  cells: dict = {}
  for record in runs.values():
    if record["status"] != "done":
      continue
    cells.setdefault(record["method"], {}).setdefault(str(record["bits"]), []).append(record)
  out = {}
  for method, by_bits in cells.items():
    for bits, records in by_bits.items():
      cell = {"seeds": sorted(r["seed"] for r in records)}
      for name in category_names:
        cell[f"category/{name}"] = _mean_std(r["category"].get(name) for r in records)
      for name in CLOSEST_MATCH_METRICS:
        cell[f"closest_match/{name}"] = _mean_std(
            r.get("closest_match", {}).get(name) for r in records)
      cell["codes_collapsed"] = any(r.get("codes_collapsed") for r in records)
      out.setdefault(method, {})[bits] = cell
  return out


def _fmt(stat, digits=3) -> str:
  if not stat:
    return "…"
  text = f"{stat['mean']:.{digits}f}"
  if stat.get("std") is not None:
    text += f" ± {stat['std']:.{digits}f} (n={stat['n']})"
  return text


def _duration(seconds) -> str:
  if seconds is None:
    return "?"
  return str(datetime.timedelta(seconds=int(round(seconds))))


_LEAD_METRICS = (("category/map_all", "mAP@all"), ("closest_match/recall_at_1", "closest R@1"),
                 ("closest_match/map_all", "closest mAP"))


def leads(agg: dict, methods, bits_list, ours_method: str = "ours") -> dict:
  """{bits: {metric: (ours - best baseline, best baseline)}}: baselines = methods not `ours*`.

  `ours_method` is the variant of ours compared (default "ours"). Means over seeds. Missing cells
  (runs not done) are left out.
  """
  baselines_ = [m for m in methods if not m.startswith("ours")]
  out = {}
  for bits in bits_list:
    ours = agg.get(ours_method, {}).get(str(bits))
    if not ours:
      continue
    for key, _ in _LEAD_METRICS:
      scores = [(agg[m][str(bits)][key]["mean"], m) for m in baselines_
                if agg.get(m, {}).get(str(bits), {}).get(key)]
      if scores and ours.get(key):
        best, name = max(scores)
        out.setdefault(str(bits), {})[key] = (ours[key]["mean"] - best, name)
  return out


def _signed(x: float) -> str:
  return "+0.000" if abs(x) < 5e-4 else f"{x:+.3f}"   # no "-0.000"


def _lead_section(agg, methods, bits_list, lead_methods=("ours",)) -> list[str]:
  lines = []
  for ours_method in lead_methods:
    table = leads(agg, methods, bits_list, ours_method)
    if not table:
      continue
    title = "Ours" if ours_method == "ours" else ours_method
    lines += ["", f"## {title} against the best baseline", "",
              f"{ours_method} − the best of the other methods (not the variants of ours) in that "
              "cell, and which method that is; positive = ours leads.", "",
              "| bits | " + " | ".join(label for _, label in _LEAD_METRICS) + " |",
              "|---|" + "---|" * len(_LEAD_METRICS)]
    for bits, row in table.items():
      lines.append(f"| {bits} | " + " | ".join(
          f"{_signed(row[key][0])} ({row[key][1]})" if key in row else "…"
          for key, _ in _LEAD_METRICS) + " |")
  ours = agg.get("ours", {})
  ablations = [m for m in methods if m.startswith("ours_") and m not in lead_methods]
  cells = [(m, bits) for m in ablations for bits in bits_list
           if ours.get(str(bits)) and agg.get(m, {}).get(str(bits))]
  if cells:
    lines += ["", "## Ablations: what each term adds, at each length", "",
              "ours − ours without the term (means over seeds); positive = the term helps.", "",
              "| ablation | bits | " + " | ".join(label for _, label in _LEAD_METRICS) + " |",
              "|---|---|" + "---|" * len(_LEAD_METRICS)]
    for m, bits in cells:
      mine, theirs = ours[str(bits)], agg[m][str(bits)]
      lines.append(f"| {m} | {bits} | " + " | ".join(
          _signed(mine[key]["mean"] - theirs[key]["mean"])
          if mine.get(key) and theirs.get(key) else "…" for key, _ in _LEAD_METRICS) + " |")
  return lines


def format_markdown(results: dict) -> str:
  """results.md: the tables of the comparison."""
  bench = results["benchmark"]
  methods, bits_list, ref = bench["methods"], bench["bits"], bench["reference_bits"]
  agg, runs = results["aggregate"], results["runs"]
  names = results["protocols"]["category"]["metrics"]
  labels = {"map_all": "mAP@all", "recall_at_1": "R@1", "recall_at_10": "R@10"}
  for name in names:
    if name.startswith("map_at_"):
      labels[name] = f"mAP@{name[len('map_at_'):]}"
    if name.startswith("precision_at_hamming_"):
      labels[name] = f"P@H≤{name[len('precision_at_hamming_'):]}"
  status = results["status"]
  wall = results["wall_seconds"]
  machine = results["machine"]
  cat, cm = results["protocols"]["category"], results["protocols"]["closest_match"]

  def cell(method, bits, key):
    entry = agg.get(method, {}).get(str(bits))
    if entry is None:
      planned = [r for r in runs.values() if r["method"] == method and r["bits"] == bits]
      if not planned:
        return "—"      # not in the plan (benchmark.method_bits)
      return "failed" if any(r["status"] == "failed" for r in planned) else "…"
    return _fmt(entry.get(key)) + (" †" if entry.get("codes_collapsed") else "")

  lines = [f"# Benchmark: {results['dataset']}", ""]
  lines += [f"Runs: {status['done']} of {status['planned']} done"
            + (f", {status['failed']} failed" if status["failed"] else "")
            + (" (interrupted; rerun the same command to resume)" if status["interrupted"]
               else "") + ".",
            f"Wall time: {_duration(wall['runs'])} for the runs (sum of their measured times), "
            f"{_duration(wall['references'])} for the references; this session "
            f"{_duration(wall['this_session'])}.",
            f"Machine: {machine['cpu']} ({machine['cpu_count']} CPUs), {machine['devices']}, "
            f"JAX {machine['jax']} on {machine['platform']}; load average at start "
            f"{machine['load_average_at_start'][0]:.1f} (other jobs share this machine when it is "
            "above the CPU count, and every time above is then longer).", ""]
  def method_by_bits(key):
    rows = ["| method | " + " | ".join(f"{b} bits" for b in bits_list) + " |",
            "|---|" + "---|" * len(bits_list)]
    rows += [f"| {method} | " + " | ".join(cell(method, b, key) for b in bits_list) + " |"
             for method in methods]
    return rows

  lines += ["## Category retrieval: mAP@all, method × bits", "",
            f"Queries: {cat['num_queries']} images of the '{cat['query_split']}' split; "
            f"database: {cat['num_database']} images of '{cat['database_split']}'; relevant: "
            "same class; ranking by Hamming distance, ties by database index. Mean over seeds, "
            "± sample standard deviation where n > 1; † = the codes collapsed; … = not run yet; "
            "— = not in the plan.", ""]
  lines += method_by_bits("category/map_all")
  cm_text = (f"Queries: the first {cm['num_queries']} '{cat['query_split']}' images re-rendered "
             f"by the recipe below; database: the {cm['num_originals']} originals + "
             f"{cm['num_database'] - cm['num_originals']} '{cat['database_split']}' distractors; "
             "relevant: the original only.")
  lines += ["", "## Closest match: R@1, method × bits", "", cm_text, ""]
  lines += method_by_bits("closest_match/recall_at_1")
  lines += ["", "## Closest match: mAP (= mean reciprocal rank), method × bits", ""]
  lines += method_by_bits("closest_match/map_all")
  lines += _lead_section(agg, methods, bits_list, tuple(bench.get("lead_methods") or ("ours",)))
  lines += ["", f"## All metrics at {ref} bits", ""]
  labels_cm = {**labels, "map_all": "mAP"}
  header = ([labels[n] for n in names] + [f"closest {labels_cm[n]}" for n in CLOSEST_MATCH_METRICS]
            + ["train time"])
  lines += ["| method | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
  for method in methods:
    times = [_run_seconds(r) for r in runs.values()
             if r["method"] == method and r["bits"] == ref and r["status"] == "done"]
    values = [cell(method, ref, f"category/{n}") for n in names]
    values += [cell(method, ref, f"closest_match/{n}") for n in CLOSEST_MATCH_METRICS]
    values.append(_duration(np.mean(times)) if times and None not in times else "…")
    lines.append(f"| {method} | " + " | ".join(values) + " |")

  references = results.get("references") or {}
  if references:
    nq = references["num_category_queries"]
    timing = references["timing"]
    lines += ["", f"## Non-learned references (category protocol on the first {nq} queries)", "",
              f"queries/s: exact {timing['k']}-NN of {timing['num_queries']} closest-match "
              f"queries in the {timing['num_database']}-image database, one process, after "
              "compilation.", "",
              "| reference | " + " | ".join(labels[n] for n in ("map_all", names[1]))
              + " | closest R@1 | closest R@10 | closest mAP | queries/s |",
              "|---|---|---|---|---|---|---|"]

    def ref_row(label, entry, qps):
      c, m = entry["category"], entry["closest_match"]
      return (f"| {label} | {c['map_all']:.3f} | {c.get(names[1], float('nan')):.3f} | "
              f"{m['recall_at_1']:.3f} | {m['recall_at_10']:.3f} | {m['map_all']:.3f} | "
              f"{qps} |")
    if "sad" in references:
      sad = references["sad"]
      lines.append(ref_row("pixels, sum of absolute differences (seed paper's simple approach)",
                           sad, f"{sad['queries_per_second']:.1f}"))
    def merged_note(entry):
      return f" (merged from {entry['merged_from']})" if "merged_from" in entry else ""
    if "float_cosine" in references:
      fc = references["float_cosine"]
      lines.append(ref_row(f"continuous codes of {fc['run']} before binarisation, cosine"
                           + merged_note(fc), fc, "—"))
    ham = references.get("hamming_search")
    if ham and ham["run"] in runs and runs[ham["run"]]["status"] == "done":
      record = runs[ham["run"]]
      lines.append(ref_row(f"binary codes of {ham['run']}, Hamming ranking (category on all "
                           f"{cat['num_queries']} queries; hamming.search timed)"
                           + merged_note(ham), record, f"{ham['queries_per_second']:.1f}"))

  multi = [(m, b) for m, by_bits in agg.items() for b, e in by_bits.items() if len(e["seeds"]) > 1]
  if multi:
    lines += ["", "## Seeds", "", "| method | bits | seeds | mAP@all | closest R@1 | closest mAP |",
              "|---|---|---|---|---|---|"]
    for method, bits in sorted(multi, key=lambda x: (methods.index(x[0]) if x[0] in methods
                                                     else 99, int(x[1]))):
      entry = agg[method][bits]
      lines.append(f"| {method} | {bits} | {', '.join(map(str, entry['seeds']))} | "
                   f"{_fmt(entry['category/map_all'], 4)} | "
                   f"{_fmt(entry['closest_match/recall_at_1'], 4)} | "
                   f"{_fmt(entry['closest_match/map_all'], 4)} |")

  merged = {}
  for name, record in runs.items():
    if record["status"] == "done" and "merged_from" in record:
      merged.setdefault(record["merged_from"], []).append(name)
  if merged:
    lines += ["", "## Merged runs", "",
              "Trained and evaluated earlier or elsewhere (same data, protocols, variant and "
              "training steps; checked when merged), recorded in these files and not run again "
              "here; their run folders are not in this workdir:", ""]
    lines += [f"- {path}: {len(names)} runs ({', '.join(sorted(names))})"
              for path, names in merged.items()]

  failed = [r for r in runs.values() if r["status"] == "failed"]
  if failed:
    lines += ["", "## Failed runs", ""]
    lines += [f"- {os.path.basename(r['workdir'])}: {r['error']}" for r in failed]
  lines += ["", "## Closest-match recipe", "",
            f"Query i = augment.query_view(test image i, fold_in(key({cm['seed']}), i), recipe), "
            "rounded to uint8:", "", "```", json.dumps(cm["recipe"], sort_keys=True), "```", "",
            f"Per-run figures, the PR curves and the aggregation: {RESULTS_JSON}; plots: "
            f"{MAP_VS_BITS_PNG}, {PR_CURVES_PNG}.", ""]
  return "\n".join(lines)


def _style(method: str, index: int) -> dict:
  """Line style of the index-th method: 18 distinct colours (tab10, black, then Dark2 without its
  grey), then the colours again with other markers, so that no two of up to 54 methods look
  alike."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  colors = (*matplotlib.colormaps["tab10"].colors, (0.0, 0.0, 0.0),
            *matplotlib.colormaps["Dark2"].colors[:7])
  markers = ("o", "s", "^")
  style = {"color": colors[index % len(colors)],
           "marker": markers[(index // len(colors)) % len(markers)], "markersize": 4}
  if method.startswith("ours_"):
    style["linestyle"] = "--"
  if method == "ours":
    style["linewidth"] = 2.5
  return style


def _save_figure(fig, path: str) -> None:
  tmp = f"{path}.tmp"
  fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
  os.replace(tmp, path)


def plot_map_vs_bits(results: dict, path: str) -> None:
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  bench = results["benchmark"]
  fig = Figure(figsize=(12, 4.5))
  axes = fig.subplots(1, 2)
  panels = (("category/map_all", "mAP@all (category retrieval)"),
            ("closest_match/map_all", "closest-match mAP (mean reciprocal rank)"))
  for ax, (key, ylabel) in zip(axes, panels):
    for i, method in enumerate(bench["methods"]):
      cells = results["aggregate"].get(method, {})
      points = sorted((int(b), c[key]) for b, c in cells.items() if c.get(key))
      if not points:
        continue
      ax.errorbar([b for b, _ in points], [s["mean"] for _, s in points],
                  yerr=[s["std"] or 0.0 for _, s in points], capsize=3, label=method,
                  **_style(method, i))
    ax.set_xticks(list(bench["bits"]))
    ax.set_xlabel("code length (bits)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
  fig.suptitle(f"{results['dataset']}: retrieval against code length (mean over seeds, ± std)")
  if axes[1].get_legend_handles_labels()[0]:
    axes[1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
  _save_figure(fig, path)


def plot_pr_curves(results: dict, path: str) -> None:
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  bench = results["benchmark"]
  ref = bench["reference_bits"]
  fig = Figure(figsize=(7.5, 4.5))
  ax = fig.subplots()
  for i, method in enumerate(bench["methods"]):
    records = sorted((r for r in results["runs"].values()
                      if r["method"] == method and r["bits"] == ref and "pr_curve" in r),
                     key=lambda r: r["seed"])
    if records:
      curve = records[0]["pr_curve"]
      ax.plot(curve["recall"], curve["precision"], label=f"{method} (seed {records[0]['seed']})",
              **_style(method, i))
  ax.set_xlabel("recall")
  ax.set_ylabel("precision")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.02)
  ax.set_title(f"{results['dataset']}: precision-recall over Hamming radius 0..{ref}, "
               f"{ref} bits")
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
  _save_figure(fig, path)


def write_outputs(workdir: str, results: dict) -> None:
  _write_atomic(os.path.join(workdir, RESULTS_JSON),
                json.dumps(results, indent=2, default=_json_default))
  _write_atomic(os.path.join(workdir, RESULTS_MD), format_markdown(results))
  plot_map_vs_bits(results, os.path.join(workdir, MAP_VS_BITS_PNG))
  plot_pr_curves(results, os.path.join(workdir, PR_CURVES_PNG))


# ---------------------------------------------------------------------------------- driver


def parse_worker(spec: str | None) -> tuple[int, int]:
  """'i/n' -> (i, n), worker i of n (0-based); None or '' -> (0, 1), the whole sweep."""
  if not spec:
    return 0, 1
  try:
    index, count = (int(part) for part in spec.split("/"))
  except ValueError:
    index, count = -1, 0
  if not 0 <= index < count:
    raise config_lib.ConfigError(f"--benchmark_worker={spec!r}: expected 'i/n' with "
                                 "0 <= i < n, e.g. 0/2 and 1/2 for two workers")
  return index, count


def worker_runs(plan, worker: tuple[int, int]) -> list[tuple[str, int, int]]:
  """Worker (i, n)'s share, the runs it takes first: every n-th run of the plan from the i-th, so
  that the main comparison table (the reference length, first in the plan) fills on every worker
  at once."""
  index, count = worker
  return [triple for position, triple in enumerate(plan) if position % count == index]


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # alive, another user's
    return True
  return True


def _remove_if_present(path: str) -> None:
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


def _age_seconds(path: str) -> float | None:
  try:
    return time.time() - os.stat(path).st_mtime
  except FileNotFoundError:
    return None


def claim_run(run_dir: str) -> tuple[bool, dict | None]:
  """Claims `run_dir` for this process: (True, None), or (False, the holder's claim).

  The claim is a file created with O_EXCL (atomic on a local or NFS file system), holding the
  host, pid and start time. A claim left by a process of this host that is no longer running
  (killed, crashed) is stale and taken over; one from another host cannot be checked from here
  and is respected (the log says which file to delete once that process is known to be gone).
  A takeover happens under a second O_EXCL file (`<claim>.takeover`), and the claim is read again
  under it: of several processes that find the same stale claim at once, exactly one claims the
  run; the others are refused as by a live claim.
  """
  os.makedirs(run_dir, exist_ok=True)
  path = os.path.join(run_dir, CLAIM_FILE)
  lock = path + ".takeover"
  me = {"host": platform.node(), "pid": os.getpid(),
        "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  busy = {"host": "?", "pid": "?", "since": "a moment ago", "file": path}
  exclusive = os.O_CREAT | os.O_EXCL | os.O_WRONLY

  def stale_holder() -> tuple[bool, dict | None]:
    """(stale, holder) of the claim at `path`; holder None once the file has gone."""
    holder = _read_json(path)
    if not isinstance(holder, dict):
      # Being written this instant, or cut short by a kill between creating and writing it
      # (stale once it is a minute old).
      age = _age_seconds(path)
      if age is None:
        return False, None
      return (True, {**busy, "since": "unwritten for a minute"}) if age >= 60.0 else (False, busy)
    holder["file"] = path
    pid = holder.get("pid")
    return (holder.get("host") == me["host"] and not (isinstance(pid, int) and _pid_alive(pid)),
            holder)

  def create() -> bool:
    try:
      fd = os.open(path, exclusive, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    return True

  for _ in range(3):
    if create():
      return True, None
    stale, holder = stale_holder()
    if holder is None:
      continue                    # released this instant: try again
    if holder.get("host") == me["host"] and holder.get("pid") == me["pid"]:
      return True, None           # ours already (a run revisited in the same process)
    if not stale:
      return False, holder
    try:
      lock_fd = os.open(lock, exclusive, 0o644)
    except FileExistsError:
      # Another process is taking it over this instant; a takeover file older than a minute
      # was left by a process killed midway (it holds the lock for milliseconds) and is removed.
      age = _age_seconds(lock)
      if age is not None and age >= 60.0:
        _remove_if_present(lock)
        continue
      return False, {**busy, "since": "being taken over"}
    try:
      os.close(lock_fd)
      # Under the lock, the claim again: a process that took it over since we read it may
      # hold it now (then it is live and refused on the next pass).
      still_stale, again = stale_holder()
      if again is not None and still_stale:
        _remove_if_present(path)
        logging.warning("%s: took over the stale claim of pid %s on %s (no longer running).",
                        path, again.get("pid"), again.get("host"))
      if create():
        return True, None
    finally:
      _remove_if_present(lock)
  return False, busy


def release_run(run_dir: str) -> None:
  """Removes this process's claim on `run_dir` (another process's claim is left alone)."""
  path = os.path.join(run_dir, CLAIM_FILE)
  holder = _read_json(path)
  if holder and holder.get("host") == platform.node() and holder.get("pid") == os.getpid():
    os.remove(path)


def untrained_runs(workdir: str, runs) -> list[tuple[str, int, int]]:
  """The (method, bits, seed) of `runs` whose folder in `workdir` has no eval_results.json yet:
  the runs still to train, the only ones an ETA should count."""
  return [run for run in runs if not os.path.exists(
      os.path.join(workdir, "runs", run_name(*run), "eval_results.json"))]


def _first_difference(ours, theirs, path: str = "") -> str:
  """The dotted path of the first field where two JSON trees differ, with both values."""
  if isinstance(ours, dict) and isinstance(theirs, dict):
    for key in sorted(set(ours) | set(theirs), key=str):
      if ours.get(key) != theirs.get(key):
        return _first_difference(ours.get(key), theirs.get(key), f"{path}.{key}" if path else key)
  return f"{path or '(top)'}: this benchmark {ours!r}, theirs {theirs!r}"


def merge_recorded_runs(config, results: dict, paths: Sequence[str],
                        is_here: Callable[[tuple[str, int, int]], bool],
                        protocols: Protocols) -> dict[str, str]:
  """Takes finished runs of this plan from other results.json files: {run name: file}.

  For runs trained earlier in another workdir, on another host (e.g. one TPU VM per share of the
  plan, without a shared file system), or in a workdir since lost: their records (every figure,
  the PR curve, the times) enter `results["runs"]` with "merged_from", and the sweep neither
  trains nor evaluates them again. A run finished in this workdir keeps its own record, and of
  several files the first that has a run gives it. Nothing is merged that was measured otherwise
  than this benchmark would measure it: the file's dataset and protocols (splits, closest-match
  recipe, seed and the SHA-256 of its rendered queries) must equal this benchmark's, and each
  merged run's variant overrides, training steps and (where recorded) config digest
  (`run_config_digest`) the ones this benchmark would train it with; otherwise a ConfigError names
  the file, the run and the field.
  """
  merged: dict[str, str] = {}
  num_train = None
  for path in paths:
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("runs"), dict):
      raise config_lib.ConfigError(f"benchmark merge {path}: not a benchmark results.json "
                                   "(missing, unreadable, cut short or without 'runs')")
    for field in ("dataset", "protocols"):
      expected = _json_round_trip(results[field])
      if data.get(field) != expected:
        raise config_lib.ConfigError(
            f"benchmark merge {path}: its runs were evaluated on other data or queries, "
            f"{field}.{_first_difference(expected, data.get(field))}")
    theirs = (data.get("benchmark") or {}).get("variants") or {}
    for name, record in data["runs"].items():
      if (name not in results["runs"] or name in merged or not isinstance(record, dict)
          or record.get("status") != "done"):
        continue
      triple = (record.get("method"), record.get("bits"), record.get("seed"))
      if name != run_name(*triple):
        raise config_lib.ConfigError(f"benchmark merge {path}: run {name!r} records "
                                     f"method/bits/seed {triple}")
      if is_here(triple):
        continue
      method = triple[0]
      run_cfg = run_config(config, *triple)
      ours = _json_round_trip(config.benchmark.variants[method])
      if theirs.get(method) != ours:
        raise config_lib.ConfigError(
            f"benchmark merge {path}: run {name} was trained with other overrides, "
            f"benchmark.variants.{method}.{_first_difference(ours, theirs.get(method))}")
      digest = record.get("config_sha256")
      if digest is not None and digest != run_config_digest(run_cfg):
        raise config_lib.ConfigError(
            f"benchmark merge {path}: run {name} was trained with another config "
            f"(config_sha256 {digest}, this benchmark's {run_config_digest(run_cfg)})")
      if num_train is None:   # the training split is the database split, loaded already
        num_train = (len(protocols.database)
                     if config.input.train_split == config.input.database_split else
                     len(input_pipeline.load_split(config.input, config.input.train_split)))
      steps = config_lib.total_steps(run_cfg, num_train)
      if record.get("train_steps") != steps:
        raise config_lib.ConfigError(
            f"benchmark merge {path}: run {name} trained {record.get('train_steps')} steps "
            f"(train_steps), this benchmark trains it {steps}")
      results["runs"][name] = {**record, "merged_from": path}
      merged[name] = path
  return merged


def run_benchmark(config: ml_collections.ConfigDict, workdir: str, *,
                  worker: tuple[int, int] = (0, 1),
                  report_only: bool = False, merge_from: Sequence[str] = ()) -> dict[str, Any]:
  """Trains and evaluates every planned run (resuming), then the references; returns results.

  Writes results.json, results.md, mAP_vs_bits.png and pr_curves.png in `workdir` after every
  run. A failed run (e.g. non-finite loss) is recorded and the sweep goes on; SIGTERM during a
  run stops the sweep after that run's checkpoint (rerun to resume).

  `worker=(i, n)` with n > 1 trains and evaluates `worker_runs(plan, (i, n))` first, then (in a
  single-process job) any other run of the plan that no process has claimed yet, each in its own
  run folder; it writes neither the references nor the shared outputs. So n such workers can
  share `workdir` (n processes on one host, or n hosts on a shared file system) and keep busy
  until the plan is done, even when earlier runs left their shares unequal. Once they have all
  finished, the plain command (worker (0, 1)) finds every run done, computes the references and
  writes the tables and plots. A run claimed by another live process (`claim_run`) is skipped
  and left "pending", never trained twice at once.

  `report_only=True` trains and evaluates nothing: it writes the references (cached after the
  first time), tables and plots of the runs finished so far, the others shown as not run yet.
  Safe while workers are training in the same `workdir` (it claims nothing and writes no run
  folder), e.g. to read a long sweep's table halfway through.

  `merge_from`: results.json files of earlier or other sweeps of this plan whose finished runs
  count as done here and are not trained again (`merge_recorded_runs`); also in workers.
  """
  validate_benchmark(config)
  worker_index, num_workers = worker
  if not 0 <= worker_index < num_workers:
    raise config_lib.ConfigError(f"benchmark worker {worker_index} of {num_workers}: expected "
                                 "0 <= index < count")
  partial = num_workers > 1
  if report_only and partial:
    raise config_lib.ConfigError(f"benchmark worker {worker_index} of {num_workers} with "
                                 "report_only: a report covers the whole plan (no worker)")
  session_start = time.time()
  bench = config.benchmark
  plan = planned_runs(bench)
  mine = set(worker_runs(plan, worker))
  os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
  if not partial:
    _write_atomic(os.path.join(workdir, "benchmark_config.json"),
                  config.to_json_best_effort(indent=2))
  category_names = category_metric_names(config)
  protocols = load_protocols(config)
  fp = protocols.fingerprint
  results = {
      "dataset": config.input.dataset,
      "benchmark": _json_round_trip(bench.to_dict()),
      "machine": machine_info(),
      "protocols": {
          "category": {"query_split": fp["query_split"], "database_split": fp["database_split"],
                       "num_queries": fp["num_category_queries"],
                       "num_database": fp["num_database_split"], "metrics": category_names},
          "closest_match": {**fp["closest_match"], "num_originals": fp["num_query_split"],
                            "num_database": fp["num_query_split"] + fp["num_database_split"]},
      },
      "runs": {run_name(*triple): {"method": triple[0], "bits": triple[1], "seed": triple[2],
                                   "workdir": os.path.join("runs", run_name(*triple)),
                                   "status": "pending"} for triple in plan},
      "references": None,
      "status": {"planned": len(plan), "done": 0, "failed": 0, "interrupted": False},
  }

  def refresh(references_seconds=None):
    runs = results["runs"].values()
    results["status"]["done"] = sum(r["status"] == "done" for r in runs)
    results["status"]["failed"] = sum(r["status"] == "failed" for r in runs)
    results["aggregate"] = aggregate(results["runs"], category_names)
    results["wall_seconds"] = {
        "runs": sum(_run_seconds(r) or 0.0 for r in runs if r["status"] == "done"),
        "references": references_seconds, "this_session": time.time() - session_start}
    if jax.process_index() == 0 and not partial:
      write_outputs(workdir, results)

  taken = set()   # other workers' runs this one took over (below)

  def left_to_me():
    # Runs trained earlier (e.g. by another worker's plan, or before an interruption) are still
    # "pending" until the loop reaches them, but cost no training.
    return len([run for run in untrained_runs(workdir, mine | taken)
                if results["runs"][run_name(*run)]["status"] == "pending"
                and run_name(*run) not in merged])

  def eta(remaining):
    known = [s for s in (_run_seconds(r) for r in results["runs"].values()
                         if r["status"] == "done") if s]
    return _duration(np.mean(known) * remaining) if known else "unknown until a run ends"

  def finished(triple) -> bool:
    run_dir = os.path.join(workdir, "runs", run_name(*triple))
    run_eval = _read_json(os.path.join(run_dir, RUN_EVAL_JSON))
    return (os.path.exists(os.path.join(run_dir, "eval_results.json")) and run_eval is not None
            and run_eval.get("protocol") == protocols.fingerprint)

  merged = merge_recorded_runs(config, results, merge_from, finished, protocols)
  for path in dict.fromkeys(merged.values()):
    names = [name for name, source in merged.items() if source == path]
    logging.info("Merged %d finished runs from %s (not trained here): %s.", len(names), path,
                 ", ".join(names))
  refresh()   # the plan, all pending but the merged runs, before the first run

  def train_and_record(position, method, bits, seed) -> bool:
    """Trains (or resumes) and evaluates one run and records it; False if stopped by SIGTERM."""
    name = run_name(method, bits, seed)
    run_dir = os.path.join(workdir, "runs", name)
    eval_path = os.path.join(run_dir, RUN_EVAL_JSON)
    eval_results = _read_json(os.path.join(run_dir, "eval_results.json"))
    train_wall, codes = None, None
    if eval_results is None:
      remaining = left_to_me()
      logging.info("[%d/%d] %s: training (ETA of the %d runs left: %s).", position, len(plan),
                   name, remaining, eta(remaining))
      _remove_if_present(eval_path)     # evaluated an older model of this run
      started = time.time()
      try:
        outcome, codes = train_lib.train_and_evaluate(run_config(config, method, bits, seed),
                                                      run_dir, return_codes=True)
      except (FloatingPointError, ValueError, RuntimeError, OSError) as e:
        logging.exception("[%d/%d] %s failed; going on with the next run.", position,
                          len(plan), name)
        results["runs"][name].update(status="failed", error=f"{type(e).__name__}: {e}")
        refresh()
        return True
      if "stopped_at_step" in outcome:
        results["runs"][name]["status"] = "interrupted"
        results["status"]["interrupted"] = True
        refresh()
        logging.warning("Stopped during %s; rerun the same command to resume.", name)
        return False
      train_wall = time.time() - started
      eval_results = outcome
    else:
      logging.info("[%d/%d] %s: already trained, skipping.", position, len(plan), name)

    run_eval = _read_json(eval_path)
    if run_eval is None or run_eval.get("protocol") != protocols.fingerprint:
      try:
        run_eval = evaluate_run(run_dir, protocols, pr_curve=bits == bench.reference_bits,
                                codes=codes)
      except (ValueError, RuntimeError, OSError) as e:
        logging.exception("[%d/%d] %s: the closest-match evaluation failed.", position,
                          len(plan), name)
        results["runs"][name].update(status="failed", error=f"{type(e).__name__}: {e}")
        refresh()
        return True
      previous = _read_json(eval_path) or {}
      run_eval["train_wall_seconds"] = train_wall or previous.get("train_wall_seconds")
      if jax.process_index() == 0:
        _write_atomic(eval_path, json.dumps(run_eval, indent=2, default=_json_default))
    results["runs"][name] = _run_record(
        method, bits, seed, run_dir, category_names, eval_results, run_eval,
        config_sha256=run_config_digest(run_config(config, method, bits, seed)))
    refresh()
    record = results["runs"][name]
    figures = (record["category"]["map_all"], record["closest_match"]["recall_at_1"])
    if train_wall is None:     # trained earlier (or in another process): nothing ran just now
      logging.info("[%d/%d] %s: recorded (trained earlier, in %s): category mAP@all %.4f, "
                   "closest-match R@1 %.4f.", position, len(plan), name,
                   _duration(_run_seconds(record)), *figures)
      return True
    remaining = left_to_me()
    logging.info("[%d/%d] %s done in %s: category mAP@all %.4f, closest-match R@1 %.4f "
                 "(ETA of the %d runs left: %s).", position, len(plan), name,
                 _duration(_run_seconds(record)), *figures, remaining, eta(remaining))
    return True

  # In a single process every run is trained and evaluated under a claim (claim_run), so that
  # workers and the plain command sharing `workdir` never work on one run at once; and a worker
  # that has finished its own share goes on with the runs of the other workers that none has
  # started, so the loads even out whatever was done before. (Several processes of one JAX job
  # run the loop in lockstep: no claims there, each takes its own share only.)
  claims = jax.process_count() == 1
  order = [triple for triple in plan if triple in mine]
  if partial and claims:
    order += [triple for triple in plan if triple not in mine]
  for method, bits, seed in order:
    triple = (method, bits, seed)
    position = plan.index(triple) + 1
    run_dir = os.path.join(workdir, "runs", run_name(*triple))
    if run_name(*triple) in merged:
      continue                 # recorded in a merged results.json
    done = finished(triple)
    if report_only and not done:
      continue                 # left "pending"
    if triple not in mine and done:
      continue                 # another worker's, done
    if not claims or done:
      if not train_and_record(position, *triple):
        return results
      continue
    claimed, holder = claim_run(run_dir)
    if not claimed:
      logging.info("[%d/%d] %s: being worked on by pid %s on %s since %s; skipping it (rerun "
                   "once it has finished; if that process is gone, delete %s).", position,
                   len(plan), run_name(*triple), holder.get("pid", "?"),
                   holder.get("host", "?"), holder.get("since", "?"), holder["file"])
      continue
    if triple not in mine:
      taken.add(triple)
      logging.info("[%d/%d] %s: another worker's run that none has started; taking it.",
                   position, len(plan), run_name(*triple))
    try:
      if not train_and_record(position, *triple):
        return results
    finally:
      release_run(run_dir)

  if partial:
    logging.info("Benchmark worker %d of %d finished: %d runs done (%d of its share of %d, %d "
                 "taken over from the others), %d failed. When every worker has finished, run "
                 "the command without --benchmark_worker for the references, tables and plots.",
                 worker_index, num_workers, results["status"]["done"],
                 sum(results["runs"][run_name(*t)]["status"] == "done" for t in mine), len(mine),
                 len(taken), results["status"]["failed"])
    return results

  float_method = bench.references.float_method
  candidates = sorted((r for r in results["runs"].values()
                       if r["method"] == float_method and r["bits"] == bench.reference_bits
                       and r["status"] == "done"), key=lambda r: r["seed"])
  # A run trained here first: its model is on disk. A merged run's model is elsewhere: its
  # float reference comes from its own results.json, where that has it.
  candidates.sort(key=lambda r: "merged_from" in r)
  float_record = candidates[0] if candidates else None
  float_run = None
  if float_record is not None and "merged_from" not in float_record:
    float_run = os.path.join(workdir, float_record["workdir"])
  # The float run's metrics stand for its model: a retrained model changes them.
  references_fingerprint = _json_round_trip(dict(
      protocol=protocols.fingerprint, references=bench.references.to_dict(),
      float_run={k: float_record.get(k)
                 for k in ("workdir", "category", "closest_match", "merged_from")}
      if float_record else None))
  cache_path = os.path.join(workdir, REFERENCES_JSON)
  cached = _read_json(cache_path)
  if cached and cached.get("fingerprint") == references_fingerprint:
    references = cached["references"]
  else:
    logging.info("References: pixel SAD and float codes (%s).", float_run or (
        f"of {float_record['workdir']}, merged from {float_record['merged_from']}"
        if float_record else "no float run"))
    started = time.time()
    references = compute_references(config, protocols, float_run)
    references["seconds"] = time.time() - started
    if float_record is not None and float_run is None:
      source = float_record["merged_from"]
      theirs = (_read_json(source) or {}).get("references") or {}
      name = run_name(float_record["method"], float_record["bits"], float_record["seed"])
      for key in ("float_cosine", "hamming_search"):
        if (theirs.get(key) or {}).get("run") == name:
          references[key] = {**theirs[key], "merged_from": source}
    if jax.process_index() == 0:
      _write_atomic(cache_path, json.dumps({"fingerprint": references_fingerprint,
                                            "references": references}, indent=2,
                                           default=_json_default))
  results["references"] = references
  refresh(references.get("seconds"))
  logging.info("Benchmark %s: %d of %d runs done, %d failed; %s.",
               "report (nothing trained)" if report_only else "finished",
               results["status"]["done"], len(plan), results["status"]["failed"],
               os.path.join(workdir, RESULTS_MD))
  return results
