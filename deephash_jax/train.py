"""Training: the state, the sharded adversarial train step, and `train_and_evaluate`.

The train step is written as a per-device body, as one would write a `pmap` body: it sees this
device's slice of the batch, and every cross-device exchange is an explicit collective over the
mesh axis `data` (`psum` of gradients and counts, `all_gather` of codes for the pairwise loss,
BatchNorm statistics via `axis_name`). It runs under `jax.shard_map` on a mesh built from
`config.mesh`, inside one `jax.jit` that donates the state. (`jax.pmap` is in maintenance mode
and is itself implemented on `shard_map`.)

One compiled step does, in order:
 1. render the two views of each catalogue item (augment.py), one PRNG key per example;
 2. one forward pass of the hash network (kept as a VJP closure);
 3. the discriminator update on the codes of same-item pairs (gradients stopped at the codes);
 4. the encoder + classifier update: classification + two-level Cauchy Hamming loss +
    scramble loss against the *updated* discriminator + quantization, each config-weighted.
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any, Callable

from absl import logging
from clu import metric_writers
from clu import periodic_actions
from etils import epath
from flax import struct
import jax
from jax import lax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from deephash_jax import augment
from deephash_jax import baselines
from deephash_jax import config_lib
from deephash_jax import input_pipeline
from deephash_jax import losses
from deephash_jax import models

AXIS = "data"


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


def create_mesh(mesh_config) -> jax.sharding.Mesh:
  """A 1-D mesh over all devices from `config.mesh = [("data", -1)]`."""
  axes = [tuple(axis) for axis in mesh_config]
  if len(axes) != 1 or axes[0][0] != AXIS:
    raise ValueError(f"config.mesh={mesh_config!r}: only a single data-parallel axis "
                     f"[('{AXIS}', -1)] is supported")
  size = axes[0][1]
  size = jax.device_count() if size == -1 else size
  if size != jax.device_count():
    raise ValueError(f"config.mesh asks for {size} devices on axis '{AXIS}' but "
                     f"{jax.device_count()} are present")
  # Auto axes: the step is manual (shard_map) and the rest is plain data parallelism; current
  # jax.make_mesh defaults to Explicit axes, which would type every array op by its sharding.
  return jax.make_mesh((size,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def learning_rate_schedule(train_config, total_steps: int):
  warmup = min(train_config.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_config.learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=train_config.learning_rate * 0.01)


def create_train_state(config, rng, total_steps: int, image_shape) -> TrainState:
  """Initialises both networks on one dummy batch (unsharded, then placed by the caller)."""
  net, disc = models.create_models(config.model, config.input.num_classes)
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
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=variables["params"],
      batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]),
      disc_params=disc_params, disc_opt_state=disc_tx.init(disc_params), tx=tx, disc_tx=disc_tx)


def _query_first(key, example_index):
  """Per pair, whether the query view is shown to the discriminator first."""
  return jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(key, i)))(example_index)


def _pair_for_discriminator(gallery_codes, query_codes, query_first):
  first = jnp.where(query_first[:, None], query_codes, gallery_codes)
  second = jnp.where(query_first[:, None], gallery_codes, query_codes)
  return first, second


def cauchy_gammas(loss_config, num_bits: int) -> tuple[float, float]:
  """(gamma, gamma_item) of the Cauchy losses at `num_bits`.

  With `loss.gamma_reference_bits` = R > 0 the configured values hold at R bits and scale with
  the code length (gamma * num_bits / R): the relaxed Hamming distance ranges over [0, num_bits],
  so a fixed gamma is a looser scale on short codes than on long ones. 0 uses them as given.
  """
  reference = loss_config.get("gamma_reference_bits", 0) or 0
  scale = num_bits / reference if reference else 1.0
  return loss_config.gamma * scale, loss_config.gamma_item * scale


def make_train_step(config, mesh) -> Callable:
  """Returns the jitted `train_step(state, batch, rng) -> (state, metrics)`.

  `batch` is a global batch of catalogue items sharded on `data`: uint8 "image" (N, H, W, C),
  int32 "label" (N,) and "item" (N,); the step renders 2N views.
  """
  net, disc = models.create_models(config.model, config.input.num_classes, axis_name=AXIS)
  weights = config.loss
  num_bits = config.model.num_bits
  gamma, gamma_item = cauchy_gammas(config.loss, num_bits)
  method = config.get("method", "ours")
  if method != "ours":
    baseline_hyper = {**baselines.default_hyper(method, num_bits),
                      **dict(config.loss.get("baseline_hyper", {}) or {})}

  def body(state: TrainState, batch, rng):
    n_local = batch["label"].shape[0]
    n_global = n_local * lax.axis_size(AXIS)
    example_index = lax.axis_index(AXIS) * n_local + jnp.arange(n_local)
    k_aug, k_order = jax.random.split(jax.random.fold_in(rng, state.step))
    keys = jax.vmap(lambda i: jax.random.fold_in(k_aug, i))(example_index)
    gallery, query = augment.two_views(batch["image"], keys, config.input.augment)
    images = jnp.concatenate([gallery, query])
    labels = jnp.concatenate([batch["label"], batch["label"]])
    items = jnp.concatenate([batch["item"], batch["item"]])
    view_index = jnp.concatenate([example_index, n_global + example_index])
    query_first = _query_first(k_order, example_index)

    def forward(params):
      (codes, inter), updates = net.apply(
          {"params": params, "batch_stats": state.batch_stats}, images, train=True,
          mutable=["batch_stats"])
      return (codes, inter["pre_codes"], inter["logits"]), updates["batch_stats"]

    (codes, pre_codes, logits), backward, batch_stats = jax.vjp(forward, state.params,
                                                                has_aux=True)

    # 1. Discriminator step on fixed codes.
    def disc_loss_fn(disc_params):
      frozen = lax.stop_gradient(codes)
      first, second = _pair_for_discriminator(frozen[:n_local], frozen[n_local:], query_first)
      d_logits, _ = disc.apply({"params": disc_params}, first, second)
      return losses.discriminator_loss(d_logits, query_first, normaliser=n_global), d_logits

    (disc_loss, d_logits), disc_grads = jax.value_and_grad(disc_loss_fn, has_aux=True)(
        state.disc_params)
    disc_grads = lax.psum(disc_grads, AXIS)
    disc_updates, disc_opt_state = state.disc_tx.update(disc_grads, state.disc_opt_state,
                                                        state.disc_params)
    disc_params = optax.apply_updates(state.disc_params, disc_updates)

    # 2. Encoder + classifier step against the updated discriminator.
    all_labels = lax.all_gather(labels, AXIS, tiled=True)
    all_items = lax.all_gather(items, AXIS, tiled=True)
    all_views = lax.all_gather(view_index, AXIS, tiled=True)
    kinds = losses.pair_kinds(labels, items, all_labels, all_items)
    valid = view_index[:, None] != all_views[None, :]
    category_similar = kinds <= losses.PAIR_SAME_TYPE
    item_valid = valid & category_similar
    item_similar = kinds == losses.PAIR_SAME_ITEM
    count = lambda mask: lax.psum(jnp.sum(mask), AXIS)

    def baseline_loss_fn(pre_codes, logits):
      # A baseline's loss is defined on the whole batch: every device evaluates it on the
      # gathered pre-codes; the gather's transpose sums the devices' cotangents, hence the
      # division by the number of devices.
      all_pre = lax.all_gather(pre_codes, AXIS, tiled=True)
      value, aux = baselines.BASELINES[method](
          all_pre, all_labels, num_classes=config.input.num_classes, step=state.step,
          **baseline_hyper)
      terms = {
          "classification": losses.classification_loss(logits, labels, normaliser=2 * n_global),
          "baseline": value / lax.axis_size(AXIS),
          **{f"baseline_{k}": lax.stop_gradient(v) / lax.axis_size(AXIS) for k, v in aux.items()},
      }
      total = weights.classification_weight * terms["classification"] + terms["baseline"]
      return total, terms

    def encoder_loss_fn(codes, logits):
      all_codes = lax.all_gather(codes, AXIS, tiled=True)
      distances = losses.relaxed_hamming(codes, all_codes, num_bits=num_bits)
      first, second = _pair_for_discriminator(codes[:n_local], codes[n_local:], query_first)
      adv_logits, _ = disc.apply({"params": disc_params}, first, second)
      terms = {
          "classification": losses.classification_loss(logits, labels, normaliser=2 * n_global),
          "hamming": losses.cauchy_cross_entropy(
              distances, category_similar, valid, gamma=gamma,
              num_similar=count(category_similar & valid),
              num_dissimilar=count(~category_similar & valid)),
          "hamming_item": losses.cauchy_cross_entropy(
              distances, item_similar, item_valid, gamma=gamma_item,
              num_similar=count(item_similar & item_valid),
              num_dissimilar=count(~item_similar & item_valid)),
          "adversarial": losses.scramble_loss(adv_logits, query_first,
                                              mode=weights.adversarial_mode,
                                              normaliser=n_global),
          "quantization": losses.quantization_loss(codes, normaliser=2 * n_global * num_bits),
      }
      total = sum(weights[f"{name}_weight"] * value for name, value in terms.items())
      return total, terms

    if method == "ours":
      (total, terms), (d_codes, d_logits_cls) = jax.value_and_grad(
          encoder_loss_fn, argnums=(0, 1), has_aux=True)(codes, logits)
      d_pre = jnp.zeros_like(pre_codes)
    else:
      (total, terms), (d_pre, d_logits_cls) = jax.value_and_grad(
          baseline_loss_fn, argnums=(0, 1), has_aux=True)(pre_codes, logits)
      d_codes = jnp.zeros_like(codes)
    (grads,) = backward((d_codes, d_pre, d_logits_cls))
    grads = lax.psum(grads, AXIS)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    binary = codes > 0
    metrics = {
        "loss": lax.psum(total, AXIS),
        **{f"loss_{k}": lax.psum(v, AXIS) for k, v in terms.items()},
        "loss_discriminator": lax.psum(disc_loss, AXIS),
        "accuracy": count(jnp.argmax(logits, -1) == labels) / (2 * n_global),
        "discriminator_accuracy": count((d_logits > 0) == query_first) / n_global,
        # Collapse watch: |mean of each bit over the batch|, 0 = balanced, 1 = constant bit.
        "bit_imbalance": jnp.mean(jnp.abs(
            lax.psum(jnp.sum(2.0 * binary - 1.0, axis=0), AXIS) / (2 * n_global))),
        "code_saturation": lax.psum(jnp.sum(jnp.abs(codes) > 0.9), AXIS) / (
            2 * n_global * num_bits),
        "grad_norm": optax.tree.norm(grads),
        "grad_norm_encoder": optax.tree.norm(grads["encoder"]),
    }
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state, disc_params=disc_params,
                              disc_opt_state=disc_opt_state)
    return new_state, metrics

  sharded = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(AXIS), P()),
                          out_specs=(P(), P()), check_vma=False)
  return jax.jit(sharded, donate_argnums=0)


def make_embed_fn(config, mesh) -> Callable:
  """`embed(variables, uint8 images) -> continuous codes tanh(h)`, jitted, batch sharded on `data`.

  Every process passes the same host images and gets all the codes back, replicated, so that
  `np.asarray` can read them in a multi-process run too (where jit also refuses NumPy inputs with
  a sharded layout: the global batch is built with `make_array_from_callback`). Like the train
  step, the body is per device under `shard_map`.
  """
  net, _ = models.create_models(config.model, config.input.num_classes)
  batch_sharding = NamedSharding(mesh, P(AXIS))

  def body(variables, images):
    _, aux = net.apply(variables, augment.preprocess(images), train=False)
    # tanh of the pre-activation: the codes of a tanh model, and for a sign model the continuous
    # codes its sign binarises (sign(tanh(x)) = sign(x)), so float references stay continuous.
    return lax.all_gather(jnp.tanh(aux["pre_codes"]), AXIS, tiled=True)

  jitted = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(),
                                 check_vma=False))

  def embed_fn(variables, images):
    images = np.asarray(images)
    images = jax.make_array_from_callback(images.shape, batch_sharding, lambda i: images[i])
    return jitted(variables, images)

  return embed_fn


def embed_dataset(embed_fn, variables, images: np.ndarray, *, batch_size: int,
                  num_devices: int) -> np.ndarray:
  """Continuous codes of all `images`, in order; the last batch is padded, then trimmed."""
  batch_size = max(num_devices, batch_size // num_devices * num_devices)
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = (-len(chunk)) % num_devices
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
    out.append(np.asarray(embed_fn(variables, chunk))[:len(chunk) - pad])
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


def checkpoint_manager(workdir: str, train_config, *, read_only: bool = False):
  return ocp.CheckpointManager(
      config_lib.workdir_path(workdir) / "checkpoints",
      options=ocp.CheckpointManagerOptions(
          max_to_keep=train_config.get("keep_checkpoints", 3), create=not read_only,
          read_only=read_only))


def abstract_state(config, mesh, image_shape, total_steps):
  """Shapes, dtypes and (replicated) shardings of the train state, for restoring."""
  state = jax.eval_shape(lambda: create_train_state(config, jax.random.key(0), total_steps,
                                                    image_shape))
  replicated = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                      state)


def restore_latest(manager, config, mesh, image_shape, total_steps, *, set_aside=False):
  """The latest restorable checkpoint as (state, step), or (None, None).

  A checkpoint that fails to restore (truncated or altered files) is logged and the previous one
  is tried. With `set_aside` (training), the bad one is renamed `corrupt-<step>` rather than
  deleted, so that nothing is lost and the run can save that step again.
  """
  target = abstract_state(config, mesh, image_shape, total_steps)
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state = manager.restore(step, args=ocp.args.StandardRestore(target))
      return state, step
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("Checkpoint at step %d in %s cannot be restored (%s: %s); falling back to "
                      "the previous one.", step, manager.directory, type(e).__name__, e)
      if set_aside:
        _set_aside(manager, step)
  return None, None


def _set_aside(manager, step: int) -> None:
  directory = epath.Path(manager.directory)
  if jax.process_index() == 0:
    aside = directory / f"corrupt-{step}"
    (directory / str(step)).rename(aside)
    logging.warning("Moved the unrestorable checkpoint to %s.", aside)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"set_aside_{step}")
  manager.reload()


class _StopRequested:
  """Set by SIGTERM (what a preempted TPU VM receives): save, then leave the loop cleanly."""

  def __init__(self):
    self.requested = False

  def __call__(self, signum, frame):
    del frame
    logging.warning("Received signal %d: saving a checkpoint and stopping.", signum)
    self.requested = True


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       return_codes: bool = False):
  """Trains (resuming from the latest checkpoint in `workdir`), then evaluates.

  Returns the final evaluation metrics (see `evaluate.evaluate_workdir`), or `{"stopped_at_step":
  N}` when SIGTERM stopped the run. With `return_codes=True`, returns `(metrics, codes)` where
  `codes` is the evaluation's `evaluate.Codes` (None when stopped).
  """
  config_lib.validate_config(config)
  config_lib.workdir_path(workdir).mkdir(parents=True, exist_ok=True)
  is_chief = jax.process_index() == 0
  if is_chief:
    config_lib.save_config(config, workdir)
  mesh = create_mesh(config.mesh)
  num_items = config.train.batch_size // 2
  train_split = input_pipeline.load_split(config.input, config.input.train_split)
  sampler = input_pipeline.TwoViewSampler(
      train_split, num_items=num_items, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  total_steps = config_lib.total_steps(config, len(train_split))
  image_shape = train_split.images.shape[1:]

  manager = checkpoint_manager(workdir, config.train)
  state, restored_step = restore_latest(manager, config, mesh, image_shape, total_steps,
                                        set_aside=True)
  if state is None:
    state = create_train_state(config, jax.random.key(config.seed), total_steps, image_shape)
    state = jax.device_put(state, NamedSharding(mesh, P()))
    start_step = 0
  else:
    start_step = int(restored_step)
    logging.info("Resumed from step %d in %s.", start_step, workdir)

  train_step = make_train_step(config, mesh)
  batch_sharding = NamedSharding(mesh, P(AXIS))
  rng = jax.random.key(config.seed + 1)
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  if start_step == 0 and is_chief:
    writer.write_hparams(config_lib.flatten_for_hparams(config))
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                             every_steps=config.train.log_every_steps)
  stop = _StopRequested()
  previous_handler = signal.signal(signal.SIGTERM, stop)
  logging.info("Training %d steps (%d per epoch), global batch %d views = %d items on %d "
               "devices.", total_steps, sampler.steps_per_epoch, config.train.batch_size,
               num_items, jax.device_count())
  train_start = time.time()
  step = start_step
  try:
    with metric_writers.ensure_flushes(writer):
      for step in range(start_step, total_steps):
        local = sampler.local_batch(step)
        batch = {k: jax.make_array_from_process_local_data(batch_sharding, v)
                 for k, v in local.items()}
        state, metrics = train_step(state, batch, rng)
        done = step + 1
        progress(done)
        if done % config.train.log_every_steps == 0 or done == total_steps:
          metrics = jax.device_get(metrics)
          if not all(np.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(
                f"non-finite training metrics at step {done} in {workdir}: {metrics}; "
                "lower config.train.learning_rate or check the input data")
          writer.write_scalars(done, {f"train/{k}": v for k, v in metrics.items()})
          if is_chief:
            logging.info("step %d/%d: %s", done, total_steps,
                         " ".join(f"{k}={float(v):.4g}" for k, v in sorted(metrics.items())))
        if (done % config.train.checkpoint_every_steps == 0 or done == total_steps
            or stop.requested):
          manager.save(done, args=ocp.args.StandardSave(state))
        if stop.requested:
          break
    manager.wait_until_finished()
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
  train_seconds = time.time() - train_start
  if stop.requested:
    manager.close()
    logging.warning("Stopped at step %d on request; rerun with the same --workdir to resume.",
                    step + 1)
    stopped = {"stopped_at_step": step + 1}
    return (stopped, None) if return_codes else stopped

  from deephash_jax import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  results, codes = evaluate_lib.evaluate_variables(config, variables, mesh=mesh,
                                                   return_codes=True)
  results["train_seconds"] = train_seconds
  results["train_steps"] = total_steps
  writer.write_scalars(total_steps, {f"eval/{k}": v for k, v in results.items()
                                     if isinstance(v, (int, float))})
  if is_chief:
    (config_lib.workdir_path(workdir) / "eval_results.json").write_text(
        json.dumps(results, indent=2))
  manager.close()
  return (results, codes) if return_codes else results
