"""bench/plots.py: every method gets a line of its own."""
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
