r"""configs/graded.py on a leaner CNN for 10 epochs: a try at the 15-minute main job.

    deephash train --config=experiments/graded_codes/lean_cnn.py --workdir=W --json

The CNN without the stride-1 convolution after each downsampling (3 convolutions, 32-64-128,
in place of 5, 32-64-64-128-128). Measured in this folder's README ("The 15-minute budget").
"""

from deephash_jax import config_lib


def get_config():
  config = config_lib.base_config("graded")
  config.model.encoder_kwargs.layers = ((32, 1), (64, 2), (128, 2))
  config.train.num_epochs = 10
  return config
