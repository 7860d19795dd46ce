r"""Tiny CPU config for tests: a 2-stage CNN, 16 bits, a few steps on synthetic IDX files.

    deephash train --config=configs/tiny.py --workdir=/tmp/tiny \
        --config.input.source_dir=/path/to/idx --config.input.data_dir=/tmp/tfds
"""

from deephash_jax import config_lib


def shrink(config):
  """The tiny overrides, shared with configs/image_folder_tiny.py."""
  config.model.encoder = "cnn_tiny"
  config.model.num_bits = 16
  config.model.discriminator_hidden = (16,)
  config.train.batch_size = 32
  config.train.num_steps = 6
  config.train.warmup_steps = 2
  config.train.log_every_steps = 2
  config.train.checkpoint_every_steps = 3
  config.eval.batch_size = 64
  config.eval.map_at = (10,)
  config.eval.closest_match.num_queries = 20
  return config


def get_config():
  return shrink(config_lib.base_config("fashion_mnist"))
