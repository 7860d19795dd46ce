"""The compiled train step: `train_step(state, batch, rng) -> (state, metrics)`.

Written as a per-device body, as one would write a `pmap` body: it sees this device's slice of the
batch, and every cross-device exchange is an explicit collective over the mesh axis `data` (`psum`
of gradients and counts, `all_gather` of codes for the pairwise loss, BatchNorm statistics via
`axis_name`). It runs under `jax.shard_map` inside one `jax.jit` that donates the state.

One step does, in order (each stage a module-level function, testable alone):
 1. `render_views`: the gallery view and the query view(s) of each catalogue item
    (data/augment.py; `input.augment.query_views` of them), one PRNG key per example, so the
    views do not depend on how the batch is split over devices;
 2. one forward pass of the hash network (kept as a VJP closure);
 3. `discriminator_update`: the discriminator's step on the codes of same-item pairs (gradients
    stopped at the codes);
 4. the encoder + classifier update on `singh2019_loss` (the paper's: classification + two-level
    Cauchy Hamming loss + scramble loss against the *updated* discriminator + quantization,
    each config-weighted), on `graded_loss` (losses/graded.py: category Cauchy with a dead zone,
    item InfoNCE on codes and features, classification, quantization; the discriminator is
    trained and reported but not in the encoder's loss) or on `baseline_loss` (a peer
    method's loss, losses/baselines.py);
 5. `step_metrics`: every loss term and the collapse watch, summed over devices.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from deephash_jax import config_lib
from deephash_jax import models
from deephash_jax.data import augment
from deephash_jax.losses import baselines
from deephash_jax.losses import distance
from deephash_jax.losses import graded
from deephash_jax.losses import singh2019
from deephash_jax.mesh import AXIS

DROPOUT_STREAM = 1 << 20   # fold_in offset of the dropout keys, apart from the views' keys


class Views(NamedTuple):
  """This device's VN views: the N gallery views, then V - 1 blocks of N query views of the same
  items (V = 2 unless input.augment.query_views > 1). The global index of block b's view of
  example e (global) is b * N_global + e."""
  images: jax.Array       # (VN, H, W, C) float32 in [0, 1]
  labels: jax.Array       # (VN,) clothing type
  items: jax.Array        # (VN,) catalogue item id
  index: jax.Array        # (VN,) global view index (unique over devices)
  query_first: jax.Array  # (N,) per pair, whether the discriminator sees the query view first


class PairMasks(NamedTuple):
  """This device's views (rows) against the global batch (columns)."""
  valid: jax.Array              # not the same view
  category_similar: jax.Array   # same clothing type (items included)
  item_valid: jax.Array         # valid pairs of one clothing type
  item_similar: jax.Array       # the same catalogue item


def _global_size(n_local):
  return n_local * lax.axis_size(AXIS)


def views_per_item(views: Views) -> int:
  """V: the gallery view and the query views of each item."""
  return views.labels.shape[0] // views.query_first.shape[0]


def is_gallery(index, n_global):
  """Whether the views of global indices `index` are gallery views (block 0 of `Views`)."""
  return index < n_global


def render_views(batch, rng, step, augment_config, *, query_views: int = 1) -> Views:
  """The gallery view and `query_views` query views of each of this device's catalogue items.
  The gallery view and the first query view are those of `augment.two_views`; query view b > 1
  of an item draws its nuisances from the item's key folded with b."""
  n_local = batch["label"].shape[0]
  example_index = lax.axis_index(AXIS) * n_local + jnp.arange(n_local)
  k_aug, k_order = jax.random.split(jax.random.fold_in(rng, step))
  keys = jax.vmap(lambda i: jax.random.fold_in(k_aug, i))(example_index)
  gallery, query = augment.two_views(batch["image"], keys, augment_config)
  more = [jax.vmap(lambda x, k, b=b: augment.query_view(
      x, jax.random.fold_in(k, b), augment_config.query))(batch["image"], keys)
          for b in range(2, query_views + 1)]
  query_first = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(k_order, i)))(
      example_index)
  blocks = 1 + query_views
  return Views(images=jnp.concatenate([gallery, query, *more]),
               labels=jnp.tile(batch["label"], blocks),
               items=jnp.tile(batch["item"], blocks),
               index=jnp.concatenate([b * _global_size(n_local) + example_index
                                      for b in range(blocks)]),
               query_first=query_first)


