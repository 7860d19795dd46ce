"""Preemption of a multi-process run (2 processes x 4 CPU devices on 127.0.0.1): a SIGTERM that
reaches one process only stops both at the same step, each saves it and exits 0, and the rerun
ends with the parameters of an uninterrupted run. A stuck collective ends with an error."""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from deephash_jax import config_lib
from deephash_jax import encoder
from deephash_jax.data import registry
from deephash_jax.train import stopping
from tests import NO_COMPILATION_CACHE
from tests import fake_data

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_STEPS = 40
# The multi-process tests share one of make test's workers (the Makefile says why).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multiprocess")]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, overrides, num_processes=2):
  """`deephash train` as processes 0..n-1 of one run; their Popen objects."""
  port = _free_port()
  env = {**os.environ, **NO_COMPILATION_CACHE, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // num_processes}"}
  return [subprocess.Popen(
      [sys.executable, "-m", "deephash_jax.main", "train", "--config=configs/tiny.py", "--json",
       f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
       f"--num_processes={num_processes}", f"--process_id={i}",
       *[f"--config.{k}={v}" for k, v in overrides.items()]],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(num_processes)]


def _tails(outputs, chars=4000):
  """The end of each process's output, for a failure message that shows why it exited."""
  return "\n".join(f"--- process {i} (last {chars} chars) ---\n{out[-chars:]}"
                   for i, out in enumerate(outputs))


def _finish(processes, timeout=300):
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=timeout)[0])
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  return [p.returncode for p in processes], outputs


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("multihost")
  source = fake_data.write_fake_fashion_mnist(str(root / "idx"))
  overrides = {"input.source_dir": source, "input.data_dir": str(root / "tfds"),
               "train.num_steps": NUM_STEPS, "train.checkpoint_every_steps": 5,
               "train.log_every_steps": 5, "eval.closest_match.num_queries": 0}
  config = config_lib.base_config("tiny")
  config.input.source_dir, config.input.data_dir = source, str(root / "tfds")
  registry.load_split(config.input, "train")     # the TFDS dataset, built once
  return root, overrides


def _leaves(workdir):
  model = encoder.HashEncoder.from_workdir(workdir)
  return model.step, [np.asarray(x) for x in jax.tree.leaves(model.variables)]


def test_sigterm_to_one_process_stops_both_at_one_step_and_the_rerun_equals_no_stop(data):
  root, overrides = data
  reference = str(root / "reference")
  codes, outputs = _finish(_start(reference, overrides))
  assert codes == [0, 0], _tails(outputs)

  workdir = str(root / "preempted")
  processes = _start(workdir, overrides)
  marker = os.path.join(workdir, "checkpoints", "10")
  while not os.path.isdir(marker) and all(p.poll() is None for p in processes):
    time.sleep(0.05)
  if not all(p.poll() is None for p in processes):
    codes, outputs = _finish(processes)
    pytest.fail(f"training ended before step 10, exit codes {codes}:\n{_tails(outputs)}")
  processes[1].send_signal(signal.SIGTERM)            # the notice reaches process 1 only
  codes, outputs = _finish(processes)
  assert codes == [0, 0], _tails(outputs)
  stopped = [int(out.split('"stopped_at_step": ')[1].split("}")[0]) for out in outputs]
  assert stopped[0] == stopped[1] < NUM_STEPS, (stopped, outputs)
  assert "Preemption notice: every process stops after step" in outputs[0]
  assert str(stopped[0]) in os.listdir(os.path.join(workdir, "checkpoints"))
  step, _ = _leaves(workdir)                          # the saved checkpoint restores
  assert step == stopped[0]

  codes, outputs = _finish(_start(workdir, overrides))   # the rerun resumes to the end
  assert codes == [0, 0], _tails(outputs)
  (step, resumed), (ref_step, expected) = _leaves(workdir), _leaves(reference)
  assert step == ref_step == NUM_STEPS
  for a, b in zip(resumed, expected):
    np.testing.assert_array_equal(a, b)


def test_a_stuck_collective_ends_the_run_with_an_error_naming_where(data):
  """Process 1 is stopped (SIGSTOP) mid-run: alive, but it never reaches the next collective.
  Process 0 must not wait forever in silence: its watchdog ends it, naming the step."""
  root, overrides = data
  workdir = str(root / "stuck")
  processes = _start(workdir, {**overrides, "train.hang_timeout_seconds": 20})
  marker = os.path.join(workdir, "checkpoints", "5")
  try:
    while not os.path.isdir(marker) and all(p.poll() is None for p in processes):
      time.sleep(0.05)
    assert all(p.poll() is None for p in processes), "training ended before step 5"
    processes[1].send_signal(signal.SIGSTOP)
    output = processes[0].communicate(timeout=240)[0]
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  assert processes[0].returncode == stopping.HUNG_EXIT_CODE, output[-3000:]
  assert "deephash train: no progress for" in output and "step" in output
  assert "Thread" in output        # every thread's stack, for the post-mortem
