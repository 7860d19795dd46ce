"""bench/markdown.py and bench/report.aggregate: the tables from finished runs' records."""
import re

import pytest

from deephash_jax.bench import markdown
from deephash_jax.bench import report


def _run(method, bits, seed, map_all, r1, cm_map):
  return {"method": method, "bits": bits, "seed": seed, "status": "done",
          "category": {"map_all": map_all},
          "closest_match": {"recall_at_1": r1, "recall_at_10": r1, "map_all": cm_map}}


_RUNS = [_run("ours", 16, 0, 0.80, 0.02, 0.05), _run("ours", 16, 1, 0.84, 0.04, 0.07),
         _run("dch", 16, 0, 0.81, 0.05, 0.04), _run("hashnet", 16, 0, 0.79, 0.01, 0.02),
         _run("ours_no_hamming", 16, 0, 0.70, 0.03, 0.06),
         _run("ours", 32, 0, 0.85, 0.01, 0.03), _run("dch", 32, 0, 0.86, 0.00, 0.01),
         _run("ours_no_hamming", 32, 0, 0.80, 0.01, 0.05)]


def _results():
  runs = {f"r{i}": r for i, r in enumerate(_RUNS)}
  bench = {"methods": ["ours", "ours_no_hamming", "dch", "hashnet"], "bits": [16, 32, 64],
           "reference_bits": 16, "lead_methods": ["ours"],
           "ablations": {"ours": ["ours_no_hamming"]}}
  return {"aggregate": report.aggregate(runs, ("map_all",)), "benchmark": bench, "runs": runs}


def test_means_and_sample_deviations_over_seeds():
  cell = report.aggregate({f"r{i}": r for i, r in enumerate(_RUNS)}, ("map_all",))["ours"]["16"]
  assert cell["seeds"] == [0, 1]
  assert cell["category/map_all"]["mean"] == pytest.approx(0.82)
  assert cell["category/map_all"]["std"] == pytest.approx(0.04 / 2 ** 0.5)   # ddof = 1
  single = report.aggregate({"a": _RUNS[2]}, ("map_all",))["dch"]["16"]["category/map_all"]
  assert single["std"] is None and single["n"] == 1


def test_leads_are_against_the_best_peer_and_leave_the_variants_of_ours_out():
  results = _results()
  table = markdown.leads(results["aggregate"], results["benchmark"], (16, 32, 64), "ours")
  assert set(table) == {"16", "32"}                       # nothing at 64 bits yet
  # 16 bits: ours' mean over seeds 0.82 (sample sd 0.04 / sqrt 2) against dch's 0.81 (one seed);
  # R@1 0.03 (sd 0.01 * sqrt 2) against dch's 0.05.
  sd_map = 0.04 / 2 ** 0.5
  assert table["16"]["category/map_all"] == (pytest.approx(0.01), "dch", pytest.approx(sd_map))
  assert table["16"]["closest_match/recall_at_1"] == (pytest.approx(-0.02), "dch",
                                                      pytest.approx(0.02 / 2 ** 0.5))
  assert table["16"]["closest_match/map_all"] == (pytest.approx(0.02), "dch",
                                                  pytest.approx(0.02 / 2 ** 0.5))
  assert table["32"]["category/map_all"] == (pytest.approx(-0.01), "dch", None)   # one seed each
  lines = "\n".join(markdown._lead_section(results) + markdown._ablation_section(results))  # pylint: disable=protected-access
  assert "| 16 | +0.0100 (dch; 0.4 sd) | -0.0200 (dch; 1.4 sd) | +0.0200 (dch; 1.4 sd) |" in lines
  assert "| 32 | -0.0100 (dch) | +0.0100 (dch) | +0.0200 (dch) |" in lines
  # The ablation at every length both it and ours have run (none at 64 bits); at 16 bits against
  # ours' two seeds (sample sd 0.04 / sqrt 2 on mAP@all, 0.02 / sqrt 2 on the others), at 32 one
  # seed each.
  assert re.findall(r"^\| ours_no_hamming \|.*$", lines, re.MULTILINE) == [
      "| ours_no_hamming | 16 | +0.1200 (4.2 sd) | +0.0000 (0.0 sd) | +0.0000 (0.0 sd) |",
      "| ours_no_hamming | 32 | +0.0500 | +0.0000 | -0.0200 |"]


def test_a_lead_section_says_where_its_codes_at_evaluation_are_not_made_as_the_peers():
  results = _results()
  intro = "\n".join(markdown._lead_section(results))  # pylint: disable=protected-access
  assert "Its codes at evaluation" not in intro           # no record of them: nothing said
  results["evaluation_codes"] = {"flip_average": {"true": ["ours", "dch", "hashnet"]},
                                 "shift_average": {"1": ["ours"], "0": ["dch", "hashnet"]}}
  intro = "\n".join(markdown._lead_section(results))  # pylint: disable=protected-access
  assert ("Its codes at evaluation are not made as every peer's (`model.shift_average`; first "
          "section).") in intro
  # A variant of ours made otherwise is no concern of ours' section; ours made as the peers.
  results["evaluation_codes"]["shift_average"] = {"1": ["ours", "dch", "hashnet"],
                                                  "2": ["ours_no_hamming"]}
  assert "Its codes at evaluation" not in "\n".join(markdown._lead_section(results))  # pylint: disable=protected-access


