"""The benchmark's plan: a list of ordinary training runs, each a plain `deephash train`.

A benchmark config (configs/benchmark.py) is a training config plus a `benchmark` section that
names the runs: methods x bits x seeds, each method a *variant* (overrides of the training
config, e.g. `method="dch"`, `loss.classification_weight=0`). Run `<variant>_<bits>b_s<seed>`
trains `run_config(config, name)` in `<workdir>/runs/<name>`, exactly what

    deephash train --config=configs/benchmark.py:<name> --workdir=<workdir>/runs/<name>

trains (the config file's `get_config(run)` returns the same run config), so the plan can be
printed as commands and fanned out with the tools people already use (`xargs -P`, GNU
parallel, launch/ for TPU VMs, a cluster scheduler), or run here one after another. A run is
finished when its `eval_results.json` exists; a finished run whose saved config differs from
the plan's is stale, and the runner refuses to go on from it (`check_not_stale`), unless every
field that differs is one a resumed run may change (config_lib.RESUMABLE_FIELDS: how it is
evaluated): such a run is evaluated again from its checkpoint by the same `deephash train` line
(`reevaluable`). While a process trains a run, it holds an OS lock on `<run>/.lock`
(`fcntl.flock`, released by the kernel when the process ends, however it ends), so two local
workers never train one run at once.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import json
import os
import re
import shlex
from typing import Iterator, Sequence

import ml_collections

from deephash_jax import config_lib

RUNS_DIR = "runs"
LOCK_FILE = ".lock"
RESULTS_FILE = "eval_results.json"
_RUN_NAME = re.compile(r"^(?P<method>[a-z0-9_]+)_(?P<bits>\d+)b_s(?P<seed>\d+)$")


@dataclasses.dataclass(frozen=True)
class Run:
  method: str     # a key of benchmark.variants
  bits: int
  seed: int

  @property
  def name(self) -> str:
    return f"{self.method}_{self.bits}b_s{self.seed}"


def parse_run(name: str) -> Run:
  match = _RUN_NAME.match(name)
  if not match:
    raise config_lib.ConfigError(f"run {name!r}: expected <variant>_<bits>b_s<seed>, e.g. "
                                 "ours_48b_s0")
  return Run(match["method"], int(match["bits"]), int(match["seed"]))


def method_lengths(bench, method: str) -> tuple[int, ...]:
  """The code lengths `method` runs at: those of `benchmark.bits` listed in
  `benchmark.method_bits[method]` where given (a plan of fewer lengths keeps the restriction),
  else every one."""
  only = (bench.get("method_bits") or {}).get(method)
  return tuple(int(b) for b in bench.bits if only is None or b in only)


def planned_runs(bench) -> list[Run]:
  """The runs in order: the reference length first, then the other lengths, then the extra
  seeds of `multi_seed`; each run once."""
  ordered_bits = [bench.reference_bits] + [b for b in bench.bits if b != bench.reference_bits]
  plan = [Run(m, int(b), int(s)) for b in ordered_bits for m in bench.methods
          for s in bench.seeds if int(b) in method_lengths(bench, m)]
  multi = bench.get("multi_seed") or {}
  for b in multi.get("bits", ()):
    for m in multi.get("methods", ()):
      for s in multi.get("seeds", ()):
        if Run(m, int(b), int(s)) not in plan:
          plan.append(Run(m, int(b), int(s)))
  return plan


def flat_overrides(overrides, prefix: str = "") -> dict:
  """Nested variant overrides as {"a.b": value}."""
  out = {}
  for key, value in dict(overrides).items():
    if hasattr(value, "items") and value:
      out.update(flat_overrides(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def run_overrides(bench, run: Run) -> dict:
  """Every field the run sets on the training config: its variant's, the bits and the seed."""
  variants = bench.variants
  if run.method not in variants:
    raise config_lib.ConfigError(f"config.benchmark.variants has no {run.method!r}; variants: "
                                 f"{tuple(variants)}")
  return {**flat_overrides(variants[run.method]), "model.num_bits": run.bits, "seed": run.seed}


def run_config(config, run: Run | str) -> ml_collections.ConfigDict:
  """The training config of one run: the benchmark config without its `benchmark` section,
  with the run's overrides."""
  run = parse_run(run) if isinstance(run, str) else run
  overrides = run_overrides(config.benchmark, run)
  cfg = copy.deepcopy(config)     # keeps typed placeholders (input.data_dir) overridable
  cfg.unlock()
  del cfg["benchmark"]
  for field, value in overrides.items():
    *parents, leaf = field.split(".")
    node = cfg
    for key in parents:
      node = node[key]
    if leaf not in node:
      raise config_lib.ConfigError(f"config.benchmark.variants.{run.method}: "
                                   f"config.{field} is no field of the training config")
    node[leaf] = value
  return cfg


def validate_benchmark(config, overrides: Sequence[str] = ()) -> None:
  """Fails early, naming the field, before hours of training. `overrides`: the fields given on
  the command line, which a variant must not set too (a printed `deephash train` command would
  apply them after the variant, the benchmark before it)."""
  require = config_lib._require  # pylint: disable=protected-access
  bench = config.get("benchmark")
  require(bench is not None, "benchmark", None, "a benchmark section (see configs/benchmark.py)")
  require(len(bench.methods) > 0, "benchmark.methods", bench.methods, "at least one method")
  multi = bench.get("multi_seed") or {}
  for method in (*bench.methods, *multi.get("methods", ())):
    require(method in bench.variants and _RUN_NAME.match(f"{method}_1b_s0"),
            "benchmark.methods", method, f"a key of benchmark.variants {tuple(bench.variants)}")
  for bits in (*bench.bits, *multi.get("bits", ())):
    require(isinstance(bits, int) and 4 <= bits <= 4096, "benchmark.bits", bits,
            "integers in [4, 4096]")
  require(bench.reference_bits in bench.bits, "benchmark.reference_bits", bench.reference_bits,
          f"one of benchmark.bits {tuple(bench.bits)}")
  for method, lengths in (bench.get("method_bits") or {}).items():
    require(method in bench.variants, f"benchmark.method_bits.{method}", method,
            f"a key of benchmark.variants {tuple(bench.variants)}")
    require(method not in bench.methods or method_lengths(bench, method),
            f"benchmark.method_bits.{method}", lengths,
            f"at least one of benchmark.bits {tuple(bench.bits)}")
  require(len(bench.seeds) > 0, "benchmark.seeds", bench.seeds, "at least one seed")
  for run in planned_runs(bench):
    for field in overrides:
      require(field not in run_overrides(bench, run), field, field,
              f"not overridden on the command line: variant {run.method} sets it")
    config_lib.validate_config(run_config(config, run))


