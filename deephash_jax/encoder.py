"""The public entry point: a trained model from a workdir that turns images into binary codes.

    encoder = HashEncoder.from_workdir("workdirs/graded")
    packed = encoder.encode(images_uint8)        # (N, ceil(num_bits / 8)) uint8, faiss layout
    bits = encoder.encode(images_uint8, packed=False)   # (N, num_bits) bool
    packed = encoder.encode_files(["shopper.jpg"])      # any image file, read by data/images.py

`make_embed_fn` is the jitted, device-sharded embedding every evaluation and index uses.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np

from deephash_jax import config_lib
from deephash_jax import mesh as mesh_lib
from deephash_jax import models
from deephash_jax.data import augment
from deephash_jax.data import images as images_lib
from deephash_jax.data import registry
from deephash_jax.search import packing
from deephash_jax.train import checkpoints


def make_embed_fn(config, mesh) -> Callable:
  """`embed(variables, uint8 images) -> continuous codes tanh(h)`, jitted, batch sharded on `data`.

  With `config.model.flip_average` the code of an image is the mean of tanh(h) over the image and
  its left-right mirror image, so mirroring a photo never changes its code (a garment's mirror
  image is the same garment; shoppers' photos come mirrored). It doubles the embedding's work.
  With `config.model.shift_average = s` > 0 the mean also runs over the image moved s pixels
  right, left, down and up (`shifted_views`; five times the work, ten with the mirror images).

  Every process passes the same host images and gets all the codes back, replicated, so that
  `np.asarray` can read them in a multi-process run too (where jit also refuses NumPy inputs with
  a sharded layout: the global batch is built with `make_array_from_callback`). Like the train
  step, the body is per device under `shard_map`.
  """
  net, _ = models.create_models(config.model, config.input.num_classes,
                                compute_dtype=config.train.get("compute_dtype", "float32"))
  batch_sharding = mesh_lib.batch_sharded(mesh)
  flip_average = bool(config.model.get("flip_average", False))
  shift = int(config.model.get("shift_average", 0))

  def body(variables, images):
    x = augment.preprocess(images)
    views = [x] + (shifted_views(x, shift) if shift else [])
    if flip_average:   # and the mirror image of each
      views = views + [v[:, :, ::-1] for v in views]
    # One view at a time through the same compiled body: XLA:CPU's sums can depend on a row's
    # place in a larger batch, and a view of an image must get the same numbers wherever the
    # mirror image's views put it. tanh of the pre-activation: the codes of a tanh model, and for
    # a sign model the continuous codes its sign binarises (sign(tanh(x)) = sign(x)).
    codes = lax.map(lambda v: jnp.tanh(net.apply(variables, v, train=False)[1]["pre_codes"]),
                    jnp.stack(views))
    if flip_average:   # each view's code plus its mirror image's
      codes = codes[:len(views) // 2] + codes[len(views) // 2:]
    # Summed in an order that a mirror image permutes only inside commuting pairs (its left and
    # right shifts swap), and a + b == b + a in floating point: an image and its mirror image
    # get the same code, bit for bit.
    total = codes[0]
    for first in range(1, codes.shape[0], 2):
      total = total + (codes[first] + codes[first + 1])
    return lax.all_gather(total / len(views), mesh_lib.AXIS, tiled=True)

  jitted = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P(mesh_lib.AXIS)),
                                 out_specs=P(), check_vma=False))

  def embed_fn(variables, images):
    images = np.asarray(images)
    images = jax.make_array_from_callback(images.shape, batch_sharding, lambda i: images[i])
    return jitted(variables, images)

  return embed_fn


def shifted_views(x, shift: int) -> list:
  """The (N, H, W, C) images moved `shift` pixels right, left, down and up, in that order, the
  uncovered border repeating the edge (a mirror image's right shift is the mirror of its left)."""
  s = shift
  padded = jnp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)), mode="edge")
  h, w = x.shape[1:3]
  crop = lambda top, left: padded[:, top:top + h, left:left + w]
  return [crop(s, 0), crop(s, 2 * s), crop(0, s), crop(2 * s, s)]


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


class HashEncoder:
  """A trained hash network (eval mode) with a jitted, device-sharded embedding function."""

  def __init__(self, config, variables, *, model_id: str, step: int):
    self.config = config
    self.variables = variables
    self.model_id = model_id
    self.step = step
    self.num_bits = int(config.model.num_bits)
    self.image_shape = registry.image_shape(config.input)
    self.mesh = mesh_lib.create_mesh(config.mesh)
    self._embed = make_embed_fn(config, self.mesh)

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None) -> "HashEncoder":
    """Loads the config and the latest (or given) checkpoint of a training workdir."""
    config = config_lib.load_config(workdir)
    config.mesh = [("data", -1)]  # Serve on whatever devices are here.
    manager = checkpoints.checkpoint_manager(workdir, config.train, read_only=True)
    mesh = mesh_lib.create_mesh(config.mesh)
    shape = registry.image_shape(config.input)
    if step is None:
      state, step = checkpoints.restore_latest(manager, config, mesh, shape, total_steps=1)
      if state is None:
        raise FileNotFoundError(f"{workdir}: no restorable checkpoint under "
                                f"{manager.directory}")
    else:
      state = checkpoints.restore_step(manager, config, mesh, shape, step)
    manager.close()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return cls(config, variables, model_id=model_fingerprint(variables, config), step=int(step))

  def embed(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Continuous codes tanh(.) in (-1, 1), (N, num_bits) float32."""
    images = self._check_images(images)
    return embed_dataset(self._embed, self.variables, images,
                                   batch_size=batch_size or self.config.eval.batch_size,
                                   num_devices=self.mesh.size)

  def encode(self, images: np.ndarray, *, packed: bool = True,
             batch_size: int | None = None) -> np.ndarray:
    """Binary codes sign(h): packed uint8 (N, ceil(num_bits/8)), or bool (N, num_bits)."""
    codes = self.embed(images, batch_size)
    return packing.pack_bits(codes) if packed else codes > 0

  def read_files(self, paths: Sequence[str]) -> np.ndarray:
    """Image files as this model's uint8 input (data/images.py: any format, size and mode);
    `images.ImageError` names a file that cannot be used."""
    height, _, channels = self.image_shape
    return np.stack([images_lib.read_image(p, height, channels, name=p) for p in paths])

  def encode_files(self, paths: Sequence[str], *, packed: bool = True) -> np.ndarray:
    """`encode` of image files, read by the one image loader every path uses."""
    return self.encode(self.read_files(paths), packed=packed)

  def _check_images(self, images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3 and self.image_shape[-1] == 1:
      images = images[..., None]
    if images.dtype != np.uint8 or images.shape[1:] != self.image_shape:
      raise ValueError(f"images: expected uint8 of shape (N, {', '.join(map(str, self.image_shape))})"
                       f", got {images.dtype} {images.shape}; use encode_files() for files")
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

