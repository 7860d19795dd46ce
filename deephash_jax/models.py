"""Flax linen modules: encoders, the hash head with its classifier, and the discriminator.

Every module returns `(output, intermediates)` so that features, continuous codes and logits are
all reachable. BatchNorm layers take `axis_name`, so inside the sharded train step their batch
statistics are those of the global batch (identical on 1 or N devices).

Mixed precision (`config.train.compute_dtype = "bfloat16"`): the encoder's convolutions, dense
layers and activations, and the hash layer's matmul, run in `dtype`; parameters stay float32
(`param_dtype`), BatchNorm statistics are float32 (flax computes them at least in float32), and the
code pre-activation, codes and logits are float32, so every loss is float32.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


@jax.custom_vjp
def sign_straight_through(x):
  """``sign(x)`` forward (0 at 0, as ``jnp.sign``), identity gradient backward.

  The straight-through estimator of GreedyHash (Su et al., NeurIPS 2018): the backward pass
  copies the gradient w.r.t. the codes onto ``x`` unchanged. A ``custom_vjp`` rather than
  ``x + stop_gradient(sign(x) - x)``, whose forward value is not exactly ``sign(x)`` once
  ``|x|`` is large (float rounding of ``x + (sign(x) - x)``).
  """
  return jnp.sign(x)


def _sign_st_fwd(x):
  return jnp.sign(x), None


def _sign_st_bwd(_, g):
  return (g,)


sign_straight_through.defvjp(_sign_st_fwd, _sign_st_bwd)


def space_to_depth(x, block: int = 2):
  """(B, H, W, C) -> (B, H/block, W/block, C*block^2), padding H and W up to a multiple."""
  b, h, w, c = x.shape
  ph, pw = (-h) % block, (-w) % block
  if ph or pw:
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    h, w = h + ph, w + pw
  x = x.reshape(b, h // block, block, w // block, block, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // block, w // block, block * block * c)


def standardize_images(images, eps: float = 1e-4):
  """Each image minus its mean over pixels and channels, over its standard deviation: a change of
  brightness or contrast (x -> a x + b, a > 0) leaves the result unchanged (up to eps and to
  clipping at 0 and 1 before it). float32 (B, H, W, C) in and out; an even image becomes 0."""
  images = jnp.asarray(images, jnp.float32)
  mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
  var = jnp.mean(jnp.square(images - mean), axis=(1, 2, 3), keepdims=True)
  return (images - mean) * jax.lax.rsqrt(var + eps)


class SlicedConv(nn.Module):
  """A "SAME"-padded 2-D convolution without bias as one matmul over shifted slices (im2col).

  The kernel's k*k taps are k*k strided slices of the padded input, concatenated on the channel
  axis and multiplied by the (k*k*in, out) kernel: the same function as `nn.Conv(features,
  (k, k), strides, padding="SAME", use_bias=False)` (the same padding, parameter name, shape and
  initializer, so checkpoints and initial values are interchangeable), summed in another order.
  Why: XLA:CPU runs the convolutions of ConvEncoder's shapes (4x4 to 14x14 maps, 4-128
  channels) and their gradients well under its matmul rate; as one matmul, whose backward pass is
  a matmul and slice-adds, they run nearer it (`python benchmarks/train_throughput.py
  --config=configs/graded.py --config.model.encoder_kwargs.conv=<xla|sliced>`; README
  "Throughput"). Accelerators keep `nn.Conv` (ConvEncoder.conv="auto").
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  dtype: Any = None
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    k, s = self.kernel_size, self.strides
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                        jnp.float32)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    b, h, w, c = x.shape
    out_h, out_w = -(-h // s), -(-w // s)
    pad_h, pad_w = max((out_h - 1) * s + k - h, 0), max((out_w - 1) * s + k - w, 0)
    x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                    (0, 0)))
    taps = [x[:, i:i + (out_h - 1) * s + 1:s, j:j + (out_w - 1) * s + 1:s, :]
            for i in range(k) for j in range(k)]
    patches = jnp.concatenate(taps, axis=-1).reshape(b * out_h * out_w, k * k * c)
    y = jnp.dot(patches, kernel.reshape(k * k * c, self.features))
    return y.reshape(b, out_h, out_w, self.features)


