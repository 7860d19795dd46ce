r"""The `deephash` command: a thin dispatcher. Each command owns its flags, then calls the library.

    deephash train --config=configs/fashion_mnist.py --workdir=workdirs/fm [--config.model.num_bits=64]
    deephash evaluate --workdir=workdirs/fm [--json]
    deephash dataset create --images_dir=photos --labels_csv=photos/labels.csv --output=catalogue
    deephash dataset create --fashion_mnist_dir=/usr/share/datasets/fashion-mnist --output=fm_tree
    deephash index --workdir=workdirs/catalogue --split=gallery --output=catalogue.dhidx
    deephash demo --workdir=workdirs/catalogue --index=catalogue.dhidx [--port=8000]
    deephash predict --workdir=workdirs/fm --image=query.png [--index=fm.dhidx] [--k=10] \
        [--rerank=100] [--json] [--grid=matches.png]
    deephash benchmark --config=configs/benchmark.py --workdir=workdirs/benchmark \
        [--print_plan | --worker=0/2 | --report [--output=docs/benchmark]] \
        [--previous_report=docs/benchmark/results.json]

Your own catalogue, step by step: docs/CATALOGUE.md. Prediction: docs/PREDICT.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the config.")
flags.DEFINE_bool("json", False, "Print results as one JSON object.")
# Multi-process runs (train, evaluate, benchmark).
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
# dataset create (docs/CATALOGUE.md).
flags.DEFINE_string("images_dir", None, "Folder of the photos named in --labels_csv.")
flags.DEFINE_string("labels_csv", None, "CSV with columns path,clothing_type[,item_id]; path "
                    "relative to --images_dir.")
flags.DEFINE_string("fashion_mnist_dir", None, "Export Fashion-MNIST from these IDX files "
                    "(e.g. /usr/share/datasets/fashion-mnist) instead of a CSV.")
flags.DEFINE_list("split_ratios", ["0.8", "0.1", "0.1"], "train,gallery,query shares of the items.")
flags.DEFINE_integer("split_seed", 0, "Seed of the split by item.")
flags.DEFINE_integer("per_class_limit", 0, "--fashion_mnist_dir: at most this many images per "
                     "class and source split (0: all).")
flags.DEFINE_string("output", None, "dataset create: the new tree's folder; index: the index "
                    "file; benchmark --report: the folder of the report (default: --workdir).")
# index, demo, predict.
flags.DEFINE_string("split", "gallery", "The split to encode.")
flags.DEFINE_string("image_root", None, "Read --split from this tree instead of the workdir's "
                    "dataset (images resized to the model's input).")
flags.DEFINE_list("view_weights", ["1"], "index: whole weights, one per code each catalogue "
                  "image gets: its own, then renderings by config.eval.closest_match.recipe "
                  "(e.g. 5,1,1,1: four codes an item, ranked by the weighted sum of their "
                  "distances; search/index.py).")
flags.DEFINE_bool("merge_views", False, "index: with several --view_weights, one code an image: "
                  "the sign of the weighted mean of its views' continuous codes (the bytes and "
                  "scan of one code; serve/catalogue.py merged_codes).")
flags.DEFINE_string("index", None, "The index file built by `deephash index` (predict without "
                    "it encodes the workdir's database split on the fly).")
flags.DEFINE_integer("port", 8000, "Port on 127.0.0.1.")
flags.DEFINE_multi_string("image", [], "A query image file; repeat for several.")
flags.DEFINE_integer("k", 10, "Matches per query.")
flags.DEFINE_integer("rerank", None, "predict: N > 0 re-ranks the Hamming top-N by the query's "
                     "continuous code (search/asymmetric.py; default: "
                     "search/index.py DEFAULT_CANDIDATES); 0 ranks by Hamming distance.")
flags.DEFINE_string("grid", None, "Also write the queries and their matches to this PNG.")
# benchmark.
flags.DEFINE_bool("print_plan", False, "Print the `deephash train` command of every planned run "
                  "not finished yet, one per line (for xargs -P, GNU parallel or a scheduler).")
flags.DEFINE_string("worker", None, "'i/n': train every n-th run of the plan from the i-th (runs "
                    "another process holds are left to it); no report.")
flags.DEFINE_bool("report", False, "Train nothing: write the report of the runs finished so far.")
flags.DEFINE_string("previous_report", None,
                    "An earlier report's results.json: its finished runs count as done for the "
                    "planned runs not finished under --workdir (checked against the plan by the "
                    "config each record carries; --print_plan and the runner leave them out).")

_MULTIHOST = ("multihost", "coordinator_address", "num_processes", "process_id")


@dataclasses.dataclass(frozen=True)
class Command:
  run: Callable[[], object]
  flags: tuple[str, ...]          # the flags it reads, beside --json
  required: tuple[str, ...] = ()


def _print_results(results: dict) -> None:
  if FLAGS.json:
    print(json.dumps(results, sort_keys=True))
    return
  for key in sorted(results):
    value = results[key]
    if isinstance(value, (dict, list)):
      continue     # curves and nested records: --json has them
    print(f"{key:32s} {value:.4f}" if isinstance(value, float) else f"{key:32s} {value}")


def _initialize_distributed() -> None:
  multihost = FLAGS.multihost
  if multihost is None:
    multihost = bool(FLAGS.coordinator_address)
  if not multihost:
    return
  import jax  # pylint: disable=g-import-not-at-top  (TF env first; see main)
  kwargs = {}
  if FLAGS.coordinator_address:
    kwargs = dict(coordinator_address=FLAGS.coordinator_address,
                  num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  jax.distributed.initialize(**kwargs)
  logging.info("Process %d of %d; %d local / %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def _shutdown_distributed() -> None:
  """Leaves the multi-controller runtime together, after a command that succeeded.

  `jax.distributed.shutdown` is a barrier over every process. Left to JAX's exit hook, it runs
  after the backends are torn down, and process 0, which hosts the coordination service, can
  exit while a peer's client still polls it: a finished run then ends in SIGABRT. A command
  that raised skips this, so that its peers are not held at a barrier it never reaches (their
  heartbeat or hang watchdog ends them).
  """
  if "jax" not in sys.modules:
    return
  import jax  # pylint: disable=g-import-not-at-top
  if jax.distributed.is_initialized():
    jax.distributed.shutdown()


def _train():
  from deephash_jax.train import trainer  # pylint: disable=g-import-not-at-top
  _print_results(trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir))


def _evaluate():
  from deephash_jax.evaluators import evaluate  # pylint: disable=g-import-not-at-top
  _print_results(evaluate.evaluate_workdir(FLAGS.workdir))


def _index():
  from deephash_jax.serve import catalogue  # pylint: disable=g-import-not-at-top
  try:
    weights = [int(w) for w in FLAGS.view_weights]
  except ValueError:
    sys.exit(f"deephash index: --view_weights={','.join(FLAGS.view_weights)}: whole numbers "
             "expected, e.g. 5,1,1,1")
  try:
    _print_results(catalogue.build_index(FLAGS.workdir, FLAGS.split, FLAGS.output,
                                         image_root=FLAGS.image_root, view_weights=weights,
                                         merge_views=FLAGS.merge_views))
  except ValueError as e:
    sys.exit(f"deephash index: {e}")


def _demo():
  from deephash_jax.serve import app as demo_app  # pylint: disable=g-import-not-at-top
  demo_app.serve(FLAGS.workdir, FLAGS.index, port=FLAGS.port)


def _predict():
  from deephash_jax.serve import catalogue, predict  # pylint: disable=g-import-not-at-top
  try:
    rerank = {} if FLAGS.rerank is None else {"rerank": FLAGS.rerank}
    results = predict.predict(FLAGS.workdir, FLAGS.image, index_path=FLAGS.index, k=FLAGS.k,
                              grid=FLAGS.grid, **rerank)
  except (catalogue.CatalogueError, FileNotFoundError) as e:
    sys.exit(f"deephash predict: {e}")
  print(json.dumps({"queries": results}) if FLAGS.json else predict.render_table(results))


def _dataset_create():
  from deephash_jax.data import base, tree_create  # pylint: disable=g-import-not-at-top
  try:
    report = tree_create.create(
        FLAGS.output, images_dir=FLAGS.images_dir, labels_csv=FLAGS.labels_csv,
        fashion_mnist_dir=FLAGS.fashion_mnist_dir, split_ratios=FLAGS.split_ratios,
        seed=FLAGS.split_seed, per_class_limit=FLAGS.per_class_limit)
  except base.DataError as e:
    sys.exit(f"deephash dataset create: {e}")
  print(tree_create.format_report(report))


def _benchmark():
  from deephash_jax import config_lib  # pylint: disable=g-import-not-at-top
  from deephash_jax.bench import plan, report, runner  # pylint: disable=g-import-not-at-top
  if sum(bool(x) for x in (FLAGS.print_plan, FLAGS.worker, FLAGS.report)) > 1:
    raise app.UsageError("--print_plan, --worker and --report exclude each other")
  overrides = config_flags.get_override_values(FLAGS["config"])
  try:
    previous = FLAGS.previous_report
    # What --print_plan and the runner leave out; the report carries the runs itself.
    skip = (report.carried_runs(FLAGS.config, FLAGS.workdir, previous)
            if previous and not FLAGS.report else set())
    if FLAGS.print_plan:
      config_file = config_flags.get_config_filename(FLAGS["config"]).split(":")[0]
      print("\n".join(runner.pending_commands(FLAGS.config, FLAGS.workdir, config_file,
                                              overrides, skip=skip)))
      return
    if not FLAGS.report:
      runner.run_plan(FLAGS.config, FLAGS.workdir, worker=plan.parse_worker(FLAGS.worker),
                      overrides=overrides, skip=skip)
    if FLAGS.report or not FLAGS.worker:
      results = report.write_report(FLAGS.config, FLAGS.workdir, FLAGS.output,
                                    previous_report=previous)
      if FLAGS.json:
        print(json.dumps(results, sort_keys=True, default=str))
  except config_lib.ConfigError as e:
    sys.exit(f"deephash benchmark: {e}")


COMMANDS = {
    "train": Command(_train, ("config", "workdir", *_MULTIHOST), ("config", "workdir")),
    "evaluate": Command(_evaluate, ("workdir", *_MULTIHOST), ("workdir",)),
    "index": Command(_index, ("workdir", "split", "output", "image_root", "view_weights",
                              "merge_views"),
                     ("workdir", "output")),
    "demo": Command(_demo, ("workdir", "index", "port"), ("workdir", "index")),
    "predict": Command(_predict, ("workdir", "image", "index", "k", "rerank", "grid"),
                       ("workdir",)),
    "dataset create": Command(_dataset_create, (
        "output", "images_dir", "labels_csv", "fashion_mnist_dir", "split_ratios", "split_seed",
        "per_class_limit")),
    "benchmark": Command(_benchmark, ("config", "workdir", "print_plan", "worker", "report",
                                      "previous_report", "output", *_MULTIHOST),
                         ("config", "workdir")),
}
_ALL_COMMAND_FLAGS = {name for command in COMMANDS.values() for name in command.flags}


def check_flags(name: str, command: Command) -> None:
  """Refuses a flag of another command, and names a missing required one."""
  for flag in sorted(_ALL_COMMAND_FLAGS - set(command.flags)):
    if FLAGS[flag].present:
      owners = [n for n, c in COMMANDS.items() if flag in c.flags]
      raise app.UsageError(f"--{flag} is not a flag of `deephash {name}` (it belongs to "
                           f"{', '.join(owners)})")
  for flag in command.required:
    if FLAGS[flag].value is None:
      raise app.UsageError(f"--{flag} is required for `deephash {name}`")


def main(argv):
  name = " ".join(argv[1:])
  if name not in COMMANDS:
    raise app.UsageError(f"usage: deephash {{{', '.join(COMMANDS)}}} [flags]; got {argv[1:]}")
  command = COMMANDS[name]
  check_flags(name, command)
  # TF (used by TFDS only) must not take accelerator memory from JAX, nor fill the log.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if "multihost" in command.flags:
    _initialize_distributed()
  command.run()
  _shutdown_distributed()


def run():
  """Console-script entry point."""
  app.run(main, argv=sys.argv)


if __name__ == "__main__":
  run()
