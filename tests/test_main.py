"""main.py: the dispatcher; each command owns its flags and names what is missing or misplaced."""
import os
import subprocess
import sys

import pytest

from deephash_jax import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _deephash(*args):
  return subprocess.run([sys.executable, "-m", "deephash_jax.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


def test_every_command_reads_only_flags_that_exist():
  defined = set(main.FLAGS)
  for name, command in main.COMMANDS.items():
    assert set(command.flags) <= defined, name
    assert set(command.required) <= set(command.flags), name


@pytest.mark.parametrize("args,message", [
    (("train", "--workdir=/tmp/x", "--k=3", "--config=configs/tiny.py"),
     "--k is not a flag of `deephash train` (it belongs to predict)"),
    (("evaluate",), "--workdir is required for `deephash evaluate`"),
    (("index", "--workdir=/tmp/x"), "--output is required for `deephash index`"),
    (("benchmark", "--workdir=/tmp/x", "--config=configs/benchmark_tiny.py", "--print_plan",
      "--report"), "--print_plan, --worker and --report exclude each other"),
    (("frobnicate",), "usage: deephash {train, evaluate, index, demo, predict"),
])
def test_usage_errors_name_the_flag(args, message):
  result = _deephash(*args)
  assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]


def test_print_plan_prints_one_train_command_per_unfinished_run(tmp_path):
  result = _deephash("benchmark", "--config=configs/benchmark_tiny.py", f"--workdir={tmp_path}",
                     "--print_plan", "--config.train.num_steps=2")
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  assert len(lines) == 4
  assert lines[0] == (f"deephash train --config=configs/benchmark_tiny.py:ours_16b_s0 "
                      f"--workdir={tmp_path}/runs/ours_16b_s0 --config.train.num_steps=2")
