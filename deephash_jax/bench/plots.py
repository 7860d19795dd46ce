"""The benchmark's plots: retrieval against code length, precision-recall curves, and the two
protocols against each other at the reference length."""

from __future__ import annotations

import io
import math

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
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


Box = tuple[float, float, float, float]   # x0, y0, x1, y1 in display pixels


def _overlap(a: Box, b: Box) -> float:
  """Area two boxes share (0 where they only touch)."""
  return (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
          * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))


def place_labels(anchors: list[tuple[float, float]], sizes: list[tuple[float, float]],
                 bounds: Box, *, obstacles: tuple[Box, ...] = (), gap: float = 6.0,
                 marker: float = 5.0, max_steps: int = 12) -> list[tuple[float, float]]:
  """Offsets (dx, dy) in pixels of the lower-left corner of each label from its anchor, so that no
  label covers another label or another point's marker where a free place exists.

  Greedy, the most crowded points first (most other anchors within three label heights): each
  label takes the first free candidate of right-above, right-below, left-above, left-below, above
  and below its point, then the same sides moved away one label height at a time (up to
  `max_steps`), inside `bounds` where possible; where nothing is free, the candidate that
  overlaps least. `obstacles`: other boxes to keep clear (a reference line); `marker`: half the
  side of the box kept clear around every anchor; `gap`: between a point and its label."""
  if len(anchors) != len(sizes):
    raise ValueError(f"{len(anchors)} anchors but {len(sizes)} label sizes")
  kept_clear = [(x - marker, y - marker, x + marker, y + marker) for x, y in anchors]
  kept_clear += list(obstacles)
  offsets: list[tuple[float, float]] = [(0.0, 0.0)] * len(anchors)
  reach = 3 * max((h for _, h in sizes), default=0.0)
  crowd = [sum(abs(x - u) < reach and abs(y - v) < reach for u, v in anchors)
           for x, y in anchors]
  for i in sorted(range(len(anchors)), key=lambda i: -crowd[i]):
    (x, y), (w, h) = anchors[i], sizes[i]
    sides = ((gap, gap / 2), (gap, -h - gap / 2), (-w - gap, gap / 2), (-w - gap, -h - gap / 2),
             (-w / 2, marker + gap / 2), (-w / 2, -h - marker - gap / 2))
    candidates = [(dx, dy + math.copysign(step * (h + 1), dy))   # away from the point
                  for step in range(max_steps + 1) for dx, dy in sides]
    boxes = [(x + dx, y + dy, x + dx + w, y + dy + h) for dx, dy in candidates]
    penalties = [sum(_overlap(box, other) for other in kept_clear)
                 + h * (max(0.0, bounds[0] - box[0]) + max(0.0, box[2] - bounds[2])
                        + max(0.0, bounds[1] - box[1]) + max(0.0, box[3] - bounds[3]))
                 for box in boxes]
    best = penalties.index(min(penalties))   # the first of the least covered: a free one if any
    kept_clear.append(boxes[best])
    offsets[i] = candidates[best]
  return offsets


def _annotate_apart(ax, points: list[tuple[str, float, float, tuple]],
                    lines_at: tuple[float, ...] = ()) -> None:
  """Labels every (text, x, y, colour) of `points` beside its marker with place_labels, in the
  marker's colour, clear of the horizontal lines at the data heights `lines_at`; a label moved
  away from its point gets a thin line back to it."""
  fig = ax.figure
  renderer = FigureCanvasAgg(fig).get_renderer()
  sizes = []
  for text, x, y, _ in points:   # measured at the size drawn, then replaced by the placed label
    probe = ax.text(x, y, text, fontsize="small")
    extent = probe.get_window_extent(renderer)
    sizes.append((extent.width, extent.height))
    probe.remove()
  anchors = [tuple(ax.transData.transform((x, y))) for _, x, y, _ in points]
  frame = ax.get_window_extent(renderer)
  lines = tuple((frame.x0, y - 1, frame.x1, y + 1)
                for y in (ax.transData.transform((0, height))[1] for height in lines_at))
  offsets = place_labels(anchors, sizes, (frame.x0, frame.y0, frame.x1, frame.y1),
                         obstacles=lines)
  to_points = 72.0 / fig.dpi
  for (text, x, y, color), (dx, dy), (w, h) in zip(points, offsets, sizes):
    far = max(-dy - h, dy, dx, -dx - w) > 2 * h   # the label's gap to its point, in pixels
    ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx * to_points, dy * to_points),
                ha="left", va="bottom", fontsize="small", color=color,
                arrowprops=dict(arrowstyle="-", color=color, linewidth=0.6, shrinkA=0, shrinkB=4,
                                relpos=(0.0 if dx >= 0 else 1.0, 0.5)) if far else None)


def plot_protocols(results: dict, path: str) -> None:
  """Closest-match R@1 (log scale) against category mAP@all, one point per method (± std over
  seeds), pixel SAD's R@1 as a line: the type search and the garment search in one picture."""
  ref = results["benchmark"]["reference_bits"]
  fig = Figure(figsize=(7.5, 5))
  ax = fig.subplots()
  labels, lines = [], []
  for i, (label, cat, cm) in enumerate(protocol_points(results)):
    r1 = max(cm["mean"], 1e-4)   # log scale: 0 drawn at 1e-4
    if label == "pixel SAD":     # far left on mAP@all: a line at its R@1 keeps the methods apart
      lines.append(r1)
      ax.axhline(r1, color="grey", linestyle=":")
      ax.annotate(f"pixel SAD (mAP@all {cat['mean']:.3f})", (0.01, r1),
                  xycoords=("axes fraction", "data"), xytext=(0, 4),
                  textcoords="offset points", fontsize="small", color="grey")
      continue
    style = _style(label, i)
    style.pop("linestyle", None), style.pop("linewidth", None)
    style["markersize"] = 7
    ax.errorbar([cat["mean"]], [r1], xerr=[cat["std"] or 0.0],
                yerr=[cm["std"] or 0.0], capsize=3, label=label, linestyle="none", **style)
    labels.append((label, cat["mean"], r1, style["color"]))
  ax.set_yscale("log")
  ax.set_xlabel("category mAP@all (same clothing type)")
  ax.set_ylabel("closest-match R@1 (the garment itself first)")
  ax.set_title(f"{results['dataset']}: both protocols at {ref} bits (mean over seeds, ± std)")
  ax.grid(alpha=0.3, which="both")
  left, right = ax.get_xlim()
  ax.set_xlim(left, right + 0.08 * (right - left))   # room for the labels of the rightmost points
  _annotate_apart(ax, labels, tuple(lines))   # after the scale and limits: it works in pixels
  _save_figure(fig, path)
