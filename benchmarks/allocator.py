r"""The host memory allocator against the train step and the embedding, on XLA:CPU.

    python benchmarks/allocator.py [--config=graded] [--steps=100] [--repeats=2] [--json]

XLA:CPU allocates each compiled computation's buffers from the host allocator on every call.
With glibc's malloc, buffers above its mmap threshold are mapped and unmapped on every step, and
every page is faulted in again (kernel time); tcmalloc keeps them. `make run` and `make test`
preload tcmalloc (Debian's libtcmalloc-minimal4) where it is installed.

Runs the same measurement in a fresh process per allocator (glibc; tcmalloc and jemalloc where
their Debian libraries are installed, through LD_PRELOAD), alternating, `--repeats` times each: the
full train step (synthetic batches, as benchmarks/train_throughput.py: compilation and `--warmup`
steps excluded) and the embedding of `--embed_images` synthetic images by the evaluation's jitted
embedding (the config's flip and shift averaging included); each process checks in /proc/self/maps
that it runs on the allocator asked for. Prints each allocator's best figures, its ratio to glibc's
measured in the same run, and the user and kernel CPU seconds of its processes. The results do not
depend on the allocator (the ratio is of time only); `--json` prints one object.
"""

from __future__ import annotations

import glob
import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np

flags.DEFINE_string("config", "graded", "A config by its name in configs/ (graded: make run's).")
flags.DEFINE_integer("steps", 100, "Timed train steps per process.")
flags.DEFINE_integer("warmup", 20, "Untimed train steps after compilation.")
flags.DEFINE_integer("embed_images", 10000, "Images embedded per process (timed).")
flags.DEFINE_integer("repeats", 2, "Processes per allocator (the best is reported).")
flags.DEFINE_bool("json", False, "Print one JSON object.")
flags.DEFINE_bool("child", False, "Internal: measure in this process, print JSON.")
FLAGS = flags.FLAGS

LIBRARIES = {"tcmalloc": "libtcmalloc_minimal.so.4", "jemalloc": "libjemalloc.so.2"}


def allocators() -> dict[str, str]:
  """{name: LD_PRELOAD value}: glibc (none), then each installed library."""
  found = {"glibc": ""}
  for name, library in LIBRARIES.items():
    paths = sorted(glob.glob(f"/usr/lib/*/{library}") + glob.glob(f"/usr/lib/{library}"))
    if paths:
      found[name] = paths[0]
  return found


def _measure_here() -> dict:
  """The child's measurement. JAX is imported here: the parent only starts the children."""
  # pylint: disable=import-outside-toplevel
  import jax
  from deephash_jax import config_lib
  from deephash_jax import encoder as encoder_lib
  from deephash_jax import mesh as mesh_lib
  from deephash_jax.data import registry
  from deephash_jax.train import state as state_lib
  from deephash_jax.train import step as step_lib

  config = config_lib.base_config(FLAGS.config)
  mesh = mesh_lib.create_mesh(config.mesh)
  shape = registry.image_shape(config.input)
  rng = np.random.default_rng(0)
  items = config.train.batch_size // 2
  batch = mesh_lib.global_batch(mesh, {
      "image": rng.integers(0, 256, (items, *shape), np.uint8),
      "label": rng.integers(0, config.input.num_classes, items).astype(np.int32),
      "item": np.arange(items, dtype=np.int32)})
  state = jax.device_put(state_lib.create_train_state(config, jax.random.key(0), 1000, shape),
                         mesh_lib.replicated(mesh))
  key = jax.random.key(1)
  train_step = step_lib.make_train_step(config, mesh)
  for _ in range(1 + FLAGS.warmup):   # compiles, then warms up
    state, metrics = train_step(state, batch, key)
  jax.block_until_ready(metrics)
  started = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = train_step(state, batch, key)
  jax.block_until_ready(metrics)
  train_seconds = time.perf_counter() - started
  finite = bool(all(np.isfinite(v) for v in jax.device_get(metrics).values()))

  variables = {"params": state.params, "batch_stats": state.batch_stats}
  images = rng.integers(0, 256, (FLAGS.embed_images, *shape), np.uint8)
  embed = encoder_lib.make_embed_fn(config, mesh)
  size = config.eval.batch_size
  encoder_lib.embed_dataset(embed, variables, images[:size], batch_size=size,
                            num_devices=mesh.size)   # compiles
  started = time.perf_counter()
  encoder_lib.embed_dataset(embed, variables, images, batch_size=size, num_devices=mesh.size)
  embed_seconds = time.perf_counter() - started
  usage = resource.getrusage(resource.RUSAGE_SELF)
  try:   # the libraries mapped into this process: whether the preload took
    with open("/proc/self/maps") as f:
      mapped = f.read()
  except OSError:
    mapped = ""
  return {"loaded": {name: library in mapped for name, library in LIBRARIES.items()},
          "train_steps_per_second": FLAGS.steps / train_seconds,
          "train_images_per_second": FLAGS.steps * config.train.batch_size / train_seconds,
          "embed_images_per_second": len(images) / embed_seconds,
          "user_seconds": usage.ru_utime, "kernel_seconds": usage.ru_stime, "finite": finite}


