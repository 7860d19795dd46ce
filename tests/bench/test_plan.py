"""bench/plan.py: the runs of a benchmark config, their training configs, their commands, locks."""
import json
import os
import shlex
import subprocess
import sys

import pytest

from deephash_jax import config_lib
from deephash_jax.bench import plan

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_plan_runs_the_main_table_first_then_the_lengths_then_the_seeds():
  config = config_lib.base_config("benchmark")
  runs = plan.planned_runs(config.benchmark)
  methods = config.benchmark.methods
  extra_seeds = 2 * len(config.benchmark.multi_seed.methods)   # seeds 1 and 2 at 48 bits
  fewer = sum(4 - len(bits) for bits in config.benchmark.method_bits.values())
  assert len(runs) == len(methods) * 4 - fewer + extra_seeds and len(set(runs)) == len(runs)
  assert [r.method for r in runs[:len(methods)]] == list(methods)
  assert {r.bits for r in runs[:len(methods)]} == {48}
  assert [r.bits for r in runs if r.method == "dch" and r.seed == 0] == [48, 16, 32, 64]
  assert sorted(r.seed for r in runs if r.method == "dch" and r.bits == 48) == [0, 1, 2]
  assert [r.bits for r in runs if r.method == "graded_split"] == [48, 64]
  assert [(r.bits, r.seed) for r in runs if r.method == "graded_all"] == [
      (48, 0), (16, 0), (32, 0), (64, 0), (48, 1), (48, 2)]
  assert [(r.bits, r.seed) for r in runs if r.method == "graded_type"] == [
      (48, 0), (48, 1), (48, 2)]
  assert plan.parse_run("ours_no_hamming_16b_s2") == plan.Run("ours_no_hamming", 16, 2)
  assert plan.Run("dch", 48, 1).name == "dch_48b_s1"
  with pytest.raises(config_lib.ConfigError, match="run 'dch-48'"):
    plan.parse_run("dch-48")
  # method_bits: a method at some lengths only.
  config.benchmark.method_bits = {**config.benchmark.method_bits, "csq": (48,)}
  plan.validate_benchmark(config)
  assert [r.bits for r in plan.planned_runs(config.benchmark) if r.method == "csq"] == [48]


def test_run_configs_are_the_training_config_with_the_variant():
  config = config_lib.base_config("benchmark")
  default = config_lib.base_config("fashion_mnist")
  default.seed, default.model.num_bits = 1, 32
  assert plan.run_config(config, "ours_32b_s1").to_dict() == default.to_dict()
  dch = plan.run_config(config, plan.Run("dch", 16, 0))
  assert (dch.method, dch.loss.classification_weight, dch.model.num_bits) == ("dch", 0.0, 16)
  assert "benchmark" not in dch
  greedy = plan.run_config(config, "greedyhash_48b_s0")
  assert greedy.model.code_activation == "sign_ste" and greedy.loss.classification_weight == 1.0
  no_hamming = plan.run_config(config, "ours_no_hamming_48b_s0").loss
  assert no_hamming.hamming_weight == no_hamming.hamming_item_weight == 0.0
  # The config file returns the same config for a run name (the printed commands use it).
  module = config_lib.config_module("benchmark")
  assert module.get_config("dch_16b_s0").to_dict() == dch.to_dict()
  with pytest.raises(config_lib.ConfigError, match="variants has no 'dhc'"):
    plan.run_config(config, "dhc_16b_s0")


def test_validation_names_the_field():
  config = config_lib.base_config("benchmark")
  plan.validate_benchmark(config)
  plan.validate_benchmark(config_lib.base_config("benchmark_quick"))
  config.benchmark.variants.dch.loss.clasification_weight = 0.0
  with pytest.raises(config_lib.ConfigError, match="loss.clasification_weight is no field"):
    plan.validate_benchmark(config)
  config = config_lib.base_config("benchmark")
  config.benchmark.reference_bits = 24
  with pytest.raises(config_lib.ConfigError, match="benchmark.reference_bits=24"):
    plan.validate_benchmark(config)
  config = config_lib.base_config("benchmark")
  config.benchmark.method_bits = {"csq": (24,)}
  with pytest.raises(config_lib.ConfigError, match=r"method_bits.csq=\(24,\)"):
    plan.validate_benchmark(config)
  # A command-line override of a field a variant sets would apply in another order in the
  # printed commands: refused.
  with pytest.raises(config_lib.ConfigError, match="loss.classification_weight.*variant"):
    plan.validate_benchmark(config_lib.base_config("benchmark"),
                            {"loss.classification_weight": 0.5})


