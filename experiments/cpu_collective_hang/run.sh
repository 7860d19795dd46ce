#!/usr/bin/env bash
# experiments/cpu_collective_hang/run.sh STEPS MODE TRIES: TRIES runs of repro.py (2 processes),
# each killed after 90 s; one line per run: the "done" lines, or nothing when it hung.
set -u
steps=$1 mode=$2 tries=$3
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for (( i = 1; i <= tries; i++ )); do
  port=$(( 20000 + RANDOM % 20000 ))
  out=$(mktemp -d)
  for p in 0 1; do
    JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 \
      timeout -s KILL 90 "${PYTHON:-python3}" "$here/repro.py" "$port" "$p" "$steps" "$mode" \
      > "$out/$p.txt" 2>&1 &
  done
  wait
  echo "steps=$steps $mode try $i: $(grep -h done "$out"/*.txt | tr '\n' ' ')"
  rm -rf "$out"
done
