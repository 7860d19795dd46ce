"""The benchmark's plots: retrieval against code length, and precision-recall curves."""

from __future__ import annotations

import os

import matplotlib
from matplotlib.figure import Figure

MAP_VS_BITS_PNG = "mAP_vs_bits.png"
PR_CURVES_PNG = "pr_curves.png"


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
  tmp = f"{path}.tmp"
  fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
  os.replace(tmp, path)


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
