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
