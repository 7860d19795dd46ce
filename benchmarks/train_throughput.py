r"""Throughput of the compiled train step on whatever devices are present.

    python benchmarks/train_throughput.py --config=configs/fashion_mnist.py [--steps=50] [--json]
    python benchmarks/train_throughput.py --config=configs/image_folder_224.py --steps=10
    python benchmarks/train_throughput.py --config=configs/fashion_mnist.py --breakdown

Times `train_step(state, batch, rng)` (train/step.py) on synthetic uint8 batches of the config's
image shape, already on the devices: compilation and `--warmup` steps excluded, then `--steps`
steps, the clock stopped when the last one is done. Prints steps/s, images/s (views: a step
renders `train.batch_size` views of `batch_size / 2` catalogue items) in total and per device,
the compile time, the compiled step's temporary memory and, where the backend reports it, the
peak device memory, with the platform and device kind. `--breakdown` also times each stage of
the step alone (augmentation, the network's forward pass, forward + backward, the loss terms,
the discriminator update, the optimizer update) and the host's input pipeline (the sampler's
gather and the host-to-device copy), each compiled on its own: what one step spends where.
Override any config field, e.g. `--config.train.compute_dtype=bfloat16`.
"""

from __future__ import annotations

import json
import time

from absl import app
from absl import flags
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags
import numpy as np

from deephash_jax import mesh as mesh_lib
from deephash_jax import models
from deephash_jax.data import base
from deephash_jax.data import registry
from deephash_jax.data import sampler as sampler_lib
from deephash_jax.train import state as state_lib
from deephash_jax.train import step as step_lib

config_flags.DEFINE_config_file("config", None, "A training config (configs/*.py).")
flags.DEFINE_integer("steps", 50, "Timed steps.")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.DEFINE_bool("breakdown", False, "Also time each stage of the step alone.")
flags.DEFINE_bool("json", False, "Print one JSON object.")
FLAGS = flags.FLAGS


def _synthetic_batch(config, num_items: int, seed: int = 0) -> dict:
  shape = registry.image_shape(config.input)
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (num_items, *shape), dtype=np.uint8),
          "label": rng.integers(0, config.input.num_classes, num_items).astype(np.int32),
          "item": np.arange(num_items, dtype=np.int32)}


def _timed_loop(fn, args_fn, steps: int) -> float:
  """Seconds per call of `fn(*args_fn())` over `steps` calls, after the first has finished."""
  jax.block_until_ready(fn(*args_fn()))
  start = time.perf_counter()
  out = None
  for _ in range(steps):
    out = fn(*args_fn())
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def measure_step(config, *, steps: int, warmup: int) -> dict:
  """The full train step: compile time, steps/s, images/s, memory."""
  mesh = mesh_lib.create_mesh(config.mesh)
  num_items = config.train.batch_size // 2
  batch = mesh_lib.global_batch(mesh, _synthetic_batch(config, num_items))
  state = state_lib.create_train_state(config, jax.random.key(0), 1000,
                                       registry.image_shape(config.input))
  state = jax.device_put(state, mesh_lib.replicated(mesh))
  rng = jax.random.key(1)
  train_step = step_lib.make_train_step(config, mesh)
  started = time.perf_counter()
  compiled = train_step.lower(state, batch, rng).compile()
  compile_seconds = time.perf_counter() - started
  memory = compiled.memory_analysis()
  for _ in range(warmup):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  started = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  seconds = time.perf_counter() - started
  devices = jax.devices()
  stats = devices[0].memory_stats() or {}
  steps_per_second = steps / seconds
  return {
      "platform": jax.default_backend(), "device_kind": devices[0].device_kind,
      "num_devices": len(devices), "image_shape": list(registry.image_shape(config.input)),
      "encoder": config.model.encoder, "num_bits": config.model.num_bits,
      "batch_views": config.train.batch_size, "batch_items": num_items,
      "compute_dtype": config.train.get("compute_dtype", "float32"),
      "method": config.get("method", "singh2019"), "steps": steps,
      "compile_seconds": compile_seconds, "steps_per_second": steps_per_second,
      "images_per_second": steps_per_second * config.train.batch_size,
      "images_per_second_per_device": steps_per_second * config.train.batch_size / len(devices),
      "compiled_temp_bytes": getattr(memory, "temp_size_in_bytes", None),
      "peak_device_bytes": stats.get("peak_bytes_in_use"),
      "finite": bool(all(np.isfinite(v) for v in jax.device_get(metrics).values())),
  }


