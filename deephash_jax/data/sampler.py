"""The training order as a pure function of (seed, step).

Each step takes `batch_size // 2` catalogue items; the compiled train step renders each as a
catalogue view and `input.augment.query_views` query views (default 1; see augment.py). Because
a batch depends on the step alone, a run that resumes from a checkpoint, even after SIGKILL, sees
exactly the batches an uninterrupted run sees, and every process of a multi-host run takes its
own contiguous slice of the global batch. The datasets are small enough to live in host memory
as uint8 (Fashion-MNIST: 47 MB); augmentation runs on the accelerator inside the compiled step, so
the host only gathers rows.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from deephash_jax.data.base import Split


class TwoViewSampler:
  """Deterministic batches of catalogue items: the batch of step s depends on (seed, s) only.

  Each epoch is a seeded permutation of the split; a step takes `num_items` consecutive entries
  (the remainder of an epoch is dropped). In a multi-process run every process computes the same
  global indices and keeps its own contiguous slice of them.

  `types_per_batch` > 0 groups a batch by type (P x K sampling, as pytorch-metric-learning's
  MPerClassSampler): each epoch cuts every type's shuffled items into chunks of
  `num_items // types_per_batch`, shuffles the chunks, and a batch is `types_per_batch`
  consecutive chunks, so it holds at most that many types (two chunks may share one) and each
  item's same-type rivals in the batch are many (e.g. 4 types of 32 items: 31 same-type
  negatives per item against about 12 in a uniform batch of 128 over 10 types). Every item still
  comes at most once per epoch; a type's remainder under one chunk waits for the next epoch's
  shuffle.
  """

  def __init__(self, split: Split, *, num_items: int, seed: int,
               process_index: int = 0, process_count: int = 1, types_per_batch: int = 0):
    if num_items > len(split):
      raise ValueError(f"batch of {num_items} items exceeds the split's {len(split)} items; "
                       "lower config.train.batch_size")
    if num_items % process_count:
      raise ValueError(f"{num_items} items per batch do not divide over {process_count} "
                       "processes")
    self.split = split
    self.num_items = num_items
    self.seed = seed
    self.types_per_batch = types_per_batch
    if types_per_batch:
      if num_items % types_per_batch:
        raise ValueError(f"train.types_per_batch={types_per_batch} does not divide the batch's "
                         f"{num_items} items")
      self._chunk = num_items // types_per_batch
      self._types = [np.flatnonzero(split.labels == t) for t in np.unique(split.labels)]
      num_chunks = sum(len(items) // self._chunk for items in self._types)
      self.steps_per_epoch = num_chunks // types_per_batch
      if not self.steps_per_epoch:
        raise ValueError(f"train.types_per_batch={types_per_batch}: the split's types fill "
                         f"{num_chunks} chunks of {self._chunk} items, under one batch")
    else:
      self.steps_per_epoch = len(split) // num_items
    self._local = slice(process_index * num_items // process_count,
                        (process_index + 1) * num_items // process_count)
    self._perm_epoch, self._perm = -1, None

  def _epoch_order(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, epoch])
    if not self.types_per_batch:
      return rng.permutation(len(self.split))
    chunks = []
    for items in self._types:
      shuffled = rng.permutation(items)
      n = len(shuffled) // self._chunk
      chunks.append(shuffled[:n * self._chunk].reshape(n, self._chunk))
    chunks = np.concatenate(chunks)[rng.permutation(sum(len(c) for c in chunks))]
    return chunks[:self.steps_per_epoch * self.types_per_batch].reshape(-1)

  def global_indices(self, step: int) -> np.ndarray:
    epoch, offset = divmod(int(step), self.steps_per_epoch)
    if epoch != self._perm_epoch:
      self._perm, self._perm_epoch = self._epoch_order(epoch), epoch
    return self._perm[offset * self.num_items:(offset + 1) * self.num_items]

  def local_batch(self, step: int) -> Mapping[str, np.ndarray]:
    """This process's slice of the global batch of `step`."""
    idx = self.global_indices(step)[self._local]
    return {"image": self.split.images[idx], "label": self.split.labels[idx],
            "item": self.split.items[idx]}
