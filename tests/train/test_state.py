"""train/state.py: the state pytree, its learning-rate schedule and its abstract (restore) form."""
import jax
import numpy as np
import pytest

from deephash_jax import config_lib
from deephash_jax import mesh as mesh_lib
from deephash_jax.train import state as state_lib


def test_warm_up_then_cosine_decay_to_one_percent():
  train = config_lib.base_config("fashion_mnist").train
  schedule = state_lib.learning_rate_schedule(train, total_steps=1000)
  assert float(schedule(0)) == 0.0
  assert float(schedule(train.warmup_steps)) == pytest.approx(train.learning_rate)
  assert float(schedule(1000)) == pytest.approx(0.01 * train.learning_rate)
  values = [float(schedule(s)) for s in range(train.warmup_steps, 1001, 50)]
  assert all(a >= b for a, b in zip(values, values[1:]))
  tiny = state_lib.learning_rate_schedule(train, total_steps=3)    # warm-up cut to the run
  assert float(tiny(2)) == pytest.approx(train.learning_rate)


def test_the_state_holds_both_networks_and_restores_replicated():
  config = config_lib.base_config("tiny")
  state = state_lib.create_train_state(config, jax.random.key(0), 10, (28, 28, 1))
  assert int(state.step) == 0
  assert set(state.params) == {"encoder", "hash", "hash_norm", "classifier"}
  assert state.params["hash"]["kernel"].shape[-1] == config.model.num_bits
  assert jax.tree.leaves(state.disc_params)
  mesh = mesh_lib.create_mesh(config.mesh)
  abstract = state_lib.abstract_state(config, mesh, (28, 28, 1), 10)
  for concrete, shape in zip(jax.tree.leaves(state), jax.tree.leaves(abstract)):
    assert np.shape(concrete) == shape.shape and shape.sharding.is_fully_replicated


def test_the_memory_is_in_the_state_and_its_checkpoint(tmp_path):
  """loss.graded.memory_size > 0: the cross-batch memory is part of the state (empty rows
  -1), saved and restored with it; without one the state has no memory leaves."""
  import orbax.checkpoint as ocp
  from deephash_jax.train import checkpoints
  config = config_lib.base_config("tiny")
  assert state_lib.create_train_state(config, jax.random.key(0), 10, (28, 28, 1)).memory is None
  config.method = "graded"
  config.loss.graded.memory_size = 32
  state = state_lib.create_train_state(config, jax.random.key(0), 10, (28, 28, 1))
  assert state.memory["codes"].shape == (32, config.model.num_bits)
  assert state.memory["features"].shape[0] == 32 and np.all(state.memory["items"] == -1)
  mesh = mesh_lib.create_mesh(config.mesh)
  written = {k: np.array(v) for k, v in state.memory.items()}
  written["items"][:16] = np.arange(16)
  written["codes"][:16] = 0.5
  state = jax.device_put(state.replace(memory=written), mesh_lib.replicated(mesh))
  manager = checkpoints.checkpoint_manager(str(tmp_path), config.train)
  manager.save(4, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  restored, step = checkpoints.restore_latest(manager, config, mesh, (28, 28, 1), 10)
  assert step == 4
  for key, value in written.items():
    np.testing.assert_array_equal(restored.memory[key], value)
