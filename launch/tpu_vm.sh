#!/usr/bin/env bash
# Train on a Cloud TPU VM (one host or a pod slice: every worker runs one process, --multihost).
#
#   launch/tpu_vm.sh [--dry-run] SUBCOMMAND...   (create install prepare_data train logs
#                                                copy_results delete, or all = the first four,
#                                                then copy_results and delete)
#   BUCKET=my-bucket launch/tpu_vm.sh all
#   DRY_RUN=1 BUCKET=my-bucket launch/tpu_vm.sh all        # print the commands only
#
# Each subcommand can be rerun: create skips an existing VM, delete an absent one, prepare_data
# an existing dataset, and train resumes from the latest checkpoint in WORKDIR.
#
# Environment (default):
#   TPU_NAME          (deephash)                  name of the TPU VM
#   ZONE              (us-central2-b)
#   ACCELERATOR_TYPE  (v4-8)                      v4-32 etc. for a pod slice (several workers)
#   RUNTIME_VERSION   (tpu-ubuntu2204-base)
#   PROJECT           (gcloud's default project)
#   SPOT / PREEMPTIBLE (0)                        1: create a spot / preemptible VM
#   BUCKET            (required for prepare_data, train, copy_results) GCS bucket, no gs://
#   RUN_NAME          ($TPU_NAME)
#   WORKDIR           (gs://$BUCKET/deephash/$RUN_NAME)  checkpoints, metrics, eval_results.json
#   TFDS_DIR          (gs://$BUCKET/tfds)         TFDS data dir, prepared once by prepare_data
#   CONFIG            (configs/graded.py)
#   TRAIN_ARGS        ()                          extra flags, e.g. --config.model.num_bits=64
#   JAX_REQUIREMENT   (jax[tpu]>=0.7.0,<0.11)
#   WORKER_PYTHON     (python3)                   on the workers
#   REMOTE_DIR        (deephash-jax)              the repo on the workers, under $HOME
#   LOG_FILE          (deephash-train.log)        training log on each worker, under $HOME
#   DETACH            (0)                         1: train in the background (follow with logs)
#   PREPARE_ON        (local)                     local: build here from SOURCE_DIR, then upload;
#                                                 tpu: build on worker 0 from the upstream URLs
#   SOURCE_DIR        (/usr/share/datasets/fashion-mnist)  Debian's IDX files (local build)
#   LOCAL_PYTHON      (python3)                   a Python with deephash_jax, for PREPARE_ON=local
#   LOCAL_TFDS_DIR    (${TMPDIR:-/tmp}/deephash-tfds)
#   RESULTS_DIR       (workdirs/$RUN_NAME)        where copy_results puts the run's files
#   COPY_CHECKPOINTS  (0)                         1: copy_results also copies the checkpoints
#   DRY_RUN           (0)
#
# The repo is copied to the workers as `git archive HEAD`: commit what the run needs first.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TPU_NAME="${TPU_NAME:-deephash}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
BUCKET="${BUCKET:-}"
RUN_NAME="${RUN_NAME:-$TPU_NAME}"
WORKDIR="${WORKDIR:-${BUCKET:+gs://$BUCKET/deephash/$RUN_NAME}}"
TFDS_DIR="${TFDS_DIR:-${BUCKET:+gs://$BUCKET/tfds}}"
CONFIG="${CONFIG:-configs/graded.py}"
TRAIN_ARGS="${TRAIN_ARGS:-}"
JAX_REQUIREMENT="${JAX_REQUIREMENT:-jax[tpu]>=0.7.0,<0.11}"
WORKER_PYTHON="${WORKER_PYTHON:-python3}"
REMOTE_DIR="${REMOTE_DIR:-deephash-jax}"
LOG_FILE="${LOG_FILE:-deephash-train.log}"
DETACH="${DETACH:-0}"
PREPARE_ON="${PREPARE_ON:-local}"
SOURCE_DIR="${SOURCE_DIR:-/usr/share/datasets/fashion-mnist}"
LOCAL_PYTHON="${LOCAL_PYTHON:-python3}"
LOCAL_TFDS_DIR="${LOCAL_TFDS_DIR:-${TMPDIR:-/tmp}/deephash-tfds}"
RESULTS_DIR="${RESULTS_DIR:-workdirs/$RUN_NAME}"
COPY_CHECKPOINTS="${COPY_CHECKPOINTS:-0}"