def discriminator_pairs(gallery_codes, query_codes, query_first):
  """(first, second) codes of each pair, the query first where `query_first`."""
  first = jnp.where(query_first[:, None], query_codes, gallery_codes)
  second = jnp.where(query_first[:, None], gallery_codes, query_codes)
  return first, second


def discriminator_update(state, disc, codes, query_first):
  """One step of the discriminator on fixed codes: (params, opt_state, loss, logits)."""
  n_local = query_first.shape[0]

  def loss_fn(disc_params):
    frozen = lax.stop_gradient(codes)
    first, second = discriminator_pairs(frozen[:n_local], frozen[n_local:2 * n_local],
                                        query_first)
    d_logits, _ = disc.apply({"params": disc_params}, first, second)
    loss = singh2019.discriminator_loss(d_logits, query_first, normaliser=_global_size(n_local))
    return loss, d_logits

  (loss, d_logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.disc_params)
  grads = lax.psum(grads, AXIS)
  updates, opt_state = state.disc_tx.update(grads, state.disc_opt_state, state.disc_params)
  return optax.apply_updates(state.disc_params, updates), opt_state, loss, d_logits


def pair_masks(views: Views) -> PairMasks:
  """Which (this device's view, global view) pairs count, and at which level they are similar."""
  kinds = singh2019.pair_kinds(views.labels, views.items,
                               lax.all_gather(views.labels, AXIS, tiled=True),
                               lax.all_gather(views.items, AXIS, tiled=True))
  valid = views.index[:, None] != lax.all_gather(views.index, AXIS, tiled=True)[None, :]
  category_similar = kinds <= singh2019.PAIR_SAME_TYPE
  return PairMasks(valid=valid, category_similar=category_similar,
                   item_valid=valid & category_similar,
                   item_similar=kinds == singh2019.PAIR_SAME_ITEM)


def update_memory(memory, step, views: Views, *, codes, features, class_bits: int):
  """The memory with this step's gallery views (gathered over devices: their item codes, the
  codes' last num_bits - class_bits bits, and features) written at rows (step * N) % size on
  (N the global batch's items; size a multiple of N, config_lib checks), the oldest replaced."""
  n_local = views.query_first.shape[0]
  gallery = lambda x: lax.stop_gradient(lax.all_gather(x[:n_local], AXIS, tiled=True))
  new = {"codes": gallery(codes[:, class_bits:]), "features": gallery(features),
         "items": gallery(views.items), "labels": gallery(views.labels)}
  start = (step * new["items"].shape[0]) % memory["items"].shape[0]
  return {k: lax.dynamic_update_slice_in_dim(memory[k], new[k].astype(memory[k].dtype), start,
                                             axis=0) for k in memory}


def count(mask):
  """The number of True entries over all devices."""
  return lax.psum(jnp.sum(mask), AXIS)


