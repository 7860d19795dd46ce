"""bench/plots.py: every method gets a line of its own."""
from deephash_jax.bench import plots


def test_plot_styles_tell_methods_apart():
  # pylint: disable=protected-access
  styles = [plots._style(f"method{i}", i) for i in range(54)]
  assert len({(tuple(s["color"]), s["marker"]) for s in styles}) == 54
  assert plots._style("ours", 0)["linewidth"] > 2
  assert plots._style("ours_no_hamming", 4)["linestyle"] == "--"
