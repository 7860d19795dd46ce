"""Evaluation, separate from training: jitted embedding, then pure metric functions.

Protocol (category retrieval): queries = `config.input.query_split`, database =
`config.input.database_split`, relevant = same clothing type, codes = sign(h), Hamming ranking
with ties broken by database index (see metrics.py for the AP definition).
"""

from __future__ import annotations

import dataclasses

from absl import logging
import numpy as np

from deephash_jax import hamming
from deephash_jax import input_pipeline
from deephash_jax import metrics
from deephash_jax import train as train_lib


def code_statistics(bits: np.ndarray, num_classes: int) -> dict:
  """Collapse watch on the database codes (bool (N, K)).

  `collapsed` is set when fewer distinct codes exist than classes, or when half the bits or more
  are constant over the whole database: such codes cannot separate the classes.
  """
  unique = len(np.unique(np.packbits(bits, axis=1), axis=0))
  bit_means = bits.mean(axis=0)
  dead_bits = int(np.sum((bit_means == 0) | (bit_means == 1)))
  collapsed = unique < num_classes or dead_bits >= bits.shape[1] / 2
  return {"unique_codes": int(unique), "dead_bits": dead_bits,
          "bit_imbalance": float(np.mean(np.abs(2 * bit_means - 1))), "collapsed": bool(collapsed)}


@dataclasses.dataclass(frozen=True)
class Codes:
  """The continuous codes an evaluation computed, for callers that need them again."""
  query: np.ndarray      # float32 (num_queries, num_bits), the first num_queries query images
  database: np.ndarray   # float32 (num_database, num_bits)


def evaluate_variables(config, variables, *, mesh=None, return_codes: bool = False):
  """Category-retrieval metrics of a model's codes on the configured query/database splits.

  Returns the metrics dict, or `(metrics, Codes)` with `return_codes=True` (the benchmark reuses
  the codes instead of embedding the same 70,000 images again).
  """
  mesh = mesh or train_lib.create_mesh(config.mesh)
  embed_fn = train_lib.make_embed_fn(config, mesh)
  query = input_pipeline.load_split(config.input, config.input.query_split)
  database = input_pipeline.load_split(config.input, config.input.database_split)
  num_queries = config.eval.get("num_queries", 0) or len(query)
  embed = lambda images: train_lib.embed_dataset(embed_fn, variables, images,
                                                 batch_size=config.eval.batch_size,
                                                 num_devices=mesh.size)
  query_codes = embed(query.images[:num_queries])
  db_codes = embed(database.images)
  num_bits = config.model.num_bits
  results = metrics.retrieval_metrics(
      hamming.pack_bits(query_codes), query.labels[:num_queries],
      hamming.pack_bits(db_codes), database.labels, num_bits=num_bits,
      map_at=tuple(config.eval.map_at), radius=config.eval.radius)
  stats = code_statistics(db_codes > 0, config.input.num_classes)
  if stats["collapsed"]:
    logging.error("The codes have collapsed: %s. The mAP below is not meaningful.", stats)
  results.update({f"codes_{k}": v for k, v in stats.items()})
  results["num_bits"] = num_bits
  results["num_queries"], results["num_database"] = int(num_queries), len(database)
  if return_codes:
    return results, Codes(query=query_codes, database=db_codes)
  return results


def evaluate_workdir(workdir: str) -> dict:
  """Evaluates the latest checkpoint of a training workdir."""
  from deephash_jax import inference  # pylint: disable=g-import-not-at-top
  encoder = inference.HashEncoder.from_workdir(workdir)
  results = evaluate_variables(encoder.config, encoder.variables, mesh=encoder.mesh)
  results["step"] = encoder.step
  results["model_id"] = encoder.model_id
  return results
