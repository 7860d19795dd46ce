"""mesh.py: one data-parallel axis over every device, and host batches as global arrays."""
import jax
import numpy as np
import pytest

from deephash_jax import mesh as mesh_lib


def test_the_mesh_spans_every_device_on_one_data_axis():
  mesh = mesh_lib.create_mesh([("data", -1)])
  assert mesh.axis_names == ("data",) and mesh.size == jax.device_count() == 8
  assert mesh_lib.create_mesh([("data", 8)]).size == 8
  with pytest.raises(ValueError, match="asks for 4 devices on axis 'data' but 8 are present"):
    mesh_lib.create_mesh([("data", 4)])
  with pytest.raises(ValueError, match="only a single data-parallel axis"):
    mesh_lib.create_mesh([("model", -1)])


def test_a_host_batch_becomes_a_global_array_sharded_on_data():
  mesh = mesh_lib.create_mesh([("data", -1)])
  local = {"image": np.arange(16 * 3).reshape(16, 3).astype(np.uint8),
           "label": np.arange(16, dtype=np.int32)}
  batch = mesh_lib.global_batch(mesh, local)
  for key, value in local.items():
    assert batch[key].sharding.spec == mesh_lib.batch_sharded(mesh).spec
    assert len(batch[key].addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(batch[key]), value)


_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw

processor\t: 1
model name\t: AMD EPYC 9B14
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw
"""


def test_the_host_is_named_by_cpu_model_count_and_widest_vector_extension():
  assert mesh_lib.describe_host(_CPUINFO, 2) == "AMD EPYC 9B14, 2 CPUs, AVX-512"
  avx2 = _CPUINFO.replace(" avx512f avx512bw", "")
  assert mesh_lib.describe_host(avx2, 1) == "AMD EPYC 9B14, 1 CPU, AVX2"
  # No model name or flags (an arm host): what platform says, and no extension.
  text = mesh_lib.describe_host("processor\t: 0\nBogoMIPS\t: 50.00\n", 8)
  assert text.endswith(", 8 CPUs") and "AVX" not in text and not text.startswith(",")
  assert mesh_lib.describe_host().count(", ") >= 1     # this host: model and CPU count at least
