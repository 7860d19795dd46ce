r"""How much of the asymmetric ranking a re-ranked Hamming top-D keeps, and what it costs.

    python experiments/graded_codes/rerank_depth.py WORKDIR [WORKDIR ...] \
        [--depths 10 30 100 300 1000] [--num_queries N]

For each workdir (a finished `deephash train`), on its closest-match protocol (the evaluation's
rendered queries; the test originals, then the training images) and its category protocol (the
test images against the training images, relevant = the same type):
* `eval_*`: the evaluation's tie-aware R@1 ranked by Hamming and by the full asymmetric ranking
  (evaluators/closest_match.py), the two ends;
* a `HammingIndex` of the database in an order shuffled by a fixed seed (so that the
  index's ties, broken by insertion order, favour no one; closest_match.shuffled_index, as the
  evaluation's `closest_match_reranked_*`), searched as users search it:
  `hamming_*` by `search` (the signs), `rerank_<D>_*` by `search_asymmetric(candidates=D)`: the
  Hamming top-D re-ranked by the query's continuous code. For each: closest-match R@1 and R@10,
  `found_in_<D>` (the share of originals among the D Hamming candidates: the re-ranking's
  ceiling), the category search's P@10, and queries per second of the search alone (10,000
  queries against 70,000 codes; the first call, which compiles, is not timed).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from deephash_jax.evaluators import closest_match
from deephash_jax.search import packing

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import where_garment_goes  # pylint: disable=g-import-not-at-top,wrong-import-position


def index_figures(query_codes, cm_db_codes, category_codes, category_labels, category_db_codes,
                  category_db_labels, *, depths,
                  seed: int = closest_match.RERANK_SHUFFLE_SEED) -> dict:
  """The `hamming_*` and `rerank_<D>_*` figures of the module docstring.

  query_codes (N, K) continuous codes whose original is row i of cm_db_codes (M, K);
  category_codes (Q, K) with category_labels (Q,) against category_db_codes (P, K) with
  category_db_labels (P,); all continuous codes.
  """
  cm_index = closest_match.shuffled_index(cm_db_codes, seed)
  category_index = closest_match.shuffled_index(category_db_codes, seed)
  own = np.arange(len(query_codes))[:, None]

  def scores(search, prefix):
    search(cm_index, query_codes[:256])           # compiles (one batch of queries)
    start = time.perf_counter()
    _, found = search(cm_index, query_codes)
    seconds = time.perf_counter() - start
    _, neighbours = search(category_index, category_codes)
    same_type = category_db_labels[neighbours] == category_labels[:, None]
    hit = found == own
    return {f"{prefix}_recall_at_1": round(float(hit[:, 0].mean()), 4),
            f"{prefix}_recall_at_10": round(float(hit.any(1).mean()), 4),
            f"{prefix}_category_precision_at_10": round(float(same_type.mean()), 4),
            f"{prefix}_queries_per_second": round(len(query_codes) / seconds)}

  out = scores(lambda index, q: index.search(packing.pack_bits(q), 10), "hamming")
  for depth in depths:
    _, candidates = cm_index.search(packing.pack_bits(query_codes), depth)
    out[f"found_in_{depth}"] = round(float((candidates == own).any(1).mean()), 4)
    out.update(scores(lambda index, q, d=depth: index.search_asymmetric(q, 10, candidates=d),
                      f"rerank_{depth}"))
  return out


def measure(workdir: str, depths, num_queries: int | None = None) -> dict:
  e = where_garment_goes.embed_protocol(workdir, num_queries)
  ties = e.encoder.config.eval.get("ties", "expected")
  hamming = closest_match.metrics(e.protocol, e.query_codes, e.originals, e.distractors,
                                  num_bits=e.encoder.num_bits, ties=ties)
  asymmetric = closest_match.asymmetric_metrics(e.protocol, e.query_codes, e.originals,
                                                e.distractors, ties=ties)
  out = {"workdir": workdir, "num_bits": e.encoder.num_bits, "num_queries": len(e.query_codes),
         "eval_hamming_recall_at_1": round(float(hamming["recall_at_1"]), 4),
         "eval_asymmetric_recall_at_1": round(float(asymmetric["recall_at_1"]), 4)}
  out.update(index_figures(e.query_codes, np.concatenate([e.originals, e.distractors]),
                           e.originals, e.query.labels, e.distractors, e.database.labels,
                           depths=depths))
  return out

def main():
  parser = where_garment_goes.workdirs_parser(__doc__)
  parser.add_argument("--depths", type=int, nargs="+", default=[10, 30, 100, 300, 1000])
  args = parser.parse_args()
  for workdir in args.workdirs:
    print(json.dumps(measure(workdir, args.depths, args.num_queries)), flush=True)


if __name__ == "__main__":
  main()
