"""The training order as a pure function of (seed, step).

Each step takes `batch_size // 2` catalogue items; the compiled train step renders each twice (a
catalogue view and a query view, see augment.py). Because a batch depends on the step alone, a
run that resumes from a checkpoint, even after SIGKILL, sees exactly the batches an uninterrupted
run sees, and every process of a multi-host run takes its own contiguous slice of the global
batch. The datasets are small enough to live in host memory as uint8 (Fashion-MNIST: 47 MB);
augmentation runs on the accelerator inside the compiled step, so the host only gathers rows.
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
  """

  def __init__(self, split: Split, *, num_items: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    if num_items > len(split):
      raise ValueError(f"batch of {num_items} items exceeds the split's {len(split)} items; "
                       "lower config.train.batch_size")
    if num_items % process_count:
      raise ValueError(f"{num_items} items per batch do not divide over {process_count} "
                       "processes")
    self.split = split
    self.num_items = num_items
    self.seed = seed
    self.steps_per_epoch = len(split) // num_items
    self._local = slice(process_index * num_items // process_count,
                        (process_index + 1) * num_items // process_count)
    self._perm_epoch, self._perm = -1, None

  def global_indices(self, step: int) -> np.ndarray:
    epoch, offset = divmod(int(step), self.steps_per_epoch)
    if epoch != self._perm_epoch:
      rng = np.random.default_rng([self.seed, epoch])
      self._perm, self._perm_epoch = rng.permutation(len(self.split)), epoch
    return self._perm[offset * self.num_items:(offset + 1) * self.num_items]

  def local_batch(self, step: int) -> Mapping[str, np.ndarray]:
    """This process's slice of the global batch of `step`."""
    idx = self.global_indices(step)[self._local]
    return {"image": self.split.images[idx], "label": self.split.labels[idx],
            "item": self.split.items[idx]}
