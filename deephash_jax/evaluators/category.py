"""The category protocol: the semantic search, same clothing type.

Queries = `config.input.query_split`, database = `config.input.database_split`, relevant = same
clothing type, codes = sign(h), Hamming ranking (ranking.py for the metrics and ties).
"""

from __future__ import annotations

import numpy as np

from deephash_jax.evaluators import ranking
from deephash_jax.search import packing


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


def metrics(query_codes, query_labels, db_codes, db_labels, *, eval_config,
            num_bits: int) -> dict:
  """mAP@all, mAP@k (`eval.map_at`), P@H<=r and R@H<=r (`eval.radius`) of continuous or binary
  codes (binarised by sign), ranked by Hamming distance with `eval.ties`."""
  return ranking.retrieval_metrics(
      packing.pack_bits(query_codes), query_labels, packing.pack_bits(db_codes), db_labels,
      num_bits=num_bits, map_at=tuple(eval_config.map_at), radius=eval_config.radius,
      ties=eval_config.get("ties", "expected"))
