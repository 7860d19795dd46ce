"""Test-wide set-up: 8 fake host devices, TF kept off accelerators, quiet logs."""
import os

# Must happen before jax is imported anywhere: every test sees 8 CPU devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # TF never grabs an accelerator
