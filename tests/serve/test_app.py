"""serve/app.py, the demo: the JSON API (TestClient) and a loopback load test.

One tiny model is trained for the session on a small Fashion-MNIST tree (10 images per class and
source split), and its gallery split is indexed (tests/serve/conftest.py).
"""

import io
import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the demo extra is not installed (pip install .[demo])")
from fastapi.testclient import TestClient  # pylint: disable=g-import-not-at-top,g-bad-import-order

from deephash_jax import encoder as encoder_lib
from deephash_jax.data import images as images_lib
from deephash_jax.search import index as index_lib
from deephash_jax.search import packing
from deephash_jax.serve import app as demo
from deephash_jax.serve import catalogue
from tests.serve.conftest import needs_fashion_mnist, tree_file

pytestmark = [pytest.mark.slow, needs_fashion_mnist]


@pytest.fixture(scope="module")
def client(tree_model):
  workdir, index_path, _ = tree_model
  app = demo.create_app(workdir, index_path)
  with TestClient(app) as test_client:
    yield test_client


def _bytes(image, fmt="PNG", **kwargs):
  buffer = io.BytesIO()
  image.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def _post(client, data, name="q.png", k=5, rerank=None):
  query = f"k={k}" + ("" if rerank is None else f"&rerank={rerank}")
  return client.post(f"/api/search?{query}", files={"image": (name, data, "image/png")})


def test_index_holds_codes_labels_paths_and_metadata(tree_model):
  workdir, index_path, tree = tree_model
  index = index_lib.HammingIndex.load(index_path)
  encoder = encoder_lib.HashEncoder.from_workdir(workdir)
  assert index.model_id == encoder.model_id and index.num_bits == 16
  metadata = index.metadata
  assert metadata["split"] == "gallery" and metadata["image_root"] == tree
  assert len(metadata["class_names"]) == 10 and len(metadata["items"]) == 50
  assert all(p.startswith(os.path.join(tree, "gallery") + os.sep) for p in index.paths)
  # The stored codes are those of the images on disk.
  shape = encoder.image_shape
  images = np.stack([images_lib.read_image(p, shape[0], shape[2]) for p in index.paths[:8]])
  np.testing.assert_array_equal(encoder.encode(images), index.codes[:8])
  label_of = {name: i for i, name in enumerate(metadata["class_names"])}
  assert [label_of[p.split(os.sep)[-2]] for p in index.paths] == index.labels.tolist()


def test_info_page_health_and_docs(client, tree_model):
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


def test_search_matches_brute_force_and_finds_the_image_itself(client, tree_model):
  workdir, index_path, tree = tree_model
  query_path = tree_file(tree, "query", "Trouser")
  with open(query_path, "rb") as f:
    response = _post(client, f.read(), k=7, rerank=0)
  assert response.status_code == 200, response.text
  body = response.json()
  assert body["k"] == 7 and body["num_bits"] == 16 and len(body["results"]) == 7
  assert body["rerank"] == 0 and "asymmetric_distance" not in body["results"][0]
  assert body["query"] == {"width": 28, "height": 28, "mode": "L", "format": "PNG"}
  # Distances are exact: NumPy popcount against every stored code, ties by id.
  encoder = encoder_lib.HashEncoder.from_workdir(workdir)
  index = index_lib.HammingIndex.load(index_path)
  code = encoder.encode(images_lib.read_image(query_path, 64, 3)[None])
  bits = packing.unpack_bits(index.codes, 16) != packing.unpack_bits(code, 16)
  distances = bits.sum(1)
  order = np.lexsort((np.arange(len(distances)), distances))[:7]
  assert [r["id"] for r in body["results"]] == order.tolist()
  assert [r["distance"] for r in body["results"]] == distances[order].tolist()
  assert [r["rank"] for r in body["results"]] == list(range(1, 8))
  first = body["results"][0]
  assert first["clothing_type"] in index.metadata["class_names"]
  assert first["path"].startswith("gallery/") and first["image_url"].endswith("/image")

  # A gallery image, uploaded, finds itself at distance 0 (same conversion on both sides); all
  # of the index is asked for, as the tiny model gives more than k images that very code.
  gallery_path = index.paths[13]
  with open(gallery_path, "rb") as f:
    results = _post(client, f.read(), k=min(len(index.paths), demo.MAX_K),
                    rerank=0).json()["results"]
  assert results[0]["distance"] == 0
  assert 13 in [r["id"] for r in results if r["distance"] == 0]


