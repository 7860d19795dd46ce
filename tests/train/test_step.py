"""train/step.py: the sharded train step on the tiny config (8 devices against 1, each term)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from deephash_jax import models
from deephash_jax.data import augment
from deephash_jax.losses import singh2019
from deephash_jax.train import state as state_lib
from deephash_jax.train import step as step_lib
from tests import fake_data
from tests.losses.test_distance import np_relaxed_hamming
from tests.losses.test_graded import np_fast_ap_loss
from tests.losses.test_singh2019 import np_cauchy

TERMS = ("classification", "hamming", "hamming_item", "adversarial", "quantization")


def _batch(n, seed=0):
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % 4).astype(np.int32)
  return {"image": fake_data.class_images(labels, rng)[..., None], "label": labels,
          "item": np.arange(n, dtype=np.int32)}


def _use_sign_codes(config):
  config.model.code_activation, config.loss.quantization_weight = "sign_ste", 0.0


def _one_step(config, devices, state, batch):
  mesh = Mesh(np.array(devices), ("data",))
  state = jax.device_put(state, NamedSharding(mesh, P()))
  batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
  return step_lib.make_train_step(config, mesh)(state, batch, jax.random.key(7))


@pytest.mark.parametrize("method,code_activation",
                         [("singh2019", "sign_ste"), ("singh2019", "tanh"), ("graded", "tanh"),
                          ("graded_split", "tanh"), ("graded_ap", "tanh"), ("dch", "tanh"),
                          ("graded_query_views", "tanh")])
def test_eight_devices_equal_one_device(config, method, code_activation):
  assert jax.device_count() == 8
  if method == "graded_query_views":      # two query views of each item, the type level on all
    method, config.input.augment.query_views = "graded", 2
  if method == "graded_ap":               # the type level's FastAP term beside the pair term
    method, config.loss.graded.ap_weight = "graded", 1.0
  if method == "graded_split":            # the 16-bit tiny code: an 8-bit class prefix, 8 item bits
    method, config.loss.graded.class_bits = "graded", 8
  config.method = method
  if code_activation == "sign_ste":
    _use_sign_codes(config)
  config.train.warmup_steps = 0  # Else the first step has learning rate 0.
  state = state_lib.create_train_state(config, jax.random.key(0), 10, (28, 28, 1))
  batch = _batch(16)
  copy = lambda s: jax.tree.map(np.array, s)
  s8, m8 = _one_step(config, jax.devices(), copy(state), batch)
  s1, m1 = _one_step(config, jax.devices()[:1], copy(state), batch)
  for key in m1:
    np.testing.assert_allclose(m8[key], m1[key], rtol=2e-4, atol=1e-6, err_msg=key)
  flat8 = jax.tree.leaves_with_path({"p": s8.params, "b": s8.batch_stats, "d": s8.disc_params})
  flat1 = jax.tree.leaves({"p": s1.params, "b": s1.batch_stats, "d": s1.disc_params})
  lr = config.train.learning_rate
  for (path, a), b in zip(flat8, flat1):
    a, b, name = np.asarray(a), np.asarray(b), jax.tree_util.keystr(path)
    # Adam's first step is lr * g / (|g| + eps), lr * sign(g) wherever |g| >> eps, so a gradient
    # entry within float round-off of 0 can step differently on one device count and the other
    # (with tanh codes: one entry of the flattened feature layer's 25,088, off by 5e-6; the sign
    # layer's codes make them more common). Allow that on 2 entries (tanh) or 1 %, nothing else.
    close = np.isclose(a, b, rtol=1e-4, atol=1e-6)
    allowed = 2 if code_activation == "tanh" else max(2, 0.01 * close.size)
    assert (~close).sum() <= allowed, (name, (~close).sum(), close.size)
    np.testing.assert_array_less(np.abs(a - b)[~close], 2 * lr * 1.01, err_msg=name)
  # And the step did change the parameters (the comparison above is not vacuous).
  before = jax.tree.leaves(state.params)
  assert any(not np.allclose(a, b) for a, b in zip(before, jax.tree.leaves(s1.params)))


@pytest.mark.parametrize("term", TERMS)
def test_every_loss_term_reaches_the_encoder(config, term):
  for name in TERMS:
    config.loss[f"{name}_weight"] = 1.0 if name == term else 0.0
  state = state_lib.create_train_state(config, jax.random.key(0), 10, (28, 28, 1))
  _, metrics = _one_step(config, jax.devices(), state, _batch(16))
  assert float(metrics["grad_norm_encoder"]) > 1e-6, term
  assert float(metrics[f"loss_{term}"]) != 0.0


@pytest.mark.parametrize("method", ["dch", "hashnet", "dpsh", "csq", "greedyhash", "orthohash"])
def test_every_baseline_trains_the_encoder_in_the_shared_step(config, method):
  config.method = method
  config.loss.classification_weight = 0.0
  if method == "greedyhash":
    config.model.code_activation = "sign_ste"
  state = state_lib.create_train_state(config, jax.random.key(0), 10, (28, 28, 1))
  _, metrics = _one_step(config, jax.devices(), state, _batch(16))
  assert np.isfinite(float(metrics["loss"]))
  assert float(metrics["grad_norm_encoder"]) > 1e-6, method
  assert float(metrics["loss_baseline"]) != 0.0


def test_zero_weights_give_zero_encoder_gradient(config):
  """Control for the test above: it can fail."""
  for name in TERMS:
    config.loss[f"{name}_weight"] = 0.0
  state = state_lib.create_train_state(config, jax.random.key(0), 10, (28, 28, 1))
  _, metrics = _one_step(config, jax.devices(), state, _batch(16))
  assert float(metrics["grad_norm_encoder"]) == 0.0


def _codes_and_pairs(config, seed=0):
  """Relaxed codes of the two views of 16 items, and which view the discriminator sees first."""
  state = state_lib.create_train_state(config, jax.random.key(seed), 10, (28, 28, 1))
  net, disc = models.create_models(config.model, config.input.num_classes)
  images = augment.preprocess(_batch(32, seed)["image"])
  codes, _ = net.apply({"params": state.params, "batch_stats": state.batch_stats}, images,
                       train=False)
  query_first = jnp.asarray(np.random.default_rng(seed).random(16) < 0.5)
  return state, disc, codes, query_first


def _discriminator_loss(disc, params, codes, query_first):
  first, second = step_lib.discriminator_pairs(codes[:16], codes[16:], query_first)
  logits, _ = disc.apply({"params": params}, first, second)
  return float(singh2019.discriminator_loss(logits, query_first)), logits


def _discriminator_update(disc):
  """The jitted discriminator update on one device: (state, codes, query_first) -> its params."""
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  return jax.jit(jax.shard_map(
      lambda s, c, q: step_lib.discriminator_update(s, disc, c, q)[0], mesh=mesh,
      in_specs=(P(), P(), P()), out_specs=P(), check_vma=False))


def test_a_discriminator_update_lowers_its_loss(config):
  state, disc, codes, query_first = _codes_and_pairs(config)
  update = _discriminator_update(disc)
  before, _ = _discriminator_loss(disc, state.disc_params, codes, query_first)
  params = state.disc_params
  for _ in range(5):
    params = update(state.replace(disc_params=params), codes, query_first)
  after, _ = _discriminator_loss(disc, params, codes, query_first)
  assert after < before


def test_a_scramble_step_moves_the_discriminator_towards_one_half(config):
  """The encoder's adversarial term, descended on the codes against a fixed discriminator,
  makes its predictions less certain: |p - 1/2| shrinks."""
  state, disc, codes, query_first = _codes_and_pairs(config, seed=1)
  params = state.disc_params
  update = _discriminator_update(disc)
  for _ in range(20):   # a discriminator that has learnt something to scramble
    params = update(state.replace(disc_params=params), codes, query_first)

  def scramble(c):
    first, second = step_lib.discriminator_pairs(c[:16], c[16:], query_first)
    logits, _ = disc.apply({"params": params}, first, second)
    return singh2019.scramble_loss(logits, query_first)

  certainty = lambda c: float(jnp.mean(jnp.abs(jax.nn.sigmoid(
      _discriminator_loss(disc, params, c, query_first)[1]) - 0.5)))
  before = certainty(codes)
  moved = codes - 0.5 * jax.grad(scramble)(codes)
  assert certainty(moved) < before


def _items_with_marks(num_classes=4, per_class=8, seed=0):
  """Fake catalogue items: the class is the stripe pattern (fake_data), the item a black mark at
  its own place inside the garment (darker than both stripes, so it survives the input's
  standardization, which also removes fake_data's per-image brightness offset: no item is
  recognisable by its brightness), so that an item is recognisable under the augmentations."""
  labels = np.repeat(np.arange(num_classes), per_class).astype(np.int32)
  images = fake_data.class_images(labels, np.random.default_rng(seed))
  for i in range(len(labels)):
    r, c = divmod(i % per_class, 4)
    images[i, 6 + 8 * r:10 + 8 * r, 5 + 4 * c:8 + 4 * c] = 0
  return {"image": images[..., None], "label": labels, "item": np.arange(len(labels),
                                                                         dtype=np.int32)}


@pytest.mark.parametrize("class_bits,ap_weight", [(0, 0.0), (8, 0.0), (0, 5.0)])
def test_graded_codes_put_the_same_item_nearer_than_its_type_nearer_than_other_types(
    config, class_bits, ap_weight):
  """The property the graded objective is for: after a few steps on fake items, the mean
  Hamming distance of a query view to its own gallery view < to other items of its type < to
  other types; with or without the split code (an 8-bit class prefix of the 16 bits), and with
  the type level's FastAP term."""
  config.method = "graded"
  config.loss.graded.class_bits = class_bits
  config.loss.graded.ap_weight = ap_weight
  config.loss.graded.item_temperature = 0.1 * (config.model.num_bits - class_bits)
  # Query views with the gallery's nuisances only: the property is the objective's ordering of
  # the levels, not robustness to strong nuisances, which a 16-bit tiny CNN does not learn in a
  # few steps (with the default query views it holds at some step counts and not at others).
  config.input.augment.query.update(dict(
      max_rotation_deg=0.0, scale_range=(1.0, 1.0), max_brightness=0.0,
      contrast_range=(1.0, 1.0), gamma_range=(1.0, 1.0), background_prob=0.0))
  config.model.classifier_input = "features"
  config.train.warmup_steps = 0
  batch = _items_with_marks()
  state = state_lib.create_train_state(config, jax.random.key(0), 10, (28, 28, 1))
  mesh = Mesh(np.array(jax.devices()), ("data",))
  step = step_lib.make_train_step(config, mesh)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
  for i in range(80):
    state, metrics = step(state, sharded, jax.random.key(i))
  assert np.isfinite(float(metrics["loss"]))
  net, _ = models.create_models(config.model, config.input.num_classes)
  keys = jax.random.split(jax.random.key(99), len(batch["label"]))
  gallery, query = augment.two_views(jnp.asarray(batch["image"]), keys, config.input.augment)
  embed = lambda x: np.asarray(net.apply({"params": state.params,
                                          "batch_stats": state.batch_stats}, x,
                                         train=False)[0]) > 0
  d = (embed(query)[:, None, :] != embed(gallery)[None, :, :]).sum(-1)
  labels = batch["label"]
  same_item = np.eye(len(labels), dtype=bool)
  same_type = (labels[:, None] == labels[None, :]) & ~same_item
  other = labels[:, None] != labels[None, :]
  means = [d[m].mean() for m in (same_item, same_type, other)]
  assert means[0] < means[1] < means[2], means