def test_graded_is_configs_graded_full_and_its_variants_differ_from_it_in_one_field():
  config = config_lib.base_config("benchmark")
  graded = plan.run_config(config, "graded_48b_s0")
  full = config_lib.base_config("graded", "full")
  full.train.num_epochs = config.train.num_epochs          # the peers' schedule
  assert config_lib.config_differences(json.loads(full.to_json_best_effort()), graded) == []
  assert config_lib.config_differences(
      json.loads(graded.to_json_best_effort()),
      plan.run_config(config, "graded_all_48b_s0")) == [
          "loss.graded.type_level_views: 'gallery' -> 'all'"]
  assert config_lib.config_differences(
      json.loads(graded.to_json_best_effort()),
      plan.run_config(config, "graded_type_48b_s0")) == [
          f"loss.graded.pair_weight: {full.loss.graded.pair_weight!r} -> 20.0"]


def test_graded_tanh_qv2_is_graded_tanh_with_lighter_type_weights_and_two_query_views():
  config = config_lib.base_config("benchmark")
  full = config_lib.base_config("graded", "full")
  tanh = plan.run_config(config, "graded_tanh_48b_s0")
  assert sorted(config_lib.config_differences(
      json.loads(tanh.to_json_best_effort()),
      plan.run_config(config, "graded_tanh_qv2_48b_s0"))) == [
          "input.augment.query_views: 1 -> 2",
          f"loss.graded.ap_weight: {full.loss.graded.ap_weight!r} -> 5.0",
          f"loss.graded.pair_weight: {full.loss.graded.pair_weight!r} -> 2.0"]
  runs = plan.planned_runs(config.benchmark)
  assert [(r.bits, r.seed) for r in runs if r.method == "graded_tanh_qv2"] == [
      (48, 0), (16, 0), (32, 0), (64, 0), (48, 1), (48, 2)]


def test_graded_tanh_qv2_cls3_is_graded_tanh_qv2_with_a_heavier_classifier_at_48_bits():
  config = config_lib.base_config("benchmark")
  qv2 = plan.run_config(config, "graded_tanh_qv2_48b_s1")
  assert sorted(config_lib.config_differences(
      json.loads(qv2.to_json_best_effort()),
      plan.run_config(config, "graded_tanh_qv2_cls3_48b_s1"))) == [
          f"loss.classification_weight: {qv2.loss.classification_weight!r} -> 3.0",
          "loss.graded.ap_weight: 5.0 -> 4.0",
          "loss.graded.pair_weight: 2.0 -> 1.5"]
  runs = plan.planned_runs(config.benchmark)
  assert [(r.bits, r.seed) for r in runs if r.method == "graded_tanh_qv2_cls3"] == [
      (48, 0), (48, 1), (48, 2)]


def test_the_w1024_variants_are_their_bases_with_a_wider_feature_layer_at_48_bits():
  config = config_lib.base_config("benchmark")
  for base in ("graded_tanh_qv2_cls3", "hashnet"):
    before = plan.run_config(config, f"{base}_48b_s2")
    assert before.model.encoder_kwargs.feature_dim is None     # the encoder's own, 256
    assert config_lib.config_differences(
        json.loads(before.to_json_best_effort()),
        plan.run_config(config, f"{base}_w1024_48b_s2")) == [
            "model.encoder_kwargs.feature_dim: None -> 1024"]
    assert [(r.bits, r.seed) for r in plan.planned_runs(config.benchmark)
            if r.method == f"{base}_w1024"] == [(48, 0), (48, 1), (48, 2)]
  assert "hashnet_w1024" not in config.benchmark.lead_methods
  assert "graded_tanh_qv2_cls3_w1024" in config.benchmark.lead_methods


