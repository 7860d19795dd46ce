"""serve/screenshot.py: the demo page driven in headless Chromium, as a user would."""
import os

import pytest
from PIL import Image

from deephash_jax.serve import screenshot
from tests.serve.conftest import needs_fashion_mnist, tree_file

pytestmark = [pytest.mark.slow, needs_fashion_mnist]


def test_find_chromium_gives_both_paths_or_none():
  found = screenshot.find_chromium()
  assert found is None or all(os.path.exists(p) for p in found)


@pytest.mark.skipif(screenshot.find_chromium() is None,
                    reason="Chromium and chromedriver are not installed "
                           "(apt-get install chromium chromium-driver)")
def test_browser_uploads_a_query_and_sees_results(server, tree_model, tmp_path):
  pytest.importorskip("selenium", reason="selenium is not installed (pip install .[demo])")
  url, _ = server
  query = tree_file(tree_model[2], "query", "Ankle boot")
  page = screenshot.capture(url, query, str(tmp_path / "demo.png"), k=10)
  assert page["error"] == "", page
  assert len(page["results"]) == 10
  assert page["status"].startswith("10 nearest to your photo")
  assert all(r["distance"].startswith("d = ") for r in page["results"])
  assert "16 bits" in page["facts"] and "50 images" in page["facts"]
  with Image.open(tmp_path / "demo.png") as shot:
    assert shot.format == "PNG" and shot.size[0] >= 800
