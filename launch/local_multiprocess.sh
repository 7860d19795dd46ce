#!/usr/bin/env bash
# A multi-process run on this machine: NUM_PROCESSES CPU processes on 127.0.0.1, each with
# DEVICES_PER_PROCESS forced host devices, exactly as separate hosts would run (one coordinator,
# process ids 0..N-1, gloo collectives). For testing multi-host code paths without a pod.
#
#   launch/local_multiprocess.sh [--dry-run] [EXTRA_FLAGS...]
#   launch/local_multiprocess.sh --config.input.source_dir=/path/to/idx --config.train.num_steps=20
#
# Waits for all processes; fails (stopping the others) as soon as one fails.
#
# Environment (default):
#   NUM_PROCESSES        (2)
#   DEVICES_PER_PROCESS  (4)                      XLA_FLAGS=--xla_force_host_platform_device_count
#   CONFIG               (configs/tiny.py)
#   WORKDIR              (workdirs/local_multiprocess)
#   LOG_DIR              ($WORKDIR/logs)          process_<i>.log per process
#   PORT                 (a free port)            the coordinator's, on 127.0.0.1
#   DEEPHASH             (deephash)               the CLI: .venv/bin/deephash, python -m deephash_jax.main
#   PYTHON               (python3)                only to find a free port
#   DRY_RUN              (0)

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NUM_PROCESSES="${NUM_PROCESSES:-2}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-4}"
CONFIG="${CONFIG:-configs/tiny.py}"
WORKDIR="${WORKDIR:-workdirs/local_multiprocess}"
LOG_DIR="${LOG_DIR:-$WORKDIR/logs}"
read -ra DEEPHASH <<< "${DEEPHASH:-deephash}"
PORT="${PORT:-$("${PYTHON:-python3}" -c 'import socket; s = socket.socket()
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"

for (( i = 0; i < NUM_PROCESSES; i++ )); do
  start_bg "$LOG_DIR/process_$i.log" env JAX_PLATFORMS=cpu \
    XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS" \
    "${DEEPHASH[@]}" train --config="$CONFIG" --workdir="$WORKDIR" \
    --coordinator_address="127.0.0.1:$PORT" --num_processes="$NUM_PROCESSES" --process_id="$i" \
    "$@"
done
wait_all