def _measure_in_process(preload: str) -> dict:
  env = dict(os.environ, LD_PRELOAD=preload)
  command = [sys.executable, os.path.abspath(__file__), "--child", f"--config={FLAGS.config}",
             f"--steps={FLAGS.steps}", f"--warmup={FLAGS.warmup}",
             f"--embed_images={FLAGS.embed_images}"]
  done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  if done.returncode:
    raise RuntimeError(f"the measurement with LD_PRELOAD={preload!r} failed "
                       f"(exit {done.returncode}):\n{done.stderr[-3000:]}")
  result = json.loads(done.stdout.strip().splitlines()[-1])
  wrong = [name for name, library in LIBRARIES.items()
           if result["loaded"][name] != (os.path.basename(preload) == library)]
  if wrong:
    raise RuntimeError(f"LD_PRELOAD={preload!r}: the process ran with "
                       f"{result['loaded']} mapped (not what was asked)")
  return result


def compare(found: dict[str, str], repeats: int) -> dict:
  """{allocator: best figures over `repeats` alternating processes, with ratios to glibc}."""
  runs = {name: [] for name in found}
  for _ in range(repeats):
    for name, preload in found.items():
      runs[name].append(_measure_in_process(preload))
  out = {}
  for name, results in runs.items():
    best = {k: max(r[k] for r in results) for k in
            ("train_steps_per_second", "train_images_per_second", "embed_images_per_second")}
    best.update(kernel_seconds=min(r["kernel_seconds"] for r in results),
                user_seconds=min(r["user_seconds"] for r in results),
                finite=all(r["finite"] for r in results), preload=found[name] or None)
    out[name] = best
  for name, best in out.items():
    for key in ("train_steps_per_second", "embed_images_per_second"):
      best[f"{key}_vs_glibc"] = best[key] / out["glibc"][key]
  return out


def main(argv):
  del argv
  if FLAGS.child:
    print(json.dumps(_measure_here()))
    return
  found = allocators()
  results = compare(found, FLAGS.repeats)
  if FLAGS.json:
    print(json.dumps({"config": FLAGS.config, "steps": FLAGS.steps, "repeats": FLAGS.repeats,
                      "cpu_count": os.cpu_count(), "allocators": results}, sort_keys=True))
    return
  print(f"configs/{FLAGS.config}.py: {FLAGS.steps} train steps and {FLAGS.embed_images:,} "
        f"embedded images per process, best of {FLAGS.repeats}; {os.cpu_count()} CPU cores")
  print(f"{'allocator':10s} {'train steps/s':>14s} {'vs glibc':>9s} {'embed img/s':>12s} "
        f"{'vs glibc':>9s} {'user s':>8s} {'kernel s':>9s}")
  for name, r in results.items():
    print(f"{name:10s} {r['train_steps_per_second']:14.2f} "
          f"{r['train_steps_per_second_vs_glibc']:8.2f}x {r['embed_images_per_second']:12.0f} "
          f"{r['embed_images_per_second_vs_glibc']:8.2f}x {r['user_seconds']:8.1f} "
          f"{r['kernel_seconds']:9.1f}")
  missing = sorted(set(LIBRARIES) - set(found))
  if missing:
    print("not installed (Debian): " + ", ".join(
        {"tcmalloc": "libtcmalloc-minimal4", "jemalloc": "libjemalloc2"}[m] for m in missing))


if __name__ == "__main__":
  app.run(main)
