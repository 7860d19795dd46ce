"""bench/runner.py and bench/report.py end to end on the tiny benchmark (synthetic IDX files)."""
import json
import os
import shlex
import subprocess
import sys

import pytest

from deephash_jax import config_lib
from deephash_jax.bench import markdown
from deephash_jax.bench import plan
from deephash_jax.bench import report
from deephash_jax.bench import runner
from deephash_jax.train import trainer
from tests import fake_data

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
  source = fake_data.write_fake_fashion_mnist(str(tmp_path_factory.mktemp("idx")))
  cfg = config_lib.base_config("benchmark_tiny")
  cfg.input.source_dir = source
  cfg.input.data_dir = str(tmp_path_factory.mktemp("tfds"))
  return cfg


def _recording(monkeypatch) -> list[str]:
  """Patches the trainer to note each run it trains; the list."""
  trained, real = [], trainer.train_and_evaluate

  def recording(config, workdir):
    trained.append(os.path.basename(workdir))
    return real(config, workdir)
  monkeypatch.setattr(trainer, "train_and_evaluate", recording)
  return trained


def _no_training(*args, **kwargs):
  raise AssertionError("a finished run was trained again")


def test_the_plan_trains_once_and_the_report_reads_every_finished_run(tiny_config, tmp_path,
                                                                     monkeypatch):
  workdir = str(tmp_path / "bench")
  trained = _recording(monkeypatch)
  # Worker 0 of 2 trains its share (runs 1 and 3 of the plan) only; its first run is held by
  # another process (a lock this test holds), so it leaves it.
  held = plan.run_dir(workdir, plan.Run("ours", 16, 0))
  with plan.run_lock(held):
    outcomes = runner.run_plan(tiny_config, workdir, worker=(0, 2))
    assert outcomes == {"ours_16b_s0": "skipped", "ours_32b_s0": "done"}
    # A report halfway: the held run shows as running, the others as not run yet.
    halfway = report.collect(tiny_config, workdir, with_references=False)
  assert trained == ["ours_32b_s0"]
  assert {n: r["status"] for n, r in halfway["runs"].items()} == {
      "ours_16b_s0": "running", "dch_16b_s0": "pending", "ours_32b_s0": "done",
      "dch_32b_s0": "pending"}
  assert runner.run_plan(tiny_config, workdir) == dict.fromkeys(
      ["ours_16b_s0", "dch_16b_s0", "ours_32b_s0", "dch_32b_s0"], "done")
  assert trained == ["ours_32b_s0", "ours_16b_s0", "dch_16b_s0", "dch_32b_s0"]

  results = report.write_report(tiny_config, workdir)
  assert results["status"] == {"done": 4, "running": 0, "pending": 0, "failed": 0,
                               "stale": 0, "planned": 4, "carried": 0}
  for name, record in results["runs"].items():
    assert set(record["category"]) == {"map_all", "map_at_10", "precision_at_hamming_2"}
    assert 0.0 < record["category"]["map_all"] <= 1.0, name
    cm = record["closest_match"]
    assert 0.0 <= cm["recall_at_1"] <= cm["recall_at_10"] <= 1.0
    assert len(record["pr_curve"]["precision"]) == record["bits"] + 1
  refs = results["references"]
  assert refs["float_codes"]["run"] == "ours_16b_s0"
  for name in ("sad", "float_codes"):
    assert refs[name]["category"]["num_queries"] == 40
    assert refs[name]["closest_match"]["num_queries"] == 20
  assert refs["sad"]["queries_per_second"] > 0
  assert refs["float_codes"]["hamming_queries_per_second"] > 0
  md = open(os.path.join(workdir, "results.md")).read()
  assert "| method | 16 bits | 32 bits |" in md and "| dch |" in md and "pixel SAD" in md
  for png in ("mAP_vs_bits.png", "pr_curves.png", "protocols.png"):
    with open(os.path.join(workdir, png), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
  # Each run is a plain training workdir with its variant's config.
  run_cfg = config_lib.load_config(plan.run_dir(workdir, plan.Run("dch", 16, 0)))
  assert run_cfg.method == "dch" and run_cfg.loss.classification_weight == 0.0
  assert run_cfg.model.num_bits == 16 and "benchmark" not in run_cfg

  # Again: nothing is trained, the references come from their cache, the figures are the same.
  real_train = trainer.train_and_evaluate
  monkeypatch.setattr(trainer, "train_and_evaluate", _no_training)
  monkeypatch.setattr(report.references_lib, "pixel_sad", _no_training)
  monkeypatch.setattr(report.references_lib, "float_codes", _no_training)
  assert runner.pending_commands(tiny_config, workdir, "configs/benchmark_tiny.py", {}) == []
  runner.run_plan(tiny_config, workdir)
  again = report.write_report(tiny_config, workdir, str(tmp_path / "report"))
  assert again["runs"] == json.loads(json.dumps(results["runs"]))
  assert again["references"] == json.loads(json.dumps(refs))
  assert os.path.exists(tmp_path / "report" / "results.md")
  # The float codes are keyed by the reference model, not by its run's record: another record
  # (a new field, another timing) reuses them.
  float_results = os.path.join(plan.run_dir(workdir, plan.Run("ours", 16, 0)), plan.RESULTS_FILE)
  with open(float_results) as f:
    record = json.load(f)
  with open(float_results, "w") as f:
    json.dump({**record, "train_seconds": record["train_seconds"] + 1, "a_new_field": 1}, f)
  assert report.collect(tiny_config, workdir)["references"] == again["references"]
  # The plan changes: its finished runs are refused, not reported or resumed as the new config's.
  changed = tiny_config.copy_and_resolve_references()
  changed.train.learning_rate *= 2
  for go_on in (lambda: runner.run_plan(changed, workdir),
                lambda: runner.pending_commands(changed, workdir, "configs/benchmark_tiny.py", {})):
    with pytest.raises(plan.StaleRunError,
                       match="(?s)4 finished run.*ours_16b_s0: train.learning_rate: 0.003 -> "):
      go_on()
  # Only how the runs are evaluated changes (the codes averaged over shifted views too): they
  # are stale until evaluated again, which their own train lines do from their checkpoints.
  monkeypatch.setattr(trainer, "train_and_evaluate", real_train)
  shifted = tiny_config.copy_and_resolve_references()
  shifted.model.shift_average = 1
  stale = report.collect(shifted, workdir, with_references=False)["runs"]
  assert {r["status"] for r in stale.values()} == {"stale"}
  assert stale["dch_32b_s0"]["differences"] == ["model.shift_average: 0 -> 1"]
  assert "evaluated again" in markdown.format_markdown(
      report.collect(shifted, workdir, with_references=False))
  assert len(runner.pending_commands(shifted, workdir, "configs/benchmark_tiny.py", {})) == 4
  steps = {n: sorted(os.listdir(os.path.join(plan.run_dir(workdir, plan.parse_run(n)),
                                             "checkpoints"))) for n in results["runs"]}
  assert runner.run_plan(shifted, workdir, worker=(1, 2)) == dict.fromkeys(
      ["dch_16b_s0", "dch_32b_s0"], "done")
  records = report.collect(shifted, workdir, with_references=False)["runs"]
  assert {n: r["status"] for n, r in records.items()} == {
      "ours_16b_s0": "stale", "dch_16b_s0": "done", "ours_32b_s0": "stale", "dch_32b_s0": "done"}
  for name in ("dch_16b_s0", "dch_32b_s0"):
    directory = plan.run_dir(workdir, plan.parse_run(name))
    assert sorted(os.listdir(os.path.join(directory, "checkpoints"))) == steps[name]  # untrained
    assert config_lib.load_config(directory).model.shift_average == 1
    # The training time of its last checkpoint's record plus the restore, no steps' time.
    assert records[name]["train_seconds"] == pytest.approx(
        results["runs"][name]["train_seconds"], abs=1.0)
    assert records[name]["closest_match"] != results["runs"][name]["closest_match"]


def test_a_failed_run_is_kept_and_the_plan_goes_on(tiny_config, tmp_path, monkeypatch):
  config = tiny_config.copy_and_resolve_references()
  config.benchmark.methods = ("ours",)
  workdir = str(tmp_path / "bench")
  real = trainer.train_and_evaluate

  def fail_16_bits(run_config, run_dir):
    if run_config.model.num_bits == 16:
      raise FloatingPointError("non-finite training metrics at step 3")
    return real(run_config, run_dir)
  monkeypatch.setattr(trainer, "train_and_evaluate", fail_16_bits)
  assert runner.run_plan(config, workdir) == {"ours_16b_s0": "failed", "ours_32b_s0": "done"}
  records = report.collect(config, workdir, with_references=False)["runs"]
  assert records["ours_16b_s0"]["status"] == "failed"
  assert "FloatingPointError: non-finite" in records["ours_16b_s0"]["error"]
  monkeypatch.setattr(trainer, "train_and_evaluate", real)    # retried on the next call
  assert runner.run_plan(config, workdir)["ours_16b_s0"] == "done"
  assert not os.path.exists(os.path.join(plan.run_dir(workdir, plan.Run("ours", 16, 0)),
                                         runner.ERROR_FILE))


def test_printed_commands_are_the_runs_not_finished(tiny_config, tmp_path):
  workdir = str(tmp_path / "bench")
  finished = plan.run_dir(workdir, plan.Run("dch", 16, 0))
  os.makedirs(finished)
  config_lib.save_config(plan.run_config(tiny_config, plan.Run("dch", 16, 0)), finished)
  with open(os.path.join(finished, plan.RESULTS_FILE), "w") as f:
    f.write("{}")
  overrides = {"input.source_dir": tiny_config.input.source_dir,
               "input.data_dir": tiny_config.input.data_dir}
  commands = runner.pending_commands(tiny_config, workdir, "configs/benchmark_tiny.py",
                                     overrides, program=f"{sys.executable} -m deephash_jax.main")
  names = [shlex.split(c)[4].split(":")[1] for c in commands]
  assert names == ["ours_16b_s0", "ours_32b_s0", "dch_32b_s0"]
  # The first line, run as printed, trains that run.
  completed = subprocess.run(commands[0], shell=True, cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "XLA_FLAGS": ""})
  assert completed.returncode == 0, completed.stderr[-2000:]
  assert plan.is_finished(workdir, plan.Run("ours", 16, 0))


def test_runs_an_earlier_report_holds_are_left_out(tiny_config, tmp_path, monkeypatch):
  config = tiny_config.copy_and_resolve_references()
  config.benchmark.methods = ("ours",)
  workdir = str(tmp_path / "bench")
  monkeypatch.setattr(trainer, "train_and_evaluate", _no_training)
  skip = {"ours_16b_s0", "ours_32b_s0"}
  assert runner.run_plan(config, workdir, skip=skip) == dict.fromkeys(skip, "carried")
  assert runner.pending_commands(config, workdir, "configs/benchmark_tiny.py", {},
                                 skip={"ours_16b_s0"}) == [plan.train_command(
                                     "configs/benchmark_tiny.py", workdir,
                                     plan.Run("ours", 32, 0))]
