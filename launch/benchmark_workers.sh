#!/usr/bin/env bash
# The benchmark split over N worker processes sharing one workdir, then its tables and plots.
#
#   launch/benchmark_workers.sh [--dry-run] [EXTRA_FLAGS...]
#
# Worker i trains every N-th run of the plan from the i-th, then any run no other worker has
# started (`deephash benchmark --benchmark_worker=i/N`; each run is claimed by one process at a
# time, see deephash_jax/benchmark.py:claim_run); when all have finished, the plain command finds
# every run done and writes the references, results.md/json and the plots. On the 2-core CPU
# machine two workers get about 1.3 times the throughput of one; on a host with N accelerators
# give each worker its own (e.g. CUDA_VISIBLE_DEVICES in DEEPHASH). Rerunnable: finished runs are
# skipped, an interrupted one resumes from its checkpoint. The TFDS dataset is built once before
# the workers start (they would otherwise race to build it).
#
# Environment (default):
#   WORKERS     (2)
#   CONFIG      (configs/benchmark.py)
#   WORKDIR     (workdirs/benchmark)
#   DEEPHASH    (deephash)                        the CLI (or python -m deephash_jax.main)
#   PYTHON      (python3)                         the Python of that CLI, to build the dataset
#   DATA_DIR    ()                                TFDS data dir ('': TFDS's default)
#   SOURCE_DIR  (/usr/share/datasets/fashion-mnist)
#   LOG_DIR     ($WORKDIR/logs)                   worker_<i>.log
#   DRY_RUN     (0)

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WORKERS="${WORKERS:-2}"
CONFIG="${CONFIG:-configs/benchmark.py}"
WORKDIR="${WORKDIR:-workdirs/benchmark}"
read -ra DEEPHASH <<< "${DEEPHASH:-deephash}"
PYTHON="${PYTHON:-python3}"
DATA_DIR="${DATA_DIR:-}"
SOURCE_DIR="${SOURCE_DIR:-/usr/share/datasets/fashion-mnist}"
LOG_DIR="${LOG_DIR:-$WORKDIR/logs}"
if ! [[ "$WORKERS" =~ ^[1-9][0-9]*$ ]]; then
  echo "WORKERS=$WORKERS: expected a positive integer" >&2; exit 2
fi
data_flags=()
[[ -n "$DATA_DIR" ]] && data_flags=(--config.input.data_dir="$DATA_DIR")

run "$PYTHON" -c "$PREPARE_PY" "$DATA_DIR" "$SOURCE_DIR"
for (( i = 0; i < WORKERS; i++ )); do
  start_bg "$LOG_DIR/worker_$i.log" "${DEEPHASH[@]}" benchmark --config="$CONFIG" \
    --workdir="$WORKDIR" --benchmark_worker="$i/$WORKERS" ${data_flags[@]+"${data_flags[@]}"} "$@"
done
wait_all
run "${DEEPHASH[@]}" benchmark --config="$CONFIG" --workdir="$WORKDIR" \
  ${data_flags[@]+"${data_flags[@]}"} "$@"
