r"""Tiny CPU config for tests of the image-folder path: 64 px RGB, a 2-stage CNN, 16 bits.

    deephash dataset create --fashion_mnist_dir=/usr/share/datasets/fashion-mnist \
        --per_class_limit=20 --output=/tmp/fm_tree
    deephash train --config=configs/image_folder_tiny.py --workdir=/tmp/tiny_tree \
        --config.input.root=/tmp/fm_tree --config.input.data_dir=/tmp/tfds
"""

from deephash_jax import config_lib


def get_config():
  config = config_lib.base_config("image_folder")
  config.input.num_classes = 10       # the Fashion-MNIST tree of the tests
  return config_lib.config_module("tiny").shrink(config)
