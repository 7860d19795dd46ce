"""results.md: the benchmark's tables, from the dict report.collect builds."""

from __future__ import annotations

import collections
import datetime
import json

import numpy as np

_LEAD_METRICS = (("category/map_all", "mAP@all"), ("closest_match/recall_at_1", "closest R@1"),
                 ("closest_match/map_all", "closest mAP"))
_CM_LABELS = {"recall_at_1": "R@1", "recall_at_10": "R@10", "map_all": "mAP"}


def _fmt(stat, digits=4) -> str:
  if not stat:
    return "…"
  text = f"{stat['mean']:.{digits}f}"
  if stat.get("std") is not None:
    text += f" ± {stat['std']:.{digits}f}"
  return text


def _duration(seconds) -> str:
  return "…" if seconds is None else str(datetime.timedelta(seconds=int(round(seconds))))


def _signed(x: float) -> str:
  return "+0.0000" if abs(x) < 5e-5 else f"{x:+.4f}"   # no "-0.0000"


def category_label(name: str) -> str:
  if name == "map_all":
    return "mAP@all"
  if name.startswith("map_at_"):
    return f"mAP@{name[len('map_at_'):]}"
  return f"P@H≤{name[len('precision_at_hamming_'):]}"


def _cell(results, method, bits, key) -> str:
  entry = results["aggregate"].get(method, {}).get(str(bits))
  if entry is None:
    planned = [r for r in results["runs"].values() if r["method"] == method and r["bits"] == bits]
    if not planned:
      return "—"      # not in the plan (benchmark.method_bits)
    for status in ("failed", "stale"):
      if any(r["status"] == status for r in planned):
        return status
    return "…"
  return _fmt(entry.get(key)) + (" †" if entry.get("codes_collapsed") else "")


def peer_methods(bench: dict) -> list[str]:
  """The benchmark's methods that are neither one of its `lead_methods` nor an ablation."""
  ours_variants = set(bench.get("lead_methods") or ())
  for base, ablations in (bench.get("ablations") or {}).items():
    ours_variants |= {base, *ablations}
  return [m for m in bench["methods"] if m not in ours_variants]


def leads(agg: dict, bench: dict, bits_list, ours_method: str) -> dict:
  """{bits: {metric: (ours - best peer, best peer, sd)}}: peers = the benchmark's methods that are
  neither one of its `lead_methods` nor an ablation. Means over seeds; cells not run yet are
  left out. sd: the seeds' standard deviation that the difference is read against, as in "within
  one standard deviation of the best peer": the sample deviation over seeds of the cell(s) with two
  or more seeds, pooled (root mean square) when both have them; None where neither has."""
  peers = peer_methods(bench)
  out = {}
  for bits in bits_list:
    ours = agg.get(ours_method, {}).get(str(bits))
    if not ours:
      continue
    for key, _ in _LEAD_METRICS:
      scores = [(agg[m][str(bits)][key]["mean"], m) for m in peers
                if agg.get(m, {}).get(str(bits), {}).get(key)]
      if scores and ours.get(key):
        best, name = max(scores)
        sd = _pooled_sd(ours[key], agg[name][str(bits)][key])
        out.setdefault(str(bits), {})[key] = (ours[key]["mean"] - best, name, sd)
  return out


def _pooled_sd(*stats) -> float | None:
  """The seeds' deviation a difference of these cells is read against: the root mean square of
  the sample deviations of the cells with two or more seeds; None where none has."""
  variances = [s["std"] ** 2 for s in stats if s.get("std") is not None]
  return float(np.sqrt(np.mean(variances))) if variances else None


def _difference_cell(diff: float, sd, name: str | None = None) -> str:
  """"-0.0160 (hashnet; 12.3 sd)": the difference, against whom when named, and its size in
  seed deviations when known."""
  notes = ([name] if name else []) + ([f"{abs(diff) / sd:.1f} sd"] if sd else [])
  return _signed(diff) + (f" ({'; '.join(notes)})" if notes else "")   # sd 0: seeds agreed


