"""The demo: `deephash index`, the JSON API (TestClient), a headless browser, a loopback load test.

One tiny model is trained for the whole module on a small Fashion-MNIST tree (10 images per
class and source split), and its gallery split is indexed.
"""

import importlib.util
import io
import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the demo extra is not installed (pip install .[demo])")
from fastapi.testclient import TestClient  # pylint: disable=g-import-not-at-top,g-bad-import-order

from deephash_jax import config_lib
from deephash_jax import dataset_tree
from deephash_jax import demo
from deephash_jax import hamming
from deephash_jax import index as index_lib
from deephash_jax import indexing
from deephash_jax import inference
from deephash_jax import input_pipeline
from deephash_jax import train
from deephash_jax.demo import screenshot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST_DIR = input_pipeline.DEBIAN_FASHION_MNIST_DIR
pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
    reason=f"Debian's dataset-fashion-mnist is not installed ({FASHION_MNIST_DIR})")


def _load_benchmark():
  spec = importlib.util.spec_from_file_location(
      "demo_load", os.path.join(REPO, "benchmarks", "demo_load.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(workdir, index path, tree root): a tiny model and the index of its gallery."""
  base = tmp_path_factory.mktemp("demo")
  tree = str(base / "fm")
  dataset_tree.create_from_fashion_mnist(FASHION_MNIST_DIR, tree, per_class_limit=10)
  config = config_lib.base_config("image_folder_tiny")
  config.input.root = tree
  config.input.data_dir = str(base / "tfds")
  workdir = str(base / "run")
  train.train_and_evaluate(config, workdir)
  index_path = str(base / "gallery.dhidx")
  summary = indexing.build_index(workdir, "gallery", index_path)
  assert summary["count"] == 50 and summary["num_bits"] == 16
  return workdir, index_path, tree


@pytest.fixture(scope="module")
def client(trained):
  workdir, index_path, _ = trained
  app = demo.create_app(workdir, index_path)
  with TestClient(app) as test_client:
    yield test_client


def _file(tree, split, clothing_type, index=0):
  folder = os.path.join(tree, split, clothing_type)
  return os.path.join(folder, sorted(os.listdir(folder))[index])


def _bytes(image, fmt="PNG", **kwargs):
  buffer = io.BytesIO()
  image.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def _post(client, data, name="q.png", k=5):
  return client.post(f"/api/search?k={k}", files={"image": (name, data, "image/png")})


def test_index_holds_codes_labels_paths_and_metadata(trained):
  workdir, index_path, tree = trained
  index = index_lib.HammingIndex.load(index_path)
  encoder = inference.HashEncoder.from_workdir(workdir)
  assert index.model_id == encoder.model_id and index.num_bits == 16
  metadata = indexing.load_metadata(index_path)
  assert metadata["split"] == "gallery" and metadata["image_root"] == tree
  assert len(metadata["class_names"]) == 10 and len(metadata["items"]) == 50
  assert all(p.startswith(os.path.join(tree, "gallery") + os.sep) for p in index.paths)
  # The stored codes are those of the images on disk.
  shape = encoder.image_shape
  images = np.stack([dataset_tree.read_image(p, shape[0], shape[2]) for p in index.paths[:8]])
  np.testing.assert_array_equal(encoder.encode(images), index.codes[:8])
  label_of = {name: i for i, name in enumerate(metadata["class_names"])}
  assert [label_of[p.split(os.sep)[-2]] for p in index.paths] == index.labels.tolist()


def test_info_page_health_and_docs(client, trained):
  assert client.get("/healthz").json() == {"status": "ok", "database_size": 50}
  info = client.get("/api/info").json()
  assert info["num_bits"] == 16 and info["database_size"] == 50 and info["has_images"]
  assert "map_all" in info["eval"] and 0 <= info["eval"]["map_all"] <= 1
  page = client.get("/")
  assert page.status_code == 200 and "upload-form" in page.text
  assert client.get("/static/app.js").status_code == 200
  assert client.get("/docs").status_code == 200
  paths = client.get("/openapi.json").json()["paths"]
  for path in ("/api/search", "/api/items/{item_id}", "/api/items/{item_id}/image", "/healthz"):
    assert path in paths


def test_search_matches_brute_force_and_finds_the_image_itself(client, trained):
  workdir, index_path, tree = trained
  query_path = _file(tree, "query", "Trouser")
  with open(query_path, "rb") as f:
    response = _post(client, f.read(), k=7)
  assert response.status_code == 200, response.text
  body = response.json()
  assert body["k"] == 7 and body["num_bits"] == 16 and len(body["results"]) == 7
  assert body["query"] == {"width": 28, "height": 28, "mode": "L", "format": "PNG"}
  # Distances are exact: NumPy popcount against every stored code, ties by id.
  encoder = inference.HashEncoder.from_workdir(workdir)
  index = index_lib.HammingIndex.load(index_path)
  code = encoder.encode(dataset_tree.read_image(query_path, 64, 3)[None])
  bits = hamming.unpack_bits(index.codes, 16) != hamming.unpack_bits(code, 16)
  distances = bits.sum(1)
  order = np.lexsort((np.arange(len(distances)), distances))[:7]
  assert [r["id"] for r in body["results"]] == order.tolist()
  assert [r["distance"] for r in body["results"]] == distances[order].tolist()
  assert [r["rank"] for r in body["results"]] == list(range(1, 8))
  first = body["results"][0]
  assert first["clothing_type"] in indexing.load_metadata(index_path)["class_names"]
  assert first["path"].startswith("gallery/") and first["image_url"].endswith("/image")

  # A gallery image, uploaded, finds itself at distance 0 (same conversion on both sides).
  gallery_path = index.paths[13]
  with open(gallery_path, "rb") as f:
    results = _post(client, f.read()).json()["results"]
  assert results[0]["distance"] == 0
  assert 13 in [r["id"] for r in results if r["distance"] == 0]


def test_greyscale_rgba_palette_cmyk_and_16_bit_uploads_work(client, trained):
  _, _, tree = trained
  garment = Image.open(_file(tree, "query", "Dress"))
  variants = {
      "grey.png": _bytes(garment.convert("L")),
      "rgba.png": _bytes(garment.convert("RGBA")),
      "palette.gif": _bytes(garment.convert("P"), "GIF"),
      "photo.jpg": _bytes(garment.convert("RGB").resize((300, 400)), "JPEG"),
      "la.png": _bytes(garment.convert("LA")),
      "photo.webp": _bytes(garment.convert("RGB"), "WEBP"),
      "cmyk.jpg": _bytes(garment.convert("CMYK"), "JPEG"),
      "grey16.png": _bytes(Image.fromarray(np.asarray(garment.convert("L"), np.uint16) * 257)),
  }
  for name, data in variants.items():
    response = _post(client, data, name)
    assert response.status_code == 200, (name, response.text)
    assert len(response.json()["results"]) == 5


def test_bad_uploads_get_clear_4xx_and_the_server_keeps_serving(client, trained):
  _, _, tree = trained
  good = open(_file(tree, "query", "Bag"), "rb").read()
  jpeg = _bytes(Image.open(_file(tree, "query", "Bag")).convert("RGB").resize((256, 256)),
                "JPEG")
  cases = [
      (client.post("/api/search"), 400, "no image"),
      (client.post("/api/search", data={"k": "5"}), 400, "no image"),
      (_post(client, b""), 400, "empty file"),
      (_post(client, b"hello, not a picture", "notes.txt"), 415, "not an image"),
      (_post(client, b"%PDF-1.4 fake", "doc.pdf"), 415, "not an image"),
      (_post(client, jpeg[:len(jpeg) // 2], "cut.jpg"), 400, "corrupt or truncated"),
      (_post(client, good[:40], "cut.png"), 400, "corrupt or truncated"),
      (_post(client, _bytes(Image.new("RGB", (8, 8)), "ICO"), "x.ico"), 415, "unsupported"),
      (_post(client, good, k=0), 422, "greater than or equal to 1"),
      (_post(client, good, k=1000), 422, "less than or equal to 100"),
      (client.get("/api/items/12345"), 404, "no catalogue entry with id 12345"),
      (client.get("/api/items/-1/image"), 404, "no catalogue entry"),
  ]
  for response, status, text in cases:
    assert response.status_code == status, (status, text, response.text)
    assert text in response.text, (text, response.text)
  # Size limits: lowered for the test; the body (Content-Length) and the pixel count.
  app = client.app
  app.state.max_upload_bytes = 200
  try:
    response = _post(client, good + b"\0" * 70_000)
    assert response.status_code == 413 and "upload limit" in response.text
    response = _post(client, good)
    assert response.status_code == 413 and "larger than the 200 bytes upload limit" in (
        response.text)
  finally:
    app.state.max_upload_bytes = demo.app.MAX_UPLOAD_BYTES
  app.state.max_pixels = 500
  try:
    response = _post(client, _bytes(Image.new("L", (30, 30))))
    assert response.status_code == 413 and "30x30 pixels" in response.text
  finally:
    app.state.max_pixels = demo.app.MAX_PIXELS
  assert client.get("/healthz").status_code == 200
  assert _post(client, good).status_code == 200


def test_items_thumbnails_and_similar(client):
  item = client.get("/api/items/3").json()
  assert item["id"] == 3 and item["clothing_type"] and item["path"].startswith("gallery/")
  image = client.get("/api/items/3/image")
  assert image.status_code == 200 and image.headers["content-type"] == "image/png"
  assert Image.open(io.BytesIO(image.content)).size == (28, 28)  # never upscaled
  similar = client.get("/api/items/3/similar?k=4").json()
  assert similar["query"]["id"] == 3 and len(similar["results"]) == 4
  assert similar["results"][0]["distance"] == 0
  page = client.get("/api/items?offset=48&limit=10").json()
  assert page["total"] == 50 and [i["id"] for i in page["items"]] == [48, 49]
  sample = client.get("/api/items?random=true&limit=12").json()["items"]
  assert len({i["id"] for i in sample}) == 12


def test_an_index_of_another_model_is_refused(trained, tmp_path):
  workdir, index_path, _ = trained
  other = index_lib.HammingIndex.load(index_path)
  foreign = index_lib.HammingIndex(16, model_id="another-model")
  foreign.add(other.codes, labels=other.labels, paths=other.paths)
  foreign.save(str(tmp_path / "foreign.dhidx"))
  with pytest.raises(index_lib.IndexFileError, match="codes of another model"):
    demo.create_app(workdir, str(tmp_path / "foreign.dhidx"))


@pytest.fixture(scope="module")
def server(trained):
  """`deephash demo` in a subprocess on a free loopback port."""
  workdir, index_path, _ = trained
  load = _load_benchmark()
  process, url = load.start_server(workdir, index_path)
  yield url, load
  output = load.stop_server(process)
  assert "Traceback" not in output, output


def test_load_on_loopback(server, trained):
  url, load = server
  query = open(_file(trained[2], "query", "Sneaker"), "rb").read()
  load.run_load(url, query, num_requests=16, concurrency=16, k=10)  # warm-up
  result = load.run_load(url, query, num_requests=160, concurrency=16, k=10)
  print("demo load test:", result)
  assert result["errors"] == 0, result["first_errors"]
  assert result["ok"] == 160 and result["p50_ms"] <= result["p99_ms"]
  assert result["requests_per_s"] > 0


@pytest.mark.skipif(screenshot.find_chromium() is None,
                    reason="Chromium and chromedriver are not installed "
                           "(apt-get install chromium chromium-driver)")
def test_browser_uploads_a_query_and_sees_results(server, trained, tmp_path):
  pytest.importorskip("selenium", reason="selenium is not installed (pip install .[demo])")
  url, _ = server
  query = _file(trained[2], "query", "Ankle boot")
  page = screenshot.capture(url, query, str(tmp_path / "demo.png"), k=10)
  assert page["error"] == "", page
  assert len(page["results"]) == 10
  assert page["status"].startswith("10 nearest to your photo")
  assert all(r["distance"].startswith("d = ") for r in page["results"])
  assert "16 bits" in page["facts"] and "50 images" in page["facts"]
  with Image.open(tmp_path / "demo.png") as shot:
    assert shot.format == "PNG" and shot.size[0] >= 800
