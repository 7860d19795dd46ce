"""data/sampler.py: the training order as a pure function of (seed, step)."""
import numpy as np
import pytest

from deephash_jax.data import base
from deephash_jax.data import sampler as sampler_lib


def _split(n=40):
  labels = np.arange(n) % 4
  return base.Split(np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1), labels.astype(
      np.int32), np.arange(n, dtype=np.int32), ("a", "b", "c", "d"))


def test_sampler_is_a_function_of_seed_and_step():
  a = sampler_lib.TwoViewSampler(_split(), num_items=8, seed=3)
  b = sampler_lib.TwoViewSampler(_split(), num_items=8, seed=3)
  order = [a.global_indices(s).copy() for s in range(12)]
  # Any access order (e.g. after a resume at step 7) gives the same batches.
  for s in (7, 2, 11, 0):
    np.testing.assert_array_equal(b.global_indices(s), order[s])
  # An epoch (5 steps of 8 of 40 items) visits every item once; epochs differ.
  assert sorted(np.concatenate(order[:5]).tolist()) == list(range(40))
  assert not np.array_equal(np.concatenate(order[:5]), np.concatenate(order[5:10]))
  c = sampler_lib.TwoViewSampler(_split(), num_items=8, seed=4)
  assert not np.array_equal(c.global_indices(0), order[0])


def test_sampler_process_slices_tile_the_global_batch():
  global_batch = sampler_lib.TwoViewSampler(_split(), num_items=8, seed=0).local_batch(3)
  parts = [sampler_lib.TwoViewSampler(_split(), num_items=8, seed=0, process_index=p,
                                         process_count=2).local_batch(3) for p in range(2)]
  for key in global_batch:
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), global_batch[key])


def test_sampler_rejects_bad_sizes():
  with pytest.raises(ValueError, match="exceeds the split"):
    sampler_lib.TwoViewSampler(_split(8), num_items=9, seed=0)
  with pytest.raises(ValueError, match="processes"):
    sampler_lib.TwoViewSampler(_split(), num_items=9, seed=0, process_count=2)
