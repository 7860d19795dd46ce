"""The web demo: `deephash demo --workdir=W --index=I` (FastAPI app + a static page)."""

from deephash_jax.demo.app import create_app, serve

__all__ = ["create_app", "serve"]
