"""One process of the multi-process sharded search test (tests/search/test_sharded_multiprocess.py).

  JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 \
    python -m tests.search.multiprocess_search_worker COORDINATOR NUM_PROCESSES PROCESS_ID OUT.npz

Every process builds the same seeded database and queries, searches them with
``hamming.sharded_search`` over a mesh of all processes' devices, and saves its (D, I).
"""
import sys

import jax
import numpy as np

from deephash_jax.search import hamming
from deephash_jax.search import packing

NUM_CODES, NUM_QUERIES, NUM_BITS, K, SEED = 5003, 37, 64, 20, 6
# Several chunks per shard (the scan path) and several query batches, the last one padded.
SEARCH_KWARGS = dict(chunk_size=256, block_rows=4, query_batch_size=16)


def codes(seed=SEED):
  """(queries, database): packed codes with many exact ties (duplicated halves)."""
  rng = np.random.default_rng(seed)
  xb = packing.pack_bits(rng.random((NUM_CODES, NUM_BITS)) < 0.5)
  xb[NUM_CODES // 2:] = xb[:NUM_CODES - NUM_CODES // 2]
  fresh = packing.pack_bits(rng.random((NUM_QUERIES - 3, NUM_BITS)) < 0.5)
  xq = np.concatenate([xb[:2], xb[-1:], fresh])  # some queries sit on duplicated codes
  return xq, xb


def main(coordinator, num_processes, process_id, out):
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=int(num_processes),
                             process_id=int(process_id))
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  assert jax.device_count() > jax.local_device_count(), "the mesh must span processes"
  xq, xb = codes()
  dist, index = hamming.sharded_search(xq, xb, K, num_bits=NUM_BITS, mesh=mesh,
                                       **SEARCH_KWARGS)
  np.savez(out, D=dist, I=index, devices=jax.device_count(),
           local_devices=jax.local_device_count())
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(*sys.argv[1:])