def _lead_section(results) -> list[str]:
  bench, agg = results["benchmark"], results["aggregate"]
  lines = []
  for ours_method in bench.get("lead_methods") or ():
    table = leads(agg, bench, bench["bits"], ours_method)
    if not table:
      continue
    peers = set(peer_methods(bench))
    differ = [f"`model.{field}`" for field, by_value in
              (results.get("evaluation_codes") or {}).items()
              if any(ours_method in methods and not peers <= set(methods)
                     for methods in by_value.values())]
    lines += ["", f"## {ours_method} against the best peer", "",
              f"{ours_method} − the best peer method in that cell (which one in brackets); "
              "positive = it leads. Where a cell has several seeds, the difference also in "
              "the seeds' standard deviations (sd; pooled when both cells have seeds)."
              + (f" Its codes at evaluation are not made as every peer's ({', '.join(differ)}; "
                 "first section)." if differ else ""), "",
              "| bits | " + " | ".join(label for _, label in _LEAD_METRICS) + " |",
              "|---|" + "---|" * len(_LEAD_METRICS)]
    for bits, row in table.items():
      lines.append(f"| {bits} | " + " | ".join(
          _difference_cell(row[key][0], row[key][2], row[key][1]) if key in row else "…"
          for key, _ in _LEAD_METRICS) + " |")
  return lines


def _ablation_section(results) -> list[str]:
  bench, agg = results["benchmark"], results["aggregate"]
  lines = []
  for base, ablations in (bench.get("ablations") or {}).items():
    cells = [(m, b) for m in ablations for b in bench["bits"]
             if agg.get(base, {}).get(str(b)) and agg.get(m, {}).get(str(b))]
    if not cells:
      continue
    lines += ["", f"## Ablations of {base}: what each term adds", "",
              f"{base} − {base} without the term (means over seeds); positive = the term helps. "
              "Where a cell has several seeds, the difference also in the seeds' standard "
              "deviations (sd; pooled when both cells have seeds).",
              "", "| ablation | bits | " + " | ".join(l for _, l in _LEAD_METRICS) + " |",
              "|---|---|" + "---|" * len(_LEAD_METRICS)]
    for m, bits in cells:
      mine, theirs = agg[base][str(bits)], agg[m][str(bits)]
      lines.append(f"| {m} | {bits} | " + " | ".join(
          _difference_cell(mine[key]["mean"] - theirs[key]["mean"],
                           _pooled_sd(mine[key], theirs[key]))
          if mine.get(key) and theirs.get(key) else "…" for key, _ in _LEAD_METRICS) + " |")
  return lines


def _reference_rows(results, names) -> list[str]:
  refs = results.get("references") or {}
  rows = []
  for key, label, qps in (("sad", "pixel SAD (exact)", "queries_per_second"),
                          ("float_codes", "float codes of {run}, cosine", None)):
    if key not in refs:
      continue
    entry = refs[key]
    values = [f"{entry['category'].get(n, float('nan')):.4f}" if n in entry["category"] else "—"
              for n in names]
    values += [f"{entry['closest_match'][m]:.4f}" for m in ("recall_at_1", "recall_at_10",
                                                              "map_all")]
    speed = f"{entry[qps]:.0f} q/s" if qps else "—"
    # Measured by an earlier report (its machine's queries/s): named as a carried run is.
    where = f" (from {entry['source']})" if entry.get("source") else ""
    rows.append(f"| {label.format(run=entry.get('run'))}{where} | 1 | " + " | ".join(values)
                + f" | {speed} |")
  return rows