def singh2019_loss(codes, logits, *, views: Views, masks: PairMasks, disc, disc_params,
                   loss_config, num_bits: int):
  """(total, terms) of the paper's objective on this device's codes and logits."""
  gamma, gamma_item = singh2019.cauchy_gammas(loss_config, num_bits)
  n_global = _global_size(views.query_first.shape[0])
  n_local = views.query_first.shape[0]
  all_codes = lax.all_gather(codes, AXIS, tiled=True)
  distances = distance.relaxed_hamming(codes, all_codes, num_bits=num_bits)
  first, second = discriminator_pairs(codes[:n_local], codes[n_local:], views.query_first)
  adv_logits, _ = disc.apply({"params": disc_params}, first, second)
  m = masks
  terms = {
      "classification": singh2019.classification_loss(logits, views.labels,
                                                       normaliser=2 * n_global),
      "hamming": singh2019.cauchy_cross_entropy(
          distances, m.category_similar, m.valid, gamma=gamma,
          num_similar=count(m.category_similar & m.valid),
          num_dissimilar=count(~m.category_similar & m.valid)),
      "hamming_item": singh2019.cauchy_cross_entropy(
          distances, m.item_similar, m.item_valid, gamma=gamma_item,
          num_similar=count(m.item_similar & m.item_valid),
          num_dissimilar=count(~m.item_similar & m.item_valid)),
      "adversarial": singh2019.scramble_loss(adv_logits, views.query_first,
                                             mode=loss_config.adversarial_mode,
                                             normaliser=n_global),
      "quantization": singh2019.quantization_loss(codes, normaliser=2 * n_global * num_bits),
  }
  total = sum(loss_config[f"{name}_weight"] * value for name, value in terms.items())
  return total, terms


def continuation_codes(pre_codes, step, g):
  """tanh(beta * pre_codes), beta HashNet's continuation scale at `step` (float32)."""
  beta = baselines.hashnet_scale(step, continuation_gamma=g.continuation_gamma,
                                 continuation_power=g.continuation_power,
                                 continuation_step_size=g.continuation_step_size)
  return jnp.tanh(beta * jnp.asarray(pre_codes, jnp.float32))


def graded_loss(codes, pre_codes, logits, features, *, views: Views, masks: PairMasks,
                loss_config, num_bits: int, num_classes: int, memory=None, step=None):
  """(total, terms) of the graded objective (losses/graded.py) on this device's views.

  Item level: this device's query views (anchors) against the gallery views of the global batch
  (candidates; column j = global catalogue item j of the batch), every other item a negative;
  with `item_symmetric`, averaged with the reverse direction (gallery views against query views).
  With `continuation_gamma` > 0 every term reads tanh(beta * pre_codes) (`continuation_codes`)
  in place of `codes`, and its gradient reaches the network through pre_codes.
  `memory` (state.memory, from step `memory_start_step` on): the gallery views of earlier steps
  as more negatives of each query view, other items only, and with `memory_type_ap` more
  columns of the FastAP type order of every view.
  With `type_level_views = "gallery"` the type level (the pair term and FastAP) scores the
  gallery views among themselves; the item level reads every view, the classifier every view
  or, with `classifier_views = "gallery"`, the gallery views alone.
  With `class_bits` > 0 the code is split: its first `class_bits` bits are pulled to the class's
  Hadamard centre (in place of the pair and FastAP terms), the item InfoNCE reads the other bits
  only. With `item_bit_weight` > 0 each query view's signs are held to its gallery view's
  (`_graded_item_bits`). `type_level_codes` and `item_level_codes` = "sign_ste": that level
  scores the codes' signs, with the gradient passed straight through to the codes.
  """
  g = loss_config.graded
  if config_lib.graded_option(g, "continuation_gamma"):
    codes = continuation_codes(pre_codes, step, g).astype(codes.dtype)
  n_global = _global_size(views.query_first.shape[0])
  n_views = views_per_item(views) * n_global    # over the global batch
  filled = None   # (1, M): the memory's rows in use at this step
  if memory is not None:
    start = config_lib.graded_option(g, "memory_start_step")
    filled = (memory["items"][None, :] >= 0) & (step >= start)
  if config_lib.graded_option(g, "classifier_views") == "gallery":
    # The class read from the gallery views alone: the mean over the global batch's N of them.
    classified = singh2019.classification_loss(
        logits, views.labels, normaliser=n_global, where=is_gallery(views.index, n_global))
  else:
    classified = singh2019.classification_loss(logits, views.labels, normaliser=n_views)
  terms = {"classification": classified}
  weights = {"classification": loss_config.classification_weight}
  # The signs forward, the identity backward (the straight-through estimator).
  signs_ste = lambda x: x + lax.stop_gradient(jnp.sign(x) - x)
  type_codes = codes
  if config_lib.graded_option(g, "type_level_codes") == "sign_ste":
    type_codes = signs_ste(codes)
  type_terms, type_weights = _graded_type_terms(
      type_codes, pre_codes, views=views, masks=masks, g=g, num_bits=num_bits,
      num_classes=num_classes, memory=memory, filled=filled)
  item_codes = codes
  if config_lib.graded_option(g, "item_level_codes") == "sign_ste":
    item_codes = signs_ste(codes)    # config_lib refuses it with a memory
  item_terms = _graded_item_terms(item_codes, features, views=views, g=g, num_bits=num_bits,
                                  num_classes=num_classes, memory=memory, filled=filled)
  terms.update(type_terms, **item_terms)
  if config_lib.graded_option(g, "item_bit_weight"):
    terms["item_bits"] = _graded_item_bits(pre_codes, codes, views=views, g=g)
    weights["item_bits"] = g.item_bit_weight
  terms["quantization"] = singh2019.quantization_loss(codes, normaliser=n_views * num_bits)
  weights.update(type_weights, item=g.item_weight, item_features=g.feature_item_weight,
                 quantization=loss_config.quantization_weight)
  total = sum(weights[name] * value for name, value in terms.items())
  return total, terms


