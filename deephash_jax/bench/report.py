"""`deephash benchmark --report`: the tables and plots of whatever planned runs have finished.

Each finished run's figures come from its own `eval_results.json` (written by `deephash train`:
both protocols, plan.py); the two non-learned references (pixel SAD and the float codes of
`benchmark.references.float_method`, evaluators/references.py) are computed once and cached in
`<workdir>/references.json` (each keyed by what it is computed from). Writes results.json,
results.md, mAP_vs_bits.png, pr_curves.png and protocols.png to the output folder.

Each finished run's record carries the config it trained with, so that a later report can take
it (`--previous_report=<earlier results.json>`) for a run whose folder is not on this machine,
checked against the plan as a local run is, or for a planned run of another name whose config it
is (carry_previous).
"""

from __future__ import annotations

import json
import os
import platform

from absl import logging
import jax
import ml_collections
import numpy as np

from deephash_jax import config_lib
from deephash_jax import encoder as encoder_lib
from deephash_jax import mesh as mesh_lib
from deephash_jax.bench import markdown
from deephash_jax.bench import plan as plan_lib
from deephash_jax.bench import plots
from deephash_jax.evaluators import closest_match
from deephash_jax.evaluators import references as references_lib

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
REFERENCES_JSON = "references.json"


def machine_info() -> dict:
  """The hardware the figures were measured on."""
  cpu = mesh_lib.cpu_fields().get("model name") or platform.processor() or None
  return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
          "python": platform.python_version(), "jax": jax.__version__,
          "backend": jax.default_backend(), "devices": mesh_lib.describe_devices(),
          "host": mesh_lib.describe_host()}


def category_metric_names(config) -> tuple[str, ...]:
  radius = config.eval.radius
  radius = radius if isinstance(radius, int) else tuple(radius)[0]
  return ("map_all", f"map_at_{tuple(config.eval.map_at)[0]}", f"precision_at_hamming_{radius}")


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def _to_json(obj):
  if isinstance(obj, ml_collections.ConfigDict):
    return obj.to_dict()
  if isinstance(obj, (np.integer, np.floating, np.bool_)):
    return obj.item()
  if isinstance(obj, (tuple, np.ndarray)):
    return list(obj)
  raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def run_record(config, workdir: str, run: plan_lib.Run, category_names) -> dict:
  """A planned run as the report shows it: its figures once finished with the planned config,
  else its state ("stale": finished with another config, listed by field)."""
  directory = plan_lib.run_dir(workdir, run)
  record = {"method": run.method, "bits": run.bits, "seed": run.seed,
            "workdir": os.path.relpath(directory, workdir)}
  results = _read_json(os.path.join(directory, plan_lib.RESULTS_FILE))
  differences = plan_lib.stale_differences(config, workdir, run) if results is not None else []
  if differences:      # figures of another config than the one the report names
    return {**record, "status": "stale", "differences": differences,
            **({"reevaluable": True} if plan_lib.only_evaluation_differs(differences) else {})}
  if results is None:
    error = os.path.join(directory, "error.txt")
    if os.path.exists(error):
      with open(error) as f:
        return {**record, "status": "failed", "error": f.readline().strip()}
    return {**record, "status": "running" if plan_lib.is_locked(directory) else "pending"}
  record.update(
      status="done", config=_read_json(os.path.join(directory, config_lib.CONFIG_FILE)),
      category={k: results.get(k) for k in category_names},
      closest_match={m: results.get(f"closest_match_{'map' if m == 'map_all' else m}")
                     for m in closest_match.METRICS},
      **{k: results.get(k) for k in ("codes_collapsed", "codes_unique_codes", "train_steps",
                                     "train_seconds", "train_seconds_from_step",
                                     "eval_seconds", "train_devices", "train_host",
                                     "pr_curve")})
  return record


