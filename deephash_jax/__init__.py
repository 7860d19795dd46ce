"""deephash-jax: adversarially trained deep semantic hashing for fashion retrieval."""

__version__ = "0.1.0"
