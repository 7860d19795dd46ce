r"""The paper's comparison and the hash-length sweep: every method trained by the same loop on the
same encoder and data, evaluated on both protocols (2 CPU cores: about 20 min a run).

    deephash benchmark --config=configs/benchmark.py --workdir=workdirs/benchmark

trains the plan's runs one after another, then writes the report (results.md, results.json,
mAP_vs_bits.png, pr_curves.png). Each run is a plain training run of its own:

    deephash train --config=configs/benchmark.py:dch_48b_s0 --workdir=workdirs/benchmark/runs/dch_48b_s0

(`get_config("<variant>_<bits>b_s<seed>")` is that run's training config), so the plan fans out
with the usual tools, e.g. two at a time on one machine, then the report:

    deephash benchmark --config=configs/benchmark.py --workdir=workdirs/benchmark --print_plan \
        | xargs -P 2 -I{} sh -c {}
    deephash benchmark --config=configs/benchmark.py --workdir=workdirs/benchmark --report

The plan: every method at `reference_bits` (48) first, then at 16, 32 and 64 bits, then seeds 1
and 2 of `multi_seed`; finished runs are skipped, an interrupted one resumes, one finished with
another config than the plan's is refused (named with the fields). Other plans are
overrides, e.g. the 48-bit row alone: `--config.benchmark.bits="(48,)"`; a 1-epoch sweep:
`--config.train.num_epochs=1` (with its own --workdir). Protocols: configs/fashion_mnist.py
(`eval`); the full tables: docs/benchmark/results.md.
"""

import copy

import ml_collections

from deephash_jax import config_lib
from deephash_jax.bench import plan


def graded_variant(*, query_views: int = 1, classification_weight: float | None = None,
                   **graded) -> dict:
  """configs/graded.py:full (the CNN every method shares) as overrides of
  configs/fashion_mnist.py, at the benchmark's epochs; `graded`: fields of config.loss.graded
  set on top; `query_views`: input.augment.query_views where not 1; `classification_weight`:
  loss.classification_weight where given."""
  changes = config_lib.config_changes(config_lib.base_config("fashion_mnist"),
                                      config_lib.base_config("graded", "full"))
  del changes["train"]["num_epochs"]
  changes["loss"]["graded"].update(graded)
  if query_views != 1:
    changes["input"]["augment"]["query_views"] = query_views
  if classification_weight is not None:
    changes["loss"]["classification_weight"] = classification_weight
  return changes


def with_feature_dim(variant: dict, feature_dim: int) -> dict:
  """`variant` (overrides) with the CNN's dense feature layer `feature_dim` wide
  (model.encoder_kwargs.feature_dim; the shared encoder's own is 256)."""
  out = copy.deepcopy(variant)
  out.setdefault("model", {}).setdefault("encoder_kwargs", {})["feature_dim"] = feature_dim
  return out


