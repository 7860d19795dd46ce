"""The train state: the hash network (encoder, hash head, classifier) and the discriminator, each
with its optimizer state, in one pytree."""

from __future__ import annotations

from typing import Any

from flax import struct
import jax
import jax.numpy as jnp
import optax

from deephash_jax import config_lib
from deephash_jax import mesh as mesh_lib
from deephash_jax import models


class TrainState(struct.PyTreeNode):
  """Hash network (encoder, hash head, classifier) and discriminator, with optimizer states."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  disc_params: Any
  disc_opt_state: Any
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  disc_tx: optax.GradientTransformation = struct.field(pytree_node=False)
  # method="graded" with loss.graded.memory_size > 0: the gallery views of the latest steps
  # (`create_memory`), extra negatives of the item terms; None otherwise (no leaves).
  memory: Any = None


def create_memory(size: int, code_bits: int, feature_dim: int) -> dict:
  """An empty cross-batch memory: `size` rows of item codes and features, their item ids and
  labels (-1: an empty row, never a negative). Step s writes its batch's gallery views at rows
  (s * batch_items) % size onwards, so the row of a view depends on the step alone."""
  return {"codes": jnp.zeros((size, code_bits), jnp.float32),
          "features": jnp.zeros((size, feature_dim), jnp.float32),
          "items": jnp.full((size,), -1, jnp.int32),
          "labels": jnp.full((size,), -1, jnp.int32)}


def learning_rate_schedule(train_config, total_steps: int):
  """Linear warm-up, then cosine decay to 1 % of `train.learning_rate` at `total_steps`."""
  warmup = min(train_config.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_config.learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=train_config.learning_rate * 0.01)


def create_train_state(config, rng, total_steps: int, image_shape) -> TrainState:
  """Initialises both networks on one dummy batch (unsharded, then placed by the caller)."""
  net, disc = models.create_models(config.model, config.input.num_classes,
                                    compute_dtype=config.train.get("compute_dtype", "float32"))
  k_net, k_disc = jax.random.split(rng)
  dummy = jnp.zeros((2, *image_shape), jnp.float32)
  variables = net.init(k_net, dummy, train=False)
  codes = jnp.zeros((2, config.model.num_bits), jnp.float32)
  disc_params = disc.init(k_disc, codes, codes)["params"]
  tx = optax.chain(
      optax.clip_by_global_norm(config.train.grad_clip_norm),
      optax.adamw(learning_rate_schedule(config.train, total_steps),
                  weight_decay=config.train.weight_decay))
  disc_tx = optax.adam(config.train.disc_learning_rate)
  memory = None
  graded = config.loss.get("graded") or {}
  if config.get("method") == "graded" and config_lib.graded_option(graded, "memory_size"):
    _, inter = jax.eval_shape(lambda v: net.apply(v, dummy, train=False), variables)
    memory = create_memory(graded.memory_size,
                           config.model.num_bits - graded.get("class_bits", 0),
                           inter["features"].shape[-1])
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=variables["params"],
      batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]),
      disc_params=disc_params, disc_opt_state=disc_tx.init(disc_params), tx=tx, disc_tx=disc_tx,
      memory=memory)


def abstract_state(config, mesh, image_shape, total_steps):
  """Shapes, dtypes and (replicated) shardings of the train state, for restoring."""
  state = jax.eval_shape(lambda: create_train_state(config, jax.random.key(0), total_steps,
                                                    image_shape))
  replicated = mesh_lib.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                      state)