CONV_IMPLS = ("auto", "xla", "sliced")


class ConvEncoder(nn.Module):
  """A lean CNN for small greyscale images (Fashion-MNIST, 28x28).

  A 2x2 space-to-depth stem, then 3x3 conv + BN + ReLU layers given as (width, stride),
  downsampling by strided convs, then the last feature map averaged (`pool="mean"`, any image
  size) or flattened (`"flatten"`, configs/fashion_mnist.py: the dense layer sees where each
  pattern is, which tells garments of one type apart), and a dense layer. Why this shape: on
  XLA:CPU the backward passes of full-resolution convs and of max-pooling (select-and-scatter)
  dominate; this layout trained about 3.5x faster (scratch timing during development) than the
  VGG-style stack with max-pooling it replaced.
  """
  layers: Sequence[tuple[int, int]] = ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1))
  feature_dim: int = 256
  pool: str = "mean"   # "mean" (global average) or "flatten" (keeps where things are)
  # "xla" (nn.Conv), "sliced" (SlicedConv: one matmul over shifted slices, the same function)
  # or "auto": "sliced" on CPU, "xla" on accelerators.
  conv: str = "auto"
  axis_name: str | None = None
  dtype: Any = None    # computation dtype (None: float32, as the parameters)

  @nn.compact
  def __call__(self, x, *, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             axis_name=self.axis_name if train else None, dtype=self.dtype)
    if self.conv not in CONV_IMPLS:
      raise ValueError(f"config.model.encoder_kwargs.conv={self.conv!r}: expected one of "
                       f"{CONV_IMPLS}")
    conv = self.conv
    if conv == "auto":
      conv = "sliced" if jax.default_backend() == "cpu" else "xla"
    x = space_to_depth(x)
    for i, (width, stride) in enumerate(self.layers):
      if conv == "xla":
        layer = nn.Conv(width, (3, 3), strides=(stride, stride), use_bias=False,
                        dtype=self.dtype, name=f"Conv_{i}")
      else:
        layer = SlicedConv(width, 3, stride, dtype=self.dtype, name=f"Conv_{i}")
      x = nn.relu(norm()(layer(x)))
    if self.pool == "mean":
      x = jnp.mean(x, axis=(1, 2))
    elif self.pool == "flatten":
      x = x.reshape(x.shape[0], -1)
    else:
      raise ValueError(f"config.model.encoder_kwargs.pool={self.pool!r}: expected 'mean' or "
                       "'flatten'")
    x = nn.relu(norm()(nn.Dense(self.feature_dim, use_bias=False, dtype=self.dtype)(x)))
    return x


class AlexNetEncoder(nn.Module):
  """AlexNet-style encoder for RGB images at 224 px (the paper's backbone), with BatchNorm."""
  feature_dim: int = 4096
  axis_name: str | None = None
  dropout_rate: float = 0.5
  dtype: Any = None    # computation dtype (None: float32, as the parameters)

  @nn.compact
  def __call__(self, x, *, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             axis_name=self.axis_name if train else None, dtype=self.dtype)
    layers = ((96, 11, 4, True), (256, 5, 1, True), (384, 3, 1, False), (384, 3, 1, False),
              (256, 3, 1, True))
    for width, kernel, stride, pool in layers:
      x = nn.Conv(width, (kernel, kernel), strides=(stride, stride), use_bias=False,
                  dtype=self.dtype)(x)
      x = nn.relu(norm()(x))
      if pool:
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    x = x.reshape(x.shape[0], -1)
    for _ in range(2):
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.relu(norm()(nn.Dense(self.feature_dim, use_bias=False, dtype=self.dtype)(x)))
    return x


ENCODERS = {
    "cnn": ConvEncoder,
    "cnn_tiny": functools.partial(ConvEncoder, layers=((8, 1), (16, 2)), feature_dim=32),
    "alexnet": AlexNetEncoder,
}


