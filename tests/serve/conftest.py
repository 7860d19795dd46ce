"""The trained tiny models and their indexes that the serve tests share (each trained once)."""
import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

from deephash_jax import config_lib
from deephash_jax.data import fashion_mnist
from deephash_jax.data import registry
from deephash_jax.data import tree_create
from deephash_jax.search import index as index_lib
from deephash_jax.serve import catalogue
from deephash_jax.train import trainer
from tests import fake_data

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FASHION_MNIST_DIR = fashion_mnist.DEBIAN_FASHION_MNIST_DIR
needs_fashion_mnist = pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
    reason=f"Debian's dataset-fashion-mnist is not installed ({FASHION_MNIST_DIR})")


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  """(workdir, index path, database split, query PNG, its database id)."""
  base = tmp_path_factory.mktemp("predict")
  config = config_lib.base_config("tiny")
  config.input.source_dir = fake_data.write_fake_fashion_mnist(str(base / "idx"))
  config.input.data_dir = str(base / "tfds")
  workdir = str(base / "run")
  trainer.train_and_evaluate(config, workdir)
  index_path = str(base / "train.dhidx")
  assert catalogue.build_index(workdir, "train", index_path)["count"] == 320
  database = registry.load_split(config.input, "train")
  # Several database images may share a code: the first of a group is found first (ties by id).
  codes = index_lib.HammingIndex.load(index_path).codes
  query_id = int(np.flatnonzero((codes == codes[13]).all(axis=1))[0])
  query_path = str(base / "query.png")
  Image.fromarray(database.images[query_id][..., 0], "L").save(query_path)
  return workdir, index_path, database, query_path, query_id


def _load_benchmark():
  spec = importlib.util.spec_from_file_location(
      "demo_load", os.path.join(REPO, "benchmarks", "demo_load.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="session")
def tree_model(tmp_path_factory):
  """(workdir, index path, tree root): a tiny model and the index of its gallery."""
  base = tmp_path_factory.mktemp("demo")
  tree = str(base / "fm")
  tree_create.create_from_fashion_mnist(FASHION_MNIST_DIR, tree, per_class_limit=10)
  config = config_lib.base_config("image_folder_tiny")
  config.input.root = tree
  config.input.data_dir = str(base / "tfds")
  workdir = str(base / "run")
  trainer.train_and_evaluate(config, workdir)
  index_path = str(base / "gallery.dhidx")
  summary = catalogue.build_index(workdir, "gallery", index_path)
  assert summary["count"] == 50 and summary["num_bits"] == 16
  return workdir, index_path, tree


@pytest.fixture(scope="session")
def server(tree_model):
  """`deephash demo` in a subprocess on a free loopback port."""
  workdir, index_path, _ = tree_model
  load = _load_benchmark()
  process, url = load.start_server(workdir, index_path)
  yield url, load
  output = load.stop_server(process)
  assert "Traceback" not in output, output


def tree_file(tree, split, clothing_type, index=0):
  """The index-th image file of a clothing type in a split of the tree."""
  folder = os.path.join(tree, split, clothing_type)
  return os.path.join(folder, sorted(os.listdir(folder))[index])
