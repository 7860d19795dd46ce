"""train/step.py: the sharded train step on the tiny config (8 devices against 1, each term)."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from deephash_jax.train import state as state_lib
from deephash_jax.train import step as step_lib
from tests import fake_data

TERMS = ("classification", "hamming", "hamming_item", "adversarial", "quantization")



def _batch(n, seed=0):
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % 4).astype(np.int32)
  return {"image": fake_data.class_images(labels, rng)[..., None], "label": labels,
          "item": np.arange(n, dtype=np.int32)}


def _use_sign_codes(config):
  config.model.code_activation, config.loss.quantization_weight = "sign_ste", 0.0


def _one_step(config, devices, state, batch):
  mesh = Mesh(np.array(devices), ("data",))
  state = jax.device_put(state, NamedSharding(mesh, P()))
  batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
  return step_lib.make_train_step(config, mesh)(state, batch, jax.random.key(7))


@pytest.mark.parametrize("method,code_activation",
                         [("ours", "sign_ste"), ("ours", "tanh"), ("dch", "tanh")])
def test_eight_devices_equal_one_device(config, method, code_activation):
  assert jax.device_count() == 8
  config.method = method
  if code_activation == "sign_ste":
    _use_sign_codes(config)
  config.train.warmup_steps = 0  # Else the first step has learning rate 0.
  state = state_lib.create_train_state(config, jax.random.key(0), 10, (28, 28, 1))
  batch = _batch(16)
  copy = lambda s: jax.tree.map(np.array, s)
  s8, m8 = _one_step(config, jax.devices(), copy(state), batch)
  s1, m1 = _one_step(config, jax.devices()[:1], copy(state), batch)
  for key in m1:
    np.testing.assert_allclose(m8[key], m1[key], rtol=2e-4, atol=1e-6, err_msg=key)
  flat8 = jax.tree.leaves_with_path({"p": s8.params, "b": s8.batch_stats, "d": s8.disc_params})
  flat1 = jax.tree.leaves({"p": s1.params, "b": s1.batch_stats, "d": s1.disc_params})
  lr = config.train.learning_rate
  for (path, a), b in zip(flat8, flat1):
    a, b, name = np.asarray(a), np.asarray(b), jax.tree_util.keystr(path)
    if code_activation == "tanh":
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)
      continue
    # Adam's first step is lr * sign(gradient) wherever |gradient| >> eps, so a gradient entry
    # within float round-off of 0 (the sign layer's codes make them more common) can step +lr on
    # one device count and -lr on the other. Allow that on a few entries, nothing else.
    close = np.isclose(a, b, rtol=1e-4, atol=1e-6)
    assert (~close).sum() <= max(2, 0.01 * close.size), (name, (~close).sum(), close.size)
    np.testing.assert_array_less(np.abs(a - b)[~close], 2 * lr * 1.01, err_msg=name)
  # And the step did change the parameters (the comparison above is not vacuous).
  before = jax.tree.leaves(state.params)
  assert any(not np.allclose(a, b) for a, b in zip(before, jax.tree.leaves(s1.params)))


@pytest.mark.parametrize("term", TERMS)
def test_every_loss_term_reaches_the_encoder(config, term):
  for name in TERMS:
    config.loss[f"{name}_weight"] = 1.0 if name == term else 0.0
  state = state_lib.create_train_state(config, jax.random.key(0), 10, (28, 28, 1))
  _, metrics = _one_step(config, jax.devices(), state, _batch(16))
  assert float(metrics["grad_norm_encoder"]) > 1e-6, term
  assert float(metrics[f"loss_{term}"]) != 0.0


@pytest.mark.parametrize("method", ["dch", "hashnet", "dpsh", "csq", "greedyhash", "orthohash"])
def test_every_baseline_trains_the_encoder_in_the_shared_step(config, method):
  config.method = method
  config.loss.classification_weight = 0.0
  if method == "greedyhash":
    config.model.code_activation = "sign_ste"
  state = state_lib.create_train_state(config, jax.random.key(0), 10, (28, 28, 1))
  _, metrics = _one_step(config, jax.devices(), state, _batch(16))
  assert np.isfinite(float(metrics["loss"]))
  assert float(metrics["grad_norm_encoder"]) > 1e-6, method
  assert float(metrics["loss_baseline"]) != 0.0


def test_zero_weights_give_zero_encoder_gradient(config):
  """Control for the test above: it can fail."""
  for name in TERMS:
    config.loss[f"{name}_weight"] = 0.0
  state = state_lib.create_train_state(config, jax.random.key(0), 10, (28, 28, 1))
  _, metrics = _one_step(config, jax.devices(), state, _batch(16))
  assert float(metrics["grad_norm_encoder"]) == 0.0
