r"""Where a trained model loses the closest match: the query's drift, or the crowd at the original.

    python experiments/graded_codes/where_garment_goes.py WORKDIR [WORKDIR ...] [--category]

For each workdir (a finished `deephash train`), on its closest-match protocol
(`config.eval.closest_match`: the same rendered queries, the test originals then the training
images as distractors, codes as the evaluation makes them), with d0 the Hamming distance from a
query's code to its original's code:
* `recall_at_1`: the tie-aware R@1, mean of [nothing closer than d0] / (1 + the items tied at
  d0), the evaluation's figure recomputed here (a check of this script);
* `drift_*`: d0's mean, quantiles and the shares of queries at d0 = 0, <= 1, <= 2, <= 4 bits (how
  far the shopper's nuisances move a code);
* `closer_*`: over the queries that miss (something strictly closer than d0), the mean number of
  database items strictly closer, of the original's type and of other types (who takes the
  place: the garment's own type's crowd, or the type level's failure);
* `recall_at_1_if_no_drift`: the tie-aware R@1 had each query got its original's code exactly
  (d0 = 0; 1 / (1 + the other items with that very code)): the ceiling the code's uniqueness
  sets, whatever the robustness;
* `recall_at_1_drift_le_k`: the R@1 among the queries that drifted at most k bits;
* `asymmetric_recall_at_1`: R@1 of the query's continuous code (the mean tanh the evaluation
  makes) against the database's signs, ranked by the asymmetric distance
  (evaluators/ranking.py `asymmetric_distance_rows`: a bit the query is unsure of counts for
  little), ties by expectation: the evaluation's `closest_match_asymmetric_recall_at_1`.
Every figure but the last is computed from the sign codes with NumPy, the queries in chunks of
256. `--category` adds the category search (the test images against the training images,
relevant = same type) ranked both ways: `hamming_map_all`, `asymmetric_map_all` and their
mAP@k (`config.eval.map_at`), with the evaluation's ties rule (the asymmetric ranking sorts
every row: about a minute more).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np

from deephash_jax.data import registry
from deephash_jax.encoder import HashEncoder
from deephash_jax.evaluators import category as category_lib
from deephash_jax.evaluators import closest_match
from deephash_jax.evaluators import ranking


def _signs(codes: np.ndarray) -> np.ndarray:
  return np.where(codes > 0, 1.0, -1.0).astype(np.float32)


def garment_losses(query: np.ndarray, database: np.ndarray, db_labels: np.ndarray,
                   query_labels: np.ndarray, *, chunk: int = 256) -> dict:
  """The figures of the module docstring but the last from +-1 codes: `query` (N, K), whose
  original is database row i for query i, `database` (M, K) with `db_labels` (M,),
  `query_labels` (N,)."""
  num_bits = query.shape[1]
  n = len(query)
  d0 = np.empty(n, np.int64)
  closer_same = np.empty(n, np.int64)
  closer_other = np.empty(n, np.int64)
  tied = np.empty(n, np.int64)
  same_code = np.empty(n, np.int64)
  for start in range(0, n, chunk):
    rows = np.arange(start, min(start + chunk, n))
    d = np.rint((num_bits - query[rows] @ database.T) / 2).astype(np.int64)
    own = d[np.arange(len(rows)), rows]
    closer = d < own[:, None]
    same_type = db_labels[None, :] == query_labels[rows, None]
    d0[rows] = own
    closer_same[rows] = (closer & same_type).sum(1)
    closer_other[rows] = (closer & ~same_type).sum(1)
    tied[rows] = (d == own[:, None]).sum(1) - 1
    d_orig = np.rint((num_bits - database[rows] @ database.T) / 2)
    same_code[rows] = (d_orig == 0).sum(1) - 1
  closer_all = closer_same + closer_other
  hit = np.where(closer_all == 0, 1.0 / (1 + tied), 0.0)
  miss = closer_all > 0
  out = {
      "num_queries": n,
      "recall_at_1": round(float(hit.mean()), 4),
      "drift_mean": round(float(d0.mean()), 2),
      "drift_quantiles_25_50_75_90": [float(q) for q in np.percentile(d0, [25, 50, 75, 90])],
      **{f"drift_le_{k}": round(float((d0 <= k).mean()), 4) for k in (0, 1, 2, 4)},
      "misses": int(miss.sum()),
      "closer_same_type_mean": round(float(closer_same[miss].mean()), 1) if miss.any() else 0.0,
      "closer_other_type_mean": round(float(closer_other[miss].mean()), 1) if miss.any() else 0.0,
      "misses_with_only_same_type_closer": (
          round(float((closer_other[miss] == 0).mean()), 4) if miss.any() else 0.0),
      "recall_at_1_if_no_drift": round(float((1.0 / (1 + same_code)).mean()), 4),
  }
  for k in (0, 2, 4, 8):
    kept = d0 <= k
    out[f"recall_at_1_drift_le_{k}"] = round(float(hit[kept].mean()), 4) if kept.any() else None
  return out


def category_both_ways(query_codes, query_labels, db_codes, db_labels, *, eval_config,
                       num_bits: int) -> dict:
  """mAP@all and mAP@k (`eval_config.map_at`) of the category search, by Hamming (the
  evaluation's `category.metrics`) and by the asymmetric distance, with `eval_config.ties`."""
  hamming = category_lib.metrics(query_codes, query_labels, db_codes, db_labels,
                             eval_config=eval_config, num_bits=num_bits)
  asymmetric = ranking.ranking_metrics(
      ranking.asymmetric_distance_rows(query_codes, db_codes), query_labels, db_labels,
      map_at=tuple(eval_config.map_at), ties=eval_config.get("ties", "expected"))
  keys = ("map_all", *(f"map_at_{k}" for k in eval_config.map_at))
  return {f"{name}_{key}": round(float(result[key]), 4) for key in keys
          for name, result in (("hamming", hamming), ("asymmetric", asymmetric))}


@dataclasses.dataclass(frozen=True)
class Embedded:
  """A workdir's model and the continuous codes of its evaluation's splits and queries."""
  encoder: HashEncoder
  query: object              # the query split (images, labels)
  database: object           # the database split
  protocol: closest_match.ClosestMatch
  originals: np.ndarray      # the query split's codes: the closest match's originals
  distractors: np.ndarray    # the database split's codes
  query_codes: np.ndarray    # the closest-match queries' codes


def embed_protocol(workdir: str, num_queries: int | None = None) -> Embedded:
  """The evaluation's codes of `workdir`'s latest checkpoint: its closest-match protocol
  (`config.eval.closest_match`, the first `num_queries` queries if given) and both splits."""
  enc = HashEncoder.from_workdir(workdir)
  config = enc.config
  cm_config = config.eval.closest_match
  if num_queries:
    cm_config.num_queries = num_queries
  query = registry.load_split(config.input, config.input.query_split)
  database = registry.load_split(config.input, config.input.database_split)
  protocol = closest_match.prepare(query.images, len(database), cm_config)
  return Embedded(enc, query, database, protocol, enc.embed(query.images),
                  enc.embed(database.images), enc.embed(protocol.queries))


def diagnose(workdir: str, num_queries: int | None = None, category: bool = False) -> dict:
  e = embed_protocol(workdir, num_queries)
  config = e.encoder.config
  db_codes = np.concatenate([e.originals, e.distractors])
  db_labels = np.concatenate([e.query.labels, e.database.labels])
  out = {"workdir": workdir, "num_bits": e.encoder.num_bits}
  out.update(garment_losses(_signs(e.query_codes), _signs(db_codes), db_labels,
                            e.query.labels[:len(e.query_codes)]))
  asymmetric = closest_match.asymmetric_metrics(e.protocol, e.query_codes, e.originals,
                                                e.distractors,
                                                ties=config.eval.get("ties", "expected"))
  out["asymmetric_recall_at_1"] = round(float(asymmetric["recall_at_1"]), 4)
  if category:
    out.update(category_both_ways(e.originals, e.query.labels, e.distractors, e.database.labels,
                                  eval_config=config.eval, num_bits=e.encoder.num_bits))
  return out

def workdirs_parser(doc: str) -> argparse.ArgumentParser:
  """The arguments every script of this folder takes: workdirs and --num_queries."""
  parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--num_queries", type=int, default=None,
                      help="the first N closest-match queries (default: the config's)")
  return parser


def main():
  parser = workdirs_parser(__doc__)
  parser.add_argument("--category", action="store_true",
                      help="also the category search ranked by Hamming and asymmetric distance")
  args = parser.parse_args()
  for workdir in args.workdirs:
    print(json.dumps(diagnose(workdir, args.num_queries, args.category)), flush=True)


if __name__ == "__main__":
  main()
