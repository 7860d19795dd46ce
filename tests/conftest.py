"""Test-wide set-up: 8 fake host devices, TF kept off accelerators, quiet logs."""
import os

# Must happen before jax is imported anywhere: every test sees 8 CPU devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # TF never grabs an accelerator

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position  (after the env set-up)

from deephash_jax import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests import fake_data  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="session")
def fake_source(tmp_path_factory):
  """Synthetic Fashion-MNIST IDX files (tests/fake_data.py), written once."""
  return fake_data.write_fake_fashion_mnist(str(tmp_path_factory.mktemp("idx")))


@pytest.fixture
def config(fake_source, tmp_path_factory):
  """The tiny training config (configs/tiny.py) on the synthetic files."""
  cfg = config_lib.base_config("tiny")
  cfg.input.source_dir = fake_source
  cfg.input.data_dir = str(tmp_path_factory.getbasetemp() / "tfds")
  return cfg