def run_dir(workdir: str, run: Run) -> str:
  return os.path.join(workdir, RUNS_DIR, run.name)


def is_finished(workdir: str, run: Run) -> bool:
  return os.path.exists(os.path.join(run_dir(workdir, run), RESULTS_FILE))


class StaleRunError(config_lib.ConfigError):
  """Finished runs were trained with another config than the one the plan trains now."""


def stale_differences(config, workdir: str, run: Run) -> list[str]:
  """For a finished run, where the config it was trained with (its config.json) differs from the
  one the plan trains now; [] when they agree or the run has not finished.

  Every field counts, also those its method does not read: the report must not show figures of
  a config other than the one it names, and which fields a method reads is the code's business.
  """
  directory = run_dir(workdir, run)
  if not is_finished(workdir, run):
    return []
  try:
    with open(os.path.join(directory, config_lib.CONFIG_FILE)) as f:
      saved = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    return [f"{config_lib.CONFIG_FILE}: unreadable ({e})"]
  return config_lib.config_differences(saved, run_config(config, run))


def only_evaluation_differs(differences: Sequence[str]) -> bool:
  """Whether `stale_differences` name only fields a resumed run may change (how it is
  evaluated): then the run's `deephash train` line evaluates it again, untrained."""
  return bool(differences) and all(config_lib.resumable_field(d.split(":")[0])
                                   for d in differences)


def reevaluable(config, workdir: str, run: Run) -> bool:
  """A finished run whose config differs from the plan's in how it is evaluated alone."""
  return only_evaluation_differs(stale_differences(config, workdir, run))


def check_not_stale(config, workdir: str, runs: Sequence[Run]) -> None:
  """Refuses, naming each run and field, to go on from finished runs of another config (their
  figures would be reported as the plan's): move such a run's folder aside to train it again.
  Runs that differ in how they are evaluated alone pass (`reevaluable`)."""
  stale = [(run, d) for run in runs if (d := stale_differences(config, workdir, run))
           and not only_evaluation_differs(d)]
  if stale:
    lines = [f"  {run_dir(workdir, run)}: {'; '.join(d[:4])}"
             + (f"; and {len(d) - 4} more" if len(d) > 4 else "") for run, d in stale]
    raise StaleRunError(
        f"{len(stale)} finished run(s) under {workdir} were trained with another config than "
        "the plan trains now (field: as trained -> as planned):\n" + "\n".join(lines)
        + "\nMove each folder aside (or delete it) to train it again, or restore the config.")


def worker_runs(plan: Sequence[Run], worker: tuple[int, int]) -> list[Run]:
  """Worker i of n takes every n-th run of the plan from the i-th."""
  index, count = worker
  return list(plan[index::count])


def parse_worker(spec: str | None) -> tuple[int, int]:
  """'i/n' -> (i, n), worker i of n (0-based); None or '' -> (0, 1), the whole plan."""
  if not spec:
    return 0, 1
  try:
    index, count = (int(part) for part in spec.split("/"))
  except ValueError:
    index, count = -1, 0
  if not 0 <= index < count:
    raise config_lib.ConfigError(f"--worker={spec!r}: expected 'i/n' with 0 <= i < n, e.g. "
                                 "0/2 and 1/2 for two workers")
  return index, count


@contextlib.contextmanager
def run_lock(directory: str) -> Iterator[bool]:
  """Holds an exclusive OS lock on `<directory>/.lock` while the block runs; yields False (and
  holds nothing) if another process holds it. The kernel releases it when the holder dies."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, LOCK_FILE), "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      yield False
      return
    try:
      yield True
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def is_locked(directory: str) -> bool:
  """Whether another process holds the run's lock now."""
  if not os.path.exists(os.path.join(directory, LOCK_FILE)):
    return False
  with run_lock(directory) as acquired:
    return not acquired


def _flag(field: str, value) -> str:
  text = repr(value) if isinstance(value, (tuple, list)) else str(value)
  return shlex.quote(f"--config.{field}={text}")


def train_command(config_file: str, workdir: str, run: Run, overrides: dict | None = None, *,
                  program: str = "deephash") -> str:
  """The shell line that trains `run` alone: `config_file`'s `get_config(run)` plus the
  command-line overrides the benchmark was given (its `benchmark.*` fields left out)."""
  flags = [_flag(k, v) for k, v in (overrides or {}).items() if not k.startswith("benchmark.")]
  return " ".join([program, "train", shlex.quote(f"--config={config_file}:{run.name}"),
                   shlex.quote(f"--workdir={run_dir(workdir, run)}"), *flags])


def select(config, run: str | None) -> ml_collections.ConfigDict:
  """A benchmark config file's `get_config(run)`: the benchmark config itself, or with a run
  name (`configs/benchmark.py:<run>`) that run's training config."""
  return config if not run else run_config(config, run)
