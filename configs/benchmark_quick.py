r"""Quick benchmark: our three objectives and every peer at 48 bits, 2 epochs each (29 min).

    deephash benchmark --config=configs/benchmark_quick.py --workdir=workdirs/benchmark_quick

A short version of the full comparison (configs/benchmark.py), not its result: 9 runs of 2 epochs
(936 steps) at 48 bits, seed 0, the closest match on the first 1,000 test images, the references
on 1,000 category queries. Expect mAP@all well below the full schedule's.
"""

from deephash_jax import config_lib
from deephash_jax.bench import plan


def get_config(run=None):
  config = config_lib.base_config("benchmark")
  config.train.num_epochs = 2
  config.eval.closest_match.num_queries = 1000
  b = config.benchmark
  b.methods = ("ours", "graded", "graded_split", "dch", "hashnet", "dpsh", "csq", "greedyhash",
               "orthohash")
  b.bits = (48,)
  b.multi_seed.methods = ()
  b.ablations = {}
  b.references.num_category_queries = 1000
  b.references.timing_queries = 500
  return plan.select(config, run)
