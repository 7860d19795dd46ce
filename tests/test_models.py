"""Shapes of every module, for each encoder variant."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from deephash_jax import models


@pytest.mark.parametrize("encoder,shape", [("cnn", (28, 28, 1)), ("cnn_tiny", (28, 28, 1)),
                                           ("cnn", (64, 64, 3)), ("alexnet", (224, 224, 3))])
@pytest.mark.parametrize("classifier_input", ["code", "features"])
def test_hash_network_shapes(encoder, shape, classifier_input):
  net = models.HashNetwork(num_bits=24, num_classes=7, encoder=encoder,
                           classifier_input=classifier_input)
  x = jnp.zeros((2, *shape))
  variables = jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=False))
  codes, inter = jax.eval_shape(lambda v: net.apply(v, x, train=False), variables)
  assert codes.shape == (2, 24)
  assert inter["pre_codes"].shape == (2, 24)
  assert inter["logits"].shape == (2, 7)
  assert inter["features"].ndim == 2


def test_codes_are_in_open_interval_and_bits_start_balanced():
  net = models.HashNetwork(num_bits=32, num_classes=10, encoder="cnn_tiny")
  x = jax.random.uniform(jax.random.key(1), (64, 28, 28, 1))
  variables = net.init(jax.random.key(0), x, train=False)
  (codes, _), _ = net.apply(variables, x, train=True, mutable=["batch_stats"])
  assert np.all(np.abs(codes) < 1)
  # BatchNorm on the pre-codes centres every bit over the batch: none is constant at init.
  bit_means = np.mean(np.asarray(codes) > 0, axis=0)
  assert np.all((bit_means > 0) & (bit_means < 1))


def test_conv_encoder_flatten_pool_keeps_where_things_are():
  """pool="mean" averages the last feature map's positions away; "flatten" keeps them. With no
  conv layers the last map is the 14x14 space-to-depth map, and swapping the image's left and
  right halves permutes its positions: "mean" gives the same features, "flatten" does not."""
  x = jax.random.uniform(jax.random.key(2), (1, 28, 28, 1))
  swapped = jnp.concatenate([x[:, :, 14:], x[:, :, :14]], axis=2)
  both = jnp.concatenate([x, swapped])
  out = {}
  for pool in ("mean", "flatten"):
    enc = models.ConvEncoder(layers=(), feature_dim=6, pool=pool)
    variables = enc.init(jax.random.key(0), both, train=False)
    out[pool] = np.asarray(enc.apply(variables, both, train=False))
    dense = variables["params"]["Dense_0"]["kernel"]
    assert dense.shape == ((4,) if pool == "mean" else (14 * 14 * 4,)) + (6,)
  assert out["flatten"].shape == out["mean"].shape == (2, 6)
  np.testing.assert_allclose(out["mean"][0], out["mean"][1], atol=1e-5)
  assert np.max(np.abs(out["flatten"][0] - out["flatten"][1])) > 1e-2
  with pytest.raises(ValueError, match="encoder_kwargs.pool='max'"):
    models.ConvEncoder(layers=(), pool="max").init(jax.random.key(0), both, train=False)


def test_discriminator_shape_and_unknown_encoder():
  disc = models.Discriminator(hidden_dims=(8,))
  a = jnp.ones((5, 16))
  params = disc.init(jax.random.key(0), a, a)
  logits, _ = disc.apply(params, a, -a)
  assert logits.shape == (5,)
  net = models.HashNetwork(num_bits=8, num_classes=2, encoder="resnet9000")
  with pytest.raises(ValueError, match="config.model.encoder='resnet9000'"):
    net.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False)


def test_create_models_from_config():
  cfg = ml_collections.ConfigDict(dict(num_bits=12, encoder="cnn_tiny", encoder_kwargs={},
                                       classifier_input="code", discriminator_hidden=(4,)))
  net, disc = models.create_models(cfg, num_classes=3)
  assert net.num_bits == 12 and disc.hidden_dims == (4,)


@pytest.mark.parametrize("feature_dim,width", [(None, 32), (48, 48)])
def test_feature_dim_sets_the_feature_layer_none_keeps_the_encoders_own(feature_dim, width):
  # configs/fashion_mnist.py holds `encoder_kwargs.feature_dim` as None: "cnn_tiny" keeps its 32.
  cfg = ml_collections.ConfigDict(dict(
      num_bits=12, encoder="cnn_tiny", classifier_input="features", discriminator_hidden=(4,),
      encoder_kwargs=dict(pool="flatten", feature_dim=feature_dim)))
  net, _ = models.create_models(cfg, num_classes=3)
  images = jnp.zeros((2, 28, 28, 1), jnp.float32)
  variables = net.init(jax.random.key(0), images, train=False)
  _, inter = net.apply(variables, images, train=False)
  assert inter["features"].shape == (2, width)
  kernels = [leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
             if "Dense_0" in jax.tree_util.keystr(path) and "encoder" in
             jax.tree_util.keystr(path).lower()]
  assert kernels == [(7 * 7 * 16, width)]


def test_sign_straight_through_forward_is_exact_sign():
  x = jnp.array([-1e8, -2.5, -1e-30, 0.0, 1e-30, 0.3, 7.0, 1e8], jnp.float32)
  np.testing.assert_array_equal(models.sign_straight_through(x), jnp.sign(x))
  np.testing.assert_array_equal(jax.jit(models.sign_straight_through)(x), jnp.sign(x))


def test_sign_straight_through_has_identity_gradient():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 16)), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=(4, 16)), jnp.float32)
  grad = jax.grad(lambda v: jnp.sum(models.sign_straight_through(v) * cotangent))(x)
  np.testing.assert_array_equal(grad, cotangent)
  _, vjp = jax.vjp(models.sign_straight_through, jnp.zeros(3))
  np.testing.assert_array_equal(vjp(jnp.array([1.0, -2.0, 3.0]))[0], [1.0, -2.0, 3.0])


@pytest.mark.parametrize("conv", ["xla", "sliced"])
def test_bfloat16_runs_the_encoder_in_bfloat16_and_returns_float32(conv):
  cfg = ml_collections.ConfigDict(dict(num_bits=16, encoder="cnn_tiny", classifier_input="code",
                                       discriminator_hidden=(8,), encoder_kwargs=dict(conv=conv)))
  net, _ = models.create_models(cfg, num_classes=3, compute_dtype="bfloat16")
  images = jnp.zeros((2, 28, 28, 1), jnp.float32)
  variables = net.init(jax.random.key(0), images, train=False)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  jaxpr = str(jax.make_jaxpr(lambda v: net.apply(v, images, train=False))(variables))
  assert ("conv_general_dilated" in jaxpr) == (conv == "xla")
  # The convolutions' patches (14 x 14 x (9 * 4) for the first layer) are multiplied in bf16.
  assert "bf16[2,14,14,36]" in jaxpr or conv == "xla"
  assert "bf16[" in jaxpr
  codes, inter = net.apply(variables, images, train=False)
  assert codes.dtype == inter["logits"].dtype == inter["pre_codes"].dtype == jnp.float32
  with pytest.raises(ValueError, match="compute_dtype='float16'"):
    models.create_models(cfg, num_classes=3, compute_dtype="float16")


def test_standardize_images_matches_numpy_and_ignores_brightness_and_contrast():
  rng = np.random.default_rng(0)
  images = rng.uniform(0.1, 0.6, size=(3, 8, 8, 2)).astype(np.float32)
  images[2] = 0.25                                     # an even image
  mean = images.mean(axis=(1, 2, 3), keepdims=True)
  var = ((images - mean) ** 2).mean(axis=(1, 2, 3), keepdims=True)
  expected = (images - mean) / np.sqrt(var + 1e-4)
  out = np.asarray(models.standardize_images(images))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out[2], 0.0)
  np.testing.assert_allclose(out[:2].std(axis=(1, 2, 3)), 1.0, atol=5e-3)   # eps: var 0.02
  # Brightness and contrast changes that stay inside [0, 1] are removed (eps aside).
  changed = np.asarray(models.standardize_images(images[:2] * 1.3 + 0.15))
  np.testing.assert_allclose(changed, out[:2], atol=2e-3)


def test_input_norm_image_makes_the_codes_blind_to_brightness_and_contrast():
  images = np.random.default_rng(1).uniform(0.1, 0.6, size=(4, 28, 28, 1)).astype(np.float32)
  brighter = images * 1.3 + 0.15
  codes = {}
  for input_norm in ("none", "image"):
    net = models.HashNetwork(num_bits=16, num_classes=3, input_norm=input_norm)
    variables = net.init(jax.random.key(0), images, train=False)
    codes[input_norm] = [np.asarray(net.apply(variables, x, train=False)[0])
                         for x in (images, brighter)]
  assert np.abs(codes["none"][0] - codes["none"][1]).max() > 1e-2
  np.testing.assert_allclose(codes["image"][0], codes["image"][1], atol=1e-2)
  with pytest.raises(ValueError, match="config.model.input_norm='batch'"):
    models.HashNetwork(num_bits=16, num_classes=3, input_norm="batch").init(
        jax.random.key(0), images, train=False)


def _conv_same_numpy(x, kernel, stride):
  """A "SAME" convolution, one output pixel at a time: TensorFlow's padding rule (the total
  (out - 1) * stride + k - size, its smaller half before)."""
  b, h, w, _ = x.shape
  k = kernel.shape[0]
  out_h, out_w = -(-h // stride), -(-w // stride)
  pad_h, pad_w = max((out_h - 1) * stride + k - h, 0), max((out_w - 1) * stride + k - w, 0)
  xp = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                  (0, 0)))
  out = np.zeros((b, out_h, out_w, kernel.shape[-1]))
  for i in range(out_h):
    for j in range(out_w):
      window = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
      out[:, i, j] = np.einsum("bijc,ijcf->bf", window.astype(np.float64), kernel)
  return out


@pytest.mark.parametrize("shape", [(2, 5, 6, 3), (1, 7, 7, 2), (2, 4, 4, 1), (1, 1, 3, 2)])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_sliced_conv_matches_numpy_and_nn_conv_values_and_gradients(shape, stride, kernel_size):
  rng = np.random.default_rng(stride * 10 + kernel_size)
  x = rng.normal(size=shape).astype(np.float32)
  sliced = models.SlicedConv(4, kernel_size, stride)
  conv = nn.Conv(4, (kernel_size, kernel_size), strides=(stride, stride), padding="SAME",
                 use_bias=False)
  variables = sliced.init(jax.random.key(0), x)
  # The same parameter (name, shape, initializer): nn.Conv's initial kernel, drawn the same way.
  np.testing.assert_array_equal(variables["params"]["kernel"],
                                conv.init(jax.random.key(0), x)["params"]["kernel"])
  out = np.asarray(sliced.apply(variables, x))
  np.testing.assert_allclose(out, _conv_same_numpy(x, np.asarray(variables["params"]["kernel"]),
                                                   stride), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out, conv.apply(variables, x), rtol=1e-5, atol=1e-5)
  cotangent = rng.normal(size=out.shape).astype(np.float32)
  grads = [jax.grad(lambda v, x: jnp.sum(module.apply(v, x) * cotangent), argnums=(0, 1))(
      variables, x) for module in (sliced, conv)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_sliced_conv_in_bfloat16_is_close_to_float32():
  x = np.random.default_rng(0).normal(size=(3, 7, 7, 8)).astype(np.float32)
  module = models.SlicedConv(16, 3, 2)
  variables = module.init(jax.random.key(0), x)
  out = models.SlicedConv(16, 3, 2, dtype=jnp.bfloat16).apply(variables, x)
  assert out.dtype == jnp.bfloat16 and variables["params"]["kernel"].dtype == jnp.float32
  reference = np.asarray(module.apply(variables, x))
  np.testing.assert_allclose(np.asarray(out, np.float32), reference,
                             atol=0.02 * np.abs(reference).max())


@pytest.mark.parametrize("pool", ["mean", "flatten"])
def test_conv_encoder_sliced_and_xla_are_one_function_with_one_parameter_tree(pool):
  x = jax.random.uniform(jax.random.key(3), (6, 28, 28, 1))
  encoders = {conv: models.ConvEncoder(pool=pool, conv=conv) for conv in ("xla", "sliced")}
  variables = {conv: enc.init(jax.random.key(0), x, train=False)
               for conv, enc in encoders.items()}
  assert jax.tree.structure(variables["xla"]) == jax.tree.structure(variables["sliced"])
  for a, b in zip(jax.tree.leaves(variables["xla"]), jax.tree.leaves(variables["sliced"])):
    np.testing.assert_array_equal(a, b)
  for train in (False, True):
    out = [enc.apply(variables["xla"], x, train=train, mutable=["batch_stats"])[0]
           for enc in encoders.values()]
    np.testing.assert_allclose(out[0], out[1], rtol=1e-4, atol=1e-4)
  # "auto" is "sliced" here (CPU): no convolution op in the graph.
  auto = models.ConvEncoder(pool=pool)
  assert "conv_general_dilated" not in str(jax.make_jaxpr(
      lambda v: auto.apply(v, x, train=False))(variables["xla"]))
  with pytest.raises(ValueError, match="encoder_kwargs.conv='cudnn'"):
    models.ConvEncoder(conv="cudnn").init(jax.random.key(0), x, train=False)
