"""bench/report.py: what the report says of each planned run, from the files a run leaves."""
import json
import os

import pytest

from deephash_jax import config_lib
from deephash_jax.bench import markdown
from deephash_jax.bench import plan
from deephash_jax.bench import report


def _finish(workdir, run, config=None, **figures):
  """A finished run as training leaves it: its config.json (the planned one) and its figures."""
  directory = plan.run_dir(workdir, run)
  os.makedirs(directory, exist_ok=True)
  config = config or config_lib.base_config("benchmark_tiny")
  config_lib.save_config(plan.run_config(config, run), directory)
  with open(os.path.join(directory, plan.RESULTS_FILE), "w") as f:
    json.dump(figures, f)


def test_runs_are_done_failed_running_or_pending(tmp_path):
  config = config_lib.base_config("benchmark_tiny")
  workdir = str(tmp_path)
  _finish(workdir, plan.Run("ours", 16, 0), map_all=0.5, map_at_10=0.6,
          precision_at_hamming_2=0.7, closest_match_recall_at_1=0.1,
          closest_match_recall_at_10=0.3, closest_match_map=0.2, train_seconds=12.0,
          train_seconds_from_step=0)
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
                               "stale": 0, "planned": 4, "carried": 0}
  assert results["aggregate"]["ours"]["16"]["train_seconds"]["mean"] == 12.0
  assert runs["ours_16b_s0"]["train_seconds_from_step"] == 0
  assert set(report.machine_info()) >= {"cpu", "cpu_count", "jax", "backend", "devices", "host"}


def test_a_run_finished_with_another_config_is_stale_named_by_field_and_refused(tmp_path):
  config = config_lib.base_config("benchmark_tiny")
  workdir = str(tmp_path)
  figures = dict(map_all=0.5, closest_match_recall_at_1=0.1)
  _finish(workdir, plan.Run("ours", 16, 0), **figures)
  _finish(workdir, plan.Run("dch", 16, 0), **figures)
  assert plan.stale_differences(config, workdir, plan.Run("ours", 16, 0)) == []
  plan.check_not_stale(config, workdir, plan.planned_runs(config.benchmark))   # nothing stale
  # The plan changes after both finished: every run trains at another rate, and a field the
  # runs were trained with is gone.
  changed = config.copy_and_resolve_references()
  changed.train.learning_rate = 0.5
  with changed.unlocked():
    del changed.train["warmup_steps"]
  expected = [f"train.learning_rate: {config.train.learning_rate!r} -> 0.5",
              f"train.warmup_steps: {config.train.warmup_steps!r} -> '(absent)'"]
  assert plan.stale_differences(changed, workdir, plan.Run("dch", 16, 0)) == expected
  assert plan.stale_differences(changed, workdir, plan.Run("ours", 32, 0)) == []  # not finished
  with pytest.raises(plan.StaleRunError) as error:
    plan.check_not_stale(changed, workdir, plan.planned_runs(changed.benchmark))
  message = str(error.value)
  assert "2 finished run(s)" in message and "Move each folder aside" in message
  assert f"{plan.run_dir(workdir, plan.Run('dch', 16, 0))}: {expected[0]}; {expected[1]}" in message
  results = report.collect(changed, workdir, with_references=False)
  assert results["runs"]["dch_16b_s0"]["status"] == "stale"
  assert results["runs"]["dch_16b_s0"]["differences"] == expected
  assert results["status"]["stale"] == 2 and results["status"]["done"] == 0
  assert "dch" not in results["aggregate"]         # no stale figure reaches a table
  md = markdown.format_markdown({**results, "machine": report.machine_info()})
  assert "2 stale" in md and f"- dch_16b_s0: {expected[0]}" in md
  # A config.json that cannot be read is stale too, never silently done.
  with open(os.path.join(plan.run_dir(workdir, plan.Run("ours", 16, 0)), "config.json"), "w") as f:
    f.write("{cut")
  assert plan.stale_differences(config, workdir, plan.Run("ours", 16, 0))[0].startswith(
      "config.json: unreadable")