def _graded_type_terms(codes, pre_codes, *, views: Views, masks: PairMasks, g, num_bits: int,
                       num_classes: int, memory, filled):
  """(terms, weights) of the graded objective's type level: the Hadamard class centres of the
  first `class_bits` bits, or the Cauchy pair term and FastAP over the whole code."""
  n_global = _global_size(views.query_first.shape[0])
  n_views = views_per_item(views) * n_global
  class_bits = g.get("class_bits", 0)
  if class_bits:
    centres = graded.class_centres(num_classes, class_bits)
    terms = {
        "class_centre": graded.class_centre_loss(
            pre_codes[:, :class_bits], views.labels, centres, scale=g.centre_scale,
            margin=g.centre_margin, normaliser=n_views),
        "class_centre_bits": graded.centre_bit_loss(
            pre_codes[:, :class_bits], views.labels, centres, normaliser=n_views)}
    return terms, {"class_centre": g.centre_weight, "class_centre_bits": g.centre_bit_weight}
  gathered = lax.all_gather(codes, AXIS, tiled=True)
  # "inner_product": the distances between the signs with a gradient on every bit; identical
  # signs are 0 bits apart exactly, so the pair term's log goes linear below 1 bit.
  inner_product = config_lib.graded_option(g, "sign_gradient") == "inner_product"
  if inner_product:
    distances = distance.sign_hamming(codes, gathered, num_bits=num_bits)
  else:
    distances = distance.relaxed_hamming(codes, gathered, num_bits=num_bits)
  m = masks
  rows = None   # with type_level_views="gallery": which of this device's views are anchors
  if config_lib.graded_option(g, "type_level_views") == "gallery":
    # Gallery views only, as anchors and as columns: the type level learns from views like the
    # images the category search ranks, the query views' nuisances are left to the item level.
    rows = is_gallery(views.index, n_global)
    columns = is_gallery(lax.all_gather(views.index, AXIS, tiled=True), n_global)
    m = m._replace(valid=m.valid & rows[:, None] & columns[None, :])
  terms = {"hamming": singh2019.cauchy_cross_entropy(
      distances, m.category_similar, m.valid, gamma=g.pair_gamma,
      num_similar=count(m.category_similar & m.valid),
      num_dissimilar=count(~m.category_similar & m.valid), threshold=g.pair_threshold,
      min_distance=1.0 if inner_product else 0.0)}
  weights = {"hamming": g.pair_weight}
  if g.get("ap_weight", 0.0):
    d, similar, valid = distances, m.category_similar, m.valid
    if filled is not None and config_lib.graded_option(g, "memory_type_ap"):
      # The memory's rows as more columns of the type order: thousands of views per anchor
      # rather than the batch's 2N.
      d = jnp.concatenate([d, distance.relaxed_hamming_matmul(
          codes, lax.stop_gradient(memory["codes"]), num_bits=num_bits)], axis=1)
      similar = jnp.concatenate(
          [similar, views.labels[:, None] == memory["labels"][None, :]], axis=1)
      filled_rows = filled if rows is None else filled & rows[:, None]
      valid = jnp.concatenate(
          [valid, jnp.broadcast_to(filled_rows, (codes.shape[0], filled.shape[1]))], axis=1)
    # The mean over the anchors: every view's, or the gallery views' alone.
    terms["type_ap"] = graded.fast_ap_loss(d, similar, valid, num_bits=num_bits,
                                           normaliser=n_views if rows is None else n_global)
    weights["type_ap"] = g.ap_weight
  return terms, weights