def test_rerank_orders_by_the_photos_continuous_code(client, tree_model):
  """rerank=N >= the index: every entry ranked by the asymmetric distance of the photo's
  continuous code (a loop over the bits), ties in (Hamming distance, id) order; the default is
  demo.DEFAULT_RERANK; a rerank beyond MAX_RERANK is a 422."""
  workdir, index_path, tree = tree_model
  query_path = tree_file(tree, "query", "Sandal")
  with open(query_path, "rb") as f:
    data = f.read()
  index = index_lib.HammingIndex.load(index_path)
  body = _post(client, data, k=9, rerank=len(index)).json()
  assert body["rerank"] == len(index) and len(body["results"]) == 9
  encoder = encoder_lib.HashEncoder.from_workdir(workdir)
  q = encoder.embed(images_lib.read_image(query_path, 64, 3)[None])[0].astype(np.float64)
  weights = np.round(np.abs(q) * 2**20) / 2**20
  bits = packing.unpack_bits(index.codes, 16).astype(bool)
  asymmetric = [sum(w for w, x, b in zip(weights, q, row) if (x > 0) != b) for row in bits]
  hamming = (bits != (q > 0)).sum(1)
  order = sorted(range(len(bits)), key=lambda i: (asymmetric[i], hamming[i], i))[:9]
  assert [r["id"] for r in body["results"]] == order
  assert [r["distance"] for r in body["results"]] == hamming[order].tolist()
  assert [r["asymmetric_distance"] for r in body["results"]] == [
      round(asymmetric[i], 4) for i in order]
  assert _post(client, data).json()["rerank"] == demo.DEFAULT_RERANK
  assert _post(client, data, rerank=demo.MAX_RERANK + 1).status_code == 422


def test_greyscale_rgba_palette_cmyk_and_16_bit_uploads_work(client, tree_model):
  _, _, tree = tree_model
  garment = Image.open(tree_file(tree, "query", "Dress"))
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


def test_bad_uploads_get_clear_4xx_and_the_server_keeps_serving(client, tree_model):
  _, _, tree = tree_model
  good = open(tree_file(tree, "query", "Bag"), "rb").read()
  jpeg = _bytes(Image.open(tree_file(tree, "query", "Bag")).convert("RGB").resize((256, 256)),
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
    app.state.max_upload_bytes = demo.MAX_UPLOAD_BYTES
  app.state.max_pixels = 500
  try:
    response = _post(client, _bytes(Image.new("L", (30, 30))))
    assert response.status_code == 413 and "30x30 pixels" in response.text
  finally:
    app.state.max_pixels = demo.MAX_PIXELS
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


def test_an_index_of_another_model_is_refused(tree_model, tmp_path):
  workdir, index_path, _ = tree_model
  other = index_lib.HammingIndex.load(index_path)
  foreign = index_lib.HammingIndex(16, model_id="another-model")
  foreign.add(other.codes, labels=other.labels, paths=other.paths)
  foreign.save(str(tmp_path / "foreign.dhidx"))
  with pytest.raises(catalogue.CatalogueError, match="codes of two models are not comparable"):
    demo.create_app(workdir, str(tmp_path / "foreign.dhidx"))


def test_load_on_loopback(server, tree_model):
  url, load = server
  query = open(tree_file(tree_model[2], "query", "Sneaker"), "rb").read()
  load.run_load(url, query, num_requests=16, concurrency=16, k=10)  # warm-up
  result = load.run_load(url, query, num_requests=160, concurrency=16, k=10)
  print("demo load test:", result)
  assert result["errors"] == 0, result["first_errors"]
  assert result["ok"] == 160 and result["distinct_answers"] == 1
