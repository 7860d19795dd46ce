"""Sharded search over a gallery split across processes: 2 processes x 4 CPU devices on
127.0.0.1 (gloo collectives), each must get the same (D, I) as a single-process search."""

import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from deephash_jax.search import hamming
from tests import NO_COMPILATION_CACHE
from tests.search import multiprocess_search_worker as worker

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_PROCESSES, DEVICES_PER_PROCESS = 2, 4


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# The multi-process tests share one of make test's workers (the Makefile says why).
@pytest.mark.xdist_group("multiprocess")
def test_two_processes_search_like_one(tmp_path):
  coordinator = f"127.0.0.1:{_free_port()}"
  env = {**os.environ, **NO_COMPILATION_CACHE, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}"}
  procs = [subprocess.Popen(
      [sys.executable, "-m", "tests.search.multiprocess_search_worker", coordinator,
       str(NUM_PROCESSES), str(i), str(tmp_path / f"process_{i}.npz")],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      start_new_session=True) for i in range(NUM_PROCESSES)]
  try:
    outputs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:  # Only the processes started here, by their group.
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
  for p, output in zip(procs, outputs):
    assert p.returncode == 0, output[-3000:]

  xq, xb = worker.codes()
  want_d, want_i = hamming.search(xq, xb, worker.K, num_bits=worker.NUM_BITS)
  # Not vacuous: duplicated codes give exact ties, broken by the lower index.
  assert want_d[0, 0] == want_d[0, 1] == 0 and want_i[0, :2].tolist() == [0, len(xb) // 2]
  for i in range(NUM_PROCESSES):
    got = np.load(tmp_path / f"process_{i}.npz")
    assert got["devices"] == NUM_PROCESSES * DEVICES_PER_PROCESS
    assert got["local_devices"] == DEVICES_PER_PROCESS
    np.testing.assert_array_equal(got["D"], want_d, err_msg=f"process {i}")
    np.testing.assert_array_equal(got["I"], want_i, err_msg=f"process {i}")
    assert got["D"].dtype == np.int32 and got["I"].dtype == np.int64
