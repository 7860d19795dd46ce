r"""Query views: the query's code merged with renderings of the query, as the catalogue's can be.

    python experiments/graded_codes/query_views.py WORKDIR --views 4 --cache F.npz \
        --query_cache Q.npz --pairs 0,6 6,6 6,0

`deephash index --merge_views` gives each catalogue image the sign of the weighted mean of its
own continuous code and those of renderings of it (database_views.py, the "code" aggregate).
This asks whether the query side gains from the same: a query's code becomes the sign of the
weighted mean of its own code (weight `wq`) and of `views - 1` renderings of the query by the
closest-match recipe (weight 1 each), with seeds that neither the evaluation's queries nor the
catalogue's views use (`query_view_seeds`). Each pair `wq,wd` scores the closest match (the
rendered shoppers' photos against the originals and distractors) and the category search (the
test images against the training images; a test image's renderings are those the catalogue's
views of the originals use) with queries merged at `wq` and the database merged at `wd`; 0 keeps
that side's own code. Tie-aware, Hamming, as the evaluation. One JSON line a pair.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from deephash_jax.evaluators import closest_match
from deephash_jax.evaluators import ranking

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import database_views  # pylint: disable=g-import-not-at-top,wrong-import-position
import where_garment_goes  # pylint: disable=g-import-not-at-top,wrong-import-position

# A query's rendering v uses seed + this + v: above the catalogue's views (VIEW_SEED_OFFSET + v,
# v < QUERY_SEED_OFFSET - VIEW_SEED_OFFSET) and never the evaluation's queries' seed.
QUERY_SEED_OFFSET = 2 * closest_match.VIEW_SEED_OFFSET


def query_view_seeds(seed: int, views: int) -> list[int]:
  """The seeds of a query's renderings 1.. views - 1."""
  return [int(seed) + QUERY_SEED_OFFSET + v for v in range(1, views)]


def merged(view_codes: np.ndarray, weight: int) -> np.ndarray:
  """(N, K): view 0's codes (weight 0), or the weighted mean of the views, view 0 weighted
  `weight` (`database_views.averaged_codes`, the catalogue's merge)."""
  if weight == 0:
    return np.asarray(view_codes[0])
  return database_views.averaged_codes(view_codes, weight)


def query_codes(e: where_garment_goes.Embedded, views: int, cache: str | None) -> np.ndarray:
  """(views, queries, K): the closest-match queries' continuous codes, then those of renderings
  of the rendered queries (`query_view_seeds`); `cache` keeps them for this model."""
  model_id = e.encoder.model_id
  if cache and os.path.exists(cache):
    stored = np.load(cache)
    if ("model_id" not in stored.files or str(stored["model_id"]) != model_id
        or len(stored["views"]) < views):
      raise ValueError(f"--query_cache {cache}: not {views} views of model {model_id}; delete it")
    return stored["views"][:views]
  cm = e.encoder.config.eval.closest_match
  codes = np.stack([e.query_codes] + [
      e.encoder.embed(closest_match.render_queries(e.protocol.queries, cm.recipe, s))
      for s in query_view_seeds(cm.seed, views)])
  if cache:
    np.savez(cache, views=codes, model_id=model_id)
  return codes


def hamming_rows(queries, database):
  """ranking's distance rows: the Hamming distances between the signs of `queries` (N, K) and
  `database` (M, K), `database_views.view_distance_rows` of one code an item."""
  return database_views.view_distance_rows(queries, np.asarray(database)[None])


def score(e, db_views, q_views, wq: int, wd: int) -> dict:
  """Both protocols' tie-aware figures with queries merged at `wq` and the database at `wd`."""
  originals = len(e.originals)
  database = merged(db_views, wd)
  cm = ranking.one_relevant_metrics(hamming_rows(merged(q_views, wq), database),
                                    e.protocol.query_ids, e.protocol.db_ids,
                                    recall_at=(1, 10), ties="expected")
  category = ranking.ranking_metrics(
      hamming_rows(merged(db_views[:, :originals], wq), database[originals:]),
      e.query.labels, e.database.labels, map_at=(1000,), ties="expected")
  return {"cm_recall_at_1": round(float(cm["recall_at_1"]), 4),
          "cm_recall_at_10": round(float(cm["recall_at_10"]), 4),
          "map_all": round(float(category["map_all"]), 4),
          "map_at_1000": round(float(category["map_at_1000"]), 4)}


def main():
  parser = where_garment_goes.workdirs_parser(__doc__)
  parser.add_argument("--views", type=int, default=4)
  parser.add_argument("--cache", default=None, help="database_views.py's .npz (one workdir)")
  parser.add_argument("--query_cache", default=None, help="an .npz of the queries' views")
  parser.add_argument("--pairs", nargs="+", default=["0,6", "6,6", "6,0"],
                      help="wq,wd: whole weights of the own code, 0 for the own code alone")
  args = parser.parse_args()
  pairs = [tuple(int(x) for x in p.split(",")) for p in args.pairs]
  for workdir in args.workdirs:
    start = time.time()
    e = where_garment_goes.embed_protocol(workdir, args.num_queries)
    db_views = database_views.view_codes(e, args.views, args.cache)
    q_views = query_codes(e, args.views, args.query_cache)
    for wq, wd in pairs:
      out = {"workdir": workdir, "views": args.views, "query_weight": wq, "database_weight": wd}
      out.update(score(e, db_views, q_views, wq, wd), seconds=round(time.time() - start))
      print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