def _graded_item_terms(codes, features, *, views: Views, g, num_bits: int, num_classes: int,
                       memory, filled):
  """The graded objective's item InfoNCE terms on the codes' last num_bits - class_bits bits
  and on the features: each query view against the global batch's gallery views (and the
  memory's rows), with `item_symmetric` averaged with the reverse direction."""
  n_local = views.query_first.shape[0]
  n_global = _global_size(n_local)
  class_bits = g.get("class_bits", 0)
  gallery = lambda x: lax.all_gather(x[:n_local], AXIS, tiled=True)
  positive = views.index[n_local:] % n_global          # the anchor's own gallery column
  n_anchors = (views_per_item(views) - 1) * n_global    # query views over the global batch
  negative = ((gallery(views.items)[None, :] != views.items[n_local:, None])
              | (gallery(views.labels)[None, :] != views.labels[n_local:, None]))
  memory_negative = None
  if memory is not None:
    memory_negative = filled & (memory["items"][None, :] != views.items[n_local:, None])
  symmetric = config_lib.graded_option(g, "item_symmetric")
  if symmetric:
    query = lambda x: lax.all_gather(x[n_local:], AXIS, tiled=True)
    reverse_negative = ((query(views.items)[None, :] != views.items[:n_local, None])
                        | (query(views.labels)[None, :] != views.labels[:n_local, None]))
  item_terms = (
      ("item", codes[:, class_bits:], "codes", functools.partial(
          graded.item_infonce_on_codes, temperature=g.item_temperature,
          num_bits=num_bits - class_bits, normaliser=n_anchors)),
      ("item_features", features, "features", functools.partial(
          graded.item_infonce_on_features, temperature=g.feature_temperature,
          normaliser=n_anchors)))
  # With item_type_bit_discount: the code distance weighted per bit, the bits each type agrees
  # on (over the global batch's views) weighing less, so the items spread off their type's place.
  weights = lambda anchor_labels: {}
  if config_lib.graded_option(g, "item_type_bit_discount"):
    per_type = graded.type_bit_weights(
        lax.all_gather(codes[:, class_bits:], AXIS, tiled=True),
        lax.all_gather(views.labels, AXIS, tiled=True), num_classes=num_classes,
        discount=g.item_type_bit_discount)
    weights = lambda anchor_labels: {"bit_weights": per_type[anchor_labels]}
  terms = {}
  for name, x, memory_key, term in item_terms:
    extra = weights(views.labels[n_local:]) if name == "item" else {}
    terms[name] = term(x[n_local:], gallery(x), positive, negative,
                       memory=None if memory is None else memory[memory_key],
                       memory_negative=memory_negative, **extra)
    if symmetric:
      # And each gallery view against the batch's query views (its own query view the
      # positive, CLIP's symmetric form): the two directions averaged.
      extra = weights(views.labels[:n_local]) if name == "item" else {}
      reverse = term(x[:n_local], query(x), views.index[:n_local], reverse_negative,
                     **{**extra, "normaliser": n_global})
      terms[name] = 0.5 * (terms[name] + reverse)
  return terms


