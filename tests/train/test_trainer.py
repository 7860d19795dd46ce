"""train/trainer.py: the training loop end to end on the tiny config, resuming, failing fast."""

import json
import os
import shutil
import time

import jax
import numpy as np
import pytest

from deephash_jax import config_lib
from deephash_jax import encoder
from deephash_jax import mesh as mesh_lib
from deephash_jax.evaluators import evaluate
from deephash_jax.losses import singh2019
from deephash_jax.train import trainer
from tests import fake_data


def _use_sign_codes(config):
  config.model.code_activation, config.loss.quantization_weight = "sign_ste", 0.0


def test_train_and_evaluate_end_to_end_and_resume(config, tmp_path):
  config.train.num_steps = 30
  config.train.checkpoint_every_steps = 10
  config.train.log_every_steps = 10
  workdir = str(tmp_path / "run")
  results = trainer.train_and_evaluate(config, workdir)
  for key in ("map_all", "map_at_10", "num_queries", "num_database", "num_bits"):
    assert key in results, key
  assert results["num_queries"] == 80 and results["num_database"] == 320
  assert results["num_bits"] == 16
  assert 0.3 < results["map_all"] <= 1.0  # Chance is 0.1 with 10 balanced classes.
  assert not results["codes_collapsed"]
  assert results["train_devices"] == f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  assert results["train_host"] == mesh_lib.describe_host()
  assert results["train_seconds_from_step"] == 0 and results["train_seconds"] > 0
  assert json.load(open(os.path.join(workdir, "eval_results.json")))["map_all"] == results[
      "map_all"]
  # TensorBoard event files were written.
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))

  # Resume: drop the last checkpoint and rerun; it restarts at step 20 and ends identical.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "30"))
  # Under another objective the resume is refused, naming the field, and config.json is kept.
  saved = open(os.path.join(resumed, config_lib.CONFIG_FILE)).read()
  other = config.copy_and_resolve_references()
  other.loss.adversarial_weight = config.loss.adversarial_weight + 0.5
  with pytest.raises(config_lib.ConfigError,
                     match=r"(?s)trained with another config.*loss\.adversarial_weight: "):
    trainer.train_and_evaluate(other, resumed)
  assert open(os.path.join(resumed, config_lib.CONFIG_FILE)).read() == saved
  # How it is evaluated and logged may change.
  config = config.copy_and_resolve_references()
  config.eval.batch_size, config.train.log_every_steps = 48, 5
  # The train time carries over the resume: step 20's record plus this segment's.
  clock = json.load(open(os.path.join(resumed, trainer.TRAIN_TIME_FILE)))["checkpoints"]
  assert sorted(clock, key=int) == ["10", "20", "30"]
  assert 0 < clock["10"]["seconds"] < clock["20"]["seconds"] < clock["30"]["seconds"]
  assert clock["20"]["hosts"] == [mesh_lib.describe_host()] and clock["20"]["from_step"] == 0
  resume_start = time.time()
  results2 = trainer.train_and_evaluate(config, resumed)
  segment = time.time() - resume_start
  assert results2["train_seconds_from_step"] == 0
  assert clock["20"]["seconds"] < results2["train_seconds"] < clock["20"]["seconds"] + segment
  assert results2["train_host"] == mesh_lib.describe_host()
  assert sorted(json.load(open(os.path.join(resumed, trainer.TRAIN_TIME_FILE)))["checkpoints"],
                key=int) == ["10", "20", "30"]
  assert results2["map_all"] == pytest.approx(results["map_all"], abs=1e-9)
  a = encoder.HashEncoder.from_workdir(workdir)
  b = encoder.HashEncoder.from_workdir(resumed)
  # Both protocols are in the results, with the precision-recall curve over the radius.
  assert results["closest_match_num_queries"] == 20
  assert results["closest_match_num_database"] == 80 + 320
  assert 0.0 <= results["closest_match_recall_at_1"] <= results["closest_match_recall_at_10"]
  assert results2["closest_match_map"] == pytest.approx(results["closest_match_map"])
  assert len(results["pr_curve"]["precision"]) == 17 and results["pr_curve"]["recall"][-1] == 1.0
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