def read_previous(path: str) -> dict:
  """An earlier report's results.json, checked to be one; a missing or broken file is named."""
  try:
    with open(path) as f:
      previous = json.load(f)
  except FileNotFoundError as e:
    raise config_lib.ConfigError(f"--previous_report={path}: no such file") from e
  except (OSError, json.JSONDecodeError) as e:
    raise config_lib.ConfigError(f"--previous_report={path}: unreadable ({e})") from e
  if not (isinstance(previous, dict) and isinstance(previous.get("runs"), dict)):
    raise config_lib.ConfigError(f"--previous_report={path}: not a benchmark report's "
                                 f"{RESULTS_JSON} (no 'runs')")
  return previous


def protocols(config) -> dict:
  """What the figures are measured on: the dataset, the two protocols and the tie rule."""
  cm = config.eval.closest_match
  return json.loads(json.dumps({
      "dataset": config.input.dataset, "ties": config.eval.get("ties", "expected"),
      "protocols": {
          "category": {"query_split": config.input.query_split,
                       "database_split": config.input.database_split,
                       "metrics": category_metric_names(config)},
          "closest_match": {"num_queries": cm.num_queries, "seed": cm.seed,
                            "recipe": dict(cm.recipe)}}}, default=_to_json))


# Fields of config.model that shape the codes only at evaluation (encoder.make_embed_fn): every
# method is trained as before whatever they hold, and scored on other codes.
EVALUATION_CODE_FIELDS = ("flip_average", "shift_average")


def evaluation_codes(config) -> dict:
  """{field: {value: [methods]}} for each of EVALUATION_CODE_FIELDS, from each method's run config
  at the reference length (or its first), first seed: where a field has several values,
  the methods are not scored on codes made the same way."""
  bench = config.benchmark
  out: dict = {}
  for method in bench.methods:
    lengths = plan_lib.method_lengths(bench, method)
    bits = bench.reference_bits if bench.reference_bits in lengths else lengths[0]
    model = plan_lib.run_config(config, plan_lib.Run(method, int(bits), int(bench.seeds[0]))).model
    for field in EVALUATION_CODE_FIELDS:
      value = json.dumps(model.get(field, None))
      out.setdefault(field, {}).setdefault(value, []).append(method)
  return out


# Where a run read its data and over which devices it trained (the same parameters on any
# mesh): fields that differ from machine to machine without changing what a run trains.
_PLACE_FIELDS = ("input.data_dir:", "input.source_dir:", "mesh:")


def carry_previous(config, runs: dict, previous: dict, source: str) -> dict:
  """`runs` with each planned run that has not finished here (pending) taken from an earlier
  report when it finished there: marked with `source`; stale (as a local run would be) when the
  config it recorded differs from the plan's in what it trains (not in where its data were or
  over which devices); `config_checked: False` when the record predates records that carry
  their config.

  A run is what it trains, not its name: when the earlier report holds no run of this name with
  the plan's config, a finished run of another name (a variant renamed, or one that became
  another's default) whose recorded config is the plan's is taken, named in `carried_from`.

  A report of another dataset, protocol or tie rule is refused, naming the field: its figures
  measure something else.
  """
  mine = protocols(config)
  for key in ("dataset", "ties", "protocols"):
    if previous.get(key) != mine[key]:
      raise config_lib.ConfigError(
          f"--previous_report={source}: {key} {previous.get(key)!r} is not this benchmark's "
          f"{mine[key]!r}; its figures measure something else")
  finished = {name: r for name, r in sorted(previous["runs"].items())
              if r.get("status") == "done"}

  def differences(saved, planned):
    return [d for d in config_lib.config_differences(saved, planned)
            if not d.startswith(_PLACE_FIELDS)]

  out = dict(runs)
  for name, record in runs.items():
    if record["status"] != "pending":
      continue
    planned = plan_lib.run_config(config, name)
    carried = stale = None
    if (earlier := finished.get(name)) is not None:
      if earlier.get("config") is None:
        carried = {**earlier, "config_checked": False}
      elif found := differences(earlier["config"], planned):
        stale = {**record, "status": "stale", "differences": found, "source": source}
      else:
        carried = earlier
    if carried is None:
      carried = next(
          ({**other, "method": record["method"], "carried_from": other_name}
           for other_name, other in finished.items()
           if other_name != name and other.get("config") is not None
           and (other.get("bits"), other.get("seed")) == (record["bits"], record["seed"])
           and not differences(other["config"], planned)), None)
    if carried is not None:
      out[name] = {**carried, "workdir": record["workdir"], "source": source}
    elif stale is not None:
      out[name] = stale
  return out


