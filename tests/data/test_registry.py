"""data/registry.py: the datasets by name, the model's input shape, a split as a model sees it."""
import ml_collections
import numpy as np
import pytest

from deephash_jax import config_lib
from deephash_jax.data import registry
from tests import fake_data
from tests.data import photos


def test_unknown_dataset_is_named():
  with pytest.raises(ValueError, match="config.input.dataset='mnist'"):
    registry.load_split(ml_collections.ConfigDict(dict(dataset="mnist")), "train")


def test_image_shape_of_each_dataset():
  assert registry.image_shape(config_lib.base_config("fashion_mnist").input) == (28, 28, 1)
  assert registry.image_shape(config_lib.base_config("image_folder").input) == (64, 64, 3)
  assert registry.image_shape(config_lib.base_config("image_folder_224").input) == (224, 224, 3)


def test_a_tree_is_read_at_the_input_size_of_a_model_trained_elsewhere(tmp_path):
  source = fake_data.write_fake_fashion_mnist(str(tmp_path / "idx"), num_train=20, num_test=10)
  fm = config_lib.base_config("fashion_mnist").input
  fm.source_dir, fm.data_dir = source, str(tmp_path / "tfds")
  split, root = registry.load_catalogue_split(fm, "test")
  assert root is None and split.images.shape == (10, 28, 28, 1) and split.paths is None
  tree = tmp_path / "tree"
  photos.save(photos.photo((200, 10, 10), size=(50, 40)), str(tree / "gallery/shirt/a.png"), "PNG")
  photos.save(photos.photo((10, 200, 10)), str(tree / "gallery/dress/b.jpg"), "JPEG")
  split, root = registry.load_catalogue_split(fm, "gallery", image_root=str(tree))
  assert root == str(tree) and split.images.shape == (2, 28, 28, 1)     # the model's input
  assert split.class_names == ("dress", "shirt")
  assert list(split.paths) == ["gallery/dress/b.jpg", "gallery/shirt/a.png"]
  assert np.all(split.images.max(axis=(1, 2, 3)) > 0)
