"""The sharded train step and the training loop, on the tiny config and synthetic IDX files."""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from deephash_jax import config_lib
from deephash_jax import evaluate
from deephash_jax import inference
from deephash_jax import input_pipeline
from deephash_jax import losses
from deephash_jax import train
from tests import fake_data

TERMS = ("classification", "hamming", "hamming_item", "adversarial", "quantization")


@pytest.fixture(scope="module")
def fake_source(tmp_path_factory):
  return fake_data.write_fake_fashion_mnist(str(tmp_path_factory.mktemp("idx")))


@pytest.fixture
def config(fake_source, tmp_path_factory):
  cfg = config_lib.base_config("tiny")
  cfg.input.source_dir = fake_source
  cfg.input.data_dir = str(tmp_path_factory.getbasetemp() / "tfds")
  return cfg


def _batch(n, seed=0):
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % 4).astype(np.int32)
  return {"image": fake_data.class_images(labels, rng)[..., None], "label": labels,
          "item": np.arange(n, dtype=np.int32)}


def _use_sign_codes(config):
  for section, fields in config_lib.SIGN_CODES.items():
    config[section].update(fields)


def _one_step(config, devices, state, batch):
  mesh = Mesh(np.array(devices), ("data",))
  state = jax.device_put(state, NamedSharding(mesh, P()))
  batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
  return train.make_train_step(config, mesh)(state, batch, jax.random.key(7))


@pytest.mark.parametrize("method,code_activation",
                         [("ours", "sign_ste"), ("ours", "tanh"), ("dch", "tanh")])
def test_eight_devices_equal_one_device(config, method, code_activation):
  assert jax.device_count() == 8
  config.method = method
  if code_activation == "sign_ste":
    _use_sign_codes(config)
  config.train.warmup_steps = 0  # Else the first step has learning rate 0.
  state = train.create_train_state(config, jax.random.key(0), 10, (28, 28, 1))
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
  state = train.create_train_state(config, jax.random.key(0), 10, (28, 28, 1))
  _, metrics = _one_step(config, jax.devices(), state, _batch(16))
  assert float(metrics["grad_norm_encoder"]) > 1e-6, term
  assert float(metrics[f"loss_{term}"]) != 0.0


@pytest.mark.parametrize("method", ["dch", "hashnet", "dpsh", "csq", "greedyhash", "orthohash"])
def test_every_baseline_trains_the_encoder_in_the_shared_step(config, method):
  config.method = method
  config.loss.classification_weight = 0.0
  if method == "greedyhash":
    config.model.code_activation = "sign_ste"
  state = train.create_train_state(config, jax.random.key(0), 10, (28, 28, 1))
  _, metrics = _one_step(config, jax.devices(), state, _batch(16))
  assert np.isfinite(float(metrics["loss"]))
  assert float(metrics["grad_norm_encoder"]) > 1e-6, method
  assert float(metrics["loss_baseline"]) != 0.0


@pytest.mark.parametrize("code_activation", ["sign_ste", "tanh"])
def test_embedding_is_continuous_and_binarises_to_the_model_codes(config, code_activation):
  from deephash_jax import augment, models  # pylint: disable=g-import-not-at-top
  config.model.code_activation = code_activation
  config.loss.quantization_weight = 0.0
  state = train.create_train_state(config, jax.random.key(3), 10, (28, 28, 1))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  images = _batch(16)["image"]
  mesh = train.create_mesh(config.mesh)
  embedded = np.asarray(train.make_embed_fn(config, mesh)(variables, images))
  net, _ = models.create_models(config.model, config.input.num_classes)
  codes, aux = net.apply(variables, augment.preprocess(images), train=False)
  codes, pre = np.asarray(codes), np.asarray(aux["pre_codes"])
  if code_activation == "sign_ste":
    assert set(np.unique(codes)) <= {-1.0, 1.0}
  np.testing.assert_allclose(embedded, np.tanh(pre), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(embedded > 0, codes > 0)       # the same binary codes
  assert 0.0 < np.abs(embedded).min() and np.abs(embedded).max() < 1.0   # continuous


def test_unknown_method_is_named(config, tmp_path):
  config.method = "semantic-magic"
  with pytest.raises(config_lib.ConfigError, match="config.method='semantic-magic'"):
    train.train_and_evaluate(config, str(tmp_path / "bad"))


def test_zero_weights_give_zero_encoder_gradient(config):
  """Control for the test above: it can fail."""
  for name in TERMS:
    config.loss[f"{name}_weight"] = 0.0
  state = train.create_train_state(config, jax.random.key(0), 10, (28, 28, 1))
  _, metrics = _one_step(config, jax.devices(), state, _batch(16))
  assert float(metrics["grad_norm_encoder"]) == 0.0


def test_train_and_evaluate_end_to_end_and_resume(config, tmp_path):
  config.train.num_steps = 30
  config.train.checkpoint_every_steps = 10
  config.train.log_every_steps = 10
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(config, workdir)
  for key in ("map_all", "map_at_10", "num_queries", "num_database", "num_bits"):
    assert key in results, key
  assert results["num_queries"] == 80 and results["num_database"] == 320
  assert results["num_bits"] == 16
  assert 0.3 < results["map_all"] <= 1.0  # Chance is 0.1 with 10 balanced classes.
  assert not results["codes_collapsed"]
  assert json.load(open(os.path.join(workdir, "eval_results.json")))["map_all"] == results[
      "map_all"]
  # TensorBoard event files were written.
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))

  # Resume: drop the last checkpoint and rerun; it restarts at step 20 and ends identical.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "30"))
  results2, codes = train.train_and_evaluate(config, resumed, return_codes=True)
  assert results2["map_all"] == pytest.approx(results["map_all"], abs=1e-9)
  a = inference.HashEncoder.from_workdir(workdir)
  b = inference.HashEncoder.from_workdir(resumed)
  # The returned codes are the evaluation's: the model's codes of the query and database splits.
  database = input_pipeline.load_split(config.input, config.input.database_split)
  assert codes.query.shape == (80, 16)
  np.testing.assert_allclose(codes.database, b.embed(database.images), atol=1e-6)
  assert a.step == b.step == 30
  for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables)):
    np.testing.assert_array_equal(x, y)

  # The public entry point: uint8 images -> packed codes; evaluate_workdir agrees with training.
  images = fake_data.class_images(np.arange(5) % 10, np.random.default_rng(0))
  packed = a.encode(images)
  assert packed.shape == (5, 2) and packed.dtype == np.uint8
  np.testing.assert_array_equal(np.packbits(a.encode(images, packed=False), axis=1,
                                            bitorder="little"), packed)
  assert evaluate.evaluate_workdir(workdir)["map_all"] == pytest.approx(results["map_all"])
  with pytest.raises(ValueError, match="expected uint8"):
    a.encode(images.astype(np.float32))