def _np_info_nce(logits, positive, negative):
  rows = []
  for i in range(logits.shape[0]):
    cols = [j for j in range(logits.shape[1]) if negative[i, j] or j == positive[i]]
    row = logits[i, cols].astype(np.float64)
    rows.append(np.log(np.sum(np.exp(row - row.max()))) + row.max() - logits[i, positive[i]])
  return float(np.mean(rows))


@pytest.mark.parametrize("num_devices,discount", [(1, 0.0), (8, 0.0), (1, 0.8), (8, 0.8)])
def test_symmetric_item_terms_average_both_directions(config, num_devices, discount):
  """`item_symmetric`: each item term is the mean of the query -> gallery InfoNCE and the
  gallery -> query one, against a NumPy reference on the gathered views; items 0 and 3 are the
  same garment twice in the batch, so neither is a negative of the other in either direction.
  With `item_type_bit_discount` the code distance is weighted per bit by the anchor's type's
  mean code over all the global batch's views."""
  n, num_bits = 8, 16
  n_local = n // num_devices
  rng = np.random.default_rng(3)
  codes = np.tanh(rng.normal(size=(2, n, num_bits)) * 2).astype(np.float32)  # gallery, query
  features = rng.normal(size=(2, n, 8)).astype(np.float32)
  labels = rng.integers(0, 3, n).astype(np.int32)
  items = np.arange(n, dtype=np.int32)
  items[3], labels[3] = items[0], labels[0]
  config.method = "graded"
  config.loss.graded.item_symmetric = True
  config.loss.graded.item_type_bit_discount = discount
  mesh = Mesh(np.array(jax.devices()[:num_devices]), ("data",))

  def local(c, f, lab, it):   # this device's gallery views, then its query views
    i0 = jax.lax.axis_index("data") * n_local + jnp.arange(n_local)
    views = step_lib.Views(images=None, labels=jnp.concatenate([lab, lab]),
                           items=jnp.concatenate([it, it]),
                           index=jnp.concatenate([i0, n + i0]),
                           query_first=jnp.zeros(n_local, bool))
    _, terms = step_lib.graded_loss(
        jnp.concatenate([c[0], c[1]]), jnp.concatenate([c[0], c[1]]), jnp.zeros((2 * n_local, 3)),
        jnp.concatenate([f[0], f[1]]), views=views, masks=step_lib.pair_masks(views),
        loss_config=config.loss, num_bits=num_bits, num_classes=3)
    return {k: jax.lax.psum(terms[k], "data") for k in ("item", "item_features")}

  got = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(None, "data"), P(None, "data"),
                                                          P("data"), P("data")),
                              out_specs=P(), check_vma=False))(codes, features, labels, items)
  negative = (items[:, None] != items[None, :]) | (labels[:, None] != labels[None, :])
  unit = lambda x: x / np.sqrt(np.sum(x * x, -1, keepdims=True) + 1e-6)
  g = config.loss.graded
  means = np.stack([codes[:, labels == t].mean(axis=(0, 1)) if np.any(labels == t)
                    else np.zeros(num_bits) for t in range(3)])
  w = 1.0 - discount * np.abs(means[labels])              # (n, K), per anchor's type
  w /= w.mean(-1, keepdims=True)
  residual = lambda x: 1e-6 / (np.sum(x * x, -1) + 1e-6)
  # (anchors, candidates): K/4 * (sum_b w_b (a_hat_b - c_hat_b)^2 + residuals)
  hamming = lambda a, c: num_bits / 4 * (
      np.einsum("ab,acb->ac", w, (unit(a)[:, None, :] - unit(c)[None, :, :]) ** 2)
      + residual(a)[:, None] + residual(c)[None, :])
  cosine = unit(features[1]) @ unit(features[0]).T
  for name, forward, backward in (
      ("item", -hamming(codes[1], codes[0]) / g.item_temperature,
       -hamming(codes[0], codes[1]) / g.item_temperature),
      ("item_features", cosine / g.feature_temperature, cosine.T / g.feature_temperature)):
    want = 0.5 * (_np_info_nce(forward, np.arange(n), negative)
                  + _np_info_nce(backward, np.arange(n), negative.T))
    np.testing.assert_allclose(float(got[name]), want, rtol=2e-5, err_msg=name)


