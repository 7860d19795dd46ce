"""The public entry point: a trained model from a workdir that turns images into binary codes.

    encoder = HashEncoder.from_workdir("workdirs/fashion_mnist")
    packed = encoder.encode(images_uint8)        # (N, ceil(num_bits / 8)) uint8, faiss layout
    bits = encoder.encode(images_uint8, packed=False)   # (N, num_bits) bool
"""

from __future__ import annotations

import hashlib

import jax
import numpy as np
from PIL import Image, UnidentifiedImageError

from deephash_jax import config_lib
from deephash_jax import hamming
from deephash_jax import train as train_lib


class HashEncoder:
  """A trained hash network (eval mode) with a jitted, device-sharded embedding function."""

  def __init__(self, config, variables, *, model_id: str, step: int):
    self.config = config
    self.variables = variables
    self.model_id = model_id
    self.step = step
    self.num_bits = int(config.model.num_bits)
    self.image_shape = config_lib.image_shape(config)
    self.mesh = train_lib.create_mesh(config.mesh)
    self._embed = train_lib.make_embed_fn(config, self.mesh)

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None) -> "HashEncoder":
    """Loads the config and the latest (or given) checkpoint of a training workdir."""
    config = config_lib.load_config(workdir)
    config.mesh = [("data", -1)]  # Serve on whatever devices are here.
    manager = train_lib.checkpoint_manager(workdir, config.train, read_only=True)
    mesh = train_lib.create_mesh(config.mesh)
    shape = config_lib.image_shape(config)
    if step is None:
      state, step = train_lib.restore_latest(manager, config, mesh, shape, total_steps=1)
      if state is None:
        raise FileNotFoundError(f"{workdir}: no restorable checkpoint under "
                                f"{manager.directory}")
    else:
      import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
      target = train_lib.abstract_state(config, mesh, shape, total_steps=1)
      state = manager.restore(step, args=ocp.args.StandardRestore(target))
    manager.close()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return cls(config, variables, model_id=model_fingerprint(variables, config), step=int(step))


  def embed(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Continuous codes tanh(.) in (-1, 1), (N, num_bits) float32."""
    images = self._check_images(images)
    return train_lib.embed_dataset(self._embed, self.variables, images,
                                   batch_size=batch_size or self.config.eval.batch_size,
                                   num_devices=self.mesh.size)

  def encode(self, images: np.ndarray, *, packed: bool = True,
             batch_size: int | None = None) -> np.ndarray:
    """Binary codes sign(h): packed uint8 (N, ceil(num_bits/8)), or bool (N, num_bits)."""
    codes = self.embed(images, batch_size)
    return hamming.pack_bits(codes) if packed else codes > 0

  def _check_images(self, images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3 and self.image_shape[-1] == 1:
      images = images[..., None]
    if images.dtype != np.uint8 or images.shape[1:] != self.image_shape:
      raise ValueError(f"images: expected uint8 of shape (N, {', '.join(map(str, self.image_shape))})"
                       f", got {images.dtype} {images.shape}; use load_image() for files")
    return images


def model_fingerprint(variables, config) -> str:
  """16 hex digits identifying a model by its weights and what they mean (not by its path).

  An index records the fingerprint of the model that made its codes; codes of two models are not
  comparable. Moving or copying a workdir keeps the fingerprint; training further changes it.
  """
  digest = hashlib.sha256()
  digest.update(f"{config.model.to_json()}|{config.input.dataset}".encode())
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return digest.hexdigest()[:16]


def load_image(path: str, image_shape) -> np.ndarray:
  """Reads an image file as uint8 (H, W, C) for the model: converted and resized to fit."""
  height, width, channels = image_shape
  try:
    with Image.open(path) as image:
      image.load()
      image = image.convert("L" if channels == 1 else "RGB")
  except (OSError, UnidentifiedImageError) as e:
    raise ValueError(f"{path}: not a readable image ({e})") from e
  if image.size != (width, height):
    image = image.resize((width, height), Image.BILINEAR)
  array = np.asarray(image, np.uint8)
  return array[..., None] if channels == 1 else array
