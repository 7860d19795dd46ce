r"""configs/graded.py:full on a leaner CNN: tries at the 15-minute main job.

    deephash train --config=experiments/graded_codes/lean_cnn.py --workdir=W --json
    deephash train --config=experiments/graded_codes/lean_cnn.py:no_7x7 --workdir=W --json

The CNN of configs/graded.py:full has five convolutions, 32-64-64-128-128, a stride-1 one after
each downsampling. "lean" (the default) drops both stride-1 ones after the first (3
convolutions, 32-64-128); "no_7x7" drops the one on the 7x7 map (32-64-128-128; at 18 epochs it
is configs/graded.py's default), "no_4x4" the one on the 4x4 map (32-64-64-128). 10 epochs;
`--config.train.num_epochs=N` for others. Measured in this folder's README ("The 15-minute
budget").
"""

from deephash_jax import config_lib

LAYERS = {
    "lean": ((32, 1), (64, 2), (128, 2)),
    "no_7x7": ((32, 1), (64, 2), (128, 2), (128, 1)),
    "no_4x4": ((32, 1), (64, 2), (64, 1), (128, 2)),
}


def get_config(variant: str = "lean"):
  if variant not in LAYERS:
    raise ValueError(f"experiments/graded_codes/lean_cnn.py:{variant}: expected one of "
                     f"{sorted(LAYERS)}")
  config = config_lib.base_config("graded", "full")
  config.model.encoder_kwargs.layers = LAYERS[variant]
  config.train.num_epochs = 10
  return config
