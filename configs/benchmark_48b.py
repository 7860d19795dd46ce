r"""The paper's comparison at the full schedule: the full plan's 48-bit row.

    deephash benchmark --config=configs/benchmark_48b.py --workdir=workdirs/benchmark

(two workers at once: add --benchmark_worker=0/2 and 1/2, or `CONFIG=configs/benchmark_48b.py
launch/benchmark_workers.sh`; then the plain command writes the references, tables and plots).
Every run is the run of the same name in configs/benchmark.py: the default config's 15 epochs
(7,020 steps), both protocols on all 10,000 test images. Sharing --workdir with that config, its
finished runs count toward the full sweep (`deephash benchmark --config=configs/benchmark.py
--workdir=workdirs/benchmark` skips them).

The row: ours and its three ablations, DCH (the paper's comparison), HashNet, CSQ, DPSH,
GreedyHash and OrthoHash at seed 0, and seeds 1 and 2 of ours and DCH: 14 runs, about 30 min each
on the 2-core CPU machine with two workers. The full sweep (all 10 methods at 16 to 64 bits) is
44 runs, more than a working day on that machine.

Measured on this machine with two workers sharing the 2 cores: README.md (Results) and
docs/benchmark_48b/.
"""

from deephash_jax import config_lib


def get_config():
  config = config_lib.base_config("benchmark")
  b = config.benchmark
  b.methods = ("ours", "ours_no_classifier", "ours_no_hamming", "ours_no_adversarial",
               "dch", "hashnet", "csq", "dpsh", "greedyhash", "orthohash")
  b.bits = (48,)
  return config
