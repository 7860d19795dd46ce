r"""Where a trained model's category mAP@all is lost: its classifier, or the code's geometry.

    python experiments/graded_codes/where_map_goes.py WORKDIR [WORKDIR ...]

For each workdir (a finished `deephash train`), on the test queries against the training
database (the category protocol, ties by expectation as the main job):
* the classifier head's accuracy on the test and the training images (clean, eval mode);
* mAP@all over the queries the head gets right and over those it gets wrong;
* the Hamming distances between the first 2,000 test images, same type and other types;
* mAP@all over the queries of each clothing type (`map_all_per_class`, in label order);
* mAP@all of a perfectly collapsed code of the same head (one-hot of its predicted class), the
  reference for a code that carries the class and nothing else;
* with a split code (`loss.graded.class_bits` = C > 0): the prefix's nearest-centre accuracy,
  the share of test images exactly on their centre, and mAP@all of the prefix alone and of the
  prefix with the item bits replaced by random bits (what item bits cost the type ranking).
A model trained without the classifier (the peers: `loss.classification_weight = 0`) has an
untrained head: only its per-type and distance figures mean anything.
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np

from deephash_jax import models
from deephash_jax.data import augment
from deephash_jax import encoder as encoder_lib
from deephash_jax.data import registry
from deephash_jax.encoder import HashEncoder
from deephash_jax.evaluators import ranking
from deephash_jax.losses import graded
from deephash_jax.search import packing


def _map_all(query_codes, query_labels, db_codes, db_labels) -> float:
  r = ranking.retrieval_metrics(packing.pack_bits(query_codes), query_labels,
                                packing.pack_bits(db_codes), db_labels,
                                num_bits=query_codes.shape[1], map_at=(), radius=())
  return round(float(r["map_all"]), 4)


def diagnose(workdir: str) -> dict:
  enc = HashEncoder.from_workdir(workdir)
  config = enc.config
  num_classes = config.input.num_classes
  net, _ = models.create_models(config.model, num_classes)
  logits_fn = jax.jit(lambda v, x: net.apply(v, augment.preprocess(x), train=False)[1]["logits"])
  query = registry.load_split(config.input, config.input.query_split)
  database = registry.load_split(config.input, config.input.database_split)

  def predict(images):
    return encoder_lib.embed_dataset(logits_fn, enc.variables, images, batch_size=1000,
                                     num_devices=1).argmax(1)

  pq, pd = predict(query.images), predict(database.images)
  yq, yd = query.labels, database.labels
  cq, cd = enc.embed(query.images), enc.embed(database.images)
  right = pq == yq
  out = {"workdir": workdir, "head_accuracy_test": round(float(right.mean()), 4),
         "head_accuracy_train": round(float((pd == yd).mean()), 4),
         "map_all": _map_all(cq, yq, cd, yd),
         "map_all_head_right": _map_all(cq[right], yq[right], cd, yd),
         "map_all_head_wrong": _map_all(cq[~right], yq[~right], cd, yd),
         "queries_head_wrong": int((~right).sum()),
         "map_all_per_class": [_map_all(cq[yq == c], yq[yq == c], cd, yd)
                               for c in range(num_classes)]}
  packed = packing.pack_bits(cq[:2000])   # pair distances among the first 2,000 test images
  d = ranking.hamming_distances(packed, packed)
  same = (yq[:2000, None] == yq[None, :2000]) & ~np.eye(len(packed), dtype=bool)
  other = yq[:2000, None] != yq[None, :2000]
  out.update(same_type_distance_mean=round(float(d[same].mean()), 2),
             same_type_distance_p99=float(np.percentile(d[same], 99)),
             other_type_distance_mean=round(float(d[other].mean()), 2),
             other_type_distance_p1=float(np.percentile(d[other], 1)))
  one_hot = lambda p: np.where(np.eye(num_classes)[p] > 0, 1.0, -1.0)
  out["map_all_collapsed_head"] = _map_all(one_hot(pq), yq, one_hot(pd), yd)
  class_bits = config.loss.graded.get("class_bits", 0) if config.method == "graded" else 0
  if class_bits:
    centres = graded.class_centres(num_classes, class_bits) > 0
    d = ((cq[:, None, :class_bits] > 0) != centres[None]).sum(-1)
    out["prefix_nearest_centre_accuracy"] = round(float((d.argmin(1) == yq).mean()), 4)
    out["prefix_on_own_centre"] = round(float((d[np.arange(len(yq)), yq] == 0).mean()), 4)
    out["map_all_prefix_only"] = _map_all(cq[:, :class_bits], yq, cd[:, :class_bits], yd)
    rng = np.random.default_rng(0)
    noise = lambda c: np.concatenate(
        [c[:, :class_bits], rng.standard_normal((len(c), c.shape[1] - class_bits))], 1)
    out["map_all_prefix_random_item_bits"] = _map_all(noise(cq), yq, noise(cd), yd)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+")
  for workdir in parser.parse_args().workdirs:
    print(json.dumps(diagnose(workdir)))


if __name__ == "__main__":
  main()
