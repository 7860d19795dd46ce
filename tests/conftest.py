"""Test-wide set-up: 8 fake host devices, TF kept off accelerators, quiet logs, one XLA
compilation cache for the run."""
import os
import shutil
import tempfile

# Must happen before jax is imported anywhere: every test sees 8 CPU devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # TF never grabs an accelerator
# One persistent XLA compilation cache for the run, shared by the one-process runs it starts (they
# inherit the environment; multi-process runs opt out, tests/__init__.py): many tests and the
# `deephash train` runs they launch compile the same tiny-config programs, which XLA:CPU would
# otherwise compile again in each. The cache returns the executable XLA compiled for the same
# program, options and devices.
_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="deephash-xla-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

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


def pytest_unconfigure(config):
  """Removes the compilation cache this process made (pytest-xdist's workers inherit the
  controller's directory and leave it to the controller)."""
  del config
  if _CACHE is not None:
    shutil.rmtree(_CACHE, ignore_errors=True)
