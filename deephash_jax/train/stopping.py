"""How a training run stops: on preemption, at one step agreed by every process, and never by
hanging in silence.

* `Preemption`: SIGTERM is what a preempted TPU VM or a cluster scheduler sends. In one process a
  Python handler sets a flag, read between steps. In a multi-process run the notice may reach one
  host first, and a host that stopped alone would leave the others waiting in the next collective
  forever; so there the coordination service's preemption notifier (started by
  `jax.distributed.initialize`) takes SIGTERM, tells every process, and
  `multihost_utils.reached_preemption_sync_point(step)` turns true on all of them at the same
  step: each saves that step's checkpoint and exits 0.
* `Watchdog`: if the training loop makes no progress for `train.hang_timeout_seconds` (a
  collective or a barrier between processes that never completes), it logs which stage the loop
  was in and at which step, writes every thread's stack to stderr, and ends the process with
  exit code 75, so that the launcher stops the other processes instead of waiting forever.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time

from absl import logging
import jax
from jax.experimental import multihost_utils

HUNG_EXIT_CODE = 75   # EX_TEMPFAIL: rerun to resume from the last checkpoint


class Preemption:
  """`reached(step)`: whether to save and stop after `step` (the same step on every process)."""

  def __init__(self):
    self.multihost = jax.process_count() > 1
    self._requested = False
    self._previous = None
    if not self.multihost:   # multi-process: the coordination service owns SIGTERM
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def _on_signal(self, signum, frame):
    del frame
    logging.warning("Received signal %d: saving a checkpoint and stopping.", signum)
    self._requested = True

  def reached(self, step: int) -> bool:
    if self.multihost:
      if multihost_utils.reached_preemption_sync_point(step):
        logging.warning("Preemption notice: every process stops after step %d and saves it.",
                        step)
        return True
      return False
    return self._requested

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


class Watchdog:
  """Ends the process when `beat` has not been called for `timeout` seconds."""

  def __init__(self, timeout: float, *, poll: float | None = None,
               on_timeout=None):
    self.timeout = float(timeout)
    self._poll = poll or min(5.0, self.timeout / 10)
    self._on_timeout = on_timeout or _exit_hung
    self._last = time.monotonic()
    self._where = "starting"
    self._stopped = threading.Event()
    self._thread = threading.Thread(target=self._watch, name="deephash-watchdog", daemon=True)

  def start(self) -> "Watchdog":
    self._last = time.monotonic()
    self._thread.start()
    return self

  def beat(self, where: str) -> None:
    """The loop made progress; `where` names the stage it enters next."""
    self._where = where
    self._last = time.monotonic()

  def stop(self) -> None:
    self._stopped.set()
    if self._thread.is_alive():
      self._thread.join()

  def _watch(self) -> None:
    while not self._stopped.wait(self._poll):
      idle = time.monotonic() - self._last
      if idle > self.timeout:
        self._on_timeout(self._where, idle)
        return


def _exit_hung(where: str, idle: float) -> None:
  message = (f"deephash train: no progress for {idle:.0f} s in {where} (train.hang_timeout_"
             "seconds): a collective or a barrier between processes never completed, or a "
             "process is gone. Every thread's stack follows; rerun to resume from the last "
             "checkpoint.")
  logging.error(message)
  print(message, file=sys.stderr, flush=True)
  faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
  sys.stderr.flush()
  os._exit(HUNG_EXIT_CODE)  # pylint: disable=protected-access  (the main thread is stuck)
