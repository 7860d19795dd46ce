"""`deephash index`: the codes of a catalogue split, by a trained model, as a `HammingIndex`.

    deephash index --workdir=workdirs/catalogue --split=gallery --output=catalogue.dhidx

The split comes from the workdir's own dataset, or from any image tree given as `image_root`
(read at the model's input size, e.g. a Fashion-MNIST tree for a Fashion-MNIST model). The index
holds the packed codes, the clothing-type labels and each image's absolute path (when the
dataset has files); its `model_id` is the encoder's, so a demo refuses codes of another model. A
small JSON file beside it (`<output>.json`) keeps what the index format has no field for: the
class names, the tree item ids, the split and the workdir.
"""

from __future__ import annotations

import datetime
import json
import os
import time

from absl import logging
import numpy as np

from deephash_jax import config_lib
from deephash_jax import dataset_tree
from deephash_jax import index as index_lib
from deephash_jax import inference
from deephash_jax import input_pipeline


def metadata_path(index_path: str) -> str:
  return os.fspath(index_path) + ".json"


def load_metadata(index_path: str) -> dict:
  """The JSON beside an index, or {} if there is none (the index alone still works)."""
  try:
    with open(metadata_path(index_path)) as f:
      return json.load(f)
  except FileNotFoundError:
    return {}


def load_catalogue_split(config, split: str, image_root: str | None = None):
  """(Split, absolute root or None) of `split`, as the model of `config` sees its images."""
  if not image_root and config.input.dataset != "image_folder":
    return input_pipeline.load_split(config.input, split), None
  size, _, channels = config_lib.image_shape(config)
  input_config = config.input.copy_and_resolve_references()
  with input_config.unlocked():
    input_config.dataset = "image_folder"
    input_config.image_size, input_config.channels = size, channels
    if image_root:  # Maybe another tree than the one trained on: its classes may differ.
      input_config.root, input_config.num_classes = image_root, 0
  return dataset_tree.load_split(input_config, split), os.path.abspath(input_config.root)


def build_index(workdir: str, split: str, output: str, *, image_root: str | None = None) -> dict:
  """Encodes `split` with the model in `workdir` and saves the index to `output`; a summary."""
  start = time.time()
  encoder = inference.HashEncoder.from_workdir(workdir)
  data, root = load_catalogue_split(encoder.config, split, image_root)
  codes = encoder.encode(data.images)
  paths = None
  if data.paths is not None:
    paths = [os.path.join(root, *p.split("/")) for p in data.paths]
  else:
    logging.warning("The %s split of %s has no image files: the index holds no paths, so the "
                    "demo shows no thumbnails; pass --image_root=<tree> to index a tree.",
                    split, encoder.config.input.dataset)
  index = index_lib.HammingIndex(encoder.num_bits, model_id=encoder.model_id)
  index.add(codes, labels=data.labels, paths=paths)
  os.makedirs(os.path.dirname(os.path.abspath(output)) or ".", exist_ok=True)
  index.save(output)
  metadata = {
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "workdir": os.path.abspath(workdir), "step": encoder.step, "model_id": encoder.model_id,
      "split": split, "image_root": root, "num_bits": encoder.num_bits, "count": len(index),
      "class_names": list(data.class_names), "items": np.asarray(data.items).tolist(),
  }
  with open(metadata_path(output), "w") as f:
    json.dump(metadata, f)
  return {"index": os.path.abspath(output), "count": len(index), "num_bits": encoder.num_bits,
          "split": split, "image_root": root or "", "model_id": encoder.model_id,
          "seconds": round(time.time() - start, 2)}
