"""data/image_tree.py: scanning a catalogue tree and reading it through TFDS."""
import os

import jax
import numpy as np
import pytest

from deephash_jax import config_lib
from deephash_jax import models
from deephash_jax.data import fashion_mnist
from deephash_jax.data import image_tree
from deephash_jax.data import registry
from deephash_jax.data import tree_create
from deephash_jax.data.base import DataError
from deephash_jax.evaluators import evaluate
from deephash_jax.train import trainer
from tests.data import photos

FASHION_MNIST_DIR = fashion_mnist.DEBIAN_FASHION_MNIST_DIR
needs_fashion_mnist = pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
    reason=f"Debian's dataset-fashion-mnist is not installed ({FASHION_MNIST_DIR})")


def test_user_tree_loose_images_items_and_problems(tmp_path):
  """A hand-made tree: loose images are items of their own; bad files are skipped on load."""
  root = tmp_path / "my tree"
  photos.save(photos.photo((200, 0, 0)), str(root / "train/shirt/i1/a.jpg"), "JPEG")
  photos.save(photos.photo((210, 0, 0)), str(root / "train/shirt/i1/b.png"), "PNG")
  photos.save(photos.photo((0, 200, 0)), str(root / "train/shirt/loose.png"), "PNG")
  photos.save(photos.photo((0, 0, 200)), str(root / "train/trouser/t.png"), "PNG")
  (root / "train/trouser/broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
  (root / "train/trouser/notes.txt").write_text("x")
  (root / "train/empty_type").mkdir()
  photos.save(photos.photo((0, 0, 210)), str(root / "gallery/trouser/g.png"), "PNG")
  tree = image_tree.scan_tree(str(root))
  assert tree.class_names == ("shirt", "trouser")
  assert tree.splits() == ("train", "gallery")
  assert any("notes.txt: unsupported file type" in m for m in tree.ignored)
  assert any("empty_type: empty clothing type folder" in m for m in tree.ignored)

  config = photos.input_config(root, tmp_path, num_classes=2, image_size=32, channels=1)
  split = image_tree.load_split(config, "train")
  assert list(split.paths) == ["train/shirt/i1/a.jpg", "train/shirt/i1/b.png",
                               "train/shirt/loose.png", "train/trouser/t.png"]  # broken skipped
  assert split.images.shape == (4, 32, 32, 1) and split.images.dtype == np.uint8
  assert list(split.labels) == [0, 0, 0, 1]
  assert split.items[0] == split.items[1] != split.items[2] != split.items[3]
  assert split.class_names == ("shirt", "trouser")
  gallery = image_tree.load_split(config, "gallery")
  assert list(gallery.labels) == [1]  # same label space as train

  # Errors name the field or the folder.
  with pytest.raises(DataError, match="no images in split 'query'"):
    image_tree.load_split(config, "query")
  with pytest.raises(DataError, match="--config.input.num_classes=2"):
    image_tree.load_split(photos.input_config(root, tmp_path, num_classes=5), "train")
  with pytest.raises(DataError, match="config.input.root is not set"):
    image_tree.load_split(photos.input_config("", tmp_path), "train")
  with pytest.raises(DataError, match="config.input.image_size=4"):
    image_tree.load_split(photos.input_config(root, tmp_path, image_size=4), "train")
  with pytest.raises(DataError, match="none of the split folders"):
    image_tree.load_split(photos.input_config(tmp_path, tmp_path), "train")

  # A changed tree is a new builder config: the new image is read, nothing stale.
  photos.save(photos.photo((0, 90, 200)), str(root / "train/trouser/t2.png"), "PNG")
  assert len(image_tree.load_split(config, "train")) == 5


def test_builder_configs_are_keyed_by_tree_size_and_channels(tmp_path):
  roots = [tmp_path / "a", tmp_path / "b"]
  for root in roots:
    photos.save(photos.photo((200, 0, 0)), str(root / "train/shirt/x.png"), "PNG")
  names = {image_tree.image_folder_builder(str(r), s, c).builder_config.name
           for r in roots for s, c in ((32, 1), (64, 3))}
  assert len(names) == 4


def test_encoders_at_catalogue_sizes():
  """The 28x28 "cnn" runs at 64 px (global pooling); AlexNet's shapes at 224 px."""
  config = config_lib.base_config("image_folder")
  config.input.num_classes = 5
  net, _ = models.create_models(config.model, 5)
  images = np.zeros((2, 64, 64, 3), np.float32)
  variables = net.init(jax.random.key(0), images, train=False)
  codes, inter = net.apply(variables, images, train=False)
  assert codes.shape == (2, config.model.num_bits) and inter["logits"].shape == (2, 5)
  big = config_lib.base_config("image_folder_224")
  assert registry.image_shape(big.input) == (224, 224, 3)
  net224, _ = models.create_models(big.model, 5)
  shapes = jax.eval_shape(lambda: net224.init(jax.random.key(0), jax.numpy.zeros(
      (2, 224, 224, 3)), train=False))
  out = jax.eval_shape(lambda v: net224.apply(v, jax.numpy.zeros((2, 224, 224, 3)),
                                              train=False), shapes)
  assert out[0].shape == (2, 64)


@pytest.mark.slow
@needs_fashion_mnist
def test_train_and_evaluate_on_an_exported_tree(tmp_path):
  """Export 20 images per class, train the tiny image-folder config, then evaluate."""
  tree_create.create_from_fashion_mnist(FASHION_MNIST_DIR, str(tmp_path / "fm"),
                                         per_class_limit=20)
  config = config_lib.base_config("image_folder_tiny")
  config.input.root = str(tmp_path / "fm")
  config.input.data_dir = str(tmp_path / "tfds")
  config.train.num_steps = 8
  config.train.checkpoint_every_steps = 4
  workdir = str(tmp_path / "run")
  results = trainer.train_and_evaluate(config, workdir)
  assert results["num_queries"] == 100 and results["num_database"] == 100
  assert results["num_bits"] == 16
  assert 0.0 < results["map_all"] <= 1.0
  again = evaluate.evaluate_workdir(workdir)
  assert again["map_all"] == pytest.approx(results["map_all"])
  assert again["step"] == 8


def test_a_tree_without_tensorflow_is_named_with_what_to_install(tmp_path, monkeypatch):
  monkeypatch.setattr(image_tree.base, "tensorflow_installed", lambda: False)
  config = config_lib.base_config("image_folder_tiny").input
  config.root = str(tmp_path)
  with pytest.raises(DataError, match=r"needs TensorFlow here \(pip install tensorflow-cpu\)"):
    image_tree.load_split(config, "train")
