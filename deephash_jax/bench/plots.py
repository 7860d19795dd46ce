"""The benchmark's plots: retrieval against code length, precision-recall curves, and the two
protocols against each other at the reference length."""

from __future__ import annotations

import io

import matplotlib
from matplotlib.figure import Figure

from deephash_jax import config_lib

MAP_VS_BITS_PNG = "mAP_vs_bits.png"
PR_CURVES_PNG = "pr_curves.png"
PROTOCOLS_PNG = "protocols.png"


def _style(method: str, index: int) -> dict:
  """Line style of the index-th method: 18 distinct colours (tab10, black, then Dark2 without its
  grey), then the colours again with other markers, so that no two of up to 54 methods look
  alike."""
  colors = (*matplotlib.colormaps["tab10"].colors, (0.0, 0.0, 0.0),
            *matplotlib.colormaps["Dark2"].colors[:7])
  markers = ("o", "s", "^")
  style = {"color": colors[index % len(colors)],
           "marker": markers[(index // len(colors)) % len(markers)], "markersize": 4}
  if method.startswith(("ours_", "singh2019_")):
    style["linestyle"] = "--"
  if method == "ours":
    style["linewidth"] = 2.5
  return style


def _save_figure(fig, path: str) -> None:
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=120, bbox_inches="tight")
  config_lib.write_atomic(path, png.getvalue())


def plot_map_vs_bits(results: dict, path: str) -> None:
  bench = results["benchmark"]
  fig = Figure(figsize=(12, 4.5))
  axes = fig.subplots(1, 2)
  panels = (("category/map_all", "mAP@all (category retrieval)"),
            ("closest_match/map_all", "closest-match mAP (mean reciprocal rank)"))
  for ax, (key, ylabel) in zip(axes, panels):
    for i, method in enumerate(bench["methods"]):
      cells = results["aggregate"].get(method, {})
      points = sorted((int(b), c[key]) for b, c in cells.items() if c.get(key))
      if not points:
        continue
      ax.errorbar([b for b, _ in points], [s["mean"] for _, s in points],
                  yerr=[s["std"] or 0.0 for _, s in points], capsize=3, label=method,
                  **_style(method, i))
    ax.set_xticks(list(bench["bits"]))
    ax.set_xlabel("code length (bits)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
  fig.suptitle(f"{results['dataset']}: retrieval against code length (mean over seeds, ± std)")
  if axes[1].get_legend_handles_labels()[0]:
    axes[1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
  _save_figure(fig, path)


def plot_pr_curves(results: dict, path: str) -> None:
  bench = results["benchmark"]
  ref = bench["reference_bits"]
  fig = Figure(figsize=(7.5, 4.5))
  ax = fig.subplots()
  for i, method in enumerate(bench["methods"]):
    records = sorted((r for r in results["runs"].values()
                      if r["method"] == method and r["bits"] == ref and r.get("pr_curve")),
                     key=lambda r: r["seed"])
    if records:
      curve = records[0]["pr_curve"]
      ax.plot(curve["recall"], curve["precision"], label=f"{method} (seed {records[0]['seed']})",
              **_style(method, i))
  ax.set_xlabel("recall")
  ax.set_ylabel("precision")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.02)
  ax.set_title(f"{results['dataset']}: precision-recall over Hamming radius 0..{ref}, "
               f"{ref} bits")
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
  _save_figure(fig, path)


def protocol_points(results: dict) -> list[tuple[str, dict, dict]]:
  """(label, category mAP@all, closest-match R@1) of every method that has both at the reference
  length, each a {mean, std} over seeds, then pixel SAD's (std None): what plot_protocols draws."""
  bits = str(results["benchmark"]["reference_bits"])
  points = []
  for method in results["benchmark"]["methods"]:
    cell = results["aggregate"].get(method, {}).get(bits, {})
    cat, cm = cell.get("category/map_all"), cell.get("closest_match/recall_at_1")
    if cat and cm:
      points.append((method, cat, cm))
  sad = (results.get("references") or {}).get("sad")
  if sad:
    points.append(("pixel SAD", {"mean": sad["category"]["map_all"], "std": None},
                   {"mean": sad["closest_match"]["recall_at_1"], "std": None}))
  return points


def plot_protocols(results: dict, path: str) -> None:
  """Closest-match R@1 (log scale) against category mAP@all, one point per method (± std over
  seeds), pixel SAD's R@1 as a line: the type search and the garment search in one picture."""
  ref = results["benchmark"]["reference_bits"]
  fig = Figure(figsize=(7.5, 5))
  ax = fig.subplots()
  for i, (label, cat, cm) in enumerate(protocol_points(results)):
    if label == "pixel SAD":     # far left on mAP@all: a line at its R@1 keeps the methods apart
      ax.axhline(max(cm["mean"], 1e-4), color="grey", linestyle=":")
      ax.annotate(f"pixel SAD (mAP@all {cat['mean']:.3f})", (0.01, max(cm["mean"], 1e-4)),
                  xycoords=("axes fraction", "data"), xytext=(0, 4),
                  textcoords="offset points", fontsize="small", color="grey")
      continue
    style = _style(label, i)
    style.pop("linestyle", None), style.pop("linewidth", None)
    style["markersize"] = 7
    ax.errorbar([cat["mean"]], [max(cm["mean"], 1e-4)], xerr=[cat["std"] or 0.0],
                yerr=[cm["std"] or 0.0], capsize=3, label=label, linestyle="none", **style)
    ax.annotate(label, (cat["mean"], max(cm["mean"], 1e-4)), textcoords="offset points",
                xytext=(5, 4), fontsize="small")
  ax.set_yscale("log")
  ax.set_xlabel("category mAP@all (same clothing type)")
  ax.set_ylabel("closest-match R@1 (the garment itself first)")
  ax.set_title(f"{results['dataset']}: both protocols at {ref} bits (mean over seeds, ± std)")
  ax.grid(alpha=0.3, which="both")
  _save_figure(fig, path)