def test_more_query_views_render_the_same_first_two_views_and_new_nuisances(config):
  """`query_views=3`: the gallery view and the first query view of each item are those of one
  query view; blocks 2 and 3 are new draws of the query recipe (neither a copy of block 1 nor of
  each other); labels, items and the global index follow the block layout, on 2 devices."""
  batch = _batch(8)
  mesh = Mesh(np.array(jax.devices()[:2]), ("data",))

  def render(query_views):
    local = lambda b: step_lib.render_views(b, jax.random.key(5), 3, config.input.augment,
                                            query_views=query_views)
    out = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("data"), out_specs=P("data"),
                                check_vma=False))(batch)
    # Each device's (V * 4) views in block order: (devices, V, 4, ...) -> (V, 8, ...).
    return {k: np.swapaxes(np.asarray(v).reshape(2, -1, 4, *np.shape(v)[1:]), 0, 1).reshape(
        -1, 8, *np.shape(v)[1:]) for k, v in out._asdict().items() if k != "query_first"}

  one, three = render(1), render(3)
  np.testing.assert_array_equal(three["images"][:2], one["images"])
  for b in (1, 2):
    assert not np.allclose(three["images"][b + 1], three["images"][b])
  assert not np.allclose(three["images"][3], three["images"][1])
  for b in range(4):
    np.testing.assert_array_equal(three["labels"][b], batch["label"])
    np.testing.assert_array_equal(three["items"][b], batch["item"])
    np.testing.assert_array_equal(three["index"][b], b * 8 + np.arange(8))


