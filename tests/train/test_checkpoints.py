"""train/checkpoints.py: the latest restorable checkpoint, a damaged one set aside, not lost."""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from deephash_jax import config_lib
from deephash_jax import mesh as mesh_lib
from deephash_jax.train import checkpoints
from deephash_jax.train import state as state_lib


def test_a_truncated_latest_checkpoint_falls_back_and_is_set_aside(tmp_path):
  config = config_lib.base_config("tiny")
  mesh = mesh_lib.create_mesh(config.mesh)
  manager = checkpoints.checkpoint_manager(str(tmp_path), config.train)
  states = {}
  for step, seed in ((3, 0), (6, 1)):
    state = state_lib.create_train_state(config, jax.random.key(seed), 10, (28, 28, 1))
    states[step] = jax.device_put(state.replace(step=state.step + step),
                                  mesh_lib.replicated(mesh))
    manager.save(step, args=ocp.args.StandardSave(states[step]))
  manager.wait_until_finished()
  restored, step = checkpoints.restore_latest(manager, config, mesh, (28, 28, 1), 10)
  assert step == 6
  for files in os.walk(os.path.join(tmp_path, "checkpoints", "6")):
    for name in files[2]:
      path = os.path.join(files[0], name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
  manager.reload()
  restored, step = checkpoints.restore_latest(manager, config, mesh, (28, 28, 1), 10,
                                              set_aside=True)
  assert step == 3 and int(restored.step) == 3
  for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(states[3].params)):
    np.testing.assert_array_equal(a, b)
  assert sorted(os.listdir(os.path.join(tmp_path, "checkpoints"))) == ["3", "corrupt-6"]
  exact = checkpoints.restore_step(manager, config, mesh, (28, 28, 1), 3)
  assert int(exact.step) == 3
  manager.close()
