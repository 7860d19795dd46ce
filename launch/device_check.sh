#!/usr/bin/env bash
# The one-call accelerator check: on a machine with one NVIDIA GPU that reaches the package
# registries, set up JAX with its CUDA plugin, then measure and write everything to one JSON file:
#   1. the devices JAX sees;
#   2. train-step throughput (benchmarks/train_throughput.py) for each of THROUGHPUT_CONFIGS
#      (the default 28 px CNN and the 224 px AlexNet config) in each of DTYPES;
#   3. one main-job training run (deephash train, TRAIN_CONFIG, both protocols evaluated);
#   4. the exact Hamming search, ours on the accelerator against faiss on the CPU
#      (benchmarks/search_benchmark.py);
#   5. the asymmetric re-ranking of the Hamming candidates, jitted against the NumPy tables
#      (benchmarks/rerank_benchmark.py).
#
#   launch/device_check.sh [--dry-run|--dry_run]
#
# Idempotent: an existing venv with JAX and this package is used as it is. Offline machines:
# WHEELS=<folder of wheels> installs from it alone (pip --no-index --find-links).
#
# Environment (default):
#   OUT_DIR             (workdirs/device_check)   device_check.json and the parts it is made of
#   VENV                (.venv-device)            "none": PYTHON as it is, for an image that
#                                                 already holds JAX with its accelerator plugin
#                                                 (and no network); WHEELS then adds only the
#                                                 packages it lacks (pip --target, no deps)
#   PYTHON              (python3)                 makes the venv
#   JAX_PACKAGE         (jax[cuda12])             "jax" for a CPU-only check
#   WHEELS              ()                        install from this folder, offline
#   THROUGHPUT_CONFIGS  (configs/fashion_mnist.py configs/image_folder_224.py)
#   DTYPES              (float32 bfloat16)
#   STEPS               (100)                     timed steps per throughput run
#   TRAIN_CONFIG        (configs/graded.py)       the main job (make run); "" skips it
#                                                 (without TensorFlow it reads the IDX files
#                                                 and writes metrics.jsonl: the same results)
#   TRAIN_ARGS          ()                        overrides for the training run
#   SEARCH_ARGS         (--database_sizes=1000000 --bits=32,64,128 --num_queries=1024 --k=100
#                        --scaling_sizes= --repeats=5 --threads=$(nproc))
#   RERANK_ARGS         (--database_sizes=1000000 --bits=48,64 --depths=10,100,1000
#                        --num_queries=10000)
#   DRY_RUN             (0)

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OUT_DIR="${OUT_DIR:-workdirs/device_check}"
VENV="${VENV:-.venv-device}"
PYTHON="${PYTHON:-python3}"
JAX_PACKAGE="${JAX_PACKAGE:-jax[cuda12]}"
WHEELS="${WHEELS:-}"
read -ra THROUGHPUT_CONFIGS <<< "${THROUGHPUT_CONFIGS:-configs/fashion_mnist.py configs/image_folder_224.py}"
read -ra DTYPES <<< "${DTYPES:-float32 bfloat16}"
STEPS="${STEPS:-100}"
TRAIN_CONFIG="${TRAIN_CONFIG-configs/graded.py}"
read -ra TRAIN_ARGS <<< "${TRAIN_ARGS:-}"
read -ra SEARCH_ARGS <<< "${SEARCH_ARGS:---database_sizes=1000000 --bits=32,64,128 --num_queries=1024 --k=100 --scaling_sizes= --repeats=5 --threads=$(nproc)}"
read -ra RERANK_ARGS <<< "${RERANK_ARGS:---database_sizes=1000000 --bits=48,64 --depths=10,100,1000 --num_queries=10000}"

PIP_SOURCE=()
if [[ -n "$WHEELS" ]]; then PIP_SOURCE=(--no-index "--find-links=$WHEELS"); fi

run mkdir -p "$OUT_DIR"
if [[ "$VENV" == none ]]; then
  PY="$PYTHON"
  SITE="$OUT_DIR/site"
  export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
  if [[ -n "$WHEELS" ]]; then
    run "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl
  fi
else
  PY="$VENV/bin/python"
  run_unless test -x "$PY" -- "$PYTHON" -m venv "$VENV"
  run_unless "$PY" -c "import jax, deephash_jax, faiss" -- \
    "$PY" -m pip install -q ${PIP_SOURCE[@]+"${PIP_SOURCE[@]}"} -e ".[test]" "$JAX_PACKAGE"
fi
run_to "$OUT_DIR/devices.json" "$PY" -c \
  'import jax, json; d = jax.devices(); print(json.dumps({"platform": jax.default_backend(), "device_kind": d[0].device_kind, "num_devices": len(d), "jax": jax.__version__}))'
for config in "${THROUGHPUT_CONFIGS[@]}"; do
  for dtype in "${DTYPES[@]}"; do
    name="$(basename "$config" .py)_$dtype"
    run_to "$OUT_DIR/throughput_$name.json" "$PY" benchmarks/train_throughput.py \
      --config="$config" --config.train.compute_dtype="$dtype" --steps="$STEPS" --json
  done
done
if [[ -n "$TRAIN_CONFIG" ]]; then
  run_to "$OUT_DIR/train.json" "$PY" -m deephash_jax.main train --config="$TRAIN_CONFIG" \
    --workdir="$OUT_DIR/train_run" --json ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}
fi
run "$PY" benchmarks/search_benchmark.py "${SEARCH_ARGS[@]}" --json="$OUT_DIR/search.json"
run "$PY" benchmarks/rerank_benchmark.py "${RERANK_ARGS[@]}" --json="$OUT_DIR/rerank.json"
run "$PY" launch/device_check_report.py "$OUT_DIR"
