"""serve/catalogue.py: the index a model builds, and the one catalogue object predict and the
demo search."""
import os

import numpy as np
import pytest
from PIL import Image

from deephash_jax import encoder as encoder_lib
from deephash_jax.data import fashion_mnist
from deephash_jax.evaluators import closest_match
from deephash_jax.search import index as index_lib
from deephash_jax.search import packing
from deephash_jax.serve import catalogue

pytestmark = pytest.mark.slow


def test_the_index_file_carries_its_metadata(trained):
  workdir, index_path, database, _, _ = trained
  assert not os.path.exists(index_path + ".json")          # no sidecar file
  index = index_lib.HammingIndex.load(index_path)
  meta = index.metadata
  assert meta["split"] == "train" and meta["workdir"] == os.path.abspath(workdir)
  assert meta["class_names"] == list(fashion_mnist.FASHION_MNIST_CLASSES)
  assert meta["items"] == database.items.tolist() and meta["step"] == 6
  assert index.model_id == encoder_lib.HashEncoder.from_workdir(workdir).model_id


def test_one_catalogue_with_or_without_an_index_finds_the_same(trained):
  workdir, index_path, database, query_path, query_id = trained
  indexed = catalogue.Catalogue.open(workdir, index_path)
  on_the_fly = catalogue.Catalogue.open(workdir)
  assert len(indexed) == len(on_the_fly) == 320
  codes = indexed.encoder.encode_files([query_path])
  assert indexed.search_codes(codes, 5) == on_the_fly.search_codes(codes, 5)
  first = indexed.search_codes(codes, 1)[0][0]
  assert first["id"] == query_id and first["distance"] == 0
  assert first["label"] == fashion_mnist.FASHION_MNIST_CLASSES[database.labels[query_id]]
  # No image files in this dataset: an entry's image comes from the indexed split.
  np.testing.assert_array_equal(indexed.entry_image(query_id), database.images[query_id])
  with pytest.raises(catalogue.EntryNotFound, match="no catalogue entry with id 999"):
    indexed.entry(999)
  with pytest.raises(catalogue.EntryNotFound, match="holds no image paths"):
    indexed.thumbnail(query_id)
  with pytest.raises(catalogue.CatalogueError, match="k=0"):
    indexed.search_codes(codes, 0)


def test_one_photo_gives_one_code_whichever_way_it_comes_in(trained, tmp_path):
  """The file read by the catalogue (predict), by the encoder and the same pixels passed in."""
  workdir, _, database, _, _ = trained
  photo = tmp_path / "shot.jpg"
  Image.fromarray(database.images[3][..., 0]).convert("RGB").resize((90, 70)).save(photo)
  model = encoder_lib.HashEncoder.from_workdir(workdir)
  from_file = model.encode_files([str(photo)])
  pixels = catalogue.read_query(str(photo), model.image_shape)
  np.testing.assert_array_equal(model.encode(pixels[None]), from_file)
  np.testing.assert_array_equal(model.read_files([str(photo)])[0], pixels)


def test_an_index_of_catalogue_views_ranks_by_the_weighted_sum(trained, tmp_path):
  """`deephash index --view_weights=2,1,1`: each image's own code (view 0, the one-view index's)
  and two renderings by the closest-match recipe with their own seeds; the catalogue ranks an
  entry by 2 d0 + d1 + d2, Hamming or (re-ranked) asymmetric, against loops over the views."""
  workdir, index_path, database, query_path, _ = trained
  views_path = str(tmp_path / "views.dhidx")
  summary = catalogue.build_index(workdir, "train", views_path, view_weights=(2, 1, 1))
  assert summary["view_weights"] == [2, 1, 1] and summary["count"] == 320
  index = index_lib.HammingIndex.load(views_path)
  assert index.view_weights == (2, 1, 1)
  np.testing.assert_array_equal(index.view_codes(0), index_lib.HammingIndex.load(index_path).codes)
  model = encoder_lib.HashEncoder.from_workdir(workdir)
  cm = model.config.eval.closest_match
  seeds = [cm.seed + closest_match.VIEW_SEED_OFFSET + v for v in (1, 2)]
  assert index.metadata["views"]["seeds"] == seeds
  for v, seed in zip((1, 2), seeds):
    np.testing.assert_array_equal(index.view_codes(v), model.encode(
        closest_match.render_queries(database.images, cm.recipe, seed)))
  assert not np.array_equal(index.view_codes(1), index.view_codes(2))

  cat = catalogue.Catalogue.open(workdir, views_path)
  q = model.embed(catalogue.read_query(query_path, model.image_shape)[None])
  bits = [packing.unpack_bits(index.view_codes(v), 16) for v in range(3)]
  hamming = sum(w * (b != (q > 0)).sum(axis=1) for w, b in zip((2, 1, 1), bits))
  want = np.lexsort((np.arange(320), hamming))[:6]               # ties by id
  got = cat.search_embeddings(q, 6)[0]
  assert [m["id"] for m in got] == want.tolist()
  assert [m["distance"] for m in got] == hamming[want].tolist()
  weights = np.round(np.abs(q[0].astype(np.float64)) * 2**20) / 2**20
  asym = sum(w * ((b != (q[0] > 0)) * weights).sum(axis=1) for w, b in zip((2, 1, 1), bits))
  pool = np.lexsort((np.arange(320), hamming))[:40]
  want = pool[np.argsort(asym[pool], kind="stable")][:6]
  got = cat.search_embeddings(q, 6, rerank=40)[0]
  assert [m["id"] for m in got] == want.tolist()
  assert [m["distance"] for m in got] == hamming[want].tolist()
  np.testing.assert_allclose([m["asymmetric_distance"] for m in got], asym[want], atol=1e-4)
  with pytest.raises(ValueError, match="view_weights"):
    catalogue.build_index(workdir, "train", views_path, view_weights=(0, 1))


