"""`train_and_evaluate(config, workdir)`: the training loop, resumable, then the evaluation.

On start the latest restorable checkpoint in `workdir` is restored (a corrupt one is set aside),
only under the config it was trained with (config_lib.check_resumable names what differs);
the batch of step s depends on (seed, s) only (data/sampler.py), so a resumed run sees exactly
the batches an uninterrupted one sees. Metrics go to TensorBoard and the log (CLU writers), with
progress and an ETA (CLU `ReportProgress`; without TensorFlow, writers.py: the log and
metrics.jsonl); a non-finite metric stops the run with an error.
SIGTERM (what a preempted VM receives) saves a checkpoint and stops cleanly, at the same step on
every process of a multi-host run, and a stuck collective ends the run with an error instead of
hanging (stopping.py). The training time is counted across resumes (train_time.json, `_TrainClock`).
"""

from __future__ import annotations

import dataclasses
import json
import time

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from deephash_jax import config_lib
from deephash_jax import mesh as mesh_lib
from deephash_jax.data import registry
from deephash_jax.data import sampler as sampler_lib
from deephash_jax.evaluators import evaluate
from deephash_jax.train import checkpoints
from deephash_jax.train import state as state_lib
from deephash_jax.train import step as step_lib
from deephash_jax.train import stopping
from deephash_jax.train import writers


TRAIN_TIME_FILE = "train_time.json"


