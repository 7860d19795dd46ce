r"""Your own catalogue: the default model on a `root/<split>/<clothing_type>/[<item_id>/]` tree.

    deephash dataset create --images_dir=photos --labels_csv=photos/labels.csv --output=catalogue
    deephash train --config=configs/image_folder.py --workdir=workdirs/catalogue \
        --config.input.root=$PWD/catalogue --config.input.num_classes=<number of clothing types>
    deephash evaluate --workdir=workdirs/catalogue

Give the root as an absolute path: it is saved in the workdir's config.json and read again by
`deephash evaluate` and `deephash index` from wherever they run. `--config.input.num_classes`
must equal the number of <clothing_type> folders in the tree (the error message says the number
if it does not). Images are resized to 64x64 RGB for the lean "cnn" encoder (fully convolutional
with global pooling, so any size works); for 224 px and the AlexNet-style encoder use
configs/image_folder_224.py. Protocol: queries = query/, database = gallery/, relevant = same
clothing type. The training augmentation replaces a *dark* background by texture; for photos on
light backgrounds pass --config.input.augment.query.background_prob=0.
Walk-through and expected output: docs/CATALOGUE.md.
"""

import ml_collections

from deephash_jax import config_lib


def get_config():
  config = config_lib.base_config("fashion_mnist")
  config.input.dataset = "image_folder"
  config.input.root = ""              # the tree: --config.input.root=/path/to/tree
  config.input.source_dir = None      # Fashion-MNIST only
  config.input.image_size = 64
  # pool "mean": any image size; conv as in configs/fashion_mnist.py.
  config.model.encoder_kwargs = ml_collections.ConfigDict(dict(pool="mean", conv="auto"))
  config.input.channels = 3
  config.input.train_split = "train"
  config.input.query_split = "query"
  config.input.database_split = "gallery"
  config.input.num_classes = 0        # set it: --config.input.num_classes=<clothing types>
  config.train.batch_size = 128       # views = 64 catalogue items, two views each
  config.train.num_epochs = 30
  config.train.warmup_steps = 100
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 500
  config.eval.batch_size = 256
  config.eval.map_at = (100,)
  return config