def carried_runs(config, workdir: str, previous_report: str) -> set[str]:
  """The planned runs an earlier report holds finished (and not stale) that have not finished
  here: what `--print_plan` and the runner leave out when given `--previous_report`."""
  category_names = category_metric_names(config)
  runs = {run.name: run_record(config, workdir, run, category_names)
          for run in plan_lib.planned_runs(config.benchmark)}
  runs = carry_previous(config, runs, read_previous(previous_report), previous_report)
  return {name for name, r in runs.items() if r["status"] == "done" and "source" in r}


def _mean_std(values):
  values = [float(v) for v in values if v is not None]
  if not values:
    return None
  return {"mean": float(np.mean(values)),
          "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
          "n": len(values), "values": values}


def aggregate(runs: dict, category_names) -> dict:
  """{method: {bits: {"category/<m>" | "closest_match/<m>": {mean, std (ddof=1), n, values}}}}."""
  cells: dict = {}
  for record in runs.values():
    if record["status"] == "done":
      cells.setdefault(record["method"], {}).setdefault(str(record["bits"]), []).append(record)
  out = {}
  for method, by_bits in cells.items():
    for bits, records in by_bits.items():
      cell = {"seeds": sorted(r["seed"] for r in records)}
      for name in category_names:
        cell[f"category/{name}"] = _mean_std(r["category"].get(name) for r in records)
      for name in closest_match.METRICS:
        cell[f"closest_match/{name}"] = _mean_std(r["closest_match"].get(name) for r in records)
      cell["codes_collapsed"] = any(r.get("codes_collapsed") for r in records)
      # A run resumed from a checkpoint that had no train-time record is timed from its resume:
      # left out of the mean, and counted.
      partial = [bool(r.get("train_seconds_from_step")) for r in records]
      cell["train_seconds"] = _mean_std(r.get("train_seconds") for r, p in zip(records, partial)
                                        if not p)
      cell["train_seconds_partial"] = sum(partial)
      cell["train_hosts"] = sorted({r.get("train_host") or "not recorded" for r in records})
      out.setdefault(method, {})[bits] = cell
  return out


def _reference_setting(key):
  """A reference's key without the training views' augmentation (input.augment), which neither
  pixel SAD nor a trained model's evaluation reads; keys written with it compare equal."""
  if not (isinstance(key, dict) and isinstance(key.get("input"), dict)):
    return key
  return {**key, "input": {k: v for k, v in key["input"].items() if k != "augment"}}