def test_an_index_of_merged_views_holds_one_code_an_image(trained, tmp_path):
  """`deephash index --view_weights=3,1,2 --merge_views`: one code an image, the sign of
  (3 c0 + c1 + 2 c2) / 6 over its own continuous code and two renderings' (the seeds and
  renderings of the index of views); the catalogue searches it as a one-code index."""
  workdir, index_path, database, query_path, _ = trained
  merged_path = str(tmp_path / "merged.dhidx")
  summary = catalogue.build_index(workdir, "train", merged_path, view_weights=(3, 1, 2),
                                  merge_views=True)
  assert summary["merge_views"] and summary["view_weights"] == [3, 1, 2]
  index = index_lib.HammingIndex.load(merged_path)
  assert index.view_weights == (1,) and len(index) == summary["count"] == 320
  assert index.metadata["views"]["merged_weights"] == [3, 1, 2]
  model = encoder_lib.HashEncoder.from_workdir(workdir)
  cm = model.config.eval.closest_match
  views = [model.embed(database.images)] + [
      model.embed(closest_match.render_queries(database.images, cm.recipe, seed))
      for seed in index.metadata["views"]["seeds"]]
  mean = np.array([[(3.0 * float(views[0][i, b]) + float(views[1][i, b])
                     + 2.0 * float(views[2][i, b])) / 6 for b in range(16)] for i in range(320)])
  np.testing.assert_array_equal(packing.unpack_bits(index.codes, 16), mean > 0)
  assert (index.codes != index_lib.HammingIndex.load(index_path).codes).any()   # not view 0's
  cat = catalogue.Catalogue.open(workdir, merged_path)
  q = model.embed(catalogue.read_query(query_path, model.image_shape)[None])
  hamming = ((mean > 0) != (q > 0)).sum(axis=1)
  want = np.lexsort((np.arange(320), hamming))[:6]
  assert [m["id"] for m in cat.search_embeddings(q, 6)[0]] == want.tolist()
  with pytest.raises(ValueError, match=r"merge_views needs two or more view_weights, got \[4\]"):
    catalogue.build_index(workdir, "train", merged_path, view_weights=(4,), merge_views=True)


def test_merged_codes_are_the_weighted_mean_summed_view_by_view():
  rng = np.random.default_rng(5)
  views = rng.uniform(-1, 1, (3, 9, 4)).astype(np.float32)
  want = (2 * views[0].astype(np.float64) + views[1] + 5 * views[2].astype(np.float64)) / 8
  np.testing.assert_allclose(catalogue.merged_codes(views, (2, 1, 5)), want, rtol=1e-15)
  np.testing.assert_allclose(catalogue.merged_codes(iter(views), (2, 1, 5)), want, rtol=1e-15)
  np.testing.assert_array_equal(catalogue.merged_codes(views[:1], (7,)), views[0])
  with pytest.raises(ValueError, match="2 views of codes for 3 view_weights"):
    catalogue.merged_codes(views[:2], (2, 1, 5))
  with pytest.raises(ValueError, match="more views of codes than the 2 view_weights"):
    catalogue.merged_codes(views, (2, 1))
  with pytest.raises(ValueError, match="view_weights"):
    catalogue.merged_codes(views, (2, 0, 1))


def test_views_of_an_image_tree_render_in_colour_at_the_models_size(tree_model, tmp_path):
  """An image-folder model (64 px RGB): the renderings take its input shape, and the demo's
  catalogue serves the index of views."""
  workdir, index_path, _ = tree_model
  views_path = str(tmp_path / "tree_views.dhidx")
  summary = catalogue.build_index(workdir, "gallery", views_path, view_weights=(1, 1))
  index = index_lib.HammingIndex.load(views_path)
  assert summary["count"] == len(index) == 50 and index.view_weights == (1, 1)
  np.testing.assert_array_equal(index.view_codes(0), index_lib.HammingIndex.load(index_path).codes)
  assert (index.view_codes(0) != index.view_codes(1)).any()
  cat = catalogue.Catalogue.open(workdir, views_path)
  queries = index.view_codes(1)[:3]        # item i's rendering: its own distance is d(view 0)
  own = [int(np.unpackbits(index.view_codes(0)[i] ^ queries[i]).sum()) for i in range(3)]
  np.testing.assert_array_equal(index.hamming_distances(queries, [[0], [1], [2]])[:, 0], own)
  found = cat.search_codes(queries, 1)
  assert all(m[0]["distance"] <= d for m, d in zip(found, own))
