r"""The whole sweep on a budget: every method, length and seed of configs/benchmark.py, 1 epoch each.

    deephash benchmark --config=configs/benchmark_sweep_1ep.py --workdir=workdirs/benchmark_sweep_1ep

What the 2-core CPU machine can run in a session: the 44 runs of the full benchmark (10 methods x
16/32/48/64 bits, plus seeds 1 and 2 of ours and DCH at 48 bits) and 8 more (seeds 1 and 2 of ours,
DCH and GreedyHash at 16 bits, and of GreedyHash at 48), each trained for 1 epoch (468 steps of
128 catalogue items seen twice) instead of the default's 15. Closest-match protocol on
the first 2,000 test images (the database still holds all 10,000 originals and the 60,000
training images as distractors); the two non-learned references on 2,000 category queries.

It ranks the methods early in training, not at convergence: the full schedule
(configs/benchmark.py, ~10 h here) is what a TPU VM sweep (launch/sweep_bits.sh) is for.

Wall time on the 2-core CPU machine: about 1 min per run alone (40 s of training, the rest
compilation and the two evaluations), 1 min 40 s while another training shares the machine;
measured: 1 h 20 min of run time for the 52 runs, most of them shared, plus 80 s for the
references. The log gives an ETA after every run.
"""

from deephash_jax import config_lib


def get_config():
  config = config_lib.base_config("benchmark")
  config.train.num_epochs = 1
  config.train.warmup_steps = 100      # of 468 steps
  b = config.benchmark
  # The plan as it ran: the 10 methods of configs/benchmark.py before its 16-bit variant.
  b.methods = tuple(m for m in b.methods if m != "ours_item003_g5")
  # Spread where the 1-epoch table is closest: GreedyHash leads at 16 and 32 bits on seed 0.
  b.multi_seed.methods = ("ours", "dch", "greedyhash")
  b.multi_seed.bits = (48, 16)
  b.closest_match.num_queries = 2000
  b.references.num_category_queries = 2000
  b.references.timing_queries = 1000
  return config
