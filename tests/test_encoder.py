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
  images = _batch(16)["image"]
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
