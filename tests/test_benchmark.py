"""The benchmark driver on the tiny config, and its reference searches against brute force."""

import json
import logging
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import time

import numpy as np
import pytest

from deephash_jax import benchmark
from deephash_jax import config_lib
from deephash_jax import inference
from deephash_jax import metrics
from deephash_jax import train
from tests import fake_data


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
  source = fake_data.write_fake_fashion_mnist(str(tmp_path_factory.mktemp("idx")))
  cfg = config_lib.base_config("benchmark_tiny")
  cfg.input.source_dir = source
  cfg.input.data_dir = str(tmp_path_factory.mktemp("tfds"))
  return cfg


def _mtimes(workdir, name):
  runs = os.path.join(workdir, "runs")
  return {run: os.stat(os.path.join(runs, run, name)).st_mtime_ns for run in os.listdir(runs)}


def test_benchmark_end_to_end_and_rerun_skips_finished_runs(tiny_config, tmp_path, monkeypatch):
  workdir = str(tmp_path / "bench")
  trained = []
  real_train = train.train_and_evaluate

  def train_and_check_progress(run_cfg, run_dir, **kwargs):
    # Partial progress is on disk before each run: earlier runs done, this one pending.
    written = json.load(open(os.path.join(workdir, "results.json")))
    assert written["runs"][os.path.basename(run_dir)]["status"] == "pending"
    assert written["status"]["done"] == len(trained)
    trained.append(os.path.basename(run_dir))
    return real_train(run_cfg, run_dir, **kwargs)
  monkeypatch.setattr(train, "train_and_evaluate", train_and_check_progress)
  # After training, a run's closest-match evaluation reuses the category evaluation's codes:
  # it embeds only the 20 closest-match queries, not the query and database splits again.
  embedded_in_evaluate_run = []
  real_evaluate_run, real_embed = benchmark.evaluate_run, inference.HashEncoder.embed
  inside = []

  def counting_embed(self, images, **kwargs):
    if inside:
      embedded_in_evaluate_run.append(len(images))
    return real_embed(self, images, **kwargs)

  def flagged_evaluate_run(*args, **kwargs):
    inside.append(True)
    try:
      return real_evaluate_run(*args, **kwargs)
    finally:
      inside.pop()
  monkeypatch.setattr(inference.HashEncoder, "embed", counting_embed)
  monkeypatch.setattr(benchmark, "evaluate_run", flagged_evaluate_run)
  results = benchmark.run_benchmark(tiny_config, workdir)
  assert trained == ["ours_16b_s0", "dch_16b_s0", "ours_32b_s0", "dch_32b_s0"]
  assert embedded_in_evaluate_run == [20] * 4

  names = {"ours_16b_s0", "ours_32b_s0", "dch_16b_s0", "dch_32b_s0"}
  assert set(results["runs"]) == names
  assert results["status"] == {"planned": 4, "done": 4, "failed": 0, "interrupted": False}
  for name, record in results["runs"].items():
    assert record["status"] == "done", record
    assert 0.0 < record["category"]["map_all"] <= 1.0
    assert set(record["category"]) == {"map_all", "map_at_10", "precision_at_hamming_2"}
    cm = record["closest_match"]
    assert 0.0 <= cm["recall_at_1"] <= cm["recall_at_10"] <= 1.0
    assert cm["num_queries"] == 20 and cm["num_database"] == 80 + 320
    # The PR curve at the reference length only.
    assert ("pr_curve" in record) == (record["bits"] == 16)
  curve = results["runs"]["ours_16b_s0"]["pr_curve"]
  assert len(curve["precision"]) == 17 and curve["recall"][-1] == pytest.approx(1.0)
  cell = results["aggregate"]["dch"]["32"]
  assert cell["category/map_all"]["n"] == 1 and cell["category/map_all"]["std"] is None
  refs = results["references"]
  assert refs["num_category_queries"] == 40
  for ref in ("sad", "float_cosine"):
    assert 0.0 < refs[ref]["category"]["map_all"] <= 1.0
    assert refs[ref]["category"]["num_queries"] == 40
    assert refs[ref]["closest_match"]["num_queries"] == 20
  assert refs["sad"]["queries_per_second"] > 0 and refs["hamming_search"]["queries_per_second"] > 0
  assert refs["float_cosine"]["run"] == "ours_16b_s0"

  on_disk = json.load(open(os.path.join(workdir, "results.json")))
  assert on_disk["runs"]["ours_16b_s0"]["category"] == results["runs"]["ours_16b_s0"]["category"]
  md = open(os.path.join(workdir, "results.md")).read()
  assert "| method | 16 bits | 32 bits |" in md and "| dch |" in md
  assert "sum of absolute differences" in md and "before binarisation" in md
  for png in ("mAP_vs_bits.png", "pr_curves.png"):
    with open(os.path.join(workdir, png), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
  # Each run is a plain training workdir with the method's config.
  run_cfg = config_lib.load_config(os.path.join(workdir, "runs", "dch_16b_s0"))
  assert run_cfg.method == "dch" and run_cfg.loss.classification_weight == 0.0
  assert run_cfg.model.num_bits == 16 and "benchmark" not in run_cfg

  # Rerun: nothing is retrained or re-evaluated, the figures are the same.
  eval_mtimes = _mtimes(workdir, "eval_results.json")
  bench_mtimes = _mtimes(workdir, benchmark.RUN_EVAL_JSON)

  def no_training(*args, **kwargs):
    raise AssertionError("a finished run was retrained")
  monkeypatch.setattr(train, "train_and_evaluate", no_training)
  monkeypatch.setattr(benchmark, "compute_references", no_training)
  again = benchmark.run_benchmark(tiny_config, workdir)
  assert _mtimes(workdir, "eval_results.json") == eval_mtimes
  assert _mtimes(workdir, benchmark.RUN_EVAL_JSON) == bench_mtimes
  assert again["runs"] == results["runs"]
  assert again["references"] == json.loads(json.dumps(results["references"]))

  # Reusing the training's codes changes nothing: embedding everything again gives the same.
  run_dir = os.path.join(workdir, "runs", "ours_16b_s0")
  fresh = benchmark.evaluate_run(run_dir, benchmark.load_protocols(tiny_config), pr_curve=True)
  stored = json.load(open(os.path.join(run_dir, benchmark.RUN_EVAL_JSON)))
  assert fresh["closest_match"] == pytest.approx(stored["closest_match"])
  assert fresh["pr_curve"]["precision"] == pytest.approx(stored["pr_curve"]["precision"])


def _hold(claim, host, pid):
  """Writes the claim file `claim` as process `pid` of `host` would."""
  with open(claim, "w") as f:
    json.dump({"host": host, "pid": pid, "since": "2026-11-30T00:00:00+00:00"}, f)


def _stale_claim(run_dir) -> int:
  """Leaves in `run_dir` the claim of a process of this host that has exited; its pid."""
  dead = subprocess.Popen(["true"])
  dead.wait()
  os.makedirs(run_dir, exist_ok=True)
  _hold(os.path.join(run_dir, benchmark.CLAIM_FILE), platform.node(), dead.pid)
  return dead.pid


def _no_training(*args, **kwargs):
  raise AssertionError("a finished run was retrained (or a report trained one)")


def _recording_training(monkeypatch) -> list[str]:
  """Patches train.train_and_evaluate to run as usual and note each run it trains; the list."""
  trained = []
  real_train = train.train_and_evaluate

  def recording_train(run_cfg, run_dir, **kwargs):
    trained.append(os.path.basename(run_dir))
    return real_train(run_cfg, run_dir, **kwargs)
  monkeypatch.setattr(train, "train_and_evaluate", recording_train)
  return trained


def test_workers_share_a_workdir_and_the_plain_command_aggregates(tiny_config, tmp_path,
                                                                   monkeypatch, caplog):
  config = tiny_config.copy_and_resolve_references()
  config.benchmark.methods = ("ours",)
  workdir = str(tmp_path / "bench")
  plan = benchmark.planned_runs(config.benchmark)
  assert plan == [("ours", 16, 0), ("ours", 32, 0)]
  assert benchmark.worker_runs(plan, (0, 2)) == plan[:1]
  assert benchmark.worker_runs(plan, (1, 2)) == plan[1:]
  assert benchmark.worker_runs(plan, (0, 1)) == plan
  trained = _recording_training(monkeypatch)
  # Worker 0's run is being trained by another live process (this one's parent, as far as the
  # claim can tell): worker 1 trains its own run and leaves that one alone.
  other_dir = os.path.join(workdir, "runs", "ours_16b_s0")
  os.makedirs(other_dir)
  claim = os.path.join(other_dir, benchmark.CLAIM_FILE)
  _hold(claim, platform.node(), os.getppid())
  part = benchmark.run_benchmark(config, workdir, worker=(1, 2))
  assert trained == ["ours_32b_s0"] and part["status"]["done"] == 1
  assert part["references"] is None
  # A report halfway, while worker 0's run is still claimed: nothing trained, the tables show
  # the finished run and the other as not run yet, the claim is left alone.
  caplog.clear()
  with monkeypatch.context() as m, caplog.at_level(logging.INFO):
    m.setattr(train, "train_and_evaluate", _no_training)
    report = benchmark.run_benchmark(config, workdir, report_only=True)
  # Its log says the finished run was trained earlier; no "done in" or ETA, as if it had run.
  assert "[2/2] ours_32b_s0: recorded (trained earlier, in " in caplog.text
  assert "done in" not in caplog.text and "ETA" not in caplog.text
  assert report["status"]["done"] == 1 and trained == ["ours_32b_s0"]
  assert report["runs"]["ours_16b_s0"]["status"] == "pending"
  assert report["runs"]["ours_32b_s0"]["category"] == part["runs"]["ours_32b_s0"]["category"]
  with open(os.path.join(workdir, "results.md")) as f:
    assert re.search(r"^\| ours \| … \| [01]\.\d{3}( †)? \|$", f.read(), re.MULTILINE)
  assert json.load(open(claim))["pid"] == os.getppid()
  results_json = os.path.join(workdir, "results.json")
  report_mtime = os.stat(results_json).st_mtime_ns
  with pytest.raises(config_lib.ConfigError, match="report_only"):
    benchmark.run_benchmark(config, workdir, worker=(0, 2), report_only=True)
  # Once that claim is gone, worker 1 (rerun) takes over worker 0's run, which none has started;
  # worker 0 then finds its share done and trains nothing.
  os.remove(claim)
  part = benchmark.run_benchmark(config, workdir, worker=(1, 2))
  assert trained == ["ours_32b_s0", "ours_16b_s0"] and part["status"]["done"] == 2

  monkeypatch.setattr(train, "train_and_evaluate", _no_training)
  part = benchmark.run_benchmark(config, workdir, worker=(0, 2))
  assert part["status"]["done"] == 1
  # A worker writes its runs only: no shared tables that another worker would overwrite (the
  # report's are as it left them).
  assert os.stat(results_json).st_mtime_ns == report_mtime
  # No claim outlives its run.
  assert not [name for name in os.listdir(os.path.join(workdir, "runs"))
              if os.path.exists(os.path.join(workdir, "runs", name, benchmark.CLAIM_FILE))]
  results = benchmark.run_benchmark(config, workdir)
  assert results["status"] == {"planned": 2, "done": 2, "failed": 0, "interrupted": False}
  assert results["references"]["float_cosine"]["run"] == "ours_16b_s0"
  assert json.load(open(os.path.join(workdir, "results.json")))["status"]["done"] == 2

  assert benchmark.parse_worker(None) == (0, 1) and benchmark.parse_worker("1/4") == (1, 4)
  for bad in ("2/2", "-1/2", "1", "a/b", "0/0"):
    with pytest.raises(config_lib.ConfigError, match=f"--benchmark_worker='{bad}'"):
      benchmark.parse_worker(bad)


def _edited(source, path, edit):
  """Writes to `path` the results.json `source`, changed by `edit(data)`; returns `path`."""
  data = json.load(open(source))
  edit(data)
  with open(path, "w") as f:
    json.dump(data, f)
  return str(path)


def test_runs_of_another_sweep_are_merged_not_retrained(tiny_config, tmp_path, monkeypatch):
  config = tiny_config.copy_and_resolve_references()
  config.benchmark.bits = (16,)
  first_config = config.copy_and_resolve_references()
  first_config.benchmark.methods = ("ours",)
  first = str(tmp_path / "first")
  done = benchmark.run_benchmark(first_config, first)
  assert done["status"]["done"] == 1
  record = done["runs"]["ours_16b_s0"]
  assert record["config_sha256"] == benchmark.run_config_digest(
      benchmark.run_config(config, "ours", 16, 0))
  source = os.path.join(first, "results.json")

  # The whole plan elsewhere: ours is merged (neither trained nor evaluated again), dch trained.
  trained = _recording_training(monkeypatch)
  second = str(tmp_path / "second")
  results = benchmark.run_benchmark(config, second, merge_from=[source])
  assert trained == ["dch_16b_s0"]
  assert results["status"] == {"planned": 2, "done": 2, "failed": 0, "interrupted": False}
  assert results["runs"]["ours_16b_s0"] == {**json.loads(json.dumps(record)),
                                            "merged_from": source}
  assert "merged_from" not in results["runs"]["dch_16b_s0"]
  assert not os.path.exists(os.path.join(second, "runs", "ours_16b_s0"))
  assert results["aggregate"]["ours"]["16"]["category/map_all"]["values"] == [
      record["category"]["map_all"]]
  # ours' model is not here: its float reference and timed Hamming search come from its file;
  # the pixel reference is measured here.
  refs, theirs = results["references"], done["references"]
  for key in ("float_cosine", "hamming_search"):
    assert refs[key] == {**json.loads(json.dumps(theirs[key])), "merged_from": source}
  assert refs["sad"]["category"] == pytest.approx(theirs["sad"]["category"])
  md = open(os.path.join(second, "results.md")).read()
  assert f"- {source}: 1 runs (ours_16b_s0)" in md
  assert f"before binarisation, cosine (merged from {source})" in md
  # Workers skip the merged run too (dch is done here).
  monkeypatch.setattr(train, "train_and_evaluate", _no_training)
  for worker in ((0, 2), (1, 2)):
    part = benchmark.run_benchmark(config, second, worker=worker, merge_from=[source])
    assert part["runs"]["ours_16b_s0"]["merged_from"] == source
  assert not os.path.exists(os.path.join(second, "runs", "ours_16b_s0"))

  # A run finished in the workdir keeps its own record (and its own float reference).
  third = str(tmp_path / "third")
  shutil.copytree(os.path.join(first, "runs"), os.path.join(third, "runs"))
  other = _edited(source, tmp_path / "other.json",
                  lambda d: d["runs"]["ours_16b_s0"]["category"].update(map_all=0.5))
  here = benchmark.run_benchmark(config, third, report_only=True, merge_from=[other])
  assert "merged_from" not in here["runs"]["ours_16b_s0"]
  assert here["runs"]["ours_16b_s0"]["category"] == record["category"]
  assert "merged_from" not in here["references"]["float_cosine"]

  # Nothing measured otherwise is merged: the error names the file, the run and the field.
  def fails(path, match):
    with pytest.raises(config_lib.ConfigError, match=match):
      benchmark.run_benchmark(config, str(tmp_path / "bad"), report_only=True,
                              merge_from=[str(path)])
  cut = tmp_path / "cut.json"
  cut.write_text(open(source).read()[:200])
  fails(cut, re.escape(f"benchmark merge {cut}: not a benchmark results.json"))
  fails(tmp_path / "missing.json", "missing, unreadable")
  fails(_edited(source, tmp_path / "seed.json",
                lambda d: d["protocols"]["closest_match"].update(seed=1)),
        r"other data or queries, protocols\.closest_match\.seed: this benchmark .*, theirs 1")
  fails(_edited(source, tmp_path / "variant.json",
                lambda d: d["benchmark"]["variants"].update(ours={"loss": {"hamming_weight": 2}})),
        r"run ours_16b_s0 was trained with other overrides, benchmark\.variants\.ours\.loss")
  fails(_edited(source, tmp_path / "steps.json",
                lambda d: d["runs"]["ours_16b_s0"].update(train_steps=1)),
        r"run ours_16b_s0 trained 1 steps \(train_steps\), this benchmark trains it \d+")
  fails(_edited(source, tmp_path / "digest.json",
                lambda d: d["runs"]["ours_16b_s0"].update(config_sha256="0" * 16)),
        "run ours_16b_s0 was trained with another config")
  # The digest leaves out where the data lies on a machine, not what changes a run.
  moved = config.copy_and_resolve_references()
  moved.input.data_dir, moved.input.source_dir = "/elsewhere/tfds", "/elsewhere/idx"
  digest = benchmark.run_config_digest(benchmark.run_config(config, "ours", 16, 0))
  assert benchmark.run_config_digest(benchmark.run_config(moved, "ours", 16, 0)) == digest
  assert benchmark.run_config_digest(benchmark.run_config(config, "ours", 16, 1)) != digest
  assert benchmark.run_config_digest(benchmark.run_config(config, "dch", 16, 0)) != digest


def test_a_run_is_claimed_by_one_live_process_at_a_time(tmp_path):
  run_dir = str(tmp_path / "runs" / "ours_48b_s0")
  claim = os.path.join(run_dir, benchmark.CLAIM_FILE)
  assert benchmark.claim_run(run_dir) == (True, None)      # creates the folder
  held = json.load(open(claim))
  assert (held["host"], held["pid"]) == (platform.node(), os.getpid())
  assert benchmark.claim_run(run_dir) == (True, None)      # ours already
  benchmark.release_run(run_dir)
  assert not os.path.exists(claim)
  # A live process of this host holds it: refused, and the answer says who and where.
  _hold(claim, platform.node(), os.getppid())
  claimed, holder = benchmark.claim_run(run_dir)
  assert not claimed and holder["pid"] == os.getppid() and holder["file"] == claim
  benchmark.release_run(run_dir)                          # not ours: left alone
  assert json.load(open(claim))["pid"] == os.getppid()
  # Another host's claim cannot be checked from here: respected.
  _hold(claim, "another-host", os.getpid())
  assert benchmark.claim_run(run_dir)[0] is False
  # A process of this host that has exited left a stale claim: taken over.
  _stale_claim(run_dir)
  assert benchmark.claim_run(run_dir) == (True, None)
  assert json.load(open(claim))["pid"] == os.getpid()
  assert os.listdir(run_dir) == [benchmark.CLAIM_FILE]    # nothing else left behind
  # An empty claim (its writer killed between creating and writing it) is respected for a
  # minute, then stale.
  with open(claim, "w"):
    pass
  assert benchmark.claim_run(run_dir)[0] is False
  an_hour_ago = time.time() - 3600
  os.utime(claim, (an_hour_ago, an_hour_ago))
  assert benchmark.claim_run(run_dir) == (True, None)


def test_a_stale_claim_is_taken_over_under_a_lock(tmp_path):
  run_dir = str(tmp_path / "runs" / "ours_48b_s0")
  claim = os.path.join(run_dir, benchmark.CLAIM_FILE)
  lock = claim + ".takeover"
  dead_pid = _stale_claim(run_dir)
  # Another process is taking the stale claim over this instant: refused, both files left.
  open(lock, "w").close()
  claimed, holder = benchmark.claim_run(run_dir)
  assert not claimed and holder["since"] == "being taken over" and holder["file"] == claim
  assert json.load(open(claim))["pid"] == dead_pid and os.path.exists(lock)
  # A takeover file a minute old was left by a process killed midway: removed, claim taken.
  a_minute_ago = time.time() - 61
  os.utime(lock, (a_minute_ago, a_minute_ago))
  assert benchmark.claim_run(run_dir) == (True, None)
  assert json.load(open(claim))["pid"] == os.getpid()
  assert os.listdir(run_dir) == [benchmark.CLAIM_FILE]


def _claim_at_once(run_dir, start, tried, answers):
  # Widen the window between reading the stale claim and acting on it (this process only), so
  # that the processes overlap there every time, not by chance.
  read_json = benchmark._read_json   # pylint: disable=protected-access

  def slow_read(path):
    holder = read_json(path)
    time.sleep(0.2)
    return holder
  benchmark._read_json = slow_read   # pylint: disable=protected-access
  start.wait()
  answers.put(benchmark.claim_run(run_dir)[0])
  tried.wait()       # stay alive (a live claim) until every process has tried


def test_of_processes_finding_one_stale_claim_at_once_exactly_one_claims_it(tmp_path):
  # Without the takeover lock two processes could both remove the stale claim and both
  # "claim" the run (the second removing the first one's new claim).
  context = multiprocessing.get_context("fork")    # the children use os and json only
  num_processes = 6
  for attempt in range(3):
    run_dir = str(tmp_path / f"run_{attempt}")
    _stale_claim(run_dir)
    start, tried = context.Barrier(num_processes), context.Barrier(num_processes)
    answers = context.Queue()
    children = [context.Process(target=_claim_at_once, args=(run_dir, start, tried, answers))
                for _ in range(num_processes)]
    for child in children:
      child.start()
    outcomes = [answers.get(timeout=60) for _ in children]
    for child in children:
      child.join(timeout=60)
      assert child.exitcode == 0
    assert sorted(outcomes) == [False] * (num_processes - 1) + [True], attempt
    holder = json.load(open(os.path.join(run_dir, benchmark.CLAIM_FILE)))
    assert holder["pid"] in [child.pid for child in children]
    assert os.listdir(run_dir) == [benchmark.CLAIM_FILE]


def test_untrained_runs_skips_runs_with_eval_results(tmp_path):
  plan = [("ours", 16, 0), ("dch", 16, 0), ("ours", 48, 1)]
  done = tmp_path / "runs" / benchmark.run_name("dch", 16, 0)
  done.mkdir(parents=True)
  (done / "eval_results.json").write_text("{}")
  # A folder with a checkpoint but no evaluation is an interrupted run: still to train.
  (tmp_path / "runs" / benchmark.run_name("ours", 48, 1)).mkdir()
  assert benchmark.untrained_runs(str(tmp_path), plan) == [("ours", 16, 0), ("ours", 48, 1)]
  assert benchmark.untrained_runs(str(tmp_path), []) == []


def test_run_configs_of_the_variants():
  from deephash_jax import main  # pylint: disable=g-import-not-at-top
  assert "benchmark" in main.COMMANDS   # deephash benchmark --config=... --workdir=...
  config = config_lib.base_config("benchmark")
  plan = benchmark.planned_runs(config.benchmark)
  # 10 methods at every length, the short-code variant of ours at 16 bits only, extra seeds.
  assert len(plan) == 10 * 4 + 1 + 4 and len(set(plan)) == len(plan)
  assert [m for m, b, s in plan if b == 16] == list(config.benchmark.methods)
  at_48 = [m for m in config.benchmark.methods if m != "ours_item003_g5"]
  assert plan[:10] == [(m, 48, 0) for m in at_48]  # the main table first
  item = benchmark.run_config(config, "ours_item003_g5", 16, 0)
  assert (item.loss.hamming_item_weight, item.loss.gamma) == (0.03, 5.0)
  assert sorted(s for m, b, s in plan if m == "ours" and b == 48) == [0, 1, 2]
  assert sorted(s for m, b, s in plan if m == "csq" and b == 48) == [0]

  def cfg(method, bits=32, seed=1):
    return benchmark.run_config(config, method, bits, seed)
  expected = config_lib.base_config("fashion_mnist")
  expected.seed, expected.model.num_bits = 1, 32
  assert cfg("ours").to_dict() == expected.to_dict()   # the default config, nothing else
  assert cfg("ours_no_classifier").loss.classification_weight == 0.0
  no_hamming = cfg("ours_no_hamming").loss
  assert no_hamming.hamming_weight == 0.0 and no_hamming.hamming_item_weight == 0.0
  assert no_hamming.adversarial_weight > 0 and no_hamming.classification_weight > 0
  assert cfg("ours_no_adversarial").loss.adversarial_weight == 0.0
  for method in ("dch", "hashnet", "csq", "dpsh", "orthohash"):
    assert cfg(method).method == method and cfg(method).loss.classification_weight == 0.0
  greedy = cfg("greedyhash")
  assert greedy.model.code_activation == "sign_ste" and greedy.loss.classification_weight == 1.0
  benchmark.validate_benchmark(config)
  benchmark.validate_benchmark(config_lib.base_config("benchmark_quick"))
  quick = benchmark.planned_runs(config_lib.base_config("benchmark_quick").benchmark)
  assert quick == [(m, 48, 0) for m in ("ours", "dch", "hashnet", "csq")]
  sweep = config_lib.base_config("benchmark_sweep_1ep")   # the full plan, 1 epoch a run
  benchmark.validate_benchmark(sweep)
  sweep_plan = benchmark.planned_runs(sweep.benchmark)
  # The full plan as it ran (before the short-code variant) first, then 8 more seeds.
  as_run = [t for t in plan if t[0] != "ours_item003_g5"]
  assert sweep_plan[:len(as_run)] == as_run and sweep.train.num_epochs == 1
  assert sorted(sweep_plan[len(as_run):]) == sorted(
      (m, b, s) for m in ("ours", "dch", "greedyhash") for b in (16, 48) for s in (1, 2)
      if (m, b) not in (("ours", 48), ("dch", 48)))

  # benchmark.method_bits: a method at some lengths only; the others at every length.
  config.benchmark.method_bits = {"ours_no_classifier": (48,), "dpsh": (16, 64),
                                  "ours_item003_g5": (16,)}
  benchmark.validate_benchmark(config)
  only = benchmark.planned_runs(config.benchmark)
  assert len(only) == len(plan) - 3 - 2 and set(only) <= set(plan)
  assert [b for m, b, s in only if m == "ours_no_classifier"] == [48]
  assert [b for m, b, s in only if m == "dpsh"] == [16, 64]
  assert [b for m, b, s in only if m == "ours" and s == 0] == [48, 16, 32, 64]
  for bad, match in (({"ours_no_classifier": (24,)}, "method_bits.ours_no_classifier=\\(24,\\)"),
                     ({"ours_no_classifier": ()}, "method_bits.ours_no_classifier=\\(\\)"),
                     ({"dhc": (48,)}, "method_bits.dhc='dhc'")):
    config.benchmark.method_bits = bad
    with pytest.raises(config_lib.ConfigError, match=match):
      benchmark.validate_benchmark(config)
  config.benchmark.method_bits = {}
  config.benchmark.lead_methods = ("ours", "dch")
  with pytest.raises(config_lib.ConfigError, match="benchmark.lead_methods='dch'"):
    benchmark.validate_benchmark(config)
  config.benchmark.lead_methods = ("ours",)

  # The 4-epoch sweep: ours and its ablations with sign codes, ours_tanh = the default config;
  # the baselines keep their authors' tanh code layer.
  four = config_lib.base_config("benchmark_sweep_4ep")
  benchmark.validate_benchmark(four)
  for method in ("ours", "ours_no_classifier", "ours_no_hamming", "ours_no_adversarial"):
    sign = benchmark.run_config(four, method, 48, 0)
    assert (sign.model.code_activation, sign.loss.quantization_weight) == ("sign_ste", 0.0)
  assert benchmark.run_config(four, "ours_no_hamming", 48, 0).loss.hamming_weight == 0.0
  expected.seed, expected.model.num_bits, expected.train.num_epochs = 0, 16, 4
  assert benchmark.run_config(four, "ours_tanh", 16, 0).to_dict() == expected.to_dict()
  assert [b for m, b, s in benchmark.planned_runs(four.benchmark)
          if m == "ours_tanh"] == [48, 16, 32, 64]
  item = benchmark.run_config(four, "ours_tanh_item003_g5", 16, 0)
  assert (item.loss.hamming_item_weight, item.loss.gamma, item.loss.gamma_item) == (0.03, 5.0, 10.0)
  explore = config_lib.base_config("explore_ours_4ep")
  benchmark.validate_benchmark(explore)
  assert {b for m, b, s in benchmark.planned_runs(explore.benchmark)} == {16}
  # The full schedule's 48-bit row: the same runs (names and configs) as configs/benchmark.py,
  # ours being exactly the default config.
  row = config_lib.base_config("benchmark_48b")
  benchmark.validate_benchmark(row)
  full = config_lib.base_config("benchmark")
  assert benchmark.planned_runs(row.benchmark) == [
      (m, b, s) for m, b, s in benchmark.planned_runs(full.benchmark) if b == 48]
  assert {s for m, b, s in benchmark.planned_runs(row.benchmark) if m in ("ours", "dch")} == {
      0, 1, 2}
  for method, bits, seed in benchmark.planned_runs(row.benchmark):
    assert (benchmark.run_config(row, method, bits, seed).to_dict()
            == benchmark.run_config(full, method, bits, seed).to_dict())
  assert (benchmark.run_config(row, "ours", 48, 0).to_dict()
          == config_lib.base_config("fashion_mnist").to_dict())
  for method in ("dch", "hashnet", "csq", "dpsh", "orthohash"):
    assert cfg(method).model.code_activation == "tanh"

  config.benchmark.variants.dch.loss.clasification_weight = 0.0
  with pytest.raises(config_lib.ConfigError, match="variants.dch.loss.clasification_weight"):
    benchmark.validate_benchmark(config)
  config = config_lib.base_config("benchmark")
  config.benchmark.reference_bits = 24
  with pytest.raises(config_lib.ConfigError, match="benchmark.reference_bits=24"):
    benchmark.validate_benchmark(config)


def test_closest_match_queries_are_fixed_by_the_seed():
  rng = np.random.default_rng(0)
  images = fake_data.class_images(np.arange(12) % 10, rng)[..., None]
  recipe = config_lib.base_config("benchmark").benchmark.closest_match.recipe
  a = benchmark.closest_match_queries(images, recipe, seed=3, batch_size=4)
  b = benchmark.closest_match_queries(images, recipe, seed=3, batch_size=12)
  assert a.dtype == np.uint8 and a.shape == images.shape
  np.testing.assert_array_equal(a, b)   # independent of the batching
  np.testing.assert_array_equal(   # and of N
      a[:5], benchmark.closest_match_queries(images[:5], recipe, 3, batch_size=4))
  for original, query in zip(images, a):
    assert np.abs(original.astype(int) - query.astype(int)).mean() > 5
  other = benchmark.closest_match_queries(images, recipe, seed=4, batch_size=4)
  assert all(np.any(x != y) for x, y in zip(a, other))


def _sad_brute_force(queries, database):
  q = queries.reshape(len(queries), -1).astype(np.int64)
  d = database.reshape(len(database), -1).astype(np.int64)
  return np.abs(q[:, None, :] - d[None, :, :]).sum(-1)


@pytest.mark.parametrize("shape", [(5, 5, 1), (300, 240, 1)])  # 1 pixel block; 2 blocks, int32
def test_sad_search_equals_numpy_brute_force_with_ties(shape):
  rng = np.random.default_rng(1)
  n = 37 if shape[0] < 10 else 11
  database = rng.integers(0, 3, (n, *shape), dtype=np.uint8)
  database[9] = database[2]          # exact duplicates: ties at distance 0 and elsewhere
  database[n - 1] = database[2]
  queries = np.concatenate([database[[2, 0]], rng.integers(0, 3, (5, *shape), dtype=np.uint8)])
  expected = _sad_brute_force(queries, database)
  prepared = benchmark.prepare_sad_database(database, chunk_size=8)   # several chunks
  np.testing.assert_array_equal(
      benchmark.sad_distances(queries, prepared, query_batch_size=3), expected)
  k = n + 3
  dist, index = benchmark.sad_search(queries, prepared, k, query_batch_size=3)
  order = np.lexsort((np.broadcast_to(np.arange(n), expected.shape), expected), axis=1)
  np.testing.assert_array_equal(index[:, :n], order)   # ties -> lower index
  np.testing.assert_array_equal(dist[:, :n], np.take_along_axis(expected, order, axis=1))
  assert np.all(index[:, n:] == -1) and np.all(dist[:, n:] == 2 ** 30)
  assert list(index[0, :3]) == [2, 9, n - 1] and list(dist[0, :3]) == [0, 0, 0]
  _, i1 = benchmark.sad_search(queries, prepared, 1)
  np.testing.assert_array_equal(i1[:, 0], np.argmin(expected, axis=1))


def _ap_brute_force(dist_row, rel_row):
  order = sorted(range(len(dist_row)), key=lambda j: (dist_row[j], j))
  hits, total = 0, 0.0
  for rank, j in enumerate(order, start=1):
    if rel_row[j]:
      hits += 1
      total += hits / rank
  return (total / hits if hits else 0.0), order


def test_ranking_metrics_equal_brute_force_and_the_hamming_metrics():
  rng = np.random.default_rng(2)
  nq, nd = 9, 40
  dist = rng.integers(0, 6, (nq, nd)).astype(np.float64)   # many ties
  query_keys, db_keys = rng.integers(0, 4, nq), rng.integers(0, 4, nd)
  db_keys[:] = np.where(db_keys == 3, 2, db_keys)          # key 3 has no relevant item
  got = benchmark.ranking_metrics(lambda a, b: dist[a:b], query_keys, db_keys, map_at=(5, 100),
                                  recall_at=(1, 3), precision_at=(4,), query_batch_size=4)
  aps, ap5, r1, r3, p4 = [], [], [], [], []
  for i in range(nq):
    rel = db_keys == query_keys[i]
    ap, order = _ap_brute_force(dist[i], rel)
    aps.append(ap)
    top = [rel[j] for j in order]
    hits5 = sum(top[:5])
    ap5.append(sum(sum(top[:r + 1]) / (r + 1) for r in range(5) if top[r]) / hits5
               if hits5 else 0.0)
    r1.append(float(any(top[:1])))
    r3.append(float(any(top[:3])))
    p4.append(sum(top[:4]) / 4)
  assert got["map_all"] == pytest.approx(np.mean(aps), abs=1e-12)
  assert got["map_at_5"] == pytest.approx(np.mean(ap5), abs=1e-12)
  assert got["map_at_100"] == pytest.approx(np.mean(aps), abs=1e-12)
  assert got["recall_at_1"] == pytest.approx(np.mean(r1))
  assert got["recall_at_3"] == pytest.approx(np.mean(r3))
  assert got["precision_at_4"] == pytest.approx(np.mean(p4))
  assert got["num_queries"] == nq and got["num_database"] == nd

  # On Hamming distances it is metrics.retrieval_metrics (same ranking and definitions).
  bits_q, bits_d = rng.random((nq, 12)) > 0.5, rng.random((nd, 12)) > 0.5
  pack = lambda b: np.packbits(b, axis=1, bitorder="little")
  hamming_dist = metrics.hamming_distances(pack(bits_q), pack(bits_d))
  ours = benchmark.ranking_metrics(lambda a, b: hamming_dist[a:b], query_keys, db_keys,
                                   map_at=(5,), recall_at=(1, 3))
  ref = metrics.retrieval_metrics(pack(bits_q), query_keys, pack(bits_d), db_keys, num_bits=12,
                                  map_at=(5,), radius=(), recall_at=(1, 3))
  for key in ("map_all", "map_at_5", "recall_at_1", "recall_at_3"):
    assert ours[key] == pytest.approx(ref[key], abs=1e-12), key


def test_cosine_ranking_equals_brute_force():
  rng = np.random.default_rng(3)
  q, d = rng.normal(size=(6, 8)), rng.normal(size=(30, 8))
  d[7] = 4.0 * d[4]   # same direction (a power of 2: exact): a cosine tie, the lower index first
  q[0] = d[4]
  q_keys, d_keys = np.arange(6) % 3, np.arange(30) % 3
  rows = benchmark.cosine_distance_rows(q, d)
  cos = (q @ d.T) / np.linalg.norm(q, axis=1)[:, None] / np.linalg.norm(d, axis=1)[None]
  np.testing.assert_allclose(rows(0, 6), 1.0 - cos, atol=1e-12)
  got = benchmark.ranking_metrics(rows, q_keys, d_keys, recall_at=(1,))
  expected = np.mean([_ap_brute_force(1.0 - cos[i], d_keys == q_keys[i])[0] for i in range(6)])
  assert got["map_all"] == pytest.approx(expected, abs=1e-12)
  assert rows(0, 1)[0, 4] == rows(0, 1)[0, 7] and np.argsort(rows(0, 1)[0], kind="stable")[0] == 4


def test_leads_and_ablation_rows_from_the_aggregate():
  def run(method, bits, seed, map_all, r1, cm_map):
    return {"method": method, "bits": bits, "seed": seed, "status": "done",
            "category": {"map_all": map_all},
            "closest_match": {"recall_at_1": r1, "recall_at_10": r1, "map_all": cm_map}}
  runs = [run("ours", 16, 0, 0.80, 0.02, 0.05), run("ours", 16, 1, 0.84, 0.04, 0.07),
          run("dch", 16, 0, 0.81, 0.05, 0.04), run("hashnet", 16, 0, 0.79, 0.01, 0.02),
          run("ours_no_hamming", 16, 0, 0.70, 0.03, 0.06),
          run("ours", 32, 0, 0.85, 0.01, 0.03), run("dch", 32, 0, 0.86, 0.00, 0.01),
          run("ours_no_hamming", 32, 0, 0.80, 0.01, 0.05)]
  agg = benchmark.aggregate({f"r{i}": r for i, r in enumerate(runs)}, ("map_all",))
  methods = ("ours", "ours_no_hamming", "dch", "hashnet")
  table = benchmark.leads(agg, methods, (16, 32, 64))
  assert set(table) == {"16", "32"}                       # nothing at 64 bits yet
  # 16 bits: ours' mean over seeds 0.82 vs dch 0.81; R@1 0.03 vs dch 0.05; ablations excluded.
  assert table["16"]["category/map_all"] == (pytest.approx(0.01), "dch")
  assert table["16"]["closest_match/recall_at_1"] == (pytest.approx(-0.02), "dch")
  assert table["16"]["closest_match/map_all"] == (pytest.approx(0.02), "dch")
  assert table["32"]["category/map_all"] == (pytest.approx(-0.01), "dch")
  lines = "\n".join(benchmark._lead_section(agg, methods, (16, 32, 64)))
  assert "| 16 | +0.010 (dch) | -0.020 (dch) | +0.020 (dch) |" in lines
  # Each ablation at every length both it and ours have run (none at 64 bits).
  assert re.findall(r"^\| ours_no_hamming \|.*$", lines, re.MULTILINE) == [
      "| ours_no_hamming | 16 | +0.120 | +0.000 | +0.000 |",
      "| ours_no_hamming | 32 | +0.050 | +0.000 | -0.020 |"]
  # A second variant of ours gets its own table and leaves the ablation table.
  agg["ours_tanh"] = {"16": agg["ours_no_hamming"]["16"]}
  table = benchmark.leads(agg, methods + ("ours_tanh",), (16,), "ours_tanh")
  assert table["16"]["category/map_all"] == (pytest.approx(-0.11), "dch")
  lines = "\n".join(benchmark._lead_section(agg, methods + ("ours_tanh",), (16,),
                                            ("ours", "ours_tanh")))
  assert "## ours_tanh against the best baseline" in lines
  assert "| 16 | -0.110 (dch) | -0.020 (dch) | +0.020 (dch) |" in lines
  assert "| ours_tanh |" not in lines and "| ours_no_hamming | 16 | +0.120 |" in lines


def test_plot_styles_tell_methods_apart():
  # pylint: disable=protected-access
  styles = [benchmark._style(f"method{i}", i) for i in range(54)]
  keys = {(tuple(s["color"]), s["marker"]) for s in styles}
  assert len(keys) == 54
  assert benchmark._style("ours", 0)["linewidth"] > 2
  assert benchmark._style("ours_tanh", 4)["linestyle"] == "--"
