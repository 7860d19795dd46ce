"""data/base.py: the in-memory split and the data error every dataset module raises."""
import numpy as np

from deephash_jax.data import base


def test_a_split_counts_its_images_and_data_errors_are_value_errors():
  split = base.Split(np.zeros((3, 2, 2, 1), np.uint8), np.array([0, 1, 1], np.int32),
                     np.arange(3, dtype=np.int32), ("a", "b"))
  assert len(split) == 3 and split.paths is None
  assert issubclass(base.DataError, ValueError)


def test_tensorflow_sees_no_accelerator():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  base.hide_tf_from_accelerators()
  base.hide_tf_from_accelerators()    # a second call (TF already initialised) is harmless
  assert tf.config.get_visible_devices("GPU") == []


def test_one_process_prepares_its_dataset_itself():
  class Builder:
    name, calls = "fake", 0

    def download_and_prepare(self):
      Builder.calls += 1
  made = Builder()
  assert base.prepare_once(lambda: made) is made
  assert Builder.calls == 1
  given = Builder()
  assert base.prepare_once(lambda: Builder(), given) is given   # the builder in hand is used
  assert Builder.calls == 2