def test_workers_split_the_plan():
  runs = plan.planned_runs(config_lib.base_config("benchmark_quick").benchmark)
  assert [r.name for r in runs] == [f"{m}_48b_s0" for m in (
      "ours", "graded", "graded_split", "dch", "hashnet", "dpsh", "csq", "greedyhash",
      "orthohash")]
  assert plan.worker_runs(runs, (0, 2)) == runs[0::2]
  assert plan.worker_runs(runs, (1, 2)) == runs[1::2]
  assert plan.worker_runs(runs, (2, 3)) == [runs[2], runs[5], runs[8]]
  assert plan.worker_runs(runs, (0, 1)) == runs
  assert plan.parse_worker(None) == (0, 1) and plan.parse_worker("1/4") == (1, 4)
  for bad in ("2/2", "-1/2", "1", "a/b", "0/0"):
    with pytest.raises(config_lib.ConfigError, match=f"--worker='{bad}'"):
      plan.parse_worker(bad)


def test_a_printed_command_trains_exactly_the_run_config():
  config = config_lib.base_config("benchmark")
  overrides = {"train.num_epochs": 2, "eval.map_at": (100, 10),
               "benchmark.bits": (48,)}      # a benchmark field: not passed on to the run
  run = plan.Run("dch", 48, 1)
  command = plan.train_command(os.path.join(REPO, "configs", "benchmark.py"), "work dir", run,
                               overrides)
  argv = shlex.split(command)
  assert argv[:2] == ["deephash", "train"]
  assert "--workdir=work dir/runs/dch_48b_s1" in argv
  assert not any("benchmark.bits" in arg for arg in argv)
  # Parsed as `deephash train` parses it (absl + config_flags).
  printed = subprocess.run([sys.executable, "-c", _PRINT_CONFIG, *argv[2:]], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout
  config.train.num_epochs, config.eval.map_at = 2, (100, 10)
  expected = plan.run_config(config, run)
  assert json.loads(printed) == json.loads(expected.to_json_best_effort())


_PRINT_CONFIG = """
from absl import app, flags
from ml_collections import config_flags
config_flags.DEFINE_config_file("config", None, "")
flags.DEFINE_string("workdir", None, "")
app.run(lambda argv: print(flags.FLAGS.config.to_json_best_effort()))
"""


_HOLD = """
import sys
from deephash_jax.bench import plan
with plan.run_lock(sys.argv[1]) as acquired:
  print("locked" if acquired else "refused", flush=True)
  sys.stdin.readline()
"""


def test_a_run_lock_has_one_holder_and_dies_with_it(tmp_path):
  directory = str(tmp_path / "runs" / "ours_48b_s0")
  assert not plan.is_locked(directory)
  holder = subprocess.Popen([sys.executable, "-c", _HOLD, directory], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
  try:
    assert holder.stdout.readline().strip() == "locked"
    assert plan.is_locked(directory)
    with plan.run_lock(directory) as acquired:
      assert not acquired
  finally:
    holder.kill()        # SIGKILL: no clean-up runs; the kernel releases the lock
    holder.wait()
  assert not plan.is_locked(directory)
  with plan.run_lock(directory) as acquired:
    assert acquired and plan.is_locked(directory) is True   # held by this process now
  assert not plan.is_locked(directory)


@pytest.mark.parametrize("run, config_name", [("ours_48b_s0", "fashion_mnist"),
                                              ("graded_48b_s0", "graded")])
def test_the_benchmark_trains_the_configs_the_readme_names(run, config_name):
  # `ours` is the base config and `graded` is derived from configs/graded.py:full
  # (graded_variant), the CNN every method shares. Every method trains the benchmark's
  # schedule; configs/graded.py:full trains longer.
  config = plan.run_config(config_lib.base_config("benchmark"), run).to_dict()
  named = config_lib.base_config(config_name, "full" if config_name == "graded" else None)
  named = named.to_dict()
  assert config["train"].pop("num_epochs") == 15
  assert named["train"].pop("num_epochs") == (20 if config_name == "graded" else 15)
  assert config == named
