"""train/stopping.py: the single-process preemption flag and the watchdog, on their own."""
import os
import signal
import threading

from deephash_jax.train import stopping


def test_sigterm_sets_the_flag_and_close_restores_the_handler():
  before = signal.getsignal(signal.SIGTERM)
  preemption = stopping.Preemption()
  assert not preemption.multihost and not preemption.reached(3)
  os.kill(os.getpid(), signal.SIGTERM)
  assert preemption.reached(4)
  preemption.close()
  assert signal.getsignal(signal.SIGTERM) == before


def test_the_watchdog_fires_only_without_progress():
  fired = []
  done = threading.Event()

  def on_timeout(where, idle):
    fired.append((where, idle))
    done.set()
  watchdog = stopping.Watchdog(2.0, poll=0.01, on_timeout=on_timeout).start()
  for step in range(20):          # beating faster than the timeout: never fires
    watchdog.beat(f"step {step}")
    done.wait(0.05)
  assert not fired
  watchdog.beat("the checkpoint of step 20")
  assert done.wait(30)            # no beat: fires, naming the stage it was left in
  assert fired[0][0] == "the checkpoint of step 20" and fired[0][1] > 2.0
  watchdog.stop()