DATASET=fashion_mnist_local   # data/fashion_mnist.py FashionMnistLocal: name and VERSION
DATASET_INFO="$DATASET/1.0.0/dataset_info.json"
TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE" ${PROJECT:+--project="$PROJECT"})

on_workers() {  # on_workers WORKER REMOTE_COMMAND
  run "${TPU[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker="$1" --command="$2"
}

create() {
  local capacity=()
  (( ${SPOT:-0} )) && capacity+=(--spot)
  (( ${PREEMPTIBLE:-0} )) && capacity+=(--preemptible)
  run_unless "${TPU[@]}" describe "$TPU_NAME" "${WHERE[@]}" -- \
    "${TPU[@]}" create "$TPU_NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR_TYPE" \
    --version="$RUNTIME_VERSION" ${capacity[@]+"${capacity[@]}"}
}

install() {
  local tarball="${TMPDIR:-/tmp}/deephash-jax-$TPU_NAME.tar.gz"
  repo_tarball "$tarball"
  run "${TPU[@]}" scp "$tarball" "$TPU_NAME:deephash-jax.tar.gz" "${WHERE[@]}" --worker=all
  on_workers all "mkdir -p $REMOTE_DIR && tar -xzf deephash-jax.tar.gz -C $REMOTE_DIR && \
$WORKER_PYTHON -m pip install -q -U $(quote "$JAX_REQUIREMENT") -e $REMOTE_DIR"
}

prepare_data() {
  local exists=(gsutil -q stat "${TFDS_DIR:?set BUCKET or TFDS_DIR}/$DATASET_INFO")
  if [[ "$PREPARE_ON" == tpu ]]; then
    run_unless "${exists[@]}" -- "${TPU[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=0 \
      --command="cd $REMOTE_DIR && $(quote "$WORKER_PYTHON" -c "$PREPARE_PY" "$TFDS_DIR" '')"
  else
    run_unless "${exists[@]}" -- "$LOCAL_PYTHON" -c "$PREPARE_PY" "$LOCAL_TFDS_DIR" "$SOURCE_DIR"
    run_unless "${exists[@]}" -- gsutil -m cp -r "$LOCAL_TFDS_DIR/$DATASET" "$TFDS_DIR/"
  fi
}

train() {
  local train_cmd
  train_cmd="$(quote "$WORKER_PYTHON" -m deephash_jax.main train --multihost \
    --config="$CONFIG" --workdir="${WORKDIR:?set BUCKET or WORKDIR}" \
    --config.input.data_dir="${TFDS_DIR:?set BUCKET or TFDS_DIR}")${TRAIN_ARGS:+ $TRAIN_ARGS}"
  # Every worker would otherwise build the dataset at once, on the same bucket.
  if ! (( DRY_RUN )) && ! gsutil -q stat "$TFDS_DIR/$DATASET_INFO"; then
    echo "$TFDS_DIR/$DATASET_INFO is missing: run launch/tpu_vm.sh prepare_data first" >&2
    exit 1
  fi
  if (( DETACH )); then
    on_workers all "cd $REMOTE_DIR && nohup $train_cmd > ~/$LOG_FILE 2>&1 < /dev/null &"
  else
    on_workers all "set -o pipefail; cd $REMOTE_DIR && $train_cmd 2>&1 | tee ~/$LOG_FILE"
  fi
}

logs() {
  on_workers 0 "tail -n 100 -F ~/$LOG_FILE"
}

copy_results() {
  local skip=()
  (( COPY_CHECKPOINTS )) || skip=(-x '^checkpoints/')
  run mkdir -p "$RESULTS_DIR"
  # rsync, not cp: reruns copy only what changed, and a run without plots/ is not an error.
  run gsutil -m rsync -r ${skip[@]+"${skip[@]}"} "${WORKDIR:?set BUCKET or WORKDIR}" \
    "$RESULTS_DIR"
}

delete() {
  run_if "${TPU[@]}" describe "$TPU_NAME" "${WHERE[@]}" -- \
    "${TPU[@]}" delete "$TPU_NAME" "${WHERE[@]}" --quiet
}

if (( $# == 0 )); then
  echo "usage: $0 [--dry-run] {create|install|prepare_data|train|logs|copy_results|delete|all}..." >&2
  exit 2
fi
for subcommand in "$@"; do
  case "$subcommand" in
    create|install|prepare_data|train|logs|copy_results|delete) "$subcommand" ;;
    all) create; install; prepare_data; DETACH=0 train; copy_results; delete ;;
    *) echo "unknown subcommand: $subcommand" >&2; exit 2 ;;
  esac
done
