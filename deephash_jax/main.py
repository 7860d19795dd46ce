r"""The `deephash` command. Kept short: flags, then a call into the library.

    deephash train --config=configs/fashion_mnist.py --workdir=workdirs/fm [--config.model.num_bits=64]
    deephash evaluate --workdir=workdirs/fm [--json]
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

COMMANDS = ("train", "evaluate")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the config.")
flags.DEFINE_bool("json", False, "Print results as one JSON object.")


def _print_results(results: dict) -> None:
  if FLAGS.json:
    print(json.dumps(results, sort_keys=True))
  else:
    for key in sorted(results):
      value = results[key]
      print(f"{key:32s} {value:.4f}" if isinstance(value, float) else f"{key:32s} {value}")


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: deephash {{{','.join(COMMANDS)}}} [flags]; got {argv[1:]}")
  command = argv[1]
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  # TF (used by TFDS only) must not take accelerator memory from JAX.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if command == "train":
    if FLAGS.config is None:
      raise app.UsageError("--config is required for train")
    from deephash_jax import train  # pylint: disable=g-import-not-at-top
    results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  else:
    from deephash_jax import evaluate  # pylint: disable=g-import-not-at-top
    results = evaluate.evaluate_workdir(FLAGS.workdir)
  logging.info("Results: %s", results)
  _print_results(results)


def run():
  """Console-script entry point."""
  app.run(main, argv=sys.argv)


if __name__ == "__main__":
  run()
