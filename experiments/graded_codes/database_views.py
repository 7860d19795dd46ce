r"""Database views: each catalogue image indexed by several codes, its own and renderings of it.

    python experiments/graded_codes/database_views.py WORKDIR [--views 4] [--cache FILE.npz] \
        [--clean_weights 2 3 5] [--aggregates min mean code]

A shopper's photo drifts from its original's code (where_garment_goes.py); this asks whether
the catalogue side can meet it. Every database image (the closest match's originals and
distractors; the category protocol's training images) gets `views` codes: its own, and
`views - 1` renderings by the closest-match recipe (the recipe the model's training query views
use in `graded_tanh_qv2`) with seeds other than the evaluation's queries', as
`deephash index --view_weights=...` renders them (serve/catalogue.py `catalogue_views`). An
item's distance to a query is the minimum ("min") or a weighted mean ("mean", the item's own
code weighted `clean_weight`, each rendering 1) of the distances to its codes: the mean's
Hamming form is the ranking of that index (search/index.py). Or the item keeps one code
("code"): the sign of the same weighted mean of its views' continuous codes, an index of one
code an item whose codes were made from the renderings too. Both protocols are scored on it,
tie-aware (ranking.one_relevant_metrics, ranking.ranking_metrics), for 1, 2 and `views` views
(the weights at `views` only): the closest match by Hamming and by the asymmetric distance, the
category by Hamming; and, for the weighted means, the served search of that index
(closest_match.reranked_metrics: the Hamming top 100 re-ranked by the asymmetric distance, the
database in a seeded order). `--cache` keeps the views' codes (rendering and embedding 70,000
images a view is the slow part). One JSON line per setting.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from deephash_jax.evaluators import closest_match
from deephash_jax.evaluators import ranking
from deephash_jax.search import asymmetric
from deephash_jax.serve import catalogue

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import where_garment_goes  # pylint: disable=g-import-not-at-top,wrong-import-position


def view_distance_rows(query_codes, view_codes, *, metric: str = "hamming",
                       aggregate: str = "min", clean_weight: int = 1):
  """ranking's distance rows of `query_codes` (N, K) against items with several codes each,
  `view_codes` (V, M, K), view 0 the items' own: the minimum ("min") or the mean ("mean", view 0
  weighted `clean_weight`, the others 1; returned as the weighted sum, the same ranking) over an
  item's V codes of the Hamming distance between signs ("hamming") or of the asymmetric distance
  of the query's continuous code ("asymmetric", search/asymmetric.py); or that distance to one
  code an item, the sign of the same weighted mean of its V continuous codes ("code",
  `averaged_codes`). Float64, exact for whole weights."""
  if aggregate not in ("min", "mean", "code"):
    raise ValueError(f"aggregate: 'min', 'mean' or 'code', got {aggregate!r}")
  if aggregate == "code":
    view_codes, aggregate = averaged_codes(view_codes, clean_weight)[None], "min"
  signs = np.where(np.asarray(view_codes) > 0, 1.0, -1.0)
  weights = np.ones(len(signs))
  weights[0] = clean_weight
  # The mean as the weighted sum, which ranks as it does: with whole weights every sum is exact
  # (integers, or multiples of 2**-20), so equal means tie exactly, as the tie-aware metrics need.
  reduce = np.min if aggregate == "min" else (
      lambda d, axis: np.tensordot(weights, np.asarray(d), axes=(0, axis)))
  if metric == "hamming":
    q = np.where(np.asarray(query_codes) > 0, 1.0, -1.0)
    num_bits = q.shape[1]
    return lambda start, stop: reduce([np.rint((num_bits - q[start:stop] @ s.T) / 2)
                                       for s in signs], axis=0)
  if metric == "asymmetric":
    w = asymmetric.query_weights(query_codes)
    return lambda start, stop: reduce([asymmetric.distances(w[start:stop], s) for s in signs],
                                      axis=0)
  raise ValueError(f"metric: 'hamming' or 'asymmetric', got {metric!r}")


def averaged_codes(view_codes, clean_weight: int = 1) -> np.ndarray:
  """(M, K): the weighted mean of `view_codes` (V, M, K) over the views, view 0 weighted
  `clean_weight` and the others 1; its signs are an item's one code, as `deephash index
  --view_weights=<clean_weight>,1,... --merge_views` stores it."""
  return catalogue.merged_codes(view_codes, (clean_weight,) + (1,) * (len(view_codes) - 1))


def view_codes(e: where_garment_goes.Embedded, views: int, cache: str | None) -> np.ndarray:
  """(views, originals + distractors, K) continuous codes: the database's own, then renderings
  (a cache of fewer views is extended by the missing renderings)."""
  model_id = e.encoder.model_id
  if cache and os.path.exists(cache):
    stored = np.load(cache)
    if "model_id" not in stored.files:
      raise ValueError(f"--cache {cache}: holds no model id; delete it to embed the views again")
    if str(stored["model_id"]) != model_id:
      raise ValueError(f"--cache {cache}: codes of model {stored['model_id']}, not of this "
                       f"workdir's {model_id}")
    if len(stored["views"]) >= views:
      return stored["views"][:views]
    codes = list(stored["views"])
  else:
    codes = [np.concatenate([e.originals, e.distractors])]
  cm = e.encoder.config.eval.closest_match
  images = np.concatenate([e.query.images, e.database.images])
  codes += [e.encoder.embed(view) for view in catalogue.catalogue_views(
      images, cm.recipe, cm.seed, views, first=len(codes))]
  codes = np.stack(codes)
  if cache:
    np.savez(cache, views=codes, model_id=model_id)
  return codes


def main():
  parser = where_garment_goes.workdirs_parser(__doc__)
  parser.add_argument("--views", type=int, default=4)
  parser.add_argument("--cache", default=None, help="an .npz of the views' codes (one workdir)")
  parser.add_argument("--clean_weights", type=int, nargs="+", default=[1, 2, 3, 5],
                      help="whole weights of the item's own code in the mean at --views views")
  parser.add_argument("--aggregates", nargs="+", choices=("min", "mean", "code"),
                      default=["min", "mean", "code"], help="the settings to score besides one code")
  args = parser.parse_args()
  for workdir in args.workdirs:
    start = time.time()
    e = where_garment_goes.embed_protocol(workdir, args.num_queries)
    codes = view_codes(e, args.views, args.cache)
    originals = len(e.originals)
    settings = [(1, "min", 1)]                         # one code: the evaluation's
    if "min" in args.aggregates:
      settings += [(v, "min", 1) for v in sorted({2, args.views})]
    if "mean" in args.aggregates:
      settings += [(v, "mean", 1) for v in sorted({2, args.views})]
      settings += [(args.views, "mean", w) for w in args.clean_weights if w != 1]
    if "code" in args.aggregates:
      settings += [(args.views, "code", w) for w in sorted({1, *args.clean_weights})]
    for v, aggregate, weight in settings:
      out = {"workdir": workdir, "views": v, "aggregate": aggregate, "clean_weight": weight}
      rows = lambda q, c, metric="hamming": view_distance_rows(
          q, c, metric=metric, aggregate=aggregate, clean_weight=weight)
      for metric in ("hamming", "asymmetric"):
        cm = ranking.one_relevant_metrics(rows(e.query_codes, codes[:v], metric),
                                          e.protocol.query_ids, e.protocol.db_ids,
                                          recall_at=(1, 10), ties="expected")
        out.update({f"cm_{metric}_recall_at_1": round(float(cm["recall_at_1"]), 4),
                    f"cm_{metric}_recall_at_10": round(float(cm["recall_at_10"]), 4)})
      category = ranking.ranking_metrics(rows(e.originals, codes[:v, originals:]),
                                         e.query.labels, e.database.labels, map_at=(1000,),
                                         ties="expected")
      if aggregate == "mean":
        weights = (weight,) + (1,) * (v - 1)
        served = closest_match.reranked_metrics(
            e.protocol, e.query_codes, np.moveaxis(codes[:v, :originals], 0, 1),
            np.moveaxis(codes[:v, originals:], 0, 1), view_weights=weights)
      elif aggregate == "code":
        one = averaged_codes(codes[:v], weight)
        served = closest_match.reranked_metrics(e.protocol, e.query_codes, one[:originals],
                                                one[originals:])
      if aggregate in ("mean", "code"):
        out.update(served_reranked_recall_at_1=round(served["recall_at_1"], 4),
                   served_reranked_recall_at_10=round(served["recall_at_10"], 4))
      out.update(map_all=round(float(category["map_all"]), 4),
                 map_at_1000=round(float(category["map_at_1000"]), 4),
                 seconds=round(time.time() - start))
      print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