def references(config, workdir: str, runs: dict, previous: dict | None = None,
               source: str | None = None) -> dict:
  """Pixel SAD and the float codes of the reference run, each cached in references.json.

  Each is keyed by what it is computed from: the evaluation and input settings (the training
  views' augmentation aside), and for the float codes also the reference model itself (its
  weights' fingerprint and step, not its run's record: a new field in the records recomputes
  nothing, a retrained model recomputes them).
  Each figure carries its key into results.json, so that a later report given this one
  (`previous`, read from `source`) takes a figure of the same key from it, marked with `source`,
  rather than computing it again (pixel SAD over 70,000 images: minutes on a CPU).
  """
  refs, bench = config.benchmark.references, config.benchmark
  float_run = plan_lib.Run(refs.float_method, bench.reference_bits, 0)
  setting = _reference_setting(json.loads(json.dumps(dict(
      eval=config.eval.to_dict(), input=config.input.to_dict(), references=refs.to_dict()),
      default=_to_json)))
  path = os.path.join(workdir, REFERENCES_JSON)
  cached = _read_json(path) or {}
  earlier_refs = (previous or {}).get("references") or {}
  out, entries, computed = {}, {}, []

  def cached_or(name, key, compute):
    entry = cached.get(name)
    if not (isinstance(entry, dict) and _reference_setting(entry.get("key")) == key):
      earlier = earlier_refs.get(name)
      if isinstance(earlier, dict) and _reference_setting(earlier.get("key")) == key:
        logging.info("References: %s from %s.", name, source)
        value = {k: v for k, v in earlier.items() if k != "key"}
        entry = {"key": key, "value": {**value, "source": value.get("source", source)}}
      else:
        logging.info("References: computing %s.", name)
        entry = {"key": key, "value": compute()}
      computed.append(name)
    entries[name], out[name] = entry, {**entry["value"], "key": key}

  cached_or("sad", setting, lambda: references_lib.pixel_sad(
      config, num_category_queries=refs.num_category_queries,
      timing_queries=refs.timing_queries, chunk_size=refs.sad_chunk_size,
      batch=refs.query_batch_size))
  float_record = runs.get(float_run.name, {})
  if float_record.get("status") == "done" and "source" in float_record:
    # Its model is not here: its float codes as the earlier report measured them.
    earlier = earlier_refs.get("float_codes")
    if earlier and earlier.get("run") == float_run.name:
      out["float_codes"] = {**earlier, "source": float_record["source"]}
  elif float_record.get("status") == "done":
    encoder = encoder_lib.HashEncoder.from_workdir(plan_lib.run_dir(workdir, float_run))
    cached_or("float_codes", {**setting, "model": encoder.model_id, "step": encoder.step},
              lambda: {**references_lib.float_codes(
                  encoder, num_category_queries=refs.num_category_queries,
                  timing_queries=refs.timing_queries, batch=refs.query_batch_size),
                       "run": float_run.name})
  if jax.process_index() == 0 and computed:
    config_lib.write_atomic(path, json.dumps(entries, indent=2, default=_to_json))
  return out


def collect(config, workdir: str, *, with_references: bool = True,
            previous_report: str | None = None) -> dict:
  """Everything the report shows, as one JSON-serialisable dict; with `previous_report` (an
  earlier report's results.json) the runs not finished here are taken from it where they
  finished there (carry_previous)."""
  bench = config.benchmark
  category_names = category_metric_names(config)
  plan = plan_lib.planned_runs(bench)
  runs = {run.name: run_record(config, workdir, run, category_names) for run in plan}
  previous = read_previous(previous_report) if previous_report else None
  if previous is not None:
    runs = carry_previous(config, runs, previous, previous_report)
  results = {
      **protocols(config),
      "benchmark": json.loads(json.dumps(bench.to_dict(), default=_to_json)),
      "machine": machine_info(),
      "runs": runs,
      "status": {s: sum(r["status"] == s for r in runs.values())
                 for s in ("done", "running", "pending", "failed", "stale")},
      "aggregate": aggregate(runs, category_names),
      "evaluation_codes": evaluation_codes(config),
  }
  results["status"]["planned"] = len(plan)
  results["status"]["carried"] = sum(r["status"] == "done" and "source" in r
                                     for r in runs.values())
  results["references"] = (references(config, workdir, runs, previous, previous_report)
                           if with_references else None)
  return results


def write_report(config, workdir: str, output: str | None = None, *,
                 with_references: bool = True, previous_report: str | None = None) -> dict:
  """Collects the finished runs and writes the report's four files to `output` (or workdir)."""
  plan_lib.validate_benchmark(config)
  results = collect(config, workdir, with_references=with_references,
                    previous_report=previous_report)
  output = output or workdir
  os.makedirs(output, exist_ok=True)
  if jax.process_index() == 0:
    config_lib.write_atomic(os.path.join(output, RESULTS_JSON),
                            json.dumps(results, indent=2, default=_to_json))
    config_lib.write_atomic(os.path.join(output, RESULTS_MD), markdown.format_markdown(results))
    plots.plot_map_vs_bits(results, os.path.join(output, plots.MAP_VS_BITS_PNG))
    plots.plot_pr_curves(results, os.path.join(output, plots.PR_CURVES_PNG))
    plots.plot_protocols(results, os.path.join(output, plots.PROTOCOLS_PNG))
  logging.info("Benchmark report: %d of %d runs done; %s.", results["status"]["done"],
               results["status"]["planned"], os.path.join(output, RESULTS_MD))
  return results