@pytest.mark.parametrize("num_devices", [1, 8])
def test_every_query_view_is_an_anchor_of_the_item_level(config, num_devices):
  """`query_views=2`: each item term is the mean over both query blocks' anchors of their
  InfoNCE against the global batch's gallery views (NumPy), the same on 1 and 8 devices; the
  classification term averages all 3N views; `item_bit_weight`'s hinge holds each query view's
  pre-codes to its own gallery view's signs, the mean over the 2N query views."""
  n, num_bits = 8, 16
  n_local = n // num_devices
  rng = np.random.default_rng(4)
  pre_codes = (rng.normal(size=(3, n, num_bits)) * 2).astype(np.float32)  # gallery, 2 queries
  codes = np.tanh(pre_codes)
  features = rng.normal(size=(3, n, 8)).astype(np.float32)
  logits = rng.normal(size=(3, n, 3)).astype(np.float32)
  labels = rng.integers(0, 3, n).astype(np.int32)
  items = np.arange(n, dtype=np.int32)
  items[3], labels[3] = items[0], labels[0]
  config.method = "graded"
  config.input.augment.query_views = 2
  config.loss.graded.item_bit_weight = 1.0
  mesh = Mesh(np.array(jax.devices()[:num_devices]), ("data",))

  def local(c, pre, f, lg, lab, it):   # this device's gallery views, then its two query blocks
    i0 = jax.lax.axis_index("data") * n_local + jnp.arange(n_local)
    views = step_lib.Views(images=None, labels=jnp.tile(lab, 3), items=jnp.tile(it, 3),
                           index=jnp.concatenate([i0, n + i0, 2 * n + i0]),
                           query_first=jnp.zeros(n_local, bool))
    flat = lambda x: x.reshape(-1, x.shape[-1])
    _, terms = step_lib.graded_loss(
        flat(c), flat(pre), flat(lg), flat(f), views=views, masks=step_lib.pair_masks(views),
        loss_config=config.loss, num_bits=num_bits, num_classes=3)
    return {k: jax.lax.psum(terms[k], "data")
            for k in ("item", "item_features", "classification", "item_bits")}

  got = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(
      P(None, "data"), P(None, "data"), P(None, "data"), P(None, "data"), P("data"), P("data")),
                              out_specs=P(), check_vma=False))(codes, pre_codes, features, logits,
                                                               labels, items)
  negative = (items[:, None] != items[None, :]) | (labels[:, None] != labels[None, :])
  unit = lambda x: x / np.sqrt(np.sum(x * x, -1, keepdims=True) + 1e-6)
  g = config.loss.graded
  for name, logits_of in (
      ("item", lambda q: -np_relaxed_hamming(codes[q], codes[0], num_bits) / g.item_temperature),
      ("item_features",
       lambda q: unit(features[q]) @ unit(features[0]).T / g.feature_temperature)):
    want = 0.5 * sum(_np_info_nce(logits_of(q), np.arange(n), negative) for q in (1, 2))
    np.testing.assert_allclose(float(got[name]), want, rtol=2e-5, err_msg=name)
  shifted = logits - logits.max(-1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  want = -np.take_along_axis(log_p, np.broadcast_to(labels[None, :, None], (3, n, 1)), -1).mean()
  np.testing.assert_allclose(float(got["classification"]), want, rtol=2e-5)
  margin = config.loss.graded.item_bit_margin
  want = np.mean([np.maximum(0.0, margin - pre_codes[q] * np.sign(codes[0])).mean(-1)
                  for q in (1, 2)])
  np.testing.assert_allclose(float(got["item_bits"]), want, rtol=2e-5)


def test_the_memory_holds_the_last_steps_gallery_views_and_is_the_same_on_8_devices(config):
  """loss.graded.memory_size: step s writes its batch's gallery views at rows (s * N) % size
  (N = 16 items here), in the batch's item order; from memory_start_step on they are negatives
  of later steps' query views (the item loss changes), the same on 8 devices as on 1."""
  config.method = "graded"
  config.loss.graded.memory_size, config.loss.graded.memory_start_step = 48, 1
  config.train.warmup_steps = 0
  state = state_lib.create_train_state(config, jax.random.key(0), 10, (28, 28, 1))
  assert state.memory["codes"].shape == (48, config.model.num_bits)
  assert np.all(np.asarray(state.memory["items"]) == -1)
  copy = lambda s: jax.tree.map(np.array, s)
  batches = [_batch(16, seed=0), _batch(16, seed=1)]
  batches[1]["item"] = batches[1]["item"] + 100
  runs = {}
  for devices in (jax.devices(), jax.devices()[:1]):
    s, metrics = copy(state), []
    for b in batches:
      s, m = _one_step(config, devices, s, b)
      metrics.append(m)
    runs[len(devices)] = (s, metrics)
  s1, m1 = runs[1]
  items = np.asarray(s1.memory["items"])
  np.testing.assert_array_equal(items[:16], batches[0]["item"])
  np.testing.assert_array_equal(items[16:32], batches[1]["item"])
  assert np.all(items[32:] == -1)
  np.testing.assert_array_equal(np.asarray(s1.memory["labels"])[:32],
                                np.concatenate([b["label"] for b in batches]))
  assert np.all(np.abs(np.asarray(s1.memory["codes"])[:32]) > 0)
  s8, m8 = runs[8]
  for key in ("codes", "features", "items", "labels"):
    np.testing.assert_allclose(s8.memory[key], s1.memory[key], rtol=2e-4, atol=1e-5,
                               err_msg=key)
  np.testing.assert_allclose(m8[1]["loss_item"], m1[1]["loss_item"], rtol=2e-4)
  # Step 2 read the memory: from the same parameters (step 1 neither read nor needed it), its
  # item loss is higher than without one, the logsumexp over 16 more negatives.
  config.loss.graded.memory_size = 0
  plain = state_lib.create_train_state(config, jax.random.key(0), 10, (28, 28, 1))
  assert plain.memory is None
  for b in batches:
    plain, m = _one_step(config, jax.devices()[:1], plain, b)
  assert float(m1[1]["loss_item"]) > float(m["loss_item"]) + 1e-3


@pytest.mark.parametrize("step", [0, 5])
def test_the_memory_joins_the_type_order_of_fast_ap(config, step):
  """`memory_type_ap`: FastAP's columns are the batch's views plus the memory's filled rows
  (similar = the same type), from `memory_start_step` (5) on; before it, the batch's alone."""
  from deephash_jax.losses import graded
  n, num_bits, size = 4, 16, 6
  rng = np.random.default_rng(5)
  codes = np.tanh(rng.normal(size=(2 * n, num_bits)) * 2).astype(np.float32)
  labels = np.array([0, 1, 0, 2], np.int32)
  memory = {"codes": np.tanh(rng.normal(size=(size, num_bits)) * 2).astype(np.float32),
            "features": rng.normal(size=(size, 8)).astype(np.float32),
            "items": np.array([10, 11, 12, 13, -1, -1], np.int32),
            "labels": np.array([0, 2, 1, 0, -1, -1], np.int32)}
  config.method = "graded"
  g = config.loss.graded
  g.ap_weight, g.memory_type_ap, g.memory_start_step = 1.0, True, 5
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))

  def local(c, mem):
    views = step_lib.Views(images=None, labels=jnp.concatenate([labels, labels]),
                           items=jnp.arange(2 * n) % n, index=jnp.arange(2 * n),
                           query_first=jnp.zeros(n, bool))
    _, terms = step_lib.graded_loss(
        c, c, jnp.zeros((2 * n, 3)), jnp.zeros((2 * n, 8)), views=views,
        masks=step_lib.pair_masks(views), loss_config=config.loss, num_bits=num_bits,
        num_classes=3, memory=mem, step=jnp.int32(step))
    return terms["type_ap"]

  got = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P()), out_specs=P(),
                              check_vma=False))(codes, memory)
  unit = lambda x: x / np.sqrt(np.sum(x * x, -1, keepdims=True) + 1e-6)
  d = num_bits / 2 * (1 - unit(codes) @ unit(np.concatenate([codes, memory["codes"]])).T)
  all_labels = np.concatenate([labels, labels, memory["labels"]])
  view_labels = np.concatenate([labels, labels])
  similar = view_labels[:, None] == all_labels[None, :]
  valid = np.concatenate([~np.eye(2 * n, dtype=bool),
                          np.broadcast_to(memory["items"] >= 0, (2 * n, size)) & (step >= 5)], 1)
  want = graded.fast_ap_loss(np.maximum(d, 0).astype(np.float32), similar, valid,
                             num_bits=num_bits)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-4, atol=1e-6)


