"""main.py: the dispatcher; each command owns its flags and names what is missing or misplaced."""
import json
import os
import subprocess
import sys

import pytest

from deephash_jax import config_lib
from deephash_jax import main
from deephash_jax.bench import plan
from deephash_jax.bench import report

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
    (("index", "--workdir=/tmp/x", "--output=/tmp/y", "--view_weights=3,x"),
     "deephash index: --view_weights=3,x: whole numbers expected"),
    (("index", "--workdir=/tmp/x", "--output=/tmp/y", "--merge_views"),
     "deephash index: merge_views needs two or more view_weights, got [1]"),
    (("predict", "--workdir=/tmp/x", "--view_weights=3,1"),
     "--view_weights is not a flag of `deephash predict` (it belongs to index)"),
    (("benchmark", "--workdir=/tmp/x", "--config=configs/benchmark_tiny.py", "--print_plan",
      "--report"), "--print_plan, --worker and --report exclude each other"),
    (("frobnicate",), "usage: deephash {train, evaluate, index, demo, predict"),
])
def test_usage_errors_name_the_flag(args, message):
  result = _deephash(*args)
  assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]


def test_print_plan_leaves_out_the_runs_an_earlier_report_holds(tmp_path):
  elsewhere = str(tmp_path / "elsewhere")
  config = config_lib.base_config("benchmark_tiny")
  run = plan.Run("ours", 16, 0)
  os.makedirs(plan.run_dir(elsewhere, run))
  config_lib.save_config(plan.run_config(config, run), plan.run_dir(elsewhere, run))
  with open(os.path.join(plan.run_dir(elsewhere, run), plan.RESULTS_FILE), "w") as f:
    json.dump({"map_all": 0.5}, f)
  previous = str(tmp_path / "results.json")
  with open(previous, "w") as f:
    json.dump(report.collect(config, elsewhere, with_references=False), f,
              default=report._to_json)   # pylint: disable=protected-access
  here = str(tmp_path / "here")
  result = _deephash("benchmark", "--config=configs/benchmark_tiny.py", f"--workdir={here}",
                     "--print_plan", f"--previous_report={previous}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert [line.split()[2] for line in result.stdout.splitlines()] == [
      f"--config=configs/benchmark_tiny.py:{name}" for name in
      ("dch_16b_s0", "ours_32b_s0", "dch_32b_s0")]
  # Under another config the earlier run is stale, not carried: every run is printed.
  result = _deephash("benchmark", "--config=configs/benchmark_tiny.py", f"--workdir={here}",
                     "--print_plan", f"--previous_report={previous}",
                     "--config.train.num_steps=2")
  assert len(result.stdout.splitlines()) == 4, result.stderr[-2000:]
  result = _deephash("benchmark", "--config=configs/benchmark_tiny.py", f"--workdir={here}",
                     "--print_plan", f"--previous_report={tmp_path}/none.json")
  assert result.returncode != 0 and "none.json: no such file" in result.stderr


def test_print_plan_prints_one_train_command_per_unfinished_run(tmp_path):
  result = _deephash("benchmark", "--config=configs/benchmark_tiny.py", f"--workdir={tmp_path}",
                     "--print_plan", "--config.train.num_steps=2")
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  assert len(lines) == 4
  assert lines[0] == (f"deephash train --config=configs/benchmark_tiny.py:ours_16b_s0 "
                      f"--workdir={tmp_path}/runs/ours_16b_s0 --config.train.num_steps=2")