class HashNetwork(nn.Module):
  """Encoder -> code h with `num_bits` dims; classifier on h or features.

  h = tanh(pre) (`code_activation="tanh"`, the default here and in configs/fashion_mnist.py) or
  sign(pre) with the identity as its gradient (`"sign_ste"`, with no quantization term). The
  pre-activation goes through BatchNorm (no learnt scale at init beyond 1) before the activation:
  every bit starts centred over the batch, so no initialisation or bit length starts with all
  codes equal (the collapse that caps DCH's cosine), and bits start balanced.
  """
  num_bits: int
  num_classes: int
  encoder: str = "cnn"
  encoder_kwargs: Any = None
  classifier_input: str = "code"   # "code" or "features"
  code_activation: str = "tanh"    # or "sign_ste": sign forward, identity backward (GreedyHash)
  input_norm: str = "none"         # or "image": standardize_images before the encoder
  axis_name: str | None = None
  dtype: Any = None                # computation dtype of the encoder and the hash matmul

  @nn.compact
  def __call__(self, images, *, train: bool):
    if self.encoder not in ENCODERS:
      raise ValueError(f"config.model.encoder={self.encoder!r}: expected one of "
                       f"{sorted(ENCODERS)}")
    if self.input_norm == "image":
      images = standardize_images(images)
    elif self.input_norm != "none":
      raise ValueError(f"config.model.input_norm={self.input_norm!r}: expected 'none' or "
                       "'image'")
    encoder = ENCODERS[self.encoder](axis_name=self.axis_name, **(self.encoder_kwargs or {}),
                                     dtype=self.dtype, name="encoder")
    features = encoder(images, train=train)
    pre = nn.Dense(self.num_bits, use_bias=False, dtype=self.dtype, name="hash")(features)
    if self.dtype is not None:   # BN, codes and logits in float32: the losses see float32
      features, pre = features.astype(jnp.float32), pre.astype(jnp.float32)
    pre = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       axis_name=self.axis_name if train else None, name="hash_norm")(pre)
    if self.code_activation == "tanh":
      codes = jnp.tanh(pre)
    elif self.code_activation == "sign_ste":
      codes = sign_straight_through(pre)
    else:
      raise ValueError(f"config.model.code_activation={self.code_activation!r}: expected "
                       "'tanh' or 'sign_ste'")
    if self.classifier_input == "code":
      logits = nn.Dense(self.num_classes, name="classifier")(codes)
    elif self.classifier_input == "features":
      logits = nn.Dense(self.num_classes, name="classifier")(features)
    else:
      raise ValueError(f"config.model.classifier_input={self.classifier_input!r}: expected "
                       "'code' or 'features'")
    return codes, {"features": features, "pre_codes": pre, "logits": logits}


class Discriminator(nn.Module):
  """Given the codes of a same-item pair, in random order, predicts whether the first is the query.

  Output: one logit per pair, > 0 meaning "the first code is the query view".
  """
  hidden_dims: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, first, second):
    x = jnp.concatenate([first, second, first * second], axis=-1)
    for width in self.hidden_dims:
      x = nn.leaky_relu(nn.Dense(width)(x), 0.2)
    logit = nn.Dense(1)(x)[..., 0]
    return logit, {}


COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def create_models(model_config, num_classes: int, axis_name: str | None = None, *,
                  compute_dtype: str = "float32"):
  """(hash network, discriminator) from `config.model`; `compute_dtype` is
  `config.train.compute_dtype` ("float32" or "bfloat16", see the module docstring)."""
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"config.train.compute_dtype={compute_dtype!r}: expected one of "
                     f"{tuple(COMPUTE_DTYPES)}")
  encoder_kwargs = {k: v for k, v in dict(model_config.get("encoder_kwargs", {}) or {}).items()
                    if v is not None}   # None: the encoder's own value (e.g. feature_dim)
  if "layers" in encoder_kwargs:   # a config.json holds lists; a module's fields stay hashable
    encoder_kwargs["layers"] = tuple(tuple(layer) for layer in encoder_kwargs["layers"])
  net = HashNetwork(num_bits=model_config.num_bits, num_classes=num_classes,
                    encoder=model_config.encoder, encoder_kwargs=encoder_kwargs,
                    classifier_input=model_config.classifier_input,
                    code_activation=model_config.get("code_activation", "tanh"),
                    input_norm=model_config.get("input_norm", "none"),
                    axis_name=axis_name, dtype=COMPUTE_DTYPES[compute_dtype])
  disc = Discriminator(hidden_dims=tuple(model_config.discriminator_hidden))
  return net, disc
