"""The closest-match protocol: a shopper's photo of a catalogue garment must find that garment.

Queries: the first N images of the query split re-rendered by a fixed, seeded recipe
(`render_queries`: a new background, pose and illumination, as a shopper's photo of the same
garment, `data.augment.query_view`). Database: every original image of the query split, then the
database split as distractors. Relevant: the original only. Metrics: R@1, R@10 and mAP (= mean
reciprocal rank, with one relevant item), ranked by Hamming distance with the ties rule of
`config.eval.ties` (ranking.py: "expected" scores the expectation over every order of tied items,
so that neither the database order nor collapsed codes can win ties); and the same ranked by the
asymmetric distance of the queries' continuous codes to the database's bits
(`asymmetric_metrics`); and R@1 and R@10 of the search users get (`reranked_metrics`:
HammingIndex.search_asymmetric, the Hamming top 100 re-ranked by the asymmetric distance, what
`deephash predict` and the demo serve), on the database in an order shuffled by a fixed seed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deephash_jax.data import augment
from deephash_jax.evaluators import ranking
from deephash_jax.search import index as index_lib
from deephash_jax.search import packing

METRICS = ("recall_at_1", "recall_at_10", "map_all")
RERANK_SHUFFLE_SEED = 0     # the database order of `reranked_metrics`
# A catalogue index's view v (serve/catalogue.py `catalogue_views`) renders with seed + this + v:
# never the queries' seed.
VIEW_SEED_OFFSET = 1000


def render_queries(images: np.ndarray, recipe, seed: int, *, batch_size: int = 1000) -> np.ndarray:
  """Shopper's-photo copies of `images` (uint8 NHWC) by a fixed recipe, as uint8 images.

  Query i is `augment.query_view(images[i], fold_in(key(seed), i), recipe)`: a new background
  (with `recipe.background_prob`), then pose (rotation, scale, shift, mirror), then illumination
  (gamma, contrast, brightness), rendered in float and rounded to uint8 like a stored photo. The
  key of an image depends on its index only, so a query does not change with N or the batching.
  """
  render = _renderer(json.dumps(dict(recipe), sort_keys=True, default=_to_list))
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


def recipe_dict(recipe) -> dict:
  """A rendering recipe in plain JSON types (tuples as lists), as files record it."""
  return json.loads(json.dumps(dict(recipe), default=_to_list))


def _to_list(obj):
  if isinstance(obj, (tuple, np.ndarray)):
    return list(obj)
  raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@functools.lru_cache(maxsize=4)
def _renderer(recipe_json: str):
  recipe = ml_collections.ConfigDict(json.loads(recipe_json))
  return jax.jit(jax.vmap(lambda image, key: jnp.round(
      augment.query_view(image, key, recipe) * 255.0).astype(jnp.uint8)))


@dataclasses.dataclass(frozen=True)
class ClosestMatch:
  """The rendered queries and the composition of the database (originals, then distractors)."""
  queries: np.ndarray     # uint8 (N, H, W, C), query i rendered from original i
  num_originals: int      # the query split's images, database indices 0..num_originals - 1
  num_distractors: int    # the database split's images, after the originals
  fingerprint: dict       # what was rendered, to tell cached evaluations apart

  @property
  def query_ids(self) -> np.ndarray:
    return np.arange(len(self.queries))

  @property
  def db_ids(self) -> np.ndarray:
    # Originals keep their index (= the id of their query); distractors match no query.
    return np.concatenate([np.arange(self.num_originals), np.full(self.num_distractors, -1)])


def prepare(originals: np.ndarray, num_distractors: int, cm_config) -> ClosestMatch:
  """Renders the queries of `config.eval.closest_match` from the query split's `originals`."""
  num = min(cm_config.num_queries or len(originals), len(originals))
  queries = render_queries(originals[:num], cm_config.recipe, cm_config.seed)
  fingerprint = dict(num_queries=num, seed=cm_config.seed,
                     recipe=recipe_dict(cm_config.recipe),
                     sha256=hashlib.sha256(queries.tobytes()).hexdigest()[:16])
  return ClosestMatch(queries, len(originals), num_distractors, fingerprint)


def metrics(protocol: ClosestMatch, query_codes, original_codes, distractor_codes, *,
            num_bits: int, ties: str) -> dict[str, float]:
  """R@1, R@10 and mAP of continuous (or binary) codes, binarised by sign, on the protocol."""
  database = np.concatenate([original_codes, distractor_codes])
  result = ranking.retrieval_metrics(
      packing.pack_bits(query_codes), None, packing.pack_bits(database), None,
      num_bits=num_bits, map_at=(), radius=(), recall_at=(1, 10), ties=ties,
      query_ids=protocol.query_ids, db_ids=protocol.db_ids)
  return {k: result[k] for k in (*METRICS, "num_queries", "num_database")}


def asymmetric_metrics(protocol: ClosestMatch, query_codes, original_codes, distractor_codes, *,
                       ties: str) -> dict[str, float]:
  """`metrics` with the queries' continuous codes against the database's signs, ranked by the
  asymmetric distance (ranking.asymmetric_distance_rows): the database stays bits, a query's
  unsure bits count for little."""
  database = np.concatenate([original_codes, distractor_codes])
  result = ranking.one_relevant_metrics(
      ranking.asymmetric_distance_rows(query_codes, database), protocol.query_ids,
      protocol.db_ids, recall_at=(1, 10), ties=ties)
  return {k: result[k] for k in METRICS}


def shuffled_index(codes, seed: int, *, view_weights=(1,)) -> index_lib.HammingIndex:
  """A HammingIndex of the signs of `codes` (N, K), or (N, views, K) with `view_weights`,
  inserted in an order shuffled by `seed`, its ids the rows' places in `codes`: the ties it
  breaks by insertion order fall at random."""
  codes = np.asarray(codes)
  order = np.random.default_rng(seed).permutation(len(codes))
  index = index_lib.HammingIndex(codes.shape[-1], view_weights=view_weights)
  packed = packing.pack_bits(codes[order].reshape(-1, codes.shape[-1]))
  index.add(packed.reshape(*codes.shape[:-1], -1), ids=order)
  return index


def reranked_metrics(protocol: ClosestMatch, query_codes, original_codes, distractor_codes, *,
                     candidates: int = index_lib.DEFAULT_CANDIDATES,
                     seed: int = RERANK_SHUFFLE_SEED, view_weights=(1,)) -> dict[str, float]:
  """R@1 and R@10 of the served search: a HammingIndex of the database's signs, searched by
  `search_asymmetric(query_codes, 10, candidates=candidates)` (the Hamming top `candidates`,
  re-ranked by the asymmetric distance). With `view_weights`, original and distractor codes are
  (N, views, K): an index of catalogue views (search/index.py).

  The index holds the database in an order shuffled by `seed`, since the search breaks its ties
  (equal Hamming distances at the candidates' boundary, equal codes) by that order: one draw of
  the random tie-breaking whose expectation `metrics` scores, so the originals (first in the
  protocol's database) win no ties. No mAP: the list is cut at `candidates`.
  """
  index = shuffled_index(np.concatenate([original_codes, distractor_codes]), seed,
                         view_weights=view_weights)
  _, found = index.search_asymmetric(np.asarray(query_codes), min(10, candidates),
                                     candidates=candidates)
  hit = found == np.asarray(protocol.query_ids)[:, None]       # query i's original: position i
  return {"recall_at_1": float(hit[:, 0].mean()), "recall_at_10": float(hit.any(axis=1).mean()),
          "candidates": candidates}