def test_each_reference_is_recomputed_only_when_what_it_is_computed_from_changes(
    tmp_path, monkeypatch):
  config = config_lib.base_config("benchmark_tiny")
  workdir = str(tmp_path)
  calls, model = [], {"id": "a"}

  def fake_sad(*args, **kwargs):
    calls.append("sad")
    return {"sad_value": len(calls)}

  def fake_float(encoder, **kwargs):
    calls.append(f"float:{encoder.model_id}")
    return {"float_value": len(calls)}

  class FakeEncoder:
    @classmethod
    def from_workdir(cls, directory):
      encoder = cls()
      encoder.model_id, encoder.step = model["id"], 7
      return encoder
  monkeypatch.setattr(report.references_lib, "pixel_sad", fake_sad)
  monkeypatch.setattr(report.references_lib, "float_codes", fake_float)
  monkeypatch.setattr(report.encoder_lib, "HashEncoder", FakeEncoder)
  float_run = plan.Run(config.benchmark.references.float_method,
                       config.benchmark.reference_bits, 0)
  runs = {float_run.name: {"status": "pending"}}
  sad = report.references(config, workdir, runs)["sad"]
  assert sad == {"sad_value": 1, "key": sad["key"]}
  assert sad["key"]["eval"]["closest_match"]["num_queries"] == config.eval.closest_match.num_queries
  runs = {float_run.name: {"status": "done", "train_seconds": 1.0}}
  first = report.references(config, workdir, runs)
  assert first == {"sad": sad,
                   "float_codes": {"float_value": 2, "run": float_run.name,
                                   "key": {**sad["key"], "model": "a", "step": 7}}}
  # Another record of the same model (a timing, a new field): both from the cache.
  runs[float_run.name].update(train_seconds=2.0, new_field=True)
  assert report.references(config, workdir, runs) == first
  assert calls == ["sad", "float:a"]
  # Another model: its float codes again, not pixel SAD.
  model["id"] = "b"
  assert report.references(config, workdir, runs)["float_codes"]["float_value"] == 3
  assert calls == ["sad", "float:a", "float:b"]
  # Another evaluation setting: both again.
  changed = config.copy_and_resolve_references()
  changed.eval.closest_match.num_queries += 1
  report.references(changed, workdir, runs)
  assert calls == ["sad", "float:a", "float:b", "sad", "float:b"]
  # An unreadable cache is recomputed, not an error.
  with open(os.path.join(workdir, report.REFERENCES_JSON), "w") as f:
    f.write("{truncated")
  report.references(changed, workdir, runs)
  assert calls[-2:] == ["sad", "float:b"]


_FIGURES = dict(map_all=0.5, map_at_10=0.6, precision_at_hamming_2=0.7,
                closest_match_recall_at_1=0.1, closest_match_recall_at_10=0.3,
                closest_match_map=0.2, train_seconds=12.0)


def _report_of(config, workdir):
  """An earlier report's results.json, as `deephash benchmark --report` writes it."""
  results = report.collect(config, workdir, with_references=False)
  path = os.path.join(workdir, report.RESULTS_JSON)
  with open(path, "w") as f:
    json.dump(results, f, default=report._to_json)   # pylint: disable=protected-access
  return path


def _earlier_report(config, tmp_path):
  """(the results.json of a report elsewhere where ours_16b_s0 and dch_16b_s0 finished, a
  workdir here where nothing has)."""
  elsewhere = str(tmp_path / "elsewhere")
  _finish(elsewhere, plan.Run("ours", 16, 0), **_FIGURES)
  _finish(elsewhere, plan.Run("dch", 16, 0), **_FIGURES)
  return _report_of(config, elsewhere), str(tmp_path / "here")


def test_an_earlier_reports_runs_count_where_this_workdir_has_not_finished_them(tmp_path):
  config = config_lib.base_config("benchmark_tiny")
  previous, here = _earlier_report(config, tmp_path)
  with open(previous) as f:
    saved = json.load(f)["runs"]["ours_16b_s0"]["config"]      # each record carries its config
  assert saved == json.loads(plan.run_config(config, "ours_16b_s0").to_json_best_effort())
  # Here: dch_16b_s0 finished again (its own figures win), ours_16b_s0 not at all.
  _finish(here, plan.Run("dch", 16, 0), **{**_FIGURES, "map_all": 0.9})
  results = report.collect(config, here, with_references=False, previous_report=previous)
  runs = results["runs"]
  assert runs["ours_16b_s0"]["status"] == "done" and runs["ours_16b_s0"]["source"] == previous
  assert "config_checked" not in runs["ours_16b_s0"]
  assert runs["ours_16b_s0"]["workdir"] == "runs/ours_16b_s0"
  assert "source" not in runs["dch_16b_s0"]
  assert results["aggregate"]["dch"]["16"]["category/map_all"]["mean"] == 0.9
  assert results["aggregate"]["ours"]["16"]["category/map_all"]["mean"] == 0.5
  assert runs["ours_32b_s0"]["status"] == "pending"          # in neither
  assert results["status"]["done"] == 2 and results["status"]["carried"] == 1
  assert report.carried_runs(config, here, previous) == {"ours_16b_s0"}
  text = markdown.format_markdown(results)
  assert "2 of 4 done (1 of them from an earlier report" in text
  assert f"## Runs from an earlier report: {previous}" in text
  assert "ours_16b_s0. The config each record carries matches the plan's." in text