def _stage_functions(config, mesh):
  """Each stage of the step as its own jitted function over the mesh, with its inputs."""
  net, disc = models.create_models(config.model, config.input.num_classes,
                                   axis_name=mesh_lib.AXIS,
                                   compute_dtype=config.train.get("compute_dtype", "float32"))
  state = jax.device_put(state_lib.create_train_state(
      config, jax.random.key(0), 1000, registry.image_shape(config.input)),
                         mesh_lib.replicated(mesh))
  batch = mesh_lib.global_batch(mesh, _synthetic_batch(config, config.train.batch_size // 2))
  rng = jax.random.key(1)
  shard = lambda f, specs, out: jax.jit(jax.shard_map(f, mesh=mesh, in_specs=specs,
                                                      out_specs=out, check_vma=False))
  views = lambda b: step_lib.render_views(b, rng, state.step, config.input.augment)
  variables = lambda s: {"params": s.params, "batch_stats": s.batch_stats}

  def forward(s, b):
    (codes, inter), _ = net.apply(variables(s), views(b).images, train=True,
                                  mutable=["batch_stats"], rngs={"dropout": rng})
    return codes, inter["logits"]

  def forward_backward(s, b):
    def loss(params):
      codes, logits = forward(s.replace(params=params), b)
      return jnp.sum(codes) + jnp.sum(logits)
    return lax.psum(jax.grad(loss)(s.params), mesh_lib.AXIS)

  def loss_terms(s, b):
    v = views(b)
    codes, logits = forward(s, b)
    fn = lambda c, l: step_lib.singh2019_loss(
        c, l, views=v, masks=step_lib.pair_masks(v), disc=disc, disc_params=s.disc_params,
        loss_config=config.loss, num_bits=config.model.num_bits)
    return jax.grad(lambda c, l: fn(c, l)[0], argnums=(0, 1))(codes, logits)

  def discriminator(s, b):
    codes, _ = forward(s, b)
    return step_lib.discriminator_update(s, disc, codes, views(b).query_first)[2]

  def optimizer(s):
    return s.tx.update(s.params, s.opt_state, s.params)[0]

  stages = {
      "augmentation": (shard(lambda b: views(b).images, (P(mesh_lib.AXIS),), P(mesh_lib.AXIS)),
                       (batch,)),
      "forward": (shard(forward, (P(), P(mesh_lib.AXIS)), P(mesh_lib.AXIS)), (state, batch)),
      "forward_backward": (shard(forward_backward, (P(), P(mesh_lib.AXIS)), P()),
                           (state, batch)),
      "discriminator_update": (shard(discriminator, (P(), P(mesh_lib.AXIS)), P()),
                               (state, batch)),
      "optimizer_update": (jax.jit(optimizer), (state,)),
  }
  if config.get("method", "singh2019") == "singh2019":
    stages["loss_terms_with_forward"] = (shard(loss_terms, (P(), P(mesh_lib.AXIS)),
                                               P(mesh_lib.AXIS)), (state, batch))
  return stages


def measure_breakdown(config, *, steps: int) -> dict:
  """Milliseconds per step of each stage alone, and of the host's input pipeline."""
  mesh = mesh_lib.create_mesh(config.mesh)
  out = {}
  for name, (fn, args) in _stage_functions(config, mesh).items():
    out[name] = 1e3 * _timed_loop(fn, lambda args=args: args, steps)
  num_items = config.train.batch_size // 2
  pool = _synthetic_batch(config, max(4 * num_items, 1024), seed=2)
  split = base.Split(pool["image"], pool["label"], pool["item"], ("x",))
  sampler = sampler_lib.TwoViewSampler(split, num_items=num_items, seed=0)
  counter = iter(range(10 ** 9))
  host = lambda: (mesh_lib.global_batch(mesh, sampler.local_batch(next(counter))),)
  out["host_input"] = 1e3 * _timed_loop(lambda b: b, host, steps)
  return {f"{k}_ms": v for k, v in out.items()}


def main(argv):
  del argv
  config = FLAGS.config
  if not config.input.num_classes:   # an image-folder config without its tree: 10 classes
    config.input.num_classes = 10
  result = measure_step(config, steps=FLAGS.steps, warmup=FLAGS.warmup)
  if FLAGS.breakdown:
    result["breakdown"] = measure_breakdown(config, steps=max(3, FLAGS.steps // 5))
    result["breakdown"]["full_step_ms"] = 1e3 / result["steps_per_second"]
  if FLAGS.json:
    print(json.dumps(result, sort_keys=True))
    return
  for key in sorted(result):
    value = result[key]
    if isinstance(value, dict):
      for name, ms in value.items():
        print(f"  {name:34s} {ms:10.2f}")
    else:
      print(f"{key:36s} {value:.4g}" if isinstance(value, float) else f"{key:36s} {value}")


if __name__ == "__main__":
  app.run(main)
