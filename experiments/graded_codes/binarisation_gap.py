r"""What binarising a trained model's codes costs its category search.

    python experiments/graded_codes/binarisation_gap.py WORKDIR [WORKDIR ...] [--queries=2000]

For each workdir (a finished `deephash train`): the continuous codes the search binarises (the
evaluation's tanh(pre-codes), averaged over the model's mirror and shifted views), of the first
`--queries` test images against the whole training split, relevant = the same type:
* mAP@all of the binary codes, Hamming ranking, ties by expectation (what the main job reports,
  on these queries);
* mAP@all of the continuous codes ranked by their inner product, i.e. by the relaxed Hamming
  distance (K - <u, v>) / 2 the losses train on (`ranking.ranking_metrics`, ties by expectation);
* mAP@all of continuous queries against binary database codes (an asymmetric distance), the same;
* the share of code entries within 0.5 and within 0.9 of 0, over the database.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from deephash_jax.data import registry
from deephash_jax.encoder import HashEncoder
from deephash_jax.evaluators import ranking
from deephash_jax.search import packing


def gap(workdir: str, num_queries: int) -> dict:
  enc = HashEncoder.from_workdir(workdir)
  config = enc.config
  query = registry.load_split(config.input, config.input.query_split)
  database = registry.load_split(config.input, config.input.database_split)
  yq, yd = query.labels[:num_queries], database.labels
  cq, cd = enc.embed(query.images[:num_queries]), enc.embed(database.images)
  binary = ranking.retrieval_metrics(packing.pack_bits(cq), yq, packing.pack_bits(cd), yd,
                                     num_bits=cq.shape[1], map_at=(), radius=())["map_all"]
  # Continuous scores: the ranking by -inner product (the relaxed distance up to a constant).
  by_inner_product = lambda db: ranking.ranking_metrics(
      lambda a, b: -(cq[a:b].astype(np.float64) @ db.T), yq, yd, map_at=(),
      query_batch_size=500)["map_all"]
  continuous = by_inner_product(cd.astype(np.float64))
  asymmetric = by_inner_product(np.sign(cd).astype(np.float64))
  magnitude = np.abs(cd)
  return {"workdir": workdir, "queries": int(len(cq)),
          "map_all_binary": round(float(binary), 4),
          "map_all_continuous": round(float(continuous), 4),
          "map_all_continuous_query_binary_database": round(float(asymmetric), 4),
          "share_within_0.5": round(float((magnitude < 0.5).mean()), 3),
          "share_within_0.9": round(float((magnitude < 0.9).mean()), 3)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--queries", type=int, default=2000)
  args = parser.parse_args()
  for workdir in args.workdirs:
    print(json.dumps(gap(workdir, args.queries)), flush=True)


if __name__ == "__main__":
  main()