def test_an_earlier_run_of_another_config_is_stale_and_one_without_a_config_is_named(tmp_path):
  config = config_lib.base_config("benchmark_tiny")
  previous, here = _earlier_report(config, tmp_path)
  with open(previous) as f:
    earlier = json.load(f)
  del earlier["runs"]["dch_16b_s0"]["config"]        # a record from before records carried it
  with open(previous, "w") as f:
    json.dump(earlier, f)
  elsewhere_paths = config.copy_and_resolve_references()     # another machine's data folders
  elsewhere_paths.input.source_dir, elsewhere_paths.input.data_dir = "/data/idx", "/data/tfds"
  elsewhere_paths.mesh = [("data", 8)]
  assert report.carried_runs(elsewhere_paths, here, previous) == {"ours_16b_s0", "dch_16b_s0"}
  changed = config.copy_and_resolve_references()
  changed.train.learning_rate = 0.5
  results = report.collect(changed, here, with_references=False, previous_report=previous)
  ours, dch = results["runs"]["ours_16b_s0"], results["runs"]["dch_16b_s0"]
  assert ours["status"] == "stale" and ours["source"] == previous
  assert ours["differences"] == [f"train.learning_rate: {config.train.learning_rate!r} -> 0.5"]
  assert "ours" not in results["aggregate"]
  assert dch["status"] == "done" and dch["config_checked"] is False
  text = markdown.format_markdown(results)
  assert "None of these records carries the config it trained with" in text
  assert "The config each record carries" not in text
  assert report.carried_runs(changed, here, previous) == {"dch_16b_s0"}
  # Under the plan they trained with: one checked, one not.
  text = markdown.format_markdown(
      report.collect(config, here, with_references=False, previous_report=previous))
  assert ("Recorded without their config, so not checked against the plan: dch_16b_s0. The "
          "config each record carries matches the plan's.") in text


def test_an_earlier_run_counts_under_the_name_whose_config_it_trained_with(tmp_path):
  # "ours" becomes "paper" and "ours" gets another learning rate, as when a variant on trial
  # becomes the default and the former default keeps a name of its own.
  config = config_lib.base_config("benchmark_tiny")
  previous, here = _earlier_report(config, tmp_path)
  renamed = config.copy_and_resolve_references()
  renamed.benchmark.methods = ("ours", "paper", "dch")
  renamed.benchmark.variants.paper = dict(renamed.benchmark.variants.ours)
  renamed.benchmark.variants.ours = dict(train=dict(learning_rate=0.5))
  results = report.collect(renamed, here, with_references=False, previous_report=previous)
  runs = results["runs"]
  paper = runs["paper_16b_s0"]
  assert paper["status"] == "done" and paper["carried_from"] == "ours_16b_s0"
  assert paper["method"] == "paper" and paper["workdir"] == "runs/paper_16b_s0"
  assert paper["category"]["map_all"] == 0.5 and paper["source"] == previous
  # The earlier ours_16b_s0 trained with another learning rate than the plan's "ours" now.
  assert runs["ours_16b_s0"]["status"] == "stale"
  assert runs["ours_16b_s0"]["differences"] == [
      f"train.learning_rate: {config.train.learning_rate!r} -> 0.5"]
  assert "carried_from" not in runs["dch_16b_s0"] and runs["dch_16b_s0"]["status"] == "done"
  assert runs["paper_32b_s0"]["status"] == "pending"       # another length: not that run
  assert set(results["aggregate"]) == {"paper", "dch"}
  assert report.carried_runs(renamed, here, previous) == {"paper_16b_s0", "dch_16b_s0"}
  assert "paper_16b_s0 (as ours_16b_s0)" in markdown.format_markdown(results)
  # A run of the same name and config is taken under its own name, not another's.
  both = config.copy_and_resolve_references()
  both.benchmark.methods = ("ours", "paper", "dch")
  both.benchmark.variants.paper = dict(both.benchmark.variants.ours)
  runs = report.collect(both, here, with_references=False, previous_report=previous)["runs"]
  assert "carried_from" not in runs["ours_16b_s0"]
  assert runs["paper_16b_s0"]["carried_from"] == "ours_16b_s0"


def test_an_earlier_report_of_another_protocol_or_a_broken_file_is_named(tmp_path):
  config = config_lib.base_config("benchmark_tiny")
  previous = _report_of(config, str(tmp_path))
  other = config.copy_and_resolve_references()
  other.eval.closest_match.num_queries += 1
  with pytest.raises(config_lib.ConfigError, match=r"protocols .* is not this benchmark's"):
    report.collect(other, str(tmp_path), with_references=False, previous_report=previous)
  with pytest.raises(config_lib.ConfigError, match="nowhere.json: no such file"):
    report.read_previous(str(tmp_path / "nowhere.json"))
  broken = tmp_path / "broken.json"
  broken.write_text('{"runs": {"ours_16b_s0": ')          # truncated
  with pytest.raises(config_lib.ConfigError, match=r"broken\.json: unreadable"):
    report.read_previous(str(broken))
  broken.write_text('[1, 2]')
  with pytest.raises(config_lib.ConfigError, match=r"not a benchmark report's results\.json"):
    report.read_previous(str(broken))


