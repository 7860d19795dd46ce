r"""The `deephash` command. Kept short: flags, then a call into the library.

    deephash train --config=configs/fashion_mnist.py --workdir=workdirs/fm [--config.model.num_bits=64]
    deephash evaluate --workdir=workdirs/fm [--json]
    deephash dataset create --images_dir=photos --labels_csv=photos/labels.csv --output=catalogue
    deephash dataset create --fashion_mnist_dir=/usr/share/datasets/fashion-mnist --output=fm_tree
    deephash index --workdir=workdirs/catalogue --split=gallery --output=catalogue.dhidx
    deephash demo --workdir=workdirs/catalogue --index=catalogue.dhidx [--port=8000]
    deephash predict --workdir=workdirs/fm --image=query.png [--index=fm.dhidx] [--k=10] \
        [--json] [--grid=matches.png]
    deephash benchmark --config=configs/benchmark.py --workdir=workdirs/benchmark \
        [--benchmark_worker=0/2 | --benchmark_report]

Your own catalogue, step by step: docs/CATALOGUE.md. Prediction: docs/PREDICT.md.
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

COMMANDS = ("train", "evaluate", "index", "demo", "predict", "dataset create", "benchmark")

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
# dataset create / index / demo (docs/CATALOGUE.md).
flags.DEFINE_string("images_dir", None,
                    "dataset create: folder of the photos named in --labels_csv.")
flags.DEFINE_string("labels_csv", None, "dataset create: CSV with columns path,clothing_type"
                    "[,item_id]; path relative to --images_dir.")
flags.DEFINE_string("fashion_mnist_dir", None, "dataset create: export Fashion-MNIST from these "
                    "IDX files (e.g. /usr/share/datasets/fashion-mnist) instead of a CSV.")
flags.DEFINE_list("split_ratios", ["0.8", "0.1", "0.1"],
                  "dataset create: train,gallery,query shares of the items.")
flags.DEFINE_integer("split_seed", 0, "dataset create: seed of the split by item.")
flags.DEFINE_integer("per_class_limit", 0, "dataset create --fashion_mnist_dir: at most this many "
                     "images per class and source split (0: all).")
flags.DEFINE_string("output", None, "dataset create: the new tree's folder; index: the index file.")
flags.DEFINE_string("split", "gallery", "index: the split to encode.")
flags.DEFINE_string("image_root", None, "index: read --split from this tree instead of the "
                    "workdir's dataset (images resized to the model's input).")
flags.DEFINE_string("index", None, "demo, predict: the index file built by `deephash index` "
                    "(predict without it encodes the workdir's database split on the fly).")
flags.DEFINE_integer("port", 8000, "demo: port on 127.0.0.1.")
# predict (docs/PREDICT.md).
flags.DEFINE_multi_string("image", [], "predict: a query image file; repeat for several.")
flags.DEFINE_integer("k", 10, "predict: matches per query.")
flags.DEFINE_string("grid", None, "predict: also write the queries and their matches to this PNG.")
# benchmark.
flags.DEFINE_string("benchmark_worker", None,
                    "benchmark: 'i/n' trains every n-th run from the i-th, then any run no "
                    "other process has started, so that n processes or hosts share one "
                    "--workdir; afterwards the command without this flag writes the references, "
                    "tables and plots.")
flags.DEFINE_bool("benchmark_report", False,
                  "benchmark: train nothing; write the references, tables and plots of the runs "
                  "finished so far (the others shown as not run yet). Safe while workers run.")
flags.DEFINE_list("benchmark_merge", [],
                  "benchmark: results.json files (comma-separated) of earlier or other sweeps "
                  "of this plan: their finished runs count as done and are not trained again, "
                  "once checked to have been trained and measured as this benchmark would.")


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


def _dataset_create() -> None:
  from deephash_jax import dataset_tree  # pylint: disable=g-import-not-at-top
  try:
    report = dataset_tree.create(
        FLAGS.output, images_dir=FLAGS.images_dir, labels_csv=FLAGS.labels_csv,
        fashion_mnist_dir=FLAGS.fashion_mnist_dir, split_ratios=FLAGS.split_ratios,
        seed=FLAGS.split_seed, per_class_limit=FLAGS.per_class_limit)
  except dataset_tree.DataError as e:
    sys.exit(f"deephash dataset create: {e}")
  print(dataset_tree.format_report(report))


def _predict() -> None:
  from deephash_jax import predict  # pylint: disable=g-import-not-at-top
  try:
    results = predict.predict(FLAGS.workdir, FLAGS.image, index_path=FLAGS.index, k=FLAGS.k,
                              grid=FLAGS.grid)
  except (predict.PredictError, FileNotFoundError) as e:
    sys.exit(f"deephash predict: {e}")
  print(json.dumps({"queries": results}) if FLAGS.json else predict.render_table(results))


def main(argv):
  command = " ".join(argv[1:])
  if command not in COMMANDS:
    raise app.UsageError(f"usage: deephash {{{','.join(COMMANDS)}}} [flags]; got {argv[1:]}")
  if command == "dataset create":
    return _dataset_create()
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  # TF (used by TFDS only) must not take accelerator memory from JAX.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  _maybe_initialize_distributed()
  if command == "predict":
    return _predict()
  if command == "index":
    from deephash_jax import indexing  # pylint: disable=g-import-not-at-top
    if not FLAGS.output:
      raise app.UsageError("--output (the index file) is required for index")
    results = indexing.build_index(FLAGS.workdir, FLAGS.split, FLAGS.output,
                                   image_root=FLAGS.image_root)
  elif command == "demo":
    from deephash_jax import demo  # pylint: disable=g-import-not-at-top
    if not FLAGS.index:
      raise app.UsageError("--index is required for demo (build one with `deephash index`)")
    return demo.serve(FLAGS.workdir, FLAGS.index, port=FLAGS.port)
  elif command == "benchmark":
    if FLAGS.config is None:
      raise app.UsageError("--config is required for benchmark (configs/benchmark.py)")
    from deephash_jax import benchmark  # pylint: disable=g-import-not-at-top
    try:
      worker = benchmark.parse_worker(FLAGS.benchmark_worker)
    except ValueError as e:
      raise app.UsageError(str(e)) from e
    if FLAGS.benchmark_report and worker[1] > 1:
      raise app.UsageError("--benchmark_report covers the whole plan: drop --benchmark_worker")
    from deephash_jax import config_lib  # pylint: disable=g-import-not-at-top
    try:
      results = benchmark.run_benchmark(FLAGS.config, FLAGS.workdir, worker=worker,
                                        report_only=FLAGS.benchmark_report,
                                        merge_from=FLAGS.benchmark_merge)
    except config_lib.ConfigError as e:
      sys.exit(f"deephash benchmark: {e}")
    if worker[1] > 1:
      return
    print(json.dumps(results, sort_keys=True, default=str) if FLAGS.json
          else benchmark.format_markdown(results))
    return
  elif command == "train":
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