def main_table(results) -> list[str]:
  """Every method at the reference length, both protocols, with the references."""
  bench, agg = results["benchmark"], results["aggregate"]
  ref, names = bench["reference_bits"], results["protocols"]["category"]["metrics"]
  header = ([category_label(n) for n in names] + [f"closest {_CM_LABELS[m]}" for m in
                                                  ("recall_at_1", "recall_at_10", "map_all")]
            + ["train time"])
  lines = ["| method | seeds | " + " | ".join(header) + " |",
           "|---|---:|" + "---:|" * len(header)]
  for method in bench["methods"]:
    entry = agg.get(method, {}).get(str(ref)) or {}
    values = [_cell(results, method, ref, f"category/{n}") for n in names]
    values += [_cell(results, method, ref, f"closest_match/{m}")
               for m in ("recall_at_1", "recall_at_10", "map_all")]
    values.append(_train_time(entry))
    lines.append(f"| {method} | {len(entry.get('seeds', []))} | " + " | ".join(values) + " |")
  return lines + _reference_rows(results, names)


def _method_by_bits(results, key) -> list[str]:
  bench = results["benchmark"]
  rows = ["| method | " + " | ".join(f"{b} bits" for b in bench["bits"]) + " |",
          "|---|" + "---:|" * len(bench["bits"])]
  rows += [f"| {m} | " + " | ".join(_cell(results, m, b, key) for b in bench["bits"]) + " |"
           for m in bench["methods"]]
  return rows


def train_devices(runs: dict) -> str:
  """What the finished runs trained on, from their records: "1 x cpu on AMD EPYC, 2 CPUs, AVX2
  (12 runs)"; a record that predates a field says so ("host not recorded", "not recorded")."""
  def where(r):
    devices = r.get("train_devices")
    if not devices:
      return "not recorded"
    host = r.get("train_host")
    return f"{devices} on {host}" if host else f"{devices}, host not recorded"
  counts = collections.Counter(where(r) for r in runs.values() if r.get("status") == "done")
  return ", ".join(f"{name} ({n} run{'s' if n > 1 else ''})" for name, n in sorted(counts.items())
                   ) or "none yet"


def _train_time(entry) -> str:
  """The mean train time of a cell; "‡" where its seeds trained on different hosts or on hosts not
  all recorded, whose times do not average to one machine's; "(n of m seeds)" where some seeds
  are not timed whole (resumed from a checkpoint without a train-time record)."""
  timed, partial = entry.get("train_seconds") or {}, entry.get("train_seconds_partial", 0)
  text = _duration(timed.get("mean"))
  if partial:
    text = (f"{text} ({timed['n']} of {len(entry['seeds'])} seeds)" if timed else
            "not timed whole")
  hosts = entry.get("train_hosts") or []
  return text + (" ‡" if len(hosts) > 1 else "")


def _carried_section(results) -> list[str]:
  """The runs whose figures come from an earlier report (deephash benchmark --previous_report),
  by source ("<run> (as <earlier name>)" for one taken from a run of another name); those whose
  record predates records that carry their config are named as such."""
  by_source: dict = {}
  for name, r in results["runs"].items():
    if r["status"] == "done" and "source" in r:
      label = f"{name} (as {r['carried_from']})" if "carried_from" in r else name
      by_source.setdefault(r["source"], []).append((label, r.get("config_checked", True)))
  lines = []
  for source, runs in sorted(by_source.items()):
    unchecked = [name for name, checked in runs if not checked]
    lines += ["", f"## Runs from an earlier report: {source}", "",
              f"Trained elsewhere and taken with their figures ({len(runs)}): "
              + ", ".join(name for name, _ in runs) + "."
              + (" None of these records carries the config it trained with, so none is "
                 "checked against the plan." if len(unchecked) == len(runs) else
                 " Recorded without their config, so not checked against the plan: "
                 + ", ".join(unchecked) + "." if unchecked else "")
              + (" The config each record carries matches the plan's."
                 if len(unchecked) < len(runs) else "")]
  return lines