def test_nan_fails_fast_with_the_step(config, tmp_path, monkeypatch):
  monkeypatch.setattr(losses, "quantization_loss", lambda codes, normaliser=None: np.nan)
  config.train.num_steps = 4
  with pytest.raises(FloatingPointError, match="non-finite training metrics at step 2"):
    train.train_and_evaluate(config, str(tmp_path / "nan"))


@pytest.mark.parametrize("code_activation", ["sign_ste", "tanh"])
@pytest.mark.parametrize("num_bits", [16, 32, 48, 64])
def test_no_bit_length_collapses(config, tmp_path, num_bits, code_activation):
  config.model.num_bits = num_bits
  if code_activation == "sign_ste":
    _use_sign_codes(config)
  config.train.num_steps = 20
  config.train.checkpoint_every_steps = 100
  results = train.train_and_evaluate(config, str(tmp_path / f"b{num_bits}"))
  assert not results["codes_collapsed"], results
  assert results["codes_unique_codes"] >= 10
  assert results["map_all"] > 0.3, results


def test_bad_config_values_are_named(config, tmp_path):
  config.model.num_bits = 2
  with pytest.raises(config_lib.ConfigError, match="config.model.num_bits=2"):
    train.train_and_evaluate(config, str(tmp_path / "bad"))
  config.model.num_bits = 16
  config.loss.hamming_weight = -1.0
  with pytest.raises(config_lib.ConfigError, match="loss.hamming_weight"):
    train.train_and_evaluate(config, str(tmp_path / "bad"))
  config.loss.hamming_weight = 1.0
  config.loss.gamma_reference_bits = -48
  with pytest.raises(config_lib.ConfigError, match="loss.gamma_reference_bits=-48"):
    train.train_and_evaluate(config, str(tmp_path / "bad"))
  config.loss.gamma_reference_bits = 0
  config.model.code_activation = "sgn"
  with pytest.raises(config_lib.ConfigError, match="model.code_activation='sgn'"):
    train.train_and_evaluate(config, str(tmp_path / "bad"))
  # The quantization term is 0 on sign codes: a weight there would silently do nothing.
  assert config_lib.base_config("fashion_mnist").model.code_activation == "tanh"
  config.model.code_activation, config.loss.quantization_weight = "sign_ste", 0.1
  with pytest.raises(config_lib.ConfigError, match="loss.quantization_weight=0.1: 0 with "
                     "model.code_activation='sign_ste'"):
    train.train_and_evaluate(config, str(tmp_path / "bad"))
  config.model.code_activation = "tanh"
  config_lib.validate_config(config)
  config.method, config.model.code_activation = "dch", "sign_ste"   # only ours has the term
  config_lib.validate_config(config)


def test_cauchy_gammas_scale_with_the_code_length_only_when_asked():
  loss = config_lib.base_config("fashion_mnist").loss
  loss.gamma, loss.gamma_item = 10.0, 6.0
  assert loss.gamma_reference_bits == 0                    # default: as given at every length
  assert train.cauchy_gammas(loss, 16) == (10.0, 6.0)
  loss.gamma_reference_bits = 48
  assert train.cauchy_gammas(loss, 48) == (10.0, 6.0)      # unchanged at the reference length
  assert train.cauchy_gammas(loss, 16) == pytest.approx((10.0 / 3, 2.0))
  assert train.cauchy_gammas(loss, 64) == pytest.approx((40.0 / 3, 8.0))