def test_a_lead_reads_against_the_pooled_deviation_when_both_cells_have_seeds():
  runs = {f"r{i}": r for i, r in enumerate([
      _run("ours", 16, 0, 0.80, 0.1, 0.1), _run("ours", 16, 1, 0.82, 0.1, 0.1),
      _run("dch", 16, 0, 0.90, 0.0, 0.0), _run("dch", 16, 1, 0.86, 0.0, 0.0)])}
  bench = {"methods": ["ours", "dch"], "bits": [16], "lead_methods": ["ours"]}
  table = markdown.leads(report.aggregate(runs, ("map_all",)), bench, (16,), "ours")
  # Sample variances 0.0002 and 0.0008: pooled sd sqrt(0.0005); R@1's are 0 for both.
  assert table["16"]["category/map_all"] == (pytest.approx(-0.07), "dch",
                                             pytest.approx(0.0005 ** 0.5))
  assert table["16"]["closest_match/recall_at_1"] == (pytest.approx(0.1), "dch", 0.0)
  diff, peer, sd = table["16"]["closest_match/recall_at_1"]
  assert markdown._difference_cell(diff, sd, peer) == "+0.1000 (dch)"  # pylint: disable=protected-access
  assert markdown._difference_cell(-0.07, 0.0005 ** 0.5) == "-0.0700 (3.1 sd)"  # pylint: disable=protected-access
  assert markdown._difference_cell(0.00001, None) == "+0.0000"  # pylint: disable=protected-access


def test_a_cell_says_whether_it_is_pending_failed_or_not_planned():
  results = _results()
  results["runs"]["p"] = {"method": "hashnet", "bits": 32, "seed": 0, "status": "pending"}
  results["runs"]["f"] = {"method": "ours_no_hamming", "bits": 64, "seed": 0,
                          "status": "failed", "error": "x"}
  cell = markdown._cell   # pylint: disable=protected-access
  assert cell(results, "hashnet", 32, "category/map_all") == "…"
  assert cell(results, "ours_no_hamming", 64, "category/map_all") == "failed"
  assert cell(results, "dch", 64, "category/map_all") == "—"
  assert cell(results, "ours", 16, "category/map_all") == "0.8200 ± 0.0283"


def test_the_page_names_the_devices_and_hosts_the_runs_trained_on_from_their_records():
  avx2, avx512 = "AMD EPYC, 2 CPUs, AVX2", "AMD EPYC, 2 CPUs, AVX-512"
  runs = {"a": {**_RUNS[0], "train_devices": "8 x cpu", "train_host": avx2},
          "b": {**_RUNS[1], "train_devices": "8 x cpu", "train_host": avx2},
          "c": {**_RUNS[2], "train_devices": "1 x cpu"}, "d": _RUNS[3],
          "e": {**_RUNS[4], "train_devices": "1 x cpu", "train_host": avx512},
          "p": {"method": "dch", "bits": 64, "seed": 0, "status": "pending"}}
  assert markdown.train_devices(runs) == (
      "1 x cpu on AMD EPYC, 2 CPUs, AVX-512 (1 run), 1 x cpu, host not recorded (1 run), "
      "8 x cpu on AMD EPYC, 2 CPUs, AVX2 (2 runs), not recorded (1 run)")
  assert markdown.train_devices({"p": runs["p"]}) == "none yet"


def test_a_train_time_of_seeds_on_different_hosts_is_marked():
  def timed(run, seconds, host=None):
    return {**run, "train_seconds": seconds, **({"train_host": host} if host else {})}
  runs = {"o0": timed(_RUNS[0], 600, "X, 2 CPUs, AVX2"), "o1": timed(_RUNS[1], 1800, "Y"),
          "d": timed(_RUNS[2], 300, "X, 2 CPUs, AVX2"),
          "h": timed(_RUNS[3], 100)}
  results = {**_results(), "runs": runs, "aggregate": report.aggregate(runs, ("map_all",))}
  results["benchmark"]["methods"] = ["ours", "dch", "hashnet"]
  results["references"] = {}
  results["protocols"] = {"category": {"metrics": ["map_all"]}}
  rows = {line.split(" | ")[0][2:]: line for line in markdown.main_table(results)}
  assert rows["ours"].endswith("| 0:20:00 ‡ |")       # mean of 600 s and 1,800 s, two hosts
  assert rows["dch"].endswith("| 0:05:00 |") and rows["hashnet"].endswith("| 0:01:40 |")
  assert report.aggregate(runs, ("map_all",))["ours"]["16"]["train_hosts"] == [
      "X, 2 CPUs, AVX2", "Y"]

  # A run resumed from a checkpoint without a train-time record is timed from its step: left out
  # of the mean and counted; a cell of such runs alone says so.
  runs["o1"] = {**timed(_RUNS[1], 60, "X, 2 CPUs, AVX2"), "train_seconds_from_step": 2000}
  runs["d"]["train_seconds_from_step"] = 0
  runs["h"]["train_seconds_from_step"] = 10
  aggregate = report.aggregate(runs, ("map_all",))
  assert aggregate["ours"]["16"]["train_seconds"]["values"] == [600.0]
  assert aggregate["ours"]["16"]["train_seconds_partial"] == 1
  assert aggregate["dch"]["16"]["train_seconds_partial"] == 0
  results["aggregate"] = aggregate
  rows = {line.split(" | ")[0][2:]: line for line in markdown.main_table(results)}
  assert rows["ours"].endswith("| 0:10:00 (1 of 2 seeds) |")
  assert rows["dch"].endswith("| 0:05:00 |")
  assert rows["hashnet"].endswith("| not timed whole |")
