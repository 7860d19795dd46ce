r"""Tiny benchmark for tests: ours and DCH at 16 and 32 bits, a few steps on synthetic IDX files.

    deephash benchmark --config=configs/benchmark_tiny.py --workdir=/tmp/bench_tiny \
        --config.input.source_dir=/path/to/idx --config.input.data_dir=/tmp/tfds
"""

from deephash_jax import config_lib
from deephash_jax.bench import plan


def get_config(run=None):
  config = config_lib.base_config("tiny")
  config.benchmark = config_lib.config_module("benchmark").benchmark_section()
  b = config.benchmark
  b.methods = ("ours", "dch")
  b.bits = (16, 32)
  b.reference_bits = 16
  b.multi_seed.methods = ()
  b.ablations = {}
  b.references.num_category_queries = 40
  b.references.timing_queries = 16
  b.references.query_batch_size = 16
  b.references.sad_chunk_size = 64
  return plan.select(config, run)
