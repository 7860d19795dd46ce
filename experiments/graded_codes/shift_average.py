r"""Both protocols of a workdir's checkpoint with its codes averaged over shifted views.

    python experiments/graded_codes/shift_average.py WORKDIR [--cm_queries=2000] [--shifts=0,1,2]

For each shift s the trained weights are evaluated as the main job does, with
`config.model.shift_average = s` (encoder.shifted_views: the image also moved s pixels right,
left, down and up; 0 = the config's codes), on the first `cm_queries` closest-match queries.
One JSON line per shift, with the evaluation's seconds.
"""

from __future__ import annotations

import argparse
import json
import time

from deephash_jax.encoder import HashEncoder
from deephash_jax.evaluators import evaluate

KEYS = ("map_all", "map_at_1000", "closest_match_recall_at_1", "closest_match_recall_at_10",
        "closest_match_map")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdir")
  parser.add_argument("--cm_queries", type=int, default=2000)
  parser.add_argument("--shifts", default="0,1,2")
  args = parser.parse_args()
  enc = HashEncoder.from_workdir(args.workdir)
  config = enc.config
  config.eval.closest_match.num_queries = args.cm_queries
  for shift in (int(s) for s in args.shifts.split(",")):
    config.model.shift_average = shift
    start = time.time()
    r = evaluate.evaluate_variables(config, enc.variables, mesh=enc.mesh)
    print(json.dumps({"workdir": args.workdir, "shift_average": shift,
                      "seconds": round(time.time() - start),
                      **{k: round(float(r[k]), 4) for k in KEYS}}), flush=True)


if __name__ == "__main__":
  main()
