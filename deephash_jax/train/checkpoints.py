"""Orbax checkpoints of the train state: resumable, and robust to a truncated or altered save.

With several processes, every barrier of the checkpoint code goes through JAX's coordination
service (`active_processes` set), never through a device collective: a collective computation
launched by the checkpoint code between two train steps is a second program of collectives on
the same devices, and is not what the training step's collectives may be interleaved with.
"""

from __future__ import annotations

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp

from deephash_jax import config_lib
from deephash_jax.train import state as state_lib


def _all_processes() -> set[int] | None:
  """Every process of a multi-process run (None in one process)."""
  return set(range(jax.process_count())) if jax.process_count() > 1 else None


def checkpoint_manager(workdir: str, train_config, *, read_only: bool = False):
  directory = config_lib.workdir_path(workdir) / "checkpoints"
  processes = _all_processes()
  if processes and not read_only:   # orbax creates it only without `active_processes`
    directory.mkdir(parents=True, exist_ok=True)
  return ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(
          max_to_keep=train_config.get("keep_checkpoints", 3),
          create=not read_only and not processes, read_only=read_only,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              active_processes=processes)))


def restore_latest(manager, config, mesh, image_shape, total_steps, *, set_aside=False):
  """The latest restorable checkpoint as (state, step), or (None, None).

  A checkpoint that fails to restore (truncated or altered files) is logged and the previous one
  is tried. With `set_aside` (training), the bad one is renamed `corrupt-<step>` rather than
  deleted, so that nothing is lost and the run can save that step again.
  """
  target = state_lib.abstract_state(config, mesh, image_shape, total_steps)
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state = manager.restore(step, args=ocp.args.StandardRestore(target))
      return state, step
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("Checkpoint at step %d in %s cannot be restored (%s: %s); falling back to "
                      "the previous one.", step, manager.directory, type(e).__name__, e)
      if set_aside:
        _set_aside(manager, step)
  return None, None


def restore_step(manager, config, mesh, image_shape, step: int):
  """The checkpoint of exactly `step` (an error if it cannot be restored)."""
  target = state_lib.abstract_state(config, mesh, image_shape, total_steps=1)
  return manager.restore(step, args=ocp.args.StandardRestore(target))


def _set_aside(manager, step: int) -> None:
  directory = epath.Path(manager.directory)
  if jax.process_index() == 0:
    aside = directory / f"corrupt-{step}"
    (directory / str(step)).rename(aside)
    logging.warning("Moved the unrestorable checkpoint to %s.", aside)
  if jax.process_count() > 1:
    ocp.multihost.sync_global_processes(f"set_aside_{step}", processes=_all_processes())
  manager.reload()