def _graded_loss_on_one_device(config, codes, pre_codes, features, labels, step, logits=None):
  """(total, terms) of `graded_loss` on one device for 2N views of N items (labels (N,)): the
  gallery views first, then the query views; the classifier's logits (2N, 3) zero unless
  given."""
  n = len(labels)
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  logits = jnp.zeros((2 * n, 3)) if logits is None else jnp.asarray(logits)

  def local(c, p, f, lg):
    views = step_lib.Views(images=None, labels=jnp.concatenate([labels, labels]),
                           items=jnp.arange(2 * n) % n, index=jnp.arange(2 * n),
                           query_first=jnp.zeros(n, bool))
    return step_lib.graded_loss(
        c, p, lg, f, views=views, masks=step_lib.pair_masks(views),
        loss_config=config.loss, num_bits=c.shape[1], num_classes=3, step=jnp.int32(step))
  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(), P()), out_specs=P(),
                       check_vma=False)(codes, pre_codes, jnp.asarray(features), logits)


@pytest.mark.parametrize("classifier_views", ["all", "gallery"])
def test_classifier_views_chooses_the_views_the_class_is_read_from(config, classifier_views):
  """`classifier_views`: the classification term is the softmax cross-entropy averaged over every
  view, or over the gallery views alone (NumPy), and with "gallery" no gradient reaches the query
  views' logits; the other terms are the same either way."""
  n, num_bits = 4, 16
  rng = np.random.default_rng(21)
  codes = np.tanh(rng.normal(size=(2 * n, num_bits))).astype(np.float32)
  logits = rng.normal(size=(2 * n, 3)).astype(np.float32) * 2.0
  labels = np.array([0, 1, 2, 1], np.int32)
  config.method = "graded"
  terms = lambda lg: _graded_loss_on_one_device(config, codes, codes, codes[:, :8], labels, 0,
                                                logits=lg)[1]
  # A new function for each setting: jit reads the config when it traces.
  every_view = jax.jit(lambda lg: terms(lg))(logits)
  config.loss.graded.classifier_views = classifier_views
  got = jax.jit(lambda lg: terms(lg))(logits)
  grad = np.asarray(jax.jit(jax.grad(lambda lg: terms(lg)["classification"]))(logits))

  shifted = logits - logits.max(axis=1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  per_view = -log_p[np.arange(2 * n), np.concatenate([labels, labels])]
  want = per_view[:n].mean() if classifier_views == "gallery" else per_view.mean()
  np.testing.assert_allclose(float(got["classification"]), want, rtol=1e-5)
  assert np.any(grad[:n])
  assert np.any(grad[n:]) == (classifier_views == "all")
  for name in set(got) - {"classification"}:
    np.testing.assert_allclose(float(got[name]), float(every_view[name]), rtol=1e-6,
                               err_msg=name)
  assert (abs(float(got["classification"]) - float(every_view["classification"])) > 1e-3) == (
      classifier_views == "gallery")


@pytest.mark.parametrize("step", [0, 450])
def test_continuation_scores_tanh_of_the_scaled_pre_codes(config, step):
  """`continuation_gamma`: every graded term reads tanh(beta * pre_codes), beta = (1 + gamma *
  t) ** power with t the step rounded down to a multiple of step_size (NumPy here), whatever
  codes the network passed; the gradient reaches the network through pre_codes alone."""
  n, num_bits = 4, 16
  rng = np.random.default_rng(7)
  pre = rng.normal(size=(2 * n, num_bits)).astype(np.float32)
  labels = np.array([0, 1, 0, 2], np.int32)
  config.method = "graded"
  g = config.loss.graded
  g.ap_weight = 1.0

  def loss(codes, pre_codes):
    return _graded_loss_on_one_device(config, codes, pre_codes, pre_codes[:, :8], labels, step)

  beta = (1.0 + 0.01 * (step // 200 * 200)) ** 0.5
  g.continuation_gamma = 0.0
  # A new function for each setting: jit reads the config when it traces.
  want_total, want = jax.jit(lambda c, p: loss(c, p))(np.tanh(beta * pre), pre)
  g.continuation_gamma, g.continuation_power, g.continuation_step_size = 0.01, 0.5, 200
  got_total, got = jax.jit(lambda c, p: loss(c, p))(np.zeros_like(pre), pre)
  assert set(got) == set(want) and float(got_total) == pytest.approx(float(want_total), 1e-5)
  for name in want:
    np.testing.assert_allclose(float(got[name]), float(want[name]), rtol=1e-5, atol=1e-6,
                               err_msg=name)
  d_codes, d_pre = jax.jit(jax.grad(lambda c, p: loss(c, p)[0], argnums=(0, 1)))(
      np.zeros_like(pre), pre)
  assert not np.any(np.asarray(d_codes))
  assert np.any(np.asarray(d_pre))


@pytest.mark.parametrize("level", ["type", "item"])
def test_sign_ste_level_reads_the_signs_and_passes_the_gradient_straight_through(config, level):
  """`type_level_codes` / `item_level_codes` = "sign_ste": that level's terms (the pair term and
  FastAP; the item InfoNCE on the codes) score the signs of the codes (the Hamming distance the
  search ranks) and their gradient with respect to the codes is theirs at the signs (straight
  through); the other terms read the codes as before. The item InfoNCE on the signs against
  NumPy: logits -d_H / temperature, each query view against the gallery views, other items the
  negatives."""
  n, num_bits = 4, 16
  rng = np.random.default_rng(11)
  codes = np.tanh(rng.normal(size=(2 * n, num_bits)) * 0.7).astype(np.float32)
  signs = np.sign(codes)
  labels = np.array([0, 1, 0, 2], np.int32)
  config.method = "graded"
  g = config.loss.graded
  g.ap_weight = 1.0
  field, names = {"type": ("type_level_codes", ("hamming", "type_ap")),
                  "item": ("item_level_codes", ("item",))}[level]

  def terms(c):
    return _graded_loss_on_one_device(config, c, c, codes[:, :8], labels, 0)[1]

  level_sum = lambda t: sum(t[name] for name in names)
  g[field] = "continuous"
  # A new function for each setting: jit reads the config when it traces.
  at_signs = jax.jit(lambda c: terms(c))(signs)
  at_codes = jax.jit(lambda c: terms(c))(codes)
  grad_at_signs = jax.jit(jax.grad(lambda c: level_sum(terms(c))))(signs)
  g[field] = "sign_ste"
  got = jax.jit(lambda c: terms(c))(codes)
  grad = jax.jit(jax.grad(lambda c: level_sum(terms(c))))(codes)
  assert set(got) == set(at_codes)
  for name in got:
    want = at_signs[name] if name in names else at_codes[name]
    np.testing.assert_allclose(float(got[name]), float(want), rtol=1e-5, atol=1e-6,
                               err_msg=name)
  # The signs and the codes score differently here, so the check above can tell them apart.
  assert abs(float(level_sum(at_signs)) - float(level_sum(at_codes))) > 1e-3
  np.testing.assert_allclose(np.asarray(grad), np.asarray(grad_at_signs), rtol=1e-5, atol=1e-6)
  assert np.any(np.asarray(grad))
  if level == "item":
    hamming = (signs[n:, None, :] != signs[None, :n, :]).sum(-1).astype(np.float64)
    logits = -hamming / g.item_temperature    # (query view i, gallery view j): item i vs item j
    want = np.mean([np.log(np.exp(row).sum()) - row[i] for i, row in enumerate(logits)])
    np.testing.assert_allclose(float(got["item"]), want, rtol=1e-5)


@pytest.mark.parametrize("type_level_codes", ["continuous", "sign_ste"])
def test_gallery_type_level_scores_the_gallery_views_alone(config, type_level_codes):
  """`type_level_views = "gallery"`: the pair term and FastAP are those of the gallery views
  among themselves (NumPy: the Cauchy term with its dead zone, FastAP averaged over the gallery
  anchors), the query views' codes reach neither them nor their gradient; the item terms are
  those of `"all"`."""
  n, num_bits = 6, 16
  rng = np.random.default_rng(13)
  codes = np.tanh(rng.normal(size=(2 * n, num_bits)) * 0.8).astype(np.float32)
  labels = np.array([0, 1, 0, 2, 1, 0], np.int32)
  config.method = "graded"
  g = config.loss.graded
  g.ap_weight, g.type_level_codes = 1.0, type_level_codes
  terms = lambda c: _graded_loss_on_one_device(config, c, c, codes[:, :8], labels, 0)[1]
  type_sum = lambda t: t["hamming"] + t["type_ap"]
  # A new function for each setting: jit reads the config when it traces.
  every_view = jax.jit(lambda c: terms(c))(codes)
  g.type_level_views = "gallery"
  got = jax.jit(lambda c: terms(c))(codes)
  grad = np.asarray(jax.jit(jax.grad(lambda c: type_sum(terms(c))))(codes))

  gallery = codes[:n] if type_level_codes == "continuous" else np.sign(codes[:n])
  d = np_relaxed_hamming(gallery, gallery, num_bits)
  similar = labels[:, None] == labels[None, :]
  valid = ~np.eye(n, dtype=bool)
  pulled = np.where(similar, np.maximum(d - g.pair_threshold, 0.0), d)
  np.testing.assert_allclose(float(got["hamming"]),
                             np_cauchy(pulled, similar, valid, g.pair_gamma), rtol=2e-5)
  np.testing.assert_allclose(float(got["type_ap"]),
                             np_fast_ap_loss(d, similar, valid, num_bits), rtol=2e-5, atol=1e-6)
  for name in ("item", "item_features", "quantization"):
    np.testing.assert_allclose(float(got[name]), float(every_view[name]), rtol=1e-6,
                               err_msg=name)
  assert abs(float(type_sum(got)) - float(type_sum(every_view))) > 1e-3
  assert not np.any(grad[n:]) and np.any(grad[:n])


def test_inner_product_sign_gradient_pushes_other_types_apart_on_the_bits_they_agree_on(config):
  """`sign_gradient = "inner_product"` against "difference", the pair term of the sign type level
  for two types whose signs differ in one bit: the same value (the Cauchy term at 1 bit). The
  distance's gradient at +-1 codes (|a| = sqrt(K)) is, per bit, (1 - 1/K) on the bit that
  differs and 1/K on each agreeing bit for the relaxed form (whose normalisation alone reaches
  the agreeing bits), 1/2 on every bit for the inner product: the relaxed form spends its push on
  the bit that already differs, which moves no sign, and K/2 times less on the bits that could
  flip. With identical signs (0 bits) the inner product's term goes linear below 1 bit: finite,
  against NumPy."""
  n, num_bits = 2, 16
  rng = np.random.default_rng(12)
  common = rng.choice([-1.0, 1.0], size=num_bits)
  magnitude = np.tanh(np.abs(rng.normal(size=(2 * n, num_bits))) + 0.1)
  signs = np.stack([common, common, common, common])
  signs[[1, 3], 0] *= -1                      # type 1's views (item 1): bit 0 flipped
  codes = (magnitude * signs).astype(np.float32)
  labels = np.array([0, 1], np.int32)
  config.method = "graded"
  g = config.loss.graded
  g.ap_weight, g.type_level_codes = 0.0, "sign_ste"

  def pair_term(c):
    return _graded_loss_on_one_device(config, c, c, codes[:, :8], labels, 0)[1]["hamming"]

  def run(form, c):
    g.sign_gradient = form
    # A new function for each setting: jit reads the config when it traces.
    value, grad = jax.jit(jax.value_and_grad(lambda x: pair_term(x)))(c)
    return float(value), np.asarray(grad)

  (v_diff, g_diff), (v_ip, g_ip) = run("difference", codes), run("inner_product", codes)
  np.testing.assert_allclose(v_ip, v_diff, rtol=1e-5)
  assert np.all(np.abs(g_diff) > 1e-4)
  np.testing.assert_allclose(g_ip[:, 1:], num_bits / 2 * g_diff[:, 1:], rtol=1e-3)
  np.testing.assert_allclose(g_ip[:, 0], 0.5 / (1 - 1 / num_bits) * g_diff[:, 0], rtol=1e-3)
  # Gradient descent on the inner product's term moves every view's agreeing bits towards the
  # other type's opposite (-common): a negative slope along -common on bits 1..K-1.
  assert np.all(g_ip[:, 1:] @ -common[1:] < -1e-3)

  view_labels = np.concatenate([labels, labels])
  similar = view_labels[:, None] == view_labels[None, :]
  valid = ~np.eye(2 * n, dtype=bool)
  collapsed = (magnitude * common).astype(np.float32)      # every view on one code: 0 bits apart
  want = singh2019.cauchy_cross_entropy(np.zeros((2 * n, 2 * n), np.float32), similar, valid,
                                        gamma=g.pair_gamma, threshold=g.pair_threshold,
                                        min_distance=1.0)
  value, grad = run("inner_product", collapsed)
  np.testing.assert_allclose(value, float(want), rtol=1e-5)
  assert np.all(np.isfinite(grad)) and np.abs(grad).max() < 10.0
  assert np.all(grad @ -common < -1e-3)