def evaluation_codes_note(results) -> str:
  """One sentence on how the codes are made at evaluation (config.model's evaluation-only
  fields): "... the same for every method", or which methods differ, so that a reader sees
  where two rows are not scored on codes made the same way."""
  fields = results.get("evaluation_codes") or {}
  same = [f"`model.{f}` = {next(iter(v))}" for f, v in fields.items() if len(v) == 1]
  differ = [(f, v) for f, v in fields.items() if len(v) > 1]
  text = ""
  if same:
    text = "Codes at evaluation: " + ", ".join(same) + " for every method."
  for field, by_value in differ:
    groups = "; ".join(f"{value} for {', '.join(methods)}"
                       for value, methods in sorted(by_value.items(), key=lambda kv: -len(kv[1])))
    text += (f" **Not the same for every method**: `model.{field}` = {groups}. These change "
             "only how the codes are made at evaluation; rows with different values are not "
             "scored on the same protocol.")
  return text.strip()


def format_markdown(results: dict) -> str:
  """results.md: the tables of the comparison."""
  bench, status, machine = results["benchmark"], results["status"], results["machine"]
  cat, cm = results["protocols"]["category"], results["protocols"]["closest_match"]
  ties = ("every order of tied items equally likely (the expectation)"
          if results["ties"] == "expected" else "ties broken by the lower database index")
  lines = [f"# Benchmark: {results['dataset']}", "",
           f"Runs: {status['done']} of {status['planned']} done"
           + (f" ({status['carried']} of them from an earlier report, listed at the end)"
              if status.get("carried") else "")
           + (f", {status['failed']} failed" if status["failed"] else "")
           + (f", {status['stale']} stale" if status.get("stale") else "") + ". "
           f"Report machine: {machine['host']}, JAX {machine['jax']} "
           f"({machine['backend']}); training devices: {train_devices(results['runs'])}. "
           "Means over seeds ± sample standard deviation; † = the codes collapsed; "
           "‡ = its seeds trained on different hosts (or not all recorded); a train time of "
           "fewer seeds (or 'not timed whole') leaves out runs resumed from a checkpoint "
           "without a train-time record; "
           "… = not run yet; stale = finished with another config (listed below); "
           "— = not in the plan. Ranking: "
           f"Hamming distance, {ties}.", "",
           f"## Both protocols at {bench['reference_bits']} bits", "",
           f"Category: the '{cat['query_split']}' split against '{cat['database_split']}', "
           "relevant = same clothing type. Closest match: the first "
           f"{cm['num_queries']} '{cat['query_split']}' images re-rendered by the recipe "
           f"below, against all '{cat['query_split']}' originals + the "
           f"'{cat['database_split']}' split as distractors, relevant = the original."
           + (f" {note}" if (note := evaluation_codes_note(results)) else ""), ""]
  lines += main_table(results)
  for key, title in (("category/map_all", "Category mAP@all"),
                     ("closest_match/recall_at_1", "Closest-match R@1"),
                     ("closest_match/map_all", "Closest-match mAP (mean reciprocal rank)")):
    lines += ["", f"## {title}, method × bits", ""] + _method_by_bits(results, key)
  lines += _lead_section(results) + _ablation_section(results)
  failed = [(name, r) for name, r in results["runs"].items() if r["status"] == "failed"]
  if failed:
    lines += ["", "## Failed runs", ""] + [f"- {name}: {r['error']}" for name, r in failed]
  stale = [(name, r) for name, r in results["runs"].items() if r["status"] == "stale"]
  if stale:
    lines += ["", "## Stale runs (finished with another config; not in the tables)", ""] + [
        f"- {name}: {'; '.join(r['differences'])}"
        + (" (how it is evaluated alone: `deephash benchmark` has it evaluated again from its "
           "checkpoint, untrained)" if r.get("reevaluable") else "") for name, r in stale]
  lines += _carried_section(results)
  lines += ["", "## Closest-match recipe", "",
            f"Query i = augment.query_view(test image i, fold_in(key({cm['seed']}), i), recipe), "
            "rounded to uint8:", "", "```", json.dumps(cm["recipe"], sort_keys=True), "```", ""]
  return "\n".join(lines)