def test_a_resume_without_a_train_time_record_is_timed_from_its_step(config, tmp_path, caplog):
  """A workdir whose train_time.json is broken still resumes; its time counts from the restored
  step and says so; a checkpoint trained on another host joins the hosts."""
  config.train.num_steps, config.train.checkpoint_every_steps = 20, 10
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(config, workdir)
  path = os.path.join(workdir, trainer.TRAIN_TIME_FILE)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "20"))
  os.remove(os.path.join(workdir, "eval_results.json"))
  with open(path, "w") as f:
    f.write('{"checkpoints": {"10": {"seconds": "soon"')          # torn by hand
  results = trainer.train_and_evaluate(config, workdir)
  assert results["train_seconds_from_step"] == 10
  assert "train_time.json is unreadable" in caplog.text
  assert json.load(open(path))["checkpoints"]["20"]["from_step"] == 10

  # Step 10's record names another host: the resumed run names both, in order.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "20"))
  with open(path, "w") as f:
    json.dump({"checkpoints": {"10": {"seconds": 1000.0, "from_step": 0, "hosts": ["Other"]},
                               "20": {"seconds": 9.0, "from_step": 0, "hosts": ["Lost"]}}}, f)
  results = trainer.train_and_evaluate(config, workdir)
  assert results["train_seconds_from_step"] == 0 and results["train_seconds"] > 1000.0
  assert results["train_host"] == "Other + " + mesh_lib.describe_host()


def test_nan_fails_fast_with_the_step(config, tmp_path, monkeypatch):
  monkeypatch.setattr(singh2019, "quantization_loss", lambda codes, normaliser=None: np.nan)
  config.train.num_steps = 4
  with pytest.raises(FloatingPointError, match="non-finite training metrics at step 2"):
    trainer.train_and_evaluate(config, str(tmp_path / "nan"))


@pytest.mark.parametrize("code_activation", ["sign_ste", "tanh"])
@pytest.mark.parametrize("num_bits", [16, 32, 48, 64])
def test_no_bit_length_collapses(config, tmp_path, num_bits, code_activation):
  config.model.num_bits = num_bits
  if code_activation == "sign_ste":
    _use_sign_codes(config)
  config.train.num_steps = 20
  config.train.checkpoint_every_steps = 100
  results = trainer.train_and_evaluate(config, str(tmp_path / f"b{num_bits}"))
  assert not results["codes_collapsed"], results
  assert results["codes_unique_codes"] >= 10
  assert results["map_all"] > 0.3, results


def test_unknown_method_is_named(config, tmp_path):
  config.method = "semantic-magic"
  with pytest.raises(config_lib.ConfigError, match="config.method='semantic-magic'"):
    trainer.train_and_evaluate(config, str(tmp_path / "bad"))


def test_bad_config_values_are_named(config, tmp_path):
  config.model.num_bits = 2
  with pytest.raises(config_lib.ConfigError, match="config.model.num_bits=2"):
    trainer.train_and_evaluate(config, str(tmp_path / "bad"))
  config.model.num_bits = 16
  config.loss.hamming_weight = -1.0
  with pytest.raises(config_lib.ConfigError, match="loss.hamming_weight"):
    trainer.train_and_evaluate(config, str(tmp_path / "bad"))
  config.loss.hamming_weight = 1.0
  config.loss.gamma_reference_bits = -48
  with pytest.raises(config_lib.ConfigError, match="loss.gamma_reference_bits=-48"):
    trainer.train_and_evaluate(config, str(tmp_path / "bad"))
  config.loss.gamma_reference_bits = 0
  config.model.code_activation = "sgn"
  with pytest.raises(config_lib.ConfigError, match="model.code_activation='sgn'"):
    trainer.train_and_evaluate(config, str(tmp_path / "bad"))
  # The quantization term is 0 on sign codes: a weight there would silently do nothing.
  assert config_lib.base_config("fashion_mnist").model.code_activation == "tanh"
  config.model.code_activation, config.loss.quantization_weight = "sign_ste", 0.1
  with pytest.raises(config_lib.ConfigError, match="loss.quantization_weight=0.1: 0 with "
                     "model.code_activation='sign_ste'"):
    trainer.train_and_evaluate(config, str(tmp_path / "bad"))
  config.model.code_activation = "tanh"
  config_lib.validate_config(config)
  config.method, config.model.code_activation = "dch", "sign_ste"   # only ours has the term
  config_lib.validate_config(config)


def test_bfloat16_training_stays_finite_and_learns(config, tmp_path):
  config.train.compute_dtype = "bfloat16"
  config.train.num_steps = 30
  config.train.checkpoint_every_steps = 30
  results = trainer.train_and_evaluate(config, str(tmp_path / "bf16"))   # raises if non-finite
  assert results["map_all"] > 0.3 and not results["codes_collapsed"]
