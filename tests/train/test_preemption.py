"""Preemption and faults: SIGTERM, SIGKILL at an arbitrary step, a corrupt latest checkpoint.

Each interrupted run is compared with an uninterrupted run of the same length: the batches and
random numbers are functions of the step, so the parameters must be equal.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from deephash_jax import config_lib
from deephash_jax import encoder
from deephash_jax.data import registry
from deephash_jax.train import trainer
from tests import fake_data

NUM_STEPS = 40
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """Synthetic IDX files, the TFDS dataset prepared once, and the uninterrupted reference run."""
  root = tmp_path_factory.mktemp("preempt")
  source = fake_data.write_fake_fashion_mnist(str(root / "idx"))
  overrides = {"input.source_dir": source, "input.data_dir": str(root / "tfds"),
               "train.num_steps": NUM_STEPS, "train.checkpoint_every_steps": 5,
               "train.log_every_steps": 5, "train.keep_checkpoints": 3}
  config = config_lib.base_config("tiny")
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  registry.load_split(config.input, "train")  # Build the TFDS dataset once.
  reference = str(root / "reference")
  trainer.train_and_evaluate(config, reference)
  return config, overrides, reference, root


def _variables(workdir):
  model = encoder.HashEncoder.from_workdir(workdir)
  return model.step, jax.tree.leaves(model.variables)


def _assert_same_model(workdir, reference):
  step, leaves = _variables(workdir)
  ref_step, ref_leaves = _variables(reference)
  assert step == ref_step == NUM_STEPS
  for a, b in zip(leaves, ref_leaves):
    np.testing.assert_array_equal(a, b)


def _command(workdir, overrides):
  return [sys.executable, "-m", "deephash_jax.main", "train", "--config=configs/tiny.py",
          f"--workdir={workdir}", *[f"--config.{k}={v}" for k, v in overrides.items()]]


def _env():
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
              JAX_PLATFORMS="cpu")


def _start_and_signal_after_checkpoint(workdir, overrides, sig, after_step):
  """Starts training in a subprocess; sends `sig` once checkpoint `after_step` is finalised."""
  proc = subprocess.Popen(_command(workdir, overrides), cwd=REPO, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  marker = os.path.join(workdir, "checkpoints", str(after_step))
  deadline = time.time() + 240
  while not os.path.isdir(marker) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, f"training ended before step {after_step}: {proc.stdout.read()}"
  proc.send_signal(sig)
  output, _ = proc.communicate(timeout=240)
  return proc.returncode, output


def test_sigterm_saves_and_exits_cleanly_then_resumes(setup):
  config, overrides, reference, root = setup
  workdir = str(root / "sigterm")
  returncode, output = _start_and_signal_after_checkpoint(workdir, overrides, signal.SIGTERM, 5)
  assert returncode == 0, output
  assert "Received signal 15" in output and "stopped_at_step" in output
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps and steps[-1] < NUM_STEPS, steps   # Stopped early, with a checkpoint of its step.
  trainer.train_and_evaluate(config, workdir)       # The rerun continues to the end.
  _assert_same_model(workdir, reference)


def test_sigkill_at_an_arbitrary_step_then_rerun_equals_uninterrupted(setup):
  config, overrides, reference, root = setup
  workdir = str(root / "sigkill")
  returncode, _ = _start_and_signal_after_checkpoint(workdir, overrides, signal.SIGKILL, 10)
  assert returncode == -signal.SIGKILL
  assert not os.path.exists(os.path.join(workdir, "eval_results.json"))
  trainer.train_and_evaluate(config, workdir)
  _assert_same_model(workdir, reference)


def test_corrupt_latest_checkpoint_falls_back_and_says_so(setup, caplog):
  config, _, reference, root = setup
  workdir = str(root / "corrupt")
  shutil.copytree(reference, workdir)
  latest = os.path.join(workdir, "checkpoints", str(NUM_STEPS))
  # Truncate every file to half (what a full disk or an interrupted copy leaves).
  files = [os.path.join(d, f) for d, _, fs in os.walk(latest) for f in fs]
  assert files
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  os.remove(os.path.join(workdir, "eval_results.json"))
  with caplog.at_level("WARNING"):
    trainer.train_and_evaluate(config, workdir)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", f"corrupt-{NUM_STEPS}")), (
      os.listdir(os.path.join(workdir, "checkpoints")))  # Set aside, not deleted.
  assert f"Checkpoint at step {NUM_STEPS}" in caplog.text and "falling back" in caplog.text
  _assert_same_model(workdir, reference)   # Retrained from step 35 to the same parameters.
