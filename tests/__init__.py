"""The test suite (tests/conftest.py sets up what every test sees)."""

# For the environment of multi-process JAX runs: they compile for themselves, outside the run's
# shared compilation cache (conftest.py), which serves the one-process runs.
NO_COMPILATION_CACHE = {"JAX_ENABLE_COMPILATION_CACHE": "false"}
