"""data/augment.py: the two views of a catalogue item, each nuisance checked on its own."""
import jax
import jax.numpy as jnp
import numpy as np

from deephash_jax import config_lib
from deephash_jax.data import augment


def _image(seed=0, size=12):
  """A float image in [0, 1] with a dark border (background) and an asymmetric garment."""
  rng = np.random.default_rng(seed)
  image = np.zeros((size, size, 1), np.float32)
  image[2:-2, 3:-4] = rng.uniform(0.3, 1.0, (size - 4, size - 7, 1))
  return jnp.asarray(image)


def test_flip_is_a_left_right_mirror_and_happens_about_half_the_time():
  image = _image()
  outputs = [np.asarray(augment.pose(image, jax.random.key(i), max_rotation_deg=0.0,
                                     scale_range=(1.0, 1.0), max_shift=0.0, flip=True))
             for i in range(40)]
  mirrored = [np.allclose(o, np.asarray(image)[:, ::-1], atol=1e-5) for o in outputs]
  same = [np.allclose(o, np.asarray(image), atol=1e-5) for o in outputs]
  assert all(m or s for m, s in zip(mirrored, same))     # nothing else: not up-down
  assert 10 <= sum(mirrored) <= 30
  no_flip = augment.pose(image, jax.random.key(0), max_rotation_deg=0.0,
                         scale_range=(1.0, 1.0), max_shift=0.0, flip=False)
  np.testing.assert_allclose(no_flip, image, atol=1e-5)


def test_a_warp_samples_the_source_at_the_shifted_position():
  image = _image(1)
  shifted = augment._affine_warp(image, jnp.eye(2), jnp.array([0.0, 1.0]))  # pylint: disable=protected-access
  # output[r, c] = image[r, c + 1]; the last column falls outside and is filled with 0.
  np.testing.assert_allclose(shifted[:, :-1], image[:, 1:], atol=1e-6)
  assert float(jnp.abs(shifted[:, -1]).max()) == 0.0


def test_background_replaces_only_the_dark_pixels_within_its_level():
  image = _image(2)
  garment = np.asarray(image)[..., 0] > 0.04
  for i in range(5):
    out = np.asarray(augment.background(image, jax.random.key(i), probability=1.0,
                                        max_level=0.4))
    np.testing.assert_array_equal(out[garment], np.asarray(image)[garment])
    assert out.min() >= 0.0 and out[~garment].max() <= 0.6 + 1e-6   # level + coarse / 2
  changed = [not np.array_equal(np.asarray(augment.background(
      image, jax.random.key(i), probability=1.0, max_level=0.4)), np.asarray(image))
             for i in range(5)]
  assert all(changed)
  np.testing.assert_array_equal(augment.background(image, jax.random.key(0), probability=0.0,
                                                   max_level=0.4), image)


def test_illumination_stays_in_range_and_is_the_identity_at_neutral_settings():
  image = _image(3)
  neutral = augment.illumination(image, jax.random.key(0), max_brightness=0.0,
                                 contrast_range=(1.0, 1.0), gamma_range=(1.0, 1.0))
  np.testing.assert_allclose(neutral, jnp.clip(image, 1e-6, 1.0), atol=1e-6)
  for i in range(10):
    out = augment.illumination(image, jax.random.key(i), max_brightness=0.25,
                               contrast_range=(0.6, 1.4), gamma_range=(0.6, 1.6))
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_the_views_are_float_images_and_depend_only_on_their_key():
  cfg = config_lib.base_config("fashion_mnist").input.augment
  images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(5), i))(jnp.arange(4))
  gallery, query = augment.two_views(images, keys, cfg)
  assert gallery.shape == query.shape == (4, 28, 28, 1) and gallery.dtype == jnp.float32
  for view in (gallery, query):
    assert 0.0 <= float(view.min()) and float(view.max()) <= 1.0
  # Example 2 rendered alone with its own key gives the same views as in the batch.
  g2, q2 = augment.two_views(images[2:3], keys[2:3], cfg)
  np.testing.assert_allclose(g2[0], gallery[2], atol=1e-6)
  np.testing.assert_allclose(q2[0], query[2], atol=1e-6)
  np.testing.assert_allclose(augment.preprocess(images), images / 255.0, atol=1e-7)