class _TrainClock:
  """The training time of a run across its resumes, and the hosts that trained it.

  At each checkpoint, `train_time.json` in the workdir records the seconds spent training up to
  that step and the hosts of every segment, so a resumed run's `train_seconds` is the whole run's
  (each segment counted from its restore, the first step's compilation included). A resume from
  a checkpoint without an entry (a workdir written before the file existed, or whose file is
  unreadable, which is logged) counts from that step, and `train_seconds_from_step` says so; it
  is 0 for a run timed whole.
  """

  def __init__(self, workdir: str, start_step: int):
    self._path = config_lib.workdir_path(workdir) / TRAIN_TIME_FILE
    self._entries = {step: e for step, e in self._read(start_step).items()
                     if int(step) <= start_step}          # later ones were not restored
    entry = self._entries.get(str(start_step), {})
    self._before = float(entry.get("seconds", 0.0))
    self._from_step = int(entry.get("from_step", start_step))
    self._hosts = list(entry.get("hosts", []))
    host = mesh_lib.describe_host()
    if host not in self._hosts:
      self._hosts.append(host)
    self._start = time.time()

  def _read(self, start_step: int) -> dict:
    if not start_step or not self._path.exists():
      return {}
    try:
      entries = json.loads(self._path.read_text())["checkpoints"]
      return {str(int(step)): {"seconds": float(e["seconds"]), "from_step": int(e["from_step"]),
                               "hosts": [str(h) for h in e["hosts"]]}
              for step, e in entries.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      logging.warning("%s is unreadable (%s: %s); the train time counts from step %d.",
                      self._path, type(e).__name__, e, start_step)
      return {}

  def results(self) -> dict:
    """`train_seconds`, `train_seconds_from_step` and `train_host` (the hosts joined by " + "
    where segments ran on different ones; process 0's in a multi-process run)."""
    return {"train_seconds": self._before + time.time() - self._start,
            "train_seconds_from_step": self._from_step, "train_host": " + ".join(self._hosts)}

  def record(self, step: int) -> None:
    """Writes the entry of the checkpoint of `step` (process 0; replaced whole, never torn)."""
    if jax.process_index() != 0:
      return
    r = self.results()
    self._entries[str(step)] = {"seconds": r["train_seconds"], "from_step": self._from_step,
                                "hosts": self._hosts}
    config_lib.write_atomic(self._path, json.dumps({"checkpoints": self._entries}, indent=1))


@dataclasses.dataclass
class _Run:
  """What the loop needs: the data order, the compiled step and where to save."""
  config: object
  workdir: str
  mesh: object
  sampler: sampler_lib.TwoViewSampler
  total_steps: int
  manager: object
  state: object
  start_step: int


def _prepare(config, workdir: str) -> _Run:
  """Validates, checks a resumed workdir's config, saves the config, builds the mesh and the
  sampler, restores or initialises."""
  config_lib.validate_config(config)
  config_lib.workdir_path(workdir).mkdir(parents=True, exist_ok=True)
  manager = checkpoints.checkpoint_manager(workdir, config.train)
  if manager.all_steps():
    config_lib.check_resumable(config, workdir)
  if jax.process_count() > 1:   # no process writes config.json before every one has read it
    ocp.multihost.sync_global_processes("config_checked",
                                        processes=set(range(jax.process_count())))
  if jax.process_index() == 0:
    config_lib.save_config(config, workdir)
  mesh = mesh_lib.create_mesh(config.mesh)
  train_split = registry.load_split(config.input, config.input.train_split)
  sampler = sampler_lib.TwoViewSampler(
      train_split, num_items=config.train.batch_size // 2, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      types_per_batch=config_lib.added_field(config, "train.types_per_batch"))
  total_steps = config_lib.total_steps(config, len(train_split))
  image_shape = train_split.images.shape[1:]
  state, restored_step = checkpoints.restore_latest(manager, config, mesh, image_shape,
                                                    total_steps, set_aside=True)
  if state is None:
    state = state_lib.create_train_state(config, jax.random.key(config.seed), total_steps,
                                         image_shape)
    state = jax.device_put(state, mesh_lib.replicated(mesh))
    start_step = 0
  else:
    start_step = int(restored_step)
    logging.info("Resumed from step %d in %s.", start_step, workdir)
  return _Run(config, workdir, mesh, sampler, total_steps, manager, state, start_step)


def _log_metrics(run: _Run, writer, done: int, metrics) -> None:
  metrics = jax.device_get(metrics)
  if not all(np.isfinite(v) for v in metrics.values()):
    raise FloatingPointError(
        f"non-finite training metrics at step {done} in {run.workdir}: {metrics}; "
        "lower config.train.learning_rate or check the input data")
  writer.write_scalars(done, {f"train/{k}": v for k, v in metrics.items()})
  if jax.process_index() == 0:
    logging.info("step %d/%d: %s", done, run.total_steps,
                 " ".join(f"{k}={float(v):.4g}" for k, v in sorted(metrics.items())))


def _train_loop(run: _Run, writer, clock: _TrainClock) -> tuple[int, bool]:
  """Runs the steps from `run.start_step`; (the last step done, whether a preemption stopped it).

  The first step (which compiles) runs alone; from then on the watchdog (stopping.py) ends the
  process if a step, a metrics read or a checkpoint save does not finish in time.

  At most two steps are in flight: step s is dispatched, then the host waits for step s - 1.
  Without that bound the host runs far ahead, and XLA:CPU admits up to 32 enqueued computations
  per device, launched from a thread pool in no guaranteed order: a device whose later steps
  hold every slot cannot launch the earlier one, whose collective the other devices of the step
  then wait in forever (the intermittent multi-process hang, reproduced with a 2 x 4-device
  shard_map loop of 40 steps; tests/test_launch.py runs the default model 10 times). The device
  still has the next step queued while the host gathers a batch: bounded, the loop of
  experiments/cpu_collective_hang ran 44 ms a step against 43 ms unbounded.
  """
  config = run.config
  train_step = step_lib.make_train_step(config, run.mesh)
  rng = jax.random.key(config.seed + 1)
  progress = writers.report_progress(num_train_steps=run.total_steps, writer=writer,
                                     every_steps=config.train.log_every_steps)
  preemption = stopping.Preemption()
  watchdog = stopping.Watchdog(config.train.get("hang_timeout_seconds", 600))
  query_views = config_lib.added_field(config, "input.augment.query_views")
  logging.info("Training %d steps (%d per epoch), global batch %d items x %d views (1 gallery, "
               "%d query) on %d devices.", run.total_steps,
               run.sampler.steps_per_epoch, config.train.batch_size // 2, 1 + query_views,
               query_views, jax.device_count())
  done, stopped, in_flight = run.start_step, False, None
  try:
    with writers.ensure_flushes(writer):
      for step in range(run.start_step, run.total_steps):
        watchdog.beat(f"step {step + 1}")
        batch = mesh_lib.global_batch(run.mesh, run.sampler.local_batch(step))
        run.state, metrics = train_step(run.state, batch, rng)
        done = step + 1
        if step == run.start_step:
          jax.block_until_ready(metrics)   # compiled and ran once: now time every stage
          watchdog.start()
        if in_flight is not None:
          jax.block_until_ready(in_flight)   # step s - 1 done: two steps in flight at most
        in_flight = metrics
        progress(done)
        if done % config.train.log_every_steps == 0 or done == run.total_steps:
          watchdog.beat(f"the metrics of step {done}")
          _log_metrics(run, writer, done, metrics)
        stopped = preemption.reached(done)
        if (done % config.train.checkpoint_every_steps == 0 or done == run.total_steps
            or stopped):
          watchdog.beat(f"the checkpoint of step {done}")
          # The step is done on every device before the checkpoint code starts: nothing it
          # runs can overlap the step's collectives.
          jax.block_until_ready(run.state)
          run.manager.save(done, args=ocp.args.StandardSave(run.state), force=stopped)
          clock.record(done)
        if stopped:
          break
    watchdog.beat("the last checkpoint's write")
    run.manager.wait_until_finished()
  finally:
    watchdog.stop()
    preemption.close()
  return done, stopped


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming from the latest checkpoint in `workdir`), then evaluates.

  Returns the final evaluation metrics (`evaluators.evaluate.evaluate_variables`, also written
  to `workdir/eval_results.json`), or `{"stopped_at_step": N}` when SIGTERM stopped the run.
  """
  run = _prepare(config, workdir)
  writer = writers.create_writer(workdir, just_logging=jax.process_index() != 0)
  if run.start_step == 0 and jax.process_index() == 0:
    writer.write_hparams(config_lib.flatten_for_hparams(config))
  clock = _TrainClock(workdir, run.start_step)
  done, stopped = _train_loop(run, writer, clock)
  timing = clock.results()
  if stopped:
    run.manager.close()
    logging.warning("Stopped at step %d on a preemption notice; rerun with the same --workdir "
                    "to resume.", done)
    return {"stopped_at_step": done}
  variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
  eval_start = time.time()
  results = evaluate.evaluate_variables(config, variables, mesh=run.mesh)
  results["eval_seconds"] = time.time() - eval_start
  results.update(timing, train_steps=run.total_steps, train_devices=mesh_lib.describe_devices())
  writer.write_scalars(run.total_steps, {f"eval/{k}": v for k, v in results.items()
                                         if isinstance(v, (int, float))})
  if jax.process_index() == 0:
    config_lib.write_atomic(config_lib.workdir_path(workdir) / "eval_results.json",
                            json.dumps(results, indent=2))
  run.manager.close()
  return results
