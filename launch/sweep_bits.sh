#!/usr/bin/env bash
# The hash-length sweep: one training run per code length, each in its own workdir.
#
#   launch/sweep_bits.sh [--dry-run] [EXTRA_FLAGS...]            TARGET=local: one after another
#   TARGET=tpu BUCKET=my-bucket launch/sweep_bits.sh [--dry-run]   one TPU VM per length, in
#                                                                parallel (launch/tpu_vm.sh all)
#
# Rerunnable: a local run whose eval_results.json exists is skipped, an interrupted one resumes;
# on TPU every step of tpu_vm.sh is idempotent.
#
# Environment (default):
#   BITS          (16 32 48 64)
#   TARGET        (local)                     local or tpu
#   CONFIG        (configs/graded.py)
#   SWEEP_NAME    (sweep_bits)
#   WORKDIR_ROOT  (workdirs/$SWEEP_NAME)      local: $WORKDIR_ROOT/bits_<n>
#   DEEPHASH      (deephash)                  local: the CLI (or python -m deephash_jax.main)
#   TPU_NAME      (deephash)                  tpu: VM <n> is $TPU_NAME-<n>b, its run
#                                             $SWEEP_NAME/bits_<n> (see tpu_vm.sh for the rest)
#   TRAIN_ARGS    ()                          tpu: extra flags (local: pass them as arguments)
#   LOG_DIR       ($WORKDIR_ROOT/logs)        tpu: each VM's output, bits_<n>.log
#   DRY_RUN       (0)

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

read -ra BITS <<< "${BITS:-16 32 48 64}"
TARGET="${TARGET:-local}"
CONFIG="${CONFIG:-configs/graded.py}"
SWEEP_NAME="${SWEEP_NAME:-sweep_bits}"
WORKDIR_ROOT="${WORKDIR_ROOT:-workdirs/$SWEEP_NAME}"
read -ra DEEPHASH <<< "${DEEPHASH:-deephash}"
TPU_NAME="${TPU_NAME:-deephash}"
TRAIN_ARGS="${TRAIN_ARGS:-}"
LOG_DIR="${LOG_DIR:-$WORKDIR_ROOT/logs}"
TPU_VM="$(dirname "${BASH_SOURCE[0]}")/tpu_vm.sh"

case "$TARGET" in
  local)
    for bits in "${BITS[@]}"; do
      workdir="$WORKDIR_ROOT/bits_$bits"
      run_unless test -e "$workdir/eval_results.json" -- "${DEEPHASH[@]}" train --config="$CONFIG" \
        --workdir="$workdir" --config.model.num_bits="$bits" "$@"
    done
    ;;
  tpu)
    # Once, before the VMs start: they would otherwise all prepare the dataset at once.
    run "$TPU_VM" prepare_data
    for bits in "${BITS[@]}"; do
      start_bg "$LOG_DIR/bits_$bits.log" env TPU_NAME="$TPU_NAME-${bits}b" \
        RUN_NAME="$SWEEP_NAME/bits_$bits" CONFIG="$CONFIG" \
        TRAIN_ARGS="${TRAIN_ARGS:+$TRAIN_ARGS }--config.model.num_bits=$bits" "$TPU_VM" all
    done
    wait_all
    ;;
  *) echo "TARGET=$TARGET: expected local or tpu" >&2; exit 2 ;;
esac
