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


def test_types_per_batch_groups_each_batch_by_type_and_keeps_each_item_once_an_epoch():
  labels = np.repeat(np.arange(5), [13, 10, 10, 9, 3])   # unequal types, one under a chunk
  n = len(labels)
  split = base.Split(np.zeros((n, 1, 1, 1), np.uint8), labels.astype(np.int32),
                     np.arange(n, dtype=np.int32), tuple("abcde"))
  a = sampler_lib.TwoViewSampler(split, num_items=8, seed=1, types_per_batch=2)
  # Chunks of 4 items: 3 + 2 + 2 + 2 + 0 = 9 chunks, 4 batches of 2 chunks an epoch.
  assert a.steps_per_epoch == 4
  for epoch in range(3):
    steps = range(epoch * 4, (epoch + 1) * 4)
    batches = [a.global_indices(s) for s in steps]
    seen = np.concatenate(batches)
    assert len(set(seen.tolist())) == len(seen) == 32        # no item twice in an epoch
    for idx in batches:
      chunks = labels[idx].reshape(2, 4)                    # two chunks of one type each
      assert (chunks == chunks[:, :1]).all()
    assert not (labels[seen] == 4).any()                     # type e fills no chunk of 4
  # A function of (seed, step), as the uniform order; another seed another order.
  b = sampler_lib.TwoViewSampler(split, num_items=8, seed=1, types_per_batch=2)
  for s in (9, 0, 5):
    np.testing.assert_array_equal(b.global_indices(s), a.global_indices(s))
  c = sampler_lib.TwoViewSampler(split, num_items=8, seed=2, types_per_batch=2)
  assert not all(np.array_equal(c.global_indices(s), a.global_indices(s)) for s in range(4))
  with pytest.raises(ValueError, match="types_per_batch=3 does not divide"):
    sampler_lib.TwoViewSampler(split, num_items=8, seed=0, types_per_batch=3)
  with pytest.raises(ValueError, match="under one batch"):
    sampler_lib.TwoViewSampler(split, num_items=40, seed=0, types_per_batch=2)
