r"""The multi-process hang of XLA:CPU collectives, without the model: one process of a 2-process,
4-devices-per-process `shard_map` loop whose step ends in a `psum` and an `all_gather`.

    # both processes, the same PORT:
    JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 \
        python experiments/cpu_collective_hang/repro.py PORT 0 STEPS MODE &
    JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 \
        python experiments/cpu_collective_hang/repro.py PORT 1 STEPS MODE

MODE "free" dispatches the STEPS steps as fast as the host can (an unbounded queue of steps in
flight); "bounded" waits for step s - 1 after dispatching step s (at most two in flight, what
deephash_jax/train/trainer.py does). Prints "process P done in S s" when the last step is done.
"""
import sys
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np


def main(port: str, process_id: int, steps: int, mode: str) -> None:
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                             process_id=process_id)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))

  def body(x):
    # Devices do unequal work (1 to 4 matmuls) before the step's two collectives.
    index = jax.lax.axis_index("data")
    y = jax.lax.fori_loop(0, 4, lambda i, y: jnp.where(i < index % 4 + 1,
                                                       jnp.tanh(y @ y.T) * 0.5, y), x[0])
    total = jax.lax.psum(jnp.sum(y), "data")
    gathered = jax.lax.all_gather(jnp.sum(y, axis=0), "data")
    return (y + total * 1e-6 + jnp.sum(gathered) * 1e-9)[None]

  step = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("data"), out_specs=P("data"),
                               check_vma=False))
  local = np.random.default_rng(process_id).normal(size=(4, 384, 384)).astype(np.float32)
  x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
  start = time.time()
  for _ in range(steps):
    previous, x = x, step(x)
    if mode == "bounded":
      jax.block_until_ready(previous)
  jax.block_until_ready(x)
  print(f"process {process_id} done in {time.time() - start:.1f} s", flush=True)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
