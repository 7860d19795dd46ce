"""`deephash predict`: a tiny model trained for the module on synthetic IDX files, its database
split ("train", 320 images) indexed; queries are PNG files written from that split."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deephash_jax.data import fashion_mnist
from deephash_jax.search import index as index_lib
from deephash_jax.search import packing
from deephash_jax.serve import catalogue
from deephash_jax.serve import predict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow
MATCH_FIELDS = {"rank", "id", "label", "label_id", "distance", "path"}


def _brute_force(index, code_hex, k):
  query = np.frombuffer(bytes.fromhex(code_hex), np.uint8)[None]
  distances = (packing.unpack_bits(index.codes, index.num_bits)
               != packing.unpack_bits(query, index.num_bits)).sum(axis=1)
  order = np.lexsort((index.ids, distances))[:k]
  return index.ids[order].tolist(), distances[order].tolist()


def test_a_database_image_finds_itself_first(trained, tmp_path):
  workdir, index_path, database, query_path, query_id = trained
  # A second query in another format and size: converted like the catalogue images.
  other_path = str(tmp_path / "other.jpg")
  Image.fromarray(database.images[200][..., 0]).convert("RGB").resize((100, 90)).save(other_path)
  results = predict.predict(workdir, [query_path, other_path], index_path=index_path, k=10,
                            rerank=0)
  assert [r["query"] for r in results] == [query_path, other_path]
  first = results[0]["matches"][0]
  assert first == {"rank": 1, "id": query_id, "distance": 0, "path": None,
                   "label_id": int(database.labels[query_id]),
                   "label": fashion_mnist.FASHION_MNIST_CLASSES[database.labels[query_id]]}
  index = index_lib.HammingIndex.load(index_path)
  for result in results:
    matches = result["matches"]
    assert result["num_bits"] == 16 and len(matches) == 10
    assert [m["rank"] for m in matches] == list(range(1, 11))
    keys = [(m["distance"], m["id"]) for m in matches]
    assert keys == sorted(keys)  # (distance, id) order: ties broken by the lower id
    ids, distances = _brute_force(index, result["code"], 10)
    assert [m["id"] for m in matches] == ids and [m["distance"] for m in matches] == distances
    assert all(m["label"] == fashion_mnist.FASHION_MNIST_CLASSES[database.labels[m["id"]]]
               for m in matches)

  table = predict.render_table(results)
  assert query_path in table and other_path in table
  row = table.splitlines()[2].split()
  assert row[:3] == ["1", str(query_id), "0"]


def test_rerank_orders_the_hamming_candidates_by_the_query_confidence(trained, tmp_path):
  """`rerank`: the Hamming top-N re-ranked by the asymmetric distance of the query's continuous
  code, against a loop over the bits; each match keeps its Hamming distance; with N = the index
  size the whole index is ranked; the table gains the column."""
  workdir, index_path, database, query_path, query_id = trained
  other_path = str(tmp_path / "other.png")
  Image.fromarray(np.rot90(database.images[201][..., 0])).save(other_path)
  index = index_lib.HammingIndex.load(index_path)
  cat = catalogue.Catalogue.open(workdir, index_path)
  images = np.stack([catalogue.read_query(p, cat.encoder.image_shape)
                     for p in (query_path, other_path)])
  embeddings = cat.encoder.embed(images)
  bits = packing.unpack_bits(index.codes, index.num_bits).astype(bool)
  for rerank in (12, len(index)):
    results = predict.predict(workdir, [query_path, other_path], index_path=index_path, k=8,
                              rerank=rerank)
    for result, q in zip(results, embeddings):
      hamming_ids, _ = _brute_force(index, result["code"], rerank)
      weights = np.round(np.abs(q.astype(np.float64)) * 2**20) / 2**20
      loop = {int(i): sum(w for w, x, b in zip(weights, q, bits[int(i)]) if (x > 0) != b)
              for i in hamming_ids}
      want = sorted(hamming_ids, key=lambda i: loop[i])[:8]       # stable: Hamming order kept
      matches = result["matches"]
      assert all(set(m) == MATCH_FIELDS | {"asymmetric_distance"} for m in matches)
      assert [m["id"] for m in matches] == want
      assert [m["asymmetric_distance"] for m in matches] == [round(loop[i], 4) for i in want]
      assert [m["distance"] for m in matches] == [
          int((bits[i] != (q > 0)).sum()) for i in want]
  assert results[0]["matches"][0]["id"] == query_id       # the image itself: distance 0 either way
  assert "asym" in predict.render_table(results).splitlines()[1]
  with pytest.raises(catalogue.CatalogueError, match="rerank=-1"):
    predict.predict(workdir, [query_path], index_path=index_path, rerank=-1)


def test_without_index_the_database_split_is_encoded_on_the_fly(trained, caplog):
  workdir, index_path, _, query_path, _ = trained
  caplog.set_level(logging.INFO)
  on_the_fly = predict.predict(workdir, [query_path], k=7)
  assert "No index given: encoding the 'train' split" in caplog.text
  assert on_the_fly == predict.predict(workdir, [query_path], index_path=index_path, k=7)


def test_command_line_json_table_and_grid(trained, tmp_path):
  workdir, index_path, _, query_path, query_id = trained
  grid = tmp_path / "grid" / "matches.png"
  command = [sys.executable, "-m", "deephash_jax.main", "predict", f"--workdir={workdir}",
             f"--image={query_path}", f"--image={query_path}", f"--index={index_path}", "--k=4",
             "--json", f"--grid={grid}"]
  done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=240)
  assert done.returncode == 0, done.stderr
  queries = json.loads(done.stdout)["queries"]
  assert len(queries) == 2 and queries[0] == queries[1]
  assert set(queries[0]) == {"query", "code", "num_bits", "matches"}
  # Re-ranked by default (--rerank=100): each match carries its asymmetric distance too.
  assert all(set(m) == MATCH_FIELDS | {"asymmetric_distance"} for m in queries[0]["matches"])
  assert [m["rank"] for m in queries[0]["matches"]] == [1, 2, 3, 4]
  assert queries[0]["matches"][0]["id"] == query_id
  # The PNG: 2 rows of 1 query + 4 matches, thumbnails read from the dataset split by id.
  assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with Image.open(grid) as image:
    image.verify()
    assert image.format == "PNG" and image.size[0] > image.size[1] > 100

  missing = str(tmp_path / "nope.png")
  failed = subprocess.run(command[:5] + [f"--image={missing}"], capture_output=True, text=True,
                          cwd=REPO, timeout=240)
  assert failed.returncode != 0
  assert f"deephash predict: {missing}: no such file" in failed.stderr
  assert "Traceback" not in failed.stderr


def test_save_grid_png_draws_missing_images_as_text(tmp_path):
  matches = [{"rank": 1, "id": 3, "label": "Bag", "distance": 0,
              "image": np.zeros((28, 28, 1), np.uint8)},
             {"rank": 2, "id": 8, "label": None, "distance": 5, "image": None}]
  path = str(tmp_path / "one.png")
  predict.save_grid_png(np.full((64, 64, 3), 128, np.uint8), matches, path)
  with Image.open(path) as image:
    assert image.format == "PNG"


def test_bad_inputs_are_named(trained, tmp_path):
  workdir, index_path, _, query_path, _ = trained
  missing = str(tmp_path / "missing.png")
  with pytest.raises(catalogue.CatalogueError, match=f"{missing}: no such file"):
    predict.predict(workdir, [query_path, missing], index_path=index_path)
  text = tmp_path / "notes.txt"
  text.write_text("not a picture")
  with pytest.raises(catalogue.CatalogueError, match=f"{text}: not an image"):
    predict.predict(workdir, [str(text)], index_path=index_path)
  with pytest.raises(catalogue.CatalogueError, match="k=0"):
    predict.predict(workdir, [query_path], index_path=index_path, k=0)
  with pytest.raises(catalogue.CatalogueError, match="no such index file"):
    predict.predict(workdir, [query_path], index_path=str(tmp_path / "none.dhidx"))

  stored = index_lib.HammingIndex.load(index_path)
  wide = index_lib.HammingIndex(32, model_id=stored.model_id)  # same model id, wrong length
  wide.add(np.concatenate([stored.codes, stored.codes], axis=1), labels=stored.labels)
  wide.save(str(tmp_path / "wide.dhidx"))
  with pytest.raises(catalogue.CatalogueError,
                     match="holds 32-bit codes but the model in .* makes 16-bit codes"):
    predict.predict(workdir, [query_path], index_path=str(tmp_path / "wide.dhidx"))

  foreign = index_lib.HammingIndex(16, model_id="another-model")
  foreign.add(stored.codes, labels=stored.labels)
  foreign.save(str(tmp_path / "foreign.dhidx"))
  with pytest.raises(catalogue.CatalogueError, match="built by another model.*Rebuild the index"):
    predict.predict(workdir, [query_path], index_path=str(tmp_path / "foreign.dhidx"))
