"""`deephash benchmark`: print the plan as commands, train it here one run after another (all of it
or a worker's slice), then write the report of whatever runs have finished.

    deephash benchmark --config=configs/benchmark.py --workdir=W --print_plan | xargs -P 2 -I{} sh -c {}
    deephash benchmark --config=configs/benchmark.py --workdir=W [--worker=0/2]
    deephash benchmark --config=configs/benchmark.py --workdir=W --report

A run is a plain training run (plan.py); finished runs are skipped (and finished runs of another
config than the plan's refused, named with the fields that differ; those that differ only in how
they are evaluated are evaluated again from their checkpoints, untrained), a run another process
is training (its lock is held) is left to it, an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import os
import traceback
from typing import Collection

from absl import logging

from deephash_jax.bench import plan as plan_lib
from deephash_jax.train import trainer

ERROR_FILE = "error.txt"


def pending_commands(config, workdir: str, config_file: str, overrides: dict, *,
                     program: str = "deephash", skip: Collection[str] = ()) -> list[str]:
  """The `deephash train` line of every planned run that has not finished (nor is named in
  `skip`: runs an earlier report holds), in plan order."""
  plan_lib.validate_benchmark(config, overrides)
  plan = plan_lib.planned_runs(config.benchmark)
  plan_lib.check_not_stale(config, workdir, plan)
  return [plan_lib.train_command(config_file, workdir, run, overrides, program=program)
          for run in plan if run.name not in skip and (
              not plan_lib.is_finished(workdir, run) or plan_lib.reevaluable(config, workdir, run))]


def _train_one(config, workdir: str, run: plan_lib.Run) -> str:
  """Trains one run under its lock (or evaluates it again: plan.reevaluable): "done",
  "skipped" (another process holds it), "stopped" (SIGTERM) or "failed" (the error is kept in
  the run's error.txt and the sweep goes on)."""
  directory = plan_lib.run_dir(workdir, run)
  with plan_lib.run_lock(directory) as acquired:
    if not acquired:
      logging.info("%s: another process is training it; leaving it.", run.name)
      return "skipped"
    if (plan_lib.is_finished(workdir, run)    # finished while this process waited
        and not plan_lib.reevaluable(config, workdir, run)):
      return "done"
    error_path = os.path.join(directory, ERROR_FILE)
    if os.path.exists(error_path):
      os.remove(error_path)
    try:
      results = trainer.train_and_evaluate(plan_lib.run_config(config, run), directory)
    except (FloatingPointError, ValueError, RuntimeError, OSError) as e:
      logging.exception("%s failed; going on with the next run.", run.name)
      with open(error_path, "w") as f:
        f.write(f"{type(e).__name__}: {e}\n\n{traceback.format_exc()}")
      return "failed"
  return "stopped" if "stopped_at_step" in results else "done"


def run_plan(config, workdir: str, *, worker: tuple[int, int] = (0, 1),
             overrides: dict | None = None, skip: Collection[str] = ()) -> dict[str, str]:
  """Trains this worker's unfinished runs one after another, but those named in `skip` (runs an
  earlier report holds); {run name: outcome}."""
  plan_lib.validate_benchmark(config, overrides or {})
  plan = plan_lib.planned_runs(config.benchmark)
  mine = plan_lib.worker_runs(plan, worker)
  plan_lib.check_not_stale(config, workdir, mine)
  outcomes = {}
  for position, run in enumerate(mine, start=1):
    again = plan_lib.reevaluable(config, workdir, run)
    if plan_lib.is_finished(workdir, run) and not again:
      outcomes[run.name] = "done"
      continue
    if run.name in skip:
      outcomes[run.name] = "carried"
      continue
    logging.info("[%d/%d] %s: %s.", position, len(mine), run.name,
                 "evaluating again (only how it is evaluated changed)" if again else "training")
    outcomes[run.name] = _train_one(config, workdir, run)
    if outcomes[run.name] == "stopped":
      logging.warning("Stopped during %s; rerun the same command to resume.", run.name)
      break
  logging.info("Benchmark worker %d of %d: %s.", worker[0], worker[1], ", ".join(
      f"{sum(v == o for v in outcomes.values())} {o}" for o in sorted(set(outcomes.values()))))
  return outcomes
