"""encoder.py: the jitted embedding and HashEncoder, the public entry point."""

import jax
import numpy as np
import pytest

from deephash_jax import encoder
from deephash_jax import mesh as mesh_lib
from deephash_jax import models
from deephash_jax.data import augment
from deephash_jax.train import state as state_lib
from tests import fake_data


def _batch(n, seed=0):
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % 4).astype(np.int32)
  return {"image": fake_data.class_images(labels, rng)[..., None], "label": labels,
          "item": np.arange(n, dtype=np.int32)}


@pytest.mark.parametrize("code_activation", ["sign_ste", "tanh"])
def test_embedding_is_continuous_and_binarises_to_the_model_codes(config, code_activation):
  config.model.code_activation = code_activation
  config.model.flip_average = False     # one forward pass per image (flip averaging: below)
  config.loss.quantization_weight = 0.0
  state = state_lib.create_train_state(config, jax.random.key(3), 10, (28, 28, 1))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  images = _batch(16)["image"]
  mesh = mesh_lib.create_mesh(config.mesh)
  embedded = np.asarray(encoder.make_embed_fn(config, mesh)(variables, images))
  net, _ = models.create_models(config.model, config.input.num_classes)
  codes, aux = net.apply(variables, augment.preprocess(images), train=False)
  codes, pre = np.asarray(codes), np.asarray(aux["pre_codes"])
  if code_activation == "sign_ste":
    assert set(np.unique(codes)) <= {-1.0, 1.0}
  # atol 1e-5: the jitted 8-device embedding and this eager pass sum the feature layer's 784
  # flattened inputs (configs: pool "flatten") in different orders.
  np.testing.assert_allclose(embedded, np.tanh(pre), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(embedded > 0, codes > 0)       # the same binary codes
  assert 0.0 < np.abs(embedded).min() and np.abs(embedded).max() < 1.0   # continuous


def test_flip_average_gives_a_mirrored_image_the_same_code_the_mean_of_both_passes(config):
  state = state_lib.create_train_state(config, jax.random.key(5), 10, (28, 28, 1))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  # 8 images per device: one forward pass over [images; mirror images] was not bitwise
  # symmetric at this size on XLA:CPU (a row's sums depend on its place in the batch).
  images = _batch(64)["image"]
  mirrored = images[:, :, ::-1]
  assert not np.array_equal(images, mirrored)
  mesh = mesh_lib.create_mesh(config.mesh)
  config.model.flip_average = False
  single = encoder.make_embed_fn(config, mesh)
  one, one_mirrored = (np.asarray(single(variables, x)) for x in (images, mirrored))
  assert (one > 0).mean(axis=1).min() < 1 and np.abs(one - one_mirrored).max() > 1e-3
  config.model.flip_average = True
  averaged = encoder.make_embed_fn(config, mesh)
  codes, codes_mirrored = (np.asarray(averaged(variables, x)) for x in (images, mirrored))
  np.testing.assert_array_equal(codes, codes_mirrored)          # bitwise, not just close
  np.testing.assert_allclose(codes, (one + one_mirrored) / 2, rtol=1e-5, atol=1e-6)
  assert np.abs(codes).max() < 1.0


def _shift_reference(x, dy, dx):
  """x (N, H, W, C) moved dy rows down and dx columns right, edge pixels repeated (NumPy)."""
  h, w = x.shape[1:3]
  rows = np.clip(np.arange(h) - dy, 0, h - 1)
  cols = np.clip(np.arange(w) - dx, 0, w - 1)
  return x[:, rows][:, :, cols]


@pytest.mark.parametrize("shift", [1, 3])
def test_shifted_views_move_the_image_right_left_down_up_repeating_the_edge(shift):
  x = np.random.default_rng(0).random((2, 7, 9, 3)).astype(np.float32)
  views = [np.asarray(v) for v in encoder.shifted_views(x, shift)]
  expected = [_shift_reference(x, 0, shift), _shift_reference(x, 0, -shift),
              _shift_reference(x, shift, 0), _shift_reference(x, -shift, 0)]
  for got, want in zip(views, expected, strict=True):
    np.testing.assert_array_equal(got, want)
  # The mirror image of a right shift is the left shift of the mirror image.
  mirrored = [np.asarray(v) for v in encoder.shifted_views(x[:, :, ::-1], shift)]
  np.testing.assert_array_equal(mirrored[1], views[0][:, :, ::-1])
  np.testing.assert_array_equal(mirrored[0], views[1][:, :, ::-1])


@pytest.mark.parametrize("flip_average", [False, True])
def test_shift_average_is_the_mean_code_of_the_shifted_views(config, flip_average):
  state = state_lib.create_train_state(config, jax.random.key(5), 10, (28, 28, 1))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  images = _batch(64)["image"]
  mesh = mesh_lib.create_mesh(config.mesh)
  config.model.flip_average = False
  single = encoder.make_embed_fn(config, mesh)
  views = [images] + [_shift_reference(images, dy, dx)
                      for dy, dx in ((0, 2), (0, -2), (2, 0), (-2, 0))]
  if flip_average:
    views += [v[:, :, ::-1] for v in views]
  expected = np.mean([np.asarray(single(variables, v)) for v in views], axis=0)
  config.model.flip_average, config.model.shift_average = flip_average, 2
  averaged = encoder.make_embed_fn(config, mesh)
  codes = np.asarray(averaged(variables, images))
  np.testing.assert_allclose(codes, expected, rtol=1e-5, atol=1e-6)
  assert np.abs(codes - np.asarray(single(variables, images))).max() > 1e-3
  if flip_average:      # bitwise, not just close
    np.testing.assert_array_equal(np.asarray(averaged(variables, images[:, :, ::-1])), codes)


def test_bfloat16_codes_agree_with_float32_codes_of_the_same_weights(config):
  config.model.encoder, config.model.num_bits = "cnn", 48
  state = state_lib.create_train_state(config, jax.random.key(3), 10, (28, 28, 1))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  images = fake_data.class_images(np.arange(512) % 10, np.random.default_rng(0))[..., None]
  mesh = mesh_lib.create_mesh(config.mesh)

  def embed():
    return encoder.embed_dataset(encoder.make_embed_fn(config, mesh), variables, images,
                                 batch_size=256, num_devices=mesh.size)
  full = embed()
  config.train.compute_dtype = "bfloat16"
  half = embed()
  assert half.dtype == np.float32
  assert ((full > 0) == (half > 0)).mean() >= 0.99
  assert 0 < np.abs(full - half).max() < 0.05      # bfloat16 was used, and stayed close
