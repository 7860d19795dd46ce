# Shared by the launch scripts (sourced, not run): the dry run and how commands are printed.
#
# DRY_RUN=1 (or --dry-run as the first argument) prints each command as one shell line that
# reproduces it, instead of running it; checks that make a script idempotent (does the VM
# exist? is the dataset on the bucket?) are printed with their `||` / `&&` rather than run.

set -euo pipefail

DRY_RUN="${DRY_RUN:-0}"
# Sourced without arguments, this file sees (and shifts) the calling script's own arguments.
if [[ "${1:-}" == "--dry-run" || "${1:-}" == "--dry_run" ]]; then DRY_RUN=1; shift; fi
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ "$REPO_ROOT" == "$PWD" ]] && REPO_ROOT=.
# Builds the TFDS dataset once: python -c "$PREPARE_PY" DATA_DIR SOURCE_DIR; an empty DATA_DIR is
# TFDS's default, an empty or missing SOURCE_DIR downloads the upstream files.
PREPARE_PY='import sys; from deephash_jax.data import fashion_mnist as fm; '\
'fm.fashion_mnist_builder(sys.argv[1] or None, sys.argv[2] or None).download_and_prepare()'

# quote ARGS...: one shell line that reproduces ARGS; `--flag=value` keeps its flag unquoted.
quote() {
  local out=() arg flag value
  for arg in "$@"; do
    flag="" value="$arg"
    if [[ "$arg" =~ ^(-[-A-Za-z0-9_.]+=)(.*)$ ]]; then
      flag="${BASH_REMATCH[1]}" value="${BASH_REMATCH[2]}"
    fi
    if [[ "$value" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=("$flag$value")
    elif [[ "$value" != *\'* ]]; then
      out+=("$flag'$value'")
    elif [[ "$value" != *[\"\$\`\\!]* ]]; then
      out+=("$flag\"$value\"")
    else
      out+=("$flag'${value//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}

# run CMD...: runs CMD (echoing it to stderr), or prints it under DRY_RUN=1.
run() {
  if (( DRY_RUN )); then quote "$@"; return; fi
  echo "+ $(quote "$@")" >&2
  "$@"
}

# run_to FILE CMD...: runs CMD with its standard output written to FILE (or prints `CMD > FILE`).
run_to() {
  local file="$1"
  shift
  if (( DRY_RUN )); then echo "$(quote "$@") > $(quote "$file")"; return; fi
  echo "+ $(quote "$@") > $(quote "$file")" >&2
  "$@" > "$file"
}

# run_unless CHECK... -- CMD...: CMD unless CHECK succeeds (create what is missing).
# run_if     CHECK... -- CMD...: CMD only if CHECK succeeds (delete what exists).
run_unless() { _guarded "||" "$@"; }
run_if() { _guarded "&&" "$@"; }
_guarded() {
  local op="$1" check=()
  shift
  while [[ "$1" != "--" ]]; do check+=("$1"); shift; done
  shift
  if (( DRY_RUN )); then
    echo "$(quote "${check[@]}") >/dev/null 2>&1 $op $(quote "$@")"
    return
  fi
  local ok=0
  "${check[@]}" >/dev/null 2>&1 || ok=$?
  if [[ "$op" == "||" && "$ok" == 0 ]] || [[ "$op" == "&&" && "$ok" != 0 ]]; then
    echo "skip (by \`$(quote "${check[@]}")\`): $(quote "$@")" >&2
    return
  fi
  run "$@"
}

# repo_tarball PATH: the committed tree of this repo (`git archive HEAD`), as copied to hosts.
repo_tarball() {
  run git -C "$REPO_ROOT" archive --format=tar.gz -o "$1" HEAD
}

# start_bg LOG CMD...: starts CMD in the background, output to LOG (or prints `CMD > LOG 2>&1 &`).
PIDS=()
declare -A LOGS=()
start_bg() {
  local log="$1"
  shift
  if (( DRY_RUN )); then echo "$(quote "$@") > $(quote "$log") 2>&1 &"; return; fi
  echo "+ $(quote "$@") > $(quote "$log") 2>&1 &" >&2
  mkdir -p "$(dirname "$log")"
  "$@" > "$log" 2>&1 &
  PIDS+=($!)
  LOGS[$!]="$log"
}

# wait_all: waits for the commands of start_bg (bash >= 5.1). When one fails, the others, which
# would wait for it at their next collective until a timeout, are stopped, and its log is shown.
wait_all() {
  if (( DRY_RUN )); then echo wait; return; fi
  local pid status rest p
  while (( ${#PIDS[@]} )); do
    status=0
    wait -n -p pid "${PIDS[@]}" || status=$?
    rest=()
    for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || rest+=("$p"); done
    PIDS=(${rest[@]+"${rest[@]}"})
    if (( status )); then
      echo "failed (exit $status): ${LOGS[$pid]}" >&2
      tail -n 20 "${LOGS[$pid]}" >&2
      if (( ${#PIDS[@]} )); then kill "${PIDS[@]}" 2>/dev/null || true; fi
      wait ${PIDS[@]+"${PIDS[@]}"} 2>/dev/null || true
      return "$status"
    fi
  done
}