def _graded_item_bits(pre_codes, codes, *, views: Views, g):
  """The hinge of each query view's signs against its own gallery view's
  (`graded.bit_agreement_loss` on the last num_bits - class_bits bits), the mean over the global
  batch's query views."""
  n_local = views.query_first.shape[0]
  n_global = _global_size(n_local)
  class_bits = g.get("class_bits", 0)
  gallery = lax.all_gather(codes[:n_local, class_bits:], AXIS, tiled=True)
  own = gallery[views.index[n_local:] % n_global]       # each query view's gallery view
  return graded.bit_agreement_loss(
      pre_codes[n_local:, class_bits:], own, margin=config_lib.graded_option(g, "item_bit_margin"),
      normaliser=(views_per_item(views) - 1) * n_global)


def baseline_loss(pre_codes, logits, *, views: Views, method: str, hyper: dict, loss_config,
                  num_classes: int, step):
  """(total, terms) of a peer method's loss (plus the weighted classification term).

  A baseline's loss is defined on the whole batch: every device evaluates it on the gathered
  pre-codes; the gather's transpose sums the devices' cotangents, hence the division by the
  number of devices.
  """
  n_global = _global_size(views.query_first.shape[0])
  all_pre = lax.all_gather(pre_codes, AXIS, tiled=True)
  all_labels = lax.all_gather(views.labels, AXIS, tiled=True)
  value, aux = baselines.BASELINES[method](all_pre, all_labels, num_classes=num_classes,
                                           step=step, **hyper)
  devices = lax.axis_size(AXIS)
  terms = {
      "classification": singh2019.classification_loss(logits, views.labels,
                                                       normaliser=2 * n_global),
      "baseline": value / devices,
      **{f"baseline_{k}": lax.stop_gradient(v) / devices for k, v in aux.items()},
  }
  return loss_config.classification_weight * terms["classification"] + terms["baseline"], terms


def step_metrics(*, total, terms, disc_loss, d_logits, logits, codes, views: Views, grads,
                 num_bits: int) -> dict:
  """Every loss term, the accuracies and the collapse watch, summed over devices."""
  n_global = _global_size(views.query_first.shape[0])
  n_views = views_per_item(views) * n_global
  binary = codes > 0
  return {
      "loss": lax.psum(total, AXIS),
      **{f"loss_{k}": lax.psum(v, AXIS) for k, v in terms.items()},
      "loss_discriminator": lax.psum(disc_loss, AXIS),
      "accuracy": count(jnp.argmax(logits, -1) == views.labels) / n_views,
      "discriminator_accuracy": count((d_logits > 0) == views.query_first) / n_global,
      # Collapse watch: |mean of each bit over the batch|, 0 = balanced, 1 = constant bit.
      "bit_imbalance": jnp.mean(jnp.abs(
          lax.psum(jnp.sum(2.0 * binary - 1.0, axis=0), AXIS) / n_views)),
      "code_saturation": count(jnp.abs(codes) > 0.9) / (n_views * num_bits),
      "grad_norm": optax.tree.norm(grads),
      "grad_norm_encoder": optax.tree.norm(grads["encoder"]),
  }


