"""bench/report.py: what the report says of each planned run, from the files a run leaves."""
import json
import os

from deephash_jax import config_lib
from deephash_jax.bench import plan
from deephash_jax.bench import report


def _finish(workdir, run, **figures):
  directory = plan.run_dir(workdir, run)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, plan.RESULTS_FILE), "w") as f:
    json.dump(figures, f)


def test_runs_are_done_failed_running_or_pending(tmp_path):
  config = config_lib.base_config("benchmark_tiny")
  workdir = str(tmp_path)
  _finish(workdir, plan.Run("ours", 16, 0), map_all=0.5, map_at_10=0.6,
          precision_at_hamming_2=0.7, closest_match_recall_at_1=0.1,
          closest_match_recall_at_10=0.3, closest_match_map=0.2, train_seconds=12.0)
  failed = plan.run_dir(workdir, plan.Run("dch", 16, 0))
  os.makedirs(failed)
  with open(os.path.join(failed, "error.txt"), "w") as f:
    f.write("FloatingPointError: non-finite training metrics at step 2\ntraceback...\n")
  with plan.run_lock(plan.run_dir(workdir, plan.Run("ours", 32, 0))):
    results = report.collect(config, workdir, with_references=False)
  runs = results["runs"]
  assert runs["ours_16b_s0"]["status"] == "done"
  assert runs["ours_16b_s0"]["category"] == {"map_all": 0.5, "map_at_10": 0.6,
                                             "precision_at_hamming_2": 0.7}
  assert runs["ours_16b_s0"]["closest_match"] == {"recall_at_1": 0.1, "recall_at_10": 0.3,
                                                  "map_all": 0.2}
  assert runs["dch_16b_s0"] == {"method": "dch", "bits": 16, "seed": 0,
                                "workdir": "runs/dch_16b_s0", "status": "failed",
                                "error": "FloatingPointError: non-finite training metrics at "
                                         "step 2"}
  assert runs["ours_32b_s0"]["status"] == "running"
  assert runs["dch_32b_s0"]["status"] == "pending"
  assert results["status"] == {"done": 1, "running": 1, "pending": 1, "failed": 1,
                               "planned": 4}
  assert results["aggregate"]["ours"]["16"]["train_seconds"]["mean"] == 12.0
  assert set(report.machine_info()) >= {"cpu", "cpu_count", "jax", "backend", "devices"}
