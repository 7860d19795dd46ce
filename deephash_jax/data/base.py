"""What every dataset module shares: the in-memory `Split`, `DataError`, TF kept off accelerators
(TFDS reads files with TF; JAX owns the GPU/TPU), and one process building a dataset at a time."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools

import jax
from jax._src import distributed  # the coordination service's client (no public accessor)
import numpy as np


class DataError(ValueError):
  """Bad input data; the message names the file and what is wrong with it."""


def tensorflow_installed() -> bool:
  """Whether TFDS can build datasets here (it needs TensorFlow)."""
  return all(importlib.util.find_spec(m) is not None
             for m in ("tensorflow", "tensorflow_datasets"))


def hide_tf_from_accelerators():
  """TF only reads files here; it must never take GPU/TPU memory from JAX."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # Already initialised: devices were hidden earlier.
    pass


BUILD_TIMEOUT_SECONDS = 3600   # how long the other processes wait for process 0's build
_BARRIER_NUMBERS = itertools.count(1)   # the n-th prepare_once of every process meets the others'


def prepare_once(make_builder, builder=None):
  """A builder whose dataset is built, by one process at a time: `builder` (or `make_builder()`)
  on process 0 and in a single-process run.

  In a multi-process run process 0 builds the dataset while the others wait at a barrier, then
  they make their builder, which finds the dataset built (a shared data dir) or builds its own (a
  host's local one). A builder made before the barrier would hold the dataset info of an empty
  folder, and several processes building into one folder at once fail. The barrier is the
  coordination service's, not a device collective: the first collective of a CPU run sets up
  gloo, whose 30 s connect timeout a build longer than that would overrun on the waiting side.
  """
  first = jax.process_index() == 0
  if first:
    builder = builder if builder is not None else make_builder()
  if jax.process_count() > 1:
    if first:
      builder.download_and_prepare()
    # Every process prepares the same splits in the same order, so the n-th barrier is one.
    distributed.global_state.client.wait_at_barrier(
        f"deephash_prepare_dataset_{next(_BARRIER_NUMBERS)}",
        timeout_in_ms=BUILD_TIMEOUT_SECONDS * 1000)
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