def make_train_step(config, mesh) -> Callable:
  """Returns the jitted `train_step(state, batch, rng) -> (state, metrics)`.

  `batch` is a global batch of catalogue items sharded on `data`: uint8 "image" (N, H, W, C),
  int32 "label" (N,) and "item" (N,); the step renders (1 + input.augment.query_views) N views.
  """
  net, disc = models.create_models(config.model, config.input.num_classes, axis_name=AXIS,
                                    compute_dtype=config.train.get("compute_dtype", "float32"))
  num_bits = config.model.num_bits
  method = config.get("method", "singh2019")
  query_views = config_lib.added_field(config, "input.augment.query_views")
  if method in baselines.BASELINES:
    hyper = {**baselines.default_hyper(method, num_bits),
             **dict(config.loss.get("baseline_hyper", {}) or {})}

  def body(state, batch, rng):
    views = render_views(batch, rng, state.step, config.input.augment,
                         query_views=query_views)

    # Dropout (the AlexNet encoder) differs per device and step; the lean CNN has none.
    dropout_key = jax.random.fold_in(jax.random.fold_in(rng, state.step),
                                     DROPOUT_STREAM + lax.axis_index(AXIS))

    def forward(params):
      (codes, inter), updates = net.apply(
          {"params": params, "batch_stats": state.batch_stats}, views.images, train=True,
          mutable=["batch_stats"], rngs={"dropout": dropout_key})
      outputs = (codes, inter["pre_codes"], inter["logits"], inter["features"])
      return outputs, updates["batch_stats"]

    (codes, pre_codes, logits, features), backward, batch_stats = jax.vjp(
        forward, state.params, has_aux=True)
    d_features = jnp.zeros_like(features)
    disc_params, disc_opt_state, disc_loss, d_logits = discriminator_update(
        state, disc, codes, views.query_first)
    if method == "singh2019":
      loss_fn = lambda c, l: singh2019_loss(c, l, views=views, masks=pair_masks(views),
                                            disc=disc, disc_params=disc_params,
                                            loss_config=config.loss, num_bits=num_bits)
      (total, terms), (d_codes, d_logits_cls) = jax.value_and_grad(
          loss_fn, argnums=(0, 1), has_aux=True)(codes, logits)
      d_pre = jnp.zeros_like(pre_codes)
    elif method == "graded":
      loss_fn = lambda c, p, l, f: graded_loss(
          c, p, l, f, views=views, masks=pair_masks(views), loss_config=config.loss,
          num_bits=num_bits, num_classes=config.input.num_classes, memory=state.memory,
          step=state.step)
      (total, terms), (d_codes, d_pre, d_logits_cls, d_features) = jax.value_and_grad(
          loss_fn, argnums=(0, 1, 2, 3), has_aux=True)(codes, pre_codes, logits, features)
    else:
      loss_fn = lambda p, l: baseline_loss(p, l, views=views, method=method, hyper=hyper,
                                           loss_config=config.loss,
                                           num_classes=config.input.num_classes, step=state.step)
      (total, terms), (d_pre, d_logits_cls) = jax.value_and_grad(
          loss_fn, argnums=(0, 1), has_aux=True)(pre_codes, logits)
      d_codes = jnp.zeros_like(codes)
    (grads,) = backward((d_codes, d_pre, d_logits_cls, d_features))
    grads = lax.psum(grads, AXIS)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    metrics = step_metrics(total=total, terms=terms, disc_loss=disc_loss, d_logits=d_logits,
                           logits=logits, codes=codes, views=views, grads=grads,
                           num_bits=num_bits)
    memory = state.memory
    if memory is not None:   # graded with a cross-batch memory: this step's gallery views
      memory = update_memory(memory, state.step, views, codes=codes, features=features,
                             class_bits=config.loss.graded.get("class_bits", 0))
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params,
                                                                              updates),
                              batch_stats=batch_stats, opt_state=opt_state,
                              disc_params=disc_params, disc_opt_state=disc_opt_state,
                              memory=memory)
    return new_state, metrics

  sharded = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(AXIS), P()),
                          out_specs=(P(), P()), check_vma=False)
  return jax.jit(sharded, donate_argnums=0)
