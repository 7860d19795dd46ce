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
flags.DEFINE_bool("multihost", None,
                  "Start JAX's multi-controller runtime (jax.distributed.initialize). Default: on "
                  "when --coordinator_address or DEEPHASH_COORDINATOR_ADDRESS is set; on TPU "
                  "VMs pass --multihost alone and JAX finds its peers itself.")
flags.DEFINE_string("coordinator_address", os.environ.get("DEEPHASH_COORDINATOR_ADDRESS"),
                    "host:port of process 0, for multi-process runs outside TPU VMs.")
flags.DEFINE_integer("num_processes", int(os.environ.get("DEEPHASH_NUM_PROCESSES", "0")) or None,
                     "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", int(os.environ.get("DEEPHASH_PROCESS_ID", "-1")),
                     "This process's index in a multi-process run.")


def _print_results(results: dict) -> None:
  if FLAGS.json:
    print(json.dumps(results, sort_keys=True))
  else:
    for key in sorted(results):
      value = results[key]
      print(f"{key:32s} {value:.4f}" if isinstance(value, float) else f"{key:32s} {value}")


def _maybe_initialize_distributed() -> None:
  multihost = FLAGS.multihost
  if multihost is None:
    multihost = bool(FLAGS.coordinator_address)
  if not multihost:
    return
  import jax  # pylint: disable=g-import-not-at-top
  kwargs = {}
  if FLAGS.coordinator_address:
    kwargs = dict(coordinator_address=FLAGS.coordinator_address,
                  num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  jax.distributed.initialize(**kwargs)
  logging.info("Process %d of %d; %d local / %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: deephash {{{','.join(COMMANDS)}}} [flags]; got {argv[1:]}")
  command = argv[1]
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  # TF (used by TFDS only) must not take accelerator memory from JAX.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  _maybe_initialize_distributed()
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