def benchmark_section():
  """The plan and its variants (each a set of overrides of the training config)."""
  b = ml_collections.ConfigDict()
  b.methods = ("ours", "graded", "graded_all", "graded_type", "graded_tanh", "graded_tanh_qv2",
               "graded_tanh_qv2_cls3", "graded_tanh_qv2_cls3_w1024", "graded_split",
               "ours_no_classifier", "ours_no_hamming", "ours_no_adversarial", "dch", "hashnet",
               "csq", "dpsh", "greedyhash", "orthohash", "hashnet_w1024")
  b.bits = (16, 32, 48, 64)
  b.reference_bits = 48     # the main table, the PR curves and the references
  b.seeds = (0,)            # every (method, bits) cell
  # variant -> the lengths it runs at, where not every one of b.bits.
  b.method_bits = ml_collections.ConfigDict(dict(
      graded_split=(48, 64),     # a 32-bit class prefix
      graded_type=(48,),         # an operating point of `graded`, set at 48 bits
      graded_tanh_qv2_cls3=(48,),    # an operating point of `graded_tanh_qv2`, set at 48 bits
      graded_tanh_qv2_cls3_w1024=(48,),   # the wider feature layer, for ours and the best peer
      hashnet_w1024=(48,)))
  # Extra seeds where the spread matters: ours, the graded variants, the paper's comparison (DCH)
  # and the best peer at 48 bits on mAP@all (HashNet, seed 0), whose deviation the lead is read
  # against.
  b.multi_seed = ml_collections.ConfigDict(dict(
      methods=("ours", "graded", "graded_all", "graded_type", "graded_tanh", "graded_tanh_qv2",
               "graded_tanh_qv2_cls3", "graded_tanh_qv2_cls3_w1024", "dch", "hashnet",
               "hashnet_w1024"),
      bits=(48,),
      seeds=(0, 1, 2)))
  # The variants of ours compared with the best peer in the report, and its ablations.
  b.lead_methods = ("ours", "graded", "graded_all", "graded_type", "graded_tanh", "graded_tanh_qv2",
                    "graded_tanh_qv2_cls3", "graded_tanh_qv2_cls3_w1024", "graded_split")
  b.ablations = ml_collections.ConfigDict(dict(
      ours=("ours_no_classifier", "ours_no_hamming", "ours_no_adversarial")))
  # A peer is its own loss only (no classification term), on the pre-activation codes, with the
  # tanh code layer its authors use (it only feeds the classifier, which they do not train);
  # GreedyHash's loss is defined with the classifier and a sign layer (Su et al., NeurIPS 2018).
  def peer(method, classification_weight=0.0, code_activation="tanh"):
    return dict(method=method, model=dict(code_activation=code_activation),
                loss=dict(classification_weight=classification_weight))
  variants = dict(
      ours={},   # method "singh2019", the paper's objective (configs/fashion_mnist.py)
      # configs/graded.py:full at the peers' schedule (15 epochs; its own is 20).
      graded=graded_variant(),
      # The same with the type level on every view, not the gallery views alone (the default
      # before loss.graded.type_level_views).
      graded_all=graded_variant(type_level_views="all"),
      # The type-leaning end of the same objective: the pair term, which pulls the type's tail in
      # beyond its dead zone, at four times `graded`'s weight (experiments/graded_codes/README.md,
      # "Leaning to the type on the gallery type level").
      graded_type=graded_variant(pair_weight=20.0),
      # The type level (the pair term, FastAP) on the tanh codes, not their signs: the
      # type-leaning end at every length (experiments/graded_codes/README.md, "The tanh type
      # level on the gallery views at every length").
      graded_tanh=graded_variant(type_level_codes="continuous"),
      # The same at lighter type weights (pair 2, FastAP 5) with two query views of each item a
      # step, each an anchor of the item level: both searches between `graded_tanh` and `graded`
      # at the peers' 15 epochs, for 1.6 times the step's time, which spent on epochs with one
      # query view does better (experiments/graded_codes/README.md, "Several query views").
      graded_tanh_qv2=graded_variant(type_level_codes="continuous", pair_weight=2.0,
                                     ap_weight=5.0, query_views=2),
      # The same with the classifier (on the features) at weight 3 in place of 1 and the type
      # weights lighter still (pair 1.5, FastAP 4), at 48 bits (experiments/graded_codes/README.md,
      # "A heavier classifier with two query views").
      graded_tanh_qv2_cls3=graded_variant(type_level_codes="continuous", pair_weight=1.5,
                                          ap_weight=4.0, query_views=2,
                                          classification_weight=3.0),
      # The split code: a 32-bit class prefix pulled to Hadamard centres, 16 item bits.
      graded_split=dict(method="graded", model=dict(classifier_input="features"),
                        loss=dict(graded=dict(class_bits=32, item_temperature=1.6)),
                        input=dict(augment=dict(query=dict(config_lib.base_config(
                            "fashion_mnist").eval.closest_match.recipe)))),
      ours_no_classifier=dict(loss=dict(classification_weight=0.0)),
      ours_no_hamming=dict(loss=dict(hamming_weight=0.0, hamming_item_weight=0.0)),
      ours_no_adversarial=dict(loss=dict(adversarial_weight=0.0)),
      dch=peer("dch"),
      hashnet=peer("hashnet"),
      csq=peer("csq"),
      dpsh=peer("dpsh"),
      greedyhash=peer("greedyhash", classification_weight=1.0, code_activation="sign_ste"),
      orthohash=peer("orthohash"),
  )
  # The shared CNN with its dense feature layer 1024 wide in place of 256 (+23 % of the CNN's
  # multiply-adds), for `graded_tanh_qv2_cls3` and for the best peer at 48 bits on mAP@all
  # (experiments/graded_codes/README.md, "A wider feature layer").
  variants.update(
      graded_tanh_qv2_cls3_w1024=with_feature_dim(variants["graded_tanh_qv2_cls3"], 1024),
      hashnet_w1024=with_feature_dim(variants["hashnet"], 1024))
  b.variants = variants
  b.references = ml_collections.ConfigDict()
  b.references.num_category_queries = 0  # category queries of the references (0: all)
  b.references.timing_queries = 1000     # closest-match queries timed for queries/s
  b.references.query_batch_size = 256
  b.references.sad_chunk_size = 4096     # database images per compiled SAD tile
  b.references.float_method = "ours"     # whose continuous codes give the float reference
  return b


def get_config(run=None):
  config = config_lib.base_config("fashion_mnist")
  config.benchmark = benchmark_section()
  return plan.select(config, run)
