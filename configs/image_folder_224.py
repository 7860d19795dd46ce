r"""Your own catalogue at 224 px RGB with the AlexNet-style encoder (the paper's backbone).

    deephash train --config=configs/image_folder_224.py --workdir=workdirs/catalogue_224 \
        --config.input.root=$PWD/catalogue --config.input.num_classes=<number of clothing types>

Meant for an accelerator: about 72M parameters (most in the first dense layer), far too slow
for a 2-core CPU. See configs/image_folder.py for the tree and docs/CATALOGUE.md for the
walk-through.
"""

import ml_collections

from deephash_jax import config_lib


def get_config():
  config = config_lib.base_config("image_folder")
  config.input.image_size = 224
  config.model.encoder = "alexnet"
  config.model.encoder_kwargs = ml_collections.ConfigDict()
  config.model.num_bits = 64
  config.model.discriminator_hidden = (512, 512)
  config.train.batch_size = 256
  config.train.learning_rate = 1e-3
  config.eval.batch_size = 512
  return config
