"""bench/plots.py: every method gets a line of its own; no label covers another."""
import itertools

import pytest

from deephash_jax.bench import plots


def test_plot_styles_tell_methods_apart():
  # pylint: disable=protected-access
  styles = [plots._style(f"method{i}", i) for i in range(54)]
  assert len({(tuple(s["color"]), s["marker"]) for s in styles}) == 54
  assert plots._style("ours", 0)["linewidth"] > 2
  assert plots._style("ours_no_hamming", 4)["linestyle"] == "--"


def test_the_protocols_plot_has_every_method_with_both_figures_and_pixel_sad(tmp_path):
  stat = lambda mean, std=None: {"mean": mean, "std": std}   # pylint: disable=unnecessary-lambda-assignment
  results = {
      "dataset": "fake", "benchmark": {"reference_bits": 48, "methods": ["graded", "dch", "csq"]},
      "aggregate": {
          "graded": {"48": {"category/map_all": stat(0.90, 0.002),
                            "closest_match/recall_at_1": stat(0.10, 0.001)},
                     "16": {"category/map_all": stat(0.5),
                            "closest_match/recall_at_1": stat(0.5)}},
          "dch": {"48": {"category/map_all": stat(0.91),
                         "closest_match/recall_at_1": stat(0.0)}},   # log scale: drawn at 1e-4
          "csq": {"16": {"category/map_all": stat(0.8),               # not at the reference length
                         "closest_match/recall_at_1": stat(0.001)}}},
      "references": {"sad": {"category": {"map_all": 0.45},
                             "closest_match": {"recall_at_1": 0.003}}}}
  points = plots.protocol_points(results)
  assert [(label, cat["mean"], cm["mean"]) for label, cat, cm in points] == [
      ("graded", 0.90, 0.10), ("dch", 0.91, 0.0), ("pixel SAD", 0.45, 0.003)]
  assert points[0][1]["std"] == 0.002
  path = tmp_path / "protocols.png"
  plots.plot_protocols(results, str(path))
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _boxes(anchors, sizes, offsets):
  return [(x + dx, y + dy, x + dx + w, y + dy + h)
          for (x, y), (w, h), (dx, dy) in zip(anchors, sizes, offsets)]


def test_a_lone_label_sits_right_above_its_point_and_one_at_the_edge_turns_left():
  bounds = (0.0, 0.0, 400.0, 300.0)
  assert plots.place_labels([(100.0, 100.0)], [(60.0, 10.0)], bounds, gap=6.0) == [(6.0, 3.0)]
  (dx, dy), = plots.place_labels([(380.0, 100.0)], [(60.0, 10.0)], bounds, gap=6.0)
  assert (dx, dy) == (-66.0, 3.0)   # right-above would cross the frame's right edge
  line = (0.0, 108.0, 400.0, 110.0)  # a reference line through the places above the point
  (dx, dy), = plots.place_labels([(100.0, 100.0)], [(60.0, 10.0)], bounds, obstacles=(line,))
  assert (dx, dy) == (6.0, -13.0)   # right-below


def test_crowded_labels_cover_neither_each_other_nor_any_marker():
  # Eight points within a few pixels (the crowd of peers at one operating point), two apart.
  anchors = [(200.0 + 3 * i, 150.0 + 2 * (i % 3)) for i in range(8)] + [(50, 50), (300, 250)]
  sizes = [(40.0 + 7 * i, 10.0) for i in range(8)] + [(40.0, 10.0)] * 2
  bounds = (0.0, 0.0, 400.0, 300.0)
  offsets = plots.place_labels(anchors, sizes, bounds, marker=5.0)
  boxes = _boxes(anchors, sizes, offsets)
  for a, b in itertools.combinations(boxes, 2):
    assert plots._overlap(a, b) == 0, (a, b)   # pylint: disable=protected-access
  for box in boxes:
    assert bounds[0] <= box[0] and box[2] <= bounds[2] and bounds[1] <= box[1]
    assert box[3] <= bounds[3]
    for x, y in anchors:
      assert plots._overlap(box, (x - 5, y - 5, x + 5, y + 5)) == 0   # pylint: disable=protected-access
  # The isolated points keep the first choice.
  assert offsets[8] == offsets[9] == (6.0, 3.0)


def test_where_nothing_is_free_the_least_covered_place_is_taken_and_sizes_must_match():
  # A frame smaller than two labels: no place of the six sides (max_steps=0) is free for either.
  anchor, (w, h), bounds, gap, marker = (5.0, 4.0), (20.0, 8.0), (0.0, 0.0, 30.0, 12.0), 6.0, 5.0
  offsets = plots.place_labels([anchor] * 2, [(w, h)] * 2, bounds, gap=gap, marker=marker,
                               max_steps=0)
  sides = [(gap, gap / 2), (gap, -h - gap / 2), (-w - gap, gap / 2), (-w - gap, -h - gap / 2),
           (-w / 2, marker + gap / 2), (-w / 2, -h - marker - gap / 2)]
  x, y = anchor
  dots = [(x - marker, y - marker, x + marker, y + marker)] * 2   # one marker per point

  def penalty(offset, others):   # the documented cost: area covered + height x length outside
    box = _boxes([anchor], [(w, h)], [offset])[0]
    outside = (max(0, bounds[0] - box[0]) + max(0, box[2] - bounds[2])
               + max(0, bounds[1] - box[1]) + max(0, box[3] - bounds[3]))
    return sum(plots._overlap(box, o) for o in others) + outside * h   # pylint: disable=protected-access

  first = _boxes([anchor], [(w, h)], [offsets[0]])[0]
  assert min(penalty(o, dots) for o in sides) > 0
  assert penalty(offsets[0], dots) == min(penalty(o, dots) for o in sides)
  assert penalty(offsets[1], dots + [first]) == min(penalty(o, dots + [first]) for o in sides)
  assert offsets[1] != offsets[0]
  with pytest.raises(ValueError, match="2 anchors but 1 label sizes"):
    plots.place_labels([(0.0, 0.0), (1.0, 1.0)], [(5.0, 5.0)], (0.0, 0.0, 9.0, 9.0))
