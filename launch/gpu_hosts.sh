#!/usr/bin/env bash
# Train on one or several GPU hosts over ssh: one process per host, all local GPUs each, the
# first host coordinating.
#
#   HOSTS="gpu1 gpu2" launch/gpu_hosts.sh [--dry-run] SUBCOMMAND...   (install prepare_data train,
#                                                                     or all = the three)
#
# Each subcommand can be rerun: install and prepare_data are no-ops the second time, and train
# resumes from the latest checkpoint in WORKDIR. With several hosts, WORKDIR (checkpoints are
# written by every process) and DATA_DIR should be on storage all hosts share.
#
# Environment (default):
#   HOSTS            (required)                 ssh destinations ([user@]host), first coordinates
#   COORDINATOR      (the first host's name)    address of the first host as the others see it
#   PORT             (12355)                    the coordinator's port
#   RUN_NAME         (gpu)
#   WORKDIR          (workdirs/$RUN_NAME)       relative to REMOTE_DIR on the hosts
#   DATA_DIR         (TFDS's default)           TFDS data dir on the hosts
#   SOURCE_DIR       (/usr/share/datasets/fashion-mnist)  IDX files on the hosts (else: upstream)
#   CONFIG           (configs/graded.py)
#   TRAIN_ARGS       ()                         extra flags, e.g. --config.model.num_bits=64
#   JAX_REQUIREMENT  (jax[cuda12]>=0.7.0,<0.11)
#   REMOTE_PYTHON    (python3)                  e.g. a virtualenv's python on the hosts
#   REMOTE_DIR       (deephash-jax)             the repo on the hosts, under $HOME
#   LOG_DIR          (workdirs/$RUN_NAME-logs)  here: each host's output, <host>.log
#   SSH / SCP        (ssh / scp)                e.g. "ssh -p 2222"
#   DRY_RUN          (0)
#
# The repo is copied to the hosts as `git archive HEAD`: commit what the run needs first.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

read -ra HOSTS <<< "${HOSTS:?set HOSTS=\"host1 host2 ...\"}"
COORDINATOR="${COORDINATOR:-${HOSTS[0]#*@}}"
PORT="${PORT:-12355}"
RUN_NAME="${RUN_NAME:-gpu}"
WORKDIR="${WORKDIR:-workdirs/$RUN_NAME}"
DATA_DIR="${DATA_DIR:-}"
SOURCE_DIR="${SOURCE_DIR:-/usr/share/datasets/fashion-mnist}"
CONFIG="${CONFIG:-configs/graded.py}"
TRAIN_ARGS="${TRAIN_ARGS:-}"
JAX_REQUIREMENT="${JAX_REQUIREMENT:-jax[cuda12]>=0.7.0,<0.11}"
REMOTE_PYTHON="${REMOTE_PYTHON:-python3}"
REMOTE_DIR="${REMOTE_DIR:-deephash-jax}"
LOG_DIR="${LOG_DIR:-workdirs/$RUN_NAME-logs}"
read -ra SSH <<< "${SSH:-ssh}"
read -ra SCP <<< "${SCP:-scp}"

install() {
  local tarball="${TMPDIR:-/tmp}/deephash-jax-$RUN_NAME.tar.gz" host
  repo_tarball "$tarball"
  for host in "${HOSTS[@]}"; do
    run "${SCP[@]}" "$tarball" "$host:deephash-jax.tar.gz"
    run "${SSH[@]}" "$host" "mkdir -p $REMOTE_DIR && tar -xzf deephash-jax.tar.gz -C $REMOTE_DIR \
&& $REMOTE_PYTHON -m pip install -q -U $(quote "$JAX_REQUIREMENT") -e $REMOTE_DIR"
  done
}

prepare_data() {  # One host after the other: a shared DATA_DIR is built once, by the first.
  local host
  for host in "${HOSTS[@]}"; do
    run "${SSH[@]}" "$host" "cd $REMOTE_DIR && \
$(quote "$REMOTE_PYTHON" -c "$PREPARE_PY" "$DATA_DIR" "$SOURCE_DIR")"
  done
}

train() {
  local i data_flag=()
  [[ -n "$DATA_DIR" ]] && data_flag=(--config.input.data_dir="$DATA_DIR")
  for i in "${!HOSTS[@]}"; do
    start_bg "$LOG_DIR/${HOSTS[$i]}.log" "${SSH[@]}" "${HOSTS[$i]}" "cd $REMOTE_DIR && $(quote \
      "$REMOTE_PYTHON" -m deephash_jax.main train --config="$CONFIG" --workdir="$WORKDIR" \
      ${data_flag[@]+"${data_flag[@]}"} --coordinator_address="$COORDINATOR:$PORT" \
      --num_processes="${#HOSTS[@]}" --process_id="$i")${TRAIN_ARGS:+ $TRAIN_ARGS}"
  done
  wait_all
}

if (( $# == 0 )); then
  echo "usage: HOSTS=\"h1 h2\" $0 [--dry-run] {install|prepare_data|train|all}..." >&2
  exit 2
fi
for subcommand in "$@"; do
  case "$subcommand" in
    install|prepare_data|train) "$subcommand" ;;
    all) install; prepare_data; train ;;
    *) echo "unknown subcommand: $subcommand" >&2; exit 2 ;;
  esac
done
