r"""Both protocols with the BatchNorm statistics as trained and re-estimated on clean images.

    python experiments/graded_codes/precise_bn.py WORKDIR [--cm_queries=2000]

Training normalises batches of gallery and query views together, so the running statistics are
those of half-perturbed batches while the evaluation embeds clean catalogue images. This
re-estimates them ("precise BN") from 120 batches of 500 clean training images (train-mode
forward passes, the model's momentum 0.9, so the estimate forgets the trained statistics), then
evaluates both protocols as the main job does, on the first `cm_queries` closest-match queries.
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np

from deephash_jax import models
from deephash_jax.data import augment
from deephash_jax.data import registry
from deephash_jax.encoder import HashEncoder
from deephash_jax.evaluators import evaluate

KEYS = ("map_all", "closest_match_recall_at_1", "closest_match_recall_at_10",
        "closest_match_map")


def recalibrated(config, variables, images, *, batches: int = 120, batch_size: int = 500,
                 seed: int = 0):
  net, _ = models.create_models(config.model, config.input.num_classes)

  @jax.jit
  def update(variables, x):
    _, new = net.apply(variables, augment.preprocess(x), train=True, mutable=["batch_stats"])
    return {"params": variables["params"], "batch_stats": new["batch_stats"]}

  rng = np.random.default_rng(seed)
  for _ in range(batches):
    variables = update(variables, images[rng.choice(len(images), batch_size, replace=False)])
  return variables


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdir")
  parser.add_argument("--cm_queries", type=int, default=2000)
  args = parser.parse_args()
  enc = HashEncoder.from_workdir(args.workdir)
  config = enc.config
  config.eval.closest_match.num_queries = args.cm_queries
  train = registry.load_split(config.input, config.input.train_split)
  for name, variables in (("trained", enc.variables),
                          ("clean", recalibrated(config, enc.variables, train.images))):
    r = evaluate.evaluate_variables(config, variables)
    print(json.dumps({"workdir": args.workdir, "batch_stats": name,
                      **{k: round(float(r[k]), 4) for k in KEYS}}))


if __name__ == "__main__":
  main()
