"""Evaluation, separate from training: jitted embedding, then the pure metrics of both protocols.

* category (category.py): query split against the database split, relevant = same type;
* closest match (closest_match.py): shopper's-photo renderings of the query split against its
  originals plus the database split, relevant = the original (`config.eval.closest_match`;
  `num_queries = 0` leaves it out).

The keys of the category protocol are plain (`map_all`, ...; `pr_curve`: precision and recall
at every Hamming radius); those of the closest match are prefixed `closest_match_`
(`closest_match_recall_at_1`, `closest_match_recall_at_10`, `closest_match_map`), and
`closest_match_asymmetric_` for the same ranked by the queries' continuous codes against the
database's bits (closest_match.asymmetric_metrics), `closest_match_reranked_` for R@1 and R@10 of
the search `deephash predict` serves (closest_match.reranked_metrics: the Hamming top
`closest_match_reranked_candidates` re-ranked by that distance).
"""

from __future__ import annotations

from absl import logging

from deephash_jax import encoder as encoder_lib
from deephash_jax import mesh as mesh_lib
from deephash_jax.data import registry
from deephash_jax.evaluators import category
from deephash_jax.evaluators import closest_match
from deephash_jax.evaluators import ranking
from deephash_jax.search import packing


def evaluate_variables(config, variables, *, mesh=None) -> dict:
  """Both protocols' metrics of a model's codes on the configured splits."""
  mesh = mesh or mesh_lib.create_mesh(config.mesh)
  embed_fn = encoder_lib.make_embed_fn(config, mesh)
  embed = lambda images: encoder_lib.embed_dataset(embed_fn, variables, images,
                                                   batch_size=config.eval.batch_size,
                                                   num_devices=mesh.size)
  query = registry.load_split(config.input, config.input.query_split)
  database = registry.load_split(config.input, config.input.database_split)
  num_queries = config.eval.get("num_queries", 0) or len(query)
  num_bits = config.model.num_bits
  query_codes, db_codes = embed(query.images), embed(database.images)
  results = category.metrics(query_codes[:num_queries], query.labels[:num_queries], db_codes,
                             database.labels, eval_config=config.eval, num_bits=num_bits)
  stats = category.code_statistics(db_codes > 0, config.input.num_classes)
  if stats["collapsed"]:
    logging.error("The codes have collapsed: %s. The mAP below is not meaningful.", stats)
  results.update({f"codes_{k}": v for k, v in stats.items()})
  precision, recall = ranking.precision_recall_curve(
      packing.pack_bits(query_codes[:num_queries]), query.labels[:num_queries],
      packing.pack_bits(db_codes), database.labels, num_bits=num_bits)
  results["pr_curve"] = {"precision": precision.tolist(), "recall": recall.tolist()}
  results["num_bits"] = num_bits
  results["num_queries"], results["num_database"] = int(num_queries), len(database)
  cm_config = config.eval.get("closest_match")
  if cm_config and cm_config.num_queries:
    protocol = closest_match.prepare(query.images, len(database), cm_config)
    cm_codes, ties = embed(protocol.queries), config.eval.get("ties", "expected")
    for prefix, cm in (
        ("closest_match_", closest_match.metrics(protocol, cm_codes, query_codes, db_codes,
                                                 num_bits=num_bits, ties=ties)),
        ("closest_match_asymmetric_", closest_match.asymmetric_metrics(
            protocol, cm_codes, query_codes, db_codes, ties=ties)),
        ("closest_match_reranked_", closest_match.reranked_metrics(
            protocol, cm_codes, query_codes, db_codes))):
      results.update({f"{prefix}{'map' if k == 'map_all' else k}": v for k, v in cm.items()})
  return results


def evaluate_workdir(workdir: str) -> dict:
  """Evaluates the latest checkpoint of a training workdir."""
  encoder = encoder_lib.HashEncoder.from_workdir(workdir)
  results = evaluate_variables(encoder.config, encoder.variables, mesh=encoder.mesh)
  results["step"] = encoder.step
  results["model_id"] = encoder.model_id
  return results
