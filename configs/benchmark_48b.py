r"""The paper's comparison at the full schedule: ours, DCH and two strong baselines at 48 bits.

    deephash benchmark --config=configs/benchmark_48b.py --workdir=workdirs/benchmark

(two workers at once: add --benchmark_worker=0/2 and 1/2, then the plain command writes the
references, tables and plots). Every run is the run of the same name in configs/benchmark.py:
the default config's 15 epochs (7,020 steps), seed 0, both protocols on all 10,000 test images.
Sharing --workdir with that config, its finished runs count toward the full sweep
(`deephash benchmark --config=configs/benchmark.py --workdir=workdirs/benchmark` skips them).

Why these four: the full sweep is about 44 runs of 15 epochs, more than a working day on the 2-core
CPU machine; this is its reference-length row for ours, DCH (the paper's comparison) and the two
baselines that led somewhere in the 4-epoch sweep (configs/benchmark_sweep_4ep.py): HashNet
(category mAP at 48 and 64 bits) and GreedyHash (closest match at 32 bits).

Measured on this machine with two workers sharing the 2 cores: README.md (Results) and
docs/benchmark_48b/.
"""

from deephash_jax import config_lib


def get_config():
  config = config_lib.base_config("benchmark")
  b = config.benchmark
  b.methods = ("ours", "dch", "hashnet", "greedyhash")
  b.bits = (48,)
  b.multi_seed.methods = ()
  return config
