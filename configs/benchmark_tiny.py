r"""Tiny benchmark for tests: ours and DCH at 16 and 32 bits, a few steps on synthetic IDX files.

    deephash benchmark --config=configs/benchmark_tiny.py --workdir=/tmp/bench_tiny \
        --config.input.source_dir=/path/to/idx --config.input.data_dir=/tmp/tfds

The tiny training config (configs/tiny.py) with the benchmark section of configs/benchmark.py,
cut down to 2 methods x 2 lengths x 1 seed and small query sets.
"""

from deephash_jax import config_lib


def get_config():
  config = config_lib.base_config("tiny")
  config.benchmark = b = config_lib.base_config("benchmark").benchmark
  b.methods = ("ours", "dch")
  b.bits = (16, 32)
  b.reference_bits = 16
  b.seeds = (0,)
  b.multi_seed.methods = ()
  b.closest_match.num_queries = 20
  b.references.num_category_queries = 40
  b.references.timing_queries = 16
  b.references.query_batch_size = 16
  b.references.sad_chunk_size = 64
  return config