def test_the_float_codes_of_a_carried_reference_run_come_from_the_earlier_report(
    tmp_path, monkeypatch):
  config = config_lib.base_config("benchmark_tiny")
  monkeypatch.setattr(report.references_lib, "pixel_sad", lambda *a, **k: {"sad_value": 1})
  float_run = plan.Run(config.benchmark.references.float_method,
                       config.benchmark.reference_bits, 0)
  earlier = {"references": {"float_codes": {"float_value": 5, "run": float_run.name}}}
  runs = {float_run.name: {"status": "done", "source": "old/results.json"}}
  assert report.references(config, str(tmp_path), runs, earlier)["float_codes"] == {
      "float_value": 5, "run": float_run.name, "source": "old/results.json"}
  # Without the earlier figures (or of another run), none: the model is not here to embed.
  earlier["references"]["float_codes"]["run"] = "dch_16b_s0"
  assert "float_codes" not in report.references(config, str(tmp_path), runs, earlier)


def test_pixel_sad_of_the_same_settings_comes_from_the_earlier_report(tmp_path, monkeypatch):
  config = config_lib.base_config("benchmark_tiny")
  calls = []
  monkeypatch.setattr(report.references_lib, "pixel_sad",
                      lambda *a, **k: calls.append("sad") or {"sad_value": len(calls)})
  runs = {}

  def folder(name):   # a benchmark workdir
    (tmp_path / name).mkdir()
    return str(tmp_path / name)
  measured = report.references(config, folder("there"), runs)["sad"]
  earlier = {"references": {"sad": measured}}
  # A new workdir (another machine): taken from the earlier report, marked with it, cached.
  here = folder("here")
  carried = report.references(config, here, runs, earlier, "old/results.json")["sad"]
  assert carried == {**measured, "source": "old/results.json"} and calls == ["sad"]
  assert report.references(config, here, runs)["sad"] == carried and calls == ["sad"]
  assert "pixel SAD (exact) (from old/results.json)" in "\n".join(
      markdown._reference_rows({"references": {"sad": {
          **carried, "category": {"map_all": 0.5}, "queries_per_second": 9.0,
          "closest_match": {"recall_at_1": 0.1, "recall_at_10": 0.2, "map_all": 0.3}}}},
          ["map_all"]))
  # A training-only setting (the training views' augmentation, e.g. a field added since):
  # still taken.
  trained = config.copy_and_resolve_references()
  trained.input.augment.query_views = 3
  trained.input.augment.query.max_rotation_deg += 1.0
  assert report.references(trained, folder("trained"), runs, earlier, "old/results.json")[
      "sad"]["source"] == "old/results.json" and calls == ["sad"]
  # Another setting (here the closest-match queries): computed again, not taken.
  other = config.copy_and_resolve_references()
  other.eval.closest_match.num_queries += 1
  assert report.references(other, folder("new"), runs, earlier, "old/results.json")[
      "sad"]["sad_value"] == 2
  # An earlier report without keys (older than keyed references) is not trusted either.
  del earlier["references"]["sad"]["key"]
  assert "source" not in report.references(config, folder("new2"), runs, earlier,
                                           "old/results.json")["sad"]


def test_the_report_names_the_methods_whose_codes_are_made_otherwise_at_evaluation():
  """model.shift_average set by one variant: the report records it by method and its sentence
  names the methods on each side (the lead sections: test_markdown.py)."""
  config = config_lib.base_config("benchmark_tiny")
  config.benchmark.methods = ("ours", "graded", "dch")
  config.benchmark.method_bits = {"graded": (32,)}     # planned at 32 bits only
  config.benchmark.lead_methods = ("ours", "graded")
  assert config.benchmark.variants.graded.model.shift_average == 1
  codes = report.evaluation_codes(config)
  assert codes == {"flip_average": {"true": ["ours", "graded", "dch"]},
                   "shift_average": {"0": ["ours", "dch"], "1": ["graded"]}}
  note = markdown.evaluation_codes_note({"evaluation_codes": codes})
  assert note.startswith("Codes at evaluation: `model.flip_average` = true for every method.")
  assert "`model.shift_average` = 0 for ours, dch; 1 for graded." in note
  # Every method alike: one sentence, no warning.
  config.benchmark.variants.graded.model.shift_average = 0
  same = markdown.evaluation_codes_note({"evaluation_codes": report.evaluation_codes(config)})
  assert same == ("Codes at evaluation: `model.flip_average` = true, `model.shift_average` = 0 "
                  "for every method.")
