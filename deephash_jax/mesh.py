"""The device mesh of every compiled function: one data-parallel axis, `data`, over all devices.

Parameters are replicated and batches sharded on `data` (`config.mesh = [("data", -1)]`). The
per-device bodies (train step, embedding, sharded search) are written as one would write a
`jax.pmap` body, with explicit collectives over `data`, and run under `jax.shard_map`
(`jax.pmap` is in maintenance mode and is itself implemented on `shard_map`).
"""

from __future__ import annotations

import os
import platform
from typing import Mapping

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

AXIS = "data"


def describe_devices() -> str:
  """"8 x cpu": how many devices this run sees (over every process) and of what kind."""
  devices = jax.devices()
  return f"{len(devices)} x {devices[0].device_kind}"


# The widest x86 vector extension a host's flags list, widest first: XLA:CPU's convolutions run
# about 3 times faster on 2 AVX-512 cores than on 2 AVX2 cores of the same family.
_VECTOR_EXTENSIONS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"),
                      ("sse4_2", "SSE4.2"))


def cpu_fields(cpuinfo: str | None = None) -> dict:
  """The first CPU's entry of /proc/cpuinfo (or of the `cpuinfo` text given) as {field: value};
  {} where the file cannot be read."""
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
    except OSError:
      cpuinfo = ""
  fields: dict = {}
  for line in cpuinfo.splitlines():
    key, sep, value = line.partition(":")
    if sep:
      fields.setdefault(key.strip(), value.strip())
  return fields


def describe_host(cpuinfo: str | None = None, cpu_count: int | None = None) -> str:
  """"AMD EPYC, 2 CPUs, AVX2": this host's CPU model, the CPUs it has and its widest x86 vector
  extension, from /proc/cpuinfo (or the `cpuinfo` text given); the parts it cannot read are left
  out or taken from `platform` ("aarch64, 8 CPUs" where the file names no model)."""
  fields = cpu_fields(cpuinfo)
  flags = set(fields.get("flags", "").split())
  cpu_count = os.cpu_count() if cpu_count is None else cpu_count
  parts = [fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"]
  if cpu_count:
    parts.append(f"{cpu_count} CPU{'s' if cpu_count != 1 else ''}")
  parts += [name for flag, name in _VECTOR_EXTENSIONS if flag in flags][:1]
  return ", ".join(parts)


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
