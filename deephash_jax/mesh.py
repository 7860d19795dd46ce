"""The device mesh of every compiled function: one data-parallel axis, `data`, over all devices.

Parameters are replicated and batches sharded on `data` (`config.mesh = [("data", -1)]`). The
per-device bodies (train step, embedding, sharded search) are written as one would write a
`jax.pmap` body, with explicit collectives over `data`, and run under `jax.shard_map`
(`jax.pmap` is in maintenance mode and is itself implemented on `shard_map`).
"""

from __future__ import annotations

from typing import Mapping

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

AXIS = "data"


def describe_devices() -> str:
  """"8 x cpu": how many devices this run sees (over every process) and of what kind."""
  devices = jax.devices()
  return f"{len(devices)} x {devices[0].device_kind}"


def create_mesh(mesh_config) -> jax.sharding.Mesh:
  """A 1-D mesh over all devices from `config.mesh = [("data", -1)]`."""
  axes = [tuple(axis) for axis in mesh_config]
  if len(axes) != 1 or axes[0][0] != AXIS:
    raise ValueError(f"config.mesh={mesh_config!r}: only a single data-parallel axis "
                     f"[('{AXIS}', -1)] is supported")
  size = axes[0][1]
  size = jax.device_count() if size == -1 else size
  if size != jax.device_count():
    raise ValueError(f"config.mesh asks for {size} devices on axis '{AXIS}' but "
                     f"{jax.device_count()} are present")
  # Auto axes: the bodies are manual (shard_map) and the rest is plain data parallelism; current
  # jax.make_mesh defaults to Explicit axes, which would type every array op by its sharding.
  return jax.make_mesh((size,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def global_batch(mesh, local: Mapping[str, np.ndarray]) -> dict:
  """This process's slice of a batch -> global arrays sharded on `data` (any process count)."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
