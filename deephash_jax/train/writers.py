"""Where training's metrics go: CLU's writers (TensorBoard event files and the log) and CLU's
`ReportProgress`, or, where CLU cannot be imported (it needs TensorFlow: an accelerator image
with JAX alone), the log and `<workdir>/metrics.jsonl`, one JSON object per write, with the same
progress figures (steps per second, ETA).
"""

from __future__ import annotations

import contextlib
import json
import time

from absl import logging

from deephash_jax import config_lib

try:
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
except ImportError:     # CLU, or the TensorFlow its summary writer imports, is not installed
  metric_writers = periodic_actions = None

METRICS_JSONL = "metrics.jsonl"


def _plain(value):
  try:
    return float(value)
  except (TypeError, ValueError):
    return str(value)


class JsonlWriter:
  """The metric writer without TensorFlow: scalars and hyperparameters appended to
  `<workdir>/metrics.jsonl` as they come (process 0 only, as CLU writes events), scalars also
  logged."""

  def __init__(self, workdir: str, *, just_logging: bool = False):
    self._path = None if just_logging else config_lib.workdir_path(workdir) / METRICS_JSONL

  def _append(self, record: dict) -> None:
    if self._path is not None:
      with self._path.open("a") as f:
        f.write(json.dumps(record) + "\n")

  def write_scalars(self, step: int, scalars) -> None:
    scalars = {k: _plain(v) for k, v in scalars.items()}
    self._append({"step": int(step), **scalars})
    logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else
                                            f"{k}={v}" for k, v in scalars.items()))

  def write_hparams(self, hparams) -> None:
    self._append({"hparams": {k: v if isinstance(v, (bool, int, float, str)) or v is None
                              else str(v) for k, v in hparams.items()}})

  def flush(self) -> None:
    """Every write is on disk when it returns."""

  def close(self) -> None:
    """Nothing is held open."""


class _Progress:
  """CLU's ReportProgress without CLU: every `every_steps` steps, the rate and the time left,
  logged and written as `steps_per_sec`."""

  def __init__(self, *, num_train_steps: int, writer, every_steps: int):
    self._total, self._writer, self._every = num_train_steps, writer, every_steps
    self._last = None      # (step, time) of the last report

  def __call__(self, step: int) -> None:
    now = time.time()
    if self._last is None:
      self._last = (step, now)
      return
    if step % self._every and step != self._total:
      return
    steps, seconds = step - self._last[0], now - self._last[1]
    self._last = (step, now)
    if steps <= 0 or seconds <= 0:
      return
    rate = steps / seconds
    self._writer.write_scalars(step, {"steps_per_sec": rate})
    logging.info("Step %d/%d: %.2f steps/s, %.1f min left.", step, self._total, rate,
                 (self._total - step) / rate / 60)


def create_writer(workdir: str, *, just_logging: bool):
  """CLU's default writer, or JsonlWriter where CLU cannot be imported."""
  if metric_writers is not None:
    return metric_writers.create_default_writer(workdir, just_logging=just_logging)
  logging.warning("CLU (or TensorFlow) is not installed: metrics go to the log and %s, not to "
                  "TensorBoard.", config_lib.workdir_path(workdir) / METRICS_JSONL)
  return JsonlWriter(workdir, just_logging=just_logging)


def ensure_flushes(writer):
  """create_writer's writer: a JsonlWriter is the one it makes without CLU."""
  if isinstance(writer, JsonlWriter):
    return contextlib.closing(writer)
  return metric_writers.ensure_flushes(writer)


def report_progress(*, num_train_steps: int, writer, every_steps: int):
  if isinstance(writer, JsonlWriter):
    return _Progress(num_train_steps=num_train_steps, writer=writer, every_steps=every_steps)
  return periodic_actions.ReportProgress(num_train_steps=num_train_steps, writer=writer,
                                         every_steps=every_steps)
