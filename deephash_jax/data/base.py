"""What every dataset module shares: the in-memory `Split`, `DataError`, TF kept off accelerators
(TFDS reads files with TF; JAX owns the GPU/TPU), and one process building a dataset at a time."""

from __future__ import annotations

import dataclasses

import jax
from jax.experimental import multihost_utils
import numpy as np


class DataError(ValueError):
  """Bad input data; the message names the file and what is wrong with it."""


def hide_tf_from_accelerators():
  """TF only reads files here; it must never take GPU/TPU memory from JAX."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # Already initialised: devices were hidden earlier.
    pass


def prepare_once(make_builder, builder=None):
  """A builder whose dataset is built, by one process at a time: `builder` (or `make_builder()`)
  on process 0 and in a single-process run.

  In a multi-process run process 0 builds the dataset while the others wait at a barrier, then
  they make their builder, which finds the dataset built (a shared data dir) or builds its own (a
  host's local one). A builder made before the barrier would hold the dataset info of an empty
  folder, and several processes building into one folder at once fail.
  """
  first = jax.process_index() == 0
  if first:
    builder = builder if builder is not None else make_builder()
  if jax.process_count() > 1:
    if first:
      builder.download_and_prepare()
    multihost_utils.sync_global_devices("deephash prepare dataset")
  if not first:
    builder = make_builder()
  builder.download_and_prepare()
  return builder


@dataclasses.dataclass(frozen=True)
class Split:
  """A dataset split held in host memory."""
  images: np.ndarray   # (N, H, W, C) uint8
  labels: np.ndarray   # (N,) int32 clothing type
  items: np.ndarray    # (N,) int32 catalogue item id (same item = same garment)
  class_names: tuple[str, ...]
  paths: np.ndarray | None = None  # (N,) str, relative to the tree root (image_folder only)

  def __len__(self):
    return len(self.labels)
