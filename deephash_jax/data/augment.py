"""Two-view augmentation, run on the accelerator inside the compiled train step.

The paper matches a shopper's photo (the query) against catalogue images (the gallery). Each
catalogue item in a batch is therefore rendered twice:

* the **gallery view**: the catalogue image, lightly jittered (small shift, horizontal flip);
* the **query view**: the same garment under the nuisances a shopper's photo adds:
  illumination (brightness, contrast, gamma), background (the empty background replaced by a
  random smooth texture) and pose (rotation, scale, shift, flip).

Every function takes one image and one PRNG key and is `vmap`-ed over the batch with a key per
example (folded from the example's global index), so the views do not depend on how the batch is
split over devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _affine_warp(image, matrix, offset):
  """Bilinear warp: output[p] = image[matrix @ (p - c) + c + offset], edges filled with zero."""
  h, w, _ = image.shape
  centre = jnp.array([(h - 1) / 2, (w - 1) / 2])
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                            indexing="ij")
  coords = jnp.stack([rows.ravel(), cols.ravel()]) - centre[:, None]
  src = matrix @ coords + centre[:, None] + offset[:, None]
  warp = lambda channel: jax.scipy.ndimage.map_coordinates(channel, list(src), order=1,
                                                           mode="constant", cval=0.0)
  return jax.vmap(warp, in_axes=2, out_axes=1)(image).reshape(image.shape)


def pose(image, rng, *, max_rotation_deg, scale_range, max_shift, flip):
  """Random rotation, isotropic scale, translation (pixels) and horizontal flip."""
  k_rot, k_scale, k_shift, k_flip = jax.random.split(rng, 4)
  angle = jnp.deg2rad(jax.random.uniform(k_rot, (), minval=-max_rotation_deg,
                                         maxval=max_rotation_deg))
  scale = jax.random.uniform(k_scale, (), minval=scale_range[0], maxval=scale_range[1])
  mirror = jnp.where(flip & jax.random.bernoulli(k_flip), -1.0, 1.0)
  cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
  matrix = jnp.array([[cos, -sin * mirror], [sin, cos * mirror]])
  offset = jax.random.uniform(k_shift, (2,), minval=-max_shift, maxval=max_shift)
  return _affine_warp(image, matrix, offset)


def illumination(image, rng, *, max_brightness, contrast_range, gamma_range):
  """Gamma, contrast about the image mean, and additive brightness; clipped to [0, 1]."""
  k_b, k_c, k_g = jax.random.split(rng, 3)
  gamma = jnp.exp(jax.random.uniform(k_g, (), minval=jnp.log(gamma_range[0]),
                                     maxval=jnp.log(gamma_range[1])))
  image = jnp.power(jnp.clip(image, 1e-6, 1.0), gamma)
  contrast = jax.random.uniform(k_c, (), minval=contrast_range[0], maxval=contrast_range[1])
  mean = jnp.mean(image)
  image = (image - mean) * contrast + mean
  image = image + jax.random.uniform(k_b, (), minval=-max_brightness, maxval=max_brightness)
  return jnp.clip(image, 0.0, 1.0)


def background(image, rng, *, probability, max_level, threshold=0.04):
  """Replaces the near-black background with a random smooth texture, with `probability`.

  The garment mask is the set of pixels brighter than `threshold` (Fashion-MNIST and catalogue
  shots have an empty background). The texture is low-frequency noise (a 4x4 grid upsampled)
  on a random level, so that it looks like a wall or a table rather than pixel noise.
  """
  h, w, c = image.shape
  k_apply, k_level, k_tex = jax.random.split(rng, 3)
  level = jax.random.uniform(k_level, (), maxval=max_level)
  coarse = jax.random.uniform(k_tex, (4, 4, c), minval=-0.5, maxval=0.5) * max_level
  texture = jnp.clip(level + jax.image.resize(coarse, (h, w, c), "bilinear"), 0.0, 1.0)
  garment = jnp.max(image, axis=-1, keepdims=True) > threshold
  replaced = jnp.where(garment, image, texture)
  return jnp.where(jax.random.bernoulli(k_apply, probability), replaced, image)


def gallery_view(image, rng, cfg):
  """Light jitter of a catalogue image (uint8 HWC in, float32 [0, 1] out)."""
  image = image.astype(jnp.float32) / 255.0
  return pose(image, rng, max_rotation_deg=0.0, scale_range=(1.0, 1.0),
              max_shift=cfg.max_shift, flip=cfg.flip)


def query_view(image, rng, cfg):
  """A shopper's photo of the same garment: background, pose, then illumination."""
  image = image.astype(jnp.float32) / 255.0
  k_bg, k_pose, k_light = jax.random.split(rng, 3)
  image = background(image, k_bg, probability=cfg.background_prob,
                     max_level=cfg.background_max_level)
  image = pose(image, k_pose, max_rotation_deg=cfg.max_rotation_deg,
               scale_range=tuple(cfg.scale_range), max_shift=cfg.max_shift, flip=cfg.flip)
  return illumination(image, k_light, max_brightness=cfg.max_brightness,
                      contrast_range=tuple(cfg.contrast_range), gamma_range=tuple(cfg.gamma_range))


def two_views(images, keys, augment_cfg):
  """(gallery_views, query_views) for a batch of uint8 images and one key per example."""
  k_gallery, k_query = jax.vmap(jax.random.split, out_axes=1)(keys)
  gallery = jax.vmap(lambda x, k: gallery_view(x, k, augment_cfg.gallery))(images, k_gallery)
  query = jax.vmap(lambda x, k: query_view(x, k, augment_cfg.query))(images, k_query)
  return gallery, query


def preprocess(images):
  """Evaluation-time conversion: uint8 HWC -> float32 [0, 1]."""
  return images.astype(jnp.float32) / 255.0
