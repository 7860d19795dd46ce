r"""Quick benchmark: ours vs DCH, HashNet and CSQ at 48 bits, 2 epochs each, ~11 min on 2 CPUs.

    deephash benchmark --config=configs/benchmark_quick.py --workdir=workdirs/benchmark_quick

A smoke test of the full comparison (configs/benchmark.py), not its result: 4 runs of 2 epochs
(936 steps) at 48 bits, seed 0; closest-match protocol on the first 1,000 test images (database
still all 10,000 originals + 60,000 distractors); the two non-learned references on 1,000
category queries. Same output files as the full benchmark (results.json, results.md,
mAP_vs_bits.png with one point per method, pr_curves.png).

Wall time on the 2-core CPU machine, uncontended: about 2.1 min per run (1.5 min training and
category evaluation, 0.6 min closest-match evaluation), ~1.5 min for the data and the references
(SAD alone ~30 s): about 10-12 min in all, within 20 min unless the machine is shared (the log
gives an ETA after every run).

Expect mAP@all well below the full benchmark's (2 of 12 epochs); the ranking of the
methods is indicative only.
"""

from deephash_jax import config_lib


def get_config():
  config = config_lib.base_config("benchmark")
  config.train.num_epochs = 2
  b = config.benchmark
  b.methods = ("ours", "dch", "hashnet", "csq")
  b.bits = (48,)
  b.seeds = (0,)
  b.multi_seed.methods = ()
  b.closest_match.num_queries = 1000
  b.references.num_category_queries = 1000
  b.references.timing_queries = 500
  return config
