"""Config checks and persistence: every hyper-parameter lives in a `configs/*.py` ConfigDict."""

from __future__ import annotations

import importlib.util
import json
import os

from etils import epath
import ml_collections

from deephash_jax import models
from deephash_jax.evaluators import ranking
from deephash_jax.losses import baselines
from deephash_jax.losses import graded

CONFIG_FILE = "config.json"


class ConfigError(ValueError):
  """A config value is out of range; the message names the field and the value."""


def _require(condition: bool, field: str, value, expectation: str):
  if not condition:
    raise ConfigError(f"config.{field}={value!r}: {expectation}")


def _validate_encoder_kwargs(m) -> None:
  """config.model.encoder_kwargs: the CNN's options, named where they are wrong."""
  encoder_kwargs = dict(m.get("encoder_kwargs") or {})
  if "pool" in encoder_kwargs:
    _require(m.encoder.startswith("cnn"), "model.encoder_kwargs.pool", encoder_kwargs["pool"],
             f"absent with model.encoder={m.encoder!r} (the option of the 'cnn' encoders)")
    _require(encoder_kwargs["pool"] in ("mean", "flatten"), "model.encoder_kwargs.pool",
             encoder_kwargs["pool"],
             "'mean' or 'flatten' (the CNN's last feature map averaged or kept whole)")
  if "conv" in encoder_kwargs:
    _require(m.encoder.startswith("cnn"), "model.encoder_kwargs.conv", encoder_kwargs["conv"],
             f"absent with model.encoder={m.encoder!r} (the option of the 'cnn' encoders)")
    _require(encoder_kwargs["conv"] in models.CONV_IMPLS, "model.encoder_kwargs.conv",
             encoder_kwargs["conv"],
             f"one of {models.CONV_IMPLS} ('auto': 'sliced' on CPU, 'xla' on accelerators)")
  feature_dim = encoder_kwargs.get("feature_dim")
  _require(feature_dim is None or (isinstance(feature_dim, int) and not isinstance(
      feature_dim, bool) and feature_dim > 0), "model.encoder_kwargs.feature_dim", feature_dim,
           "None (the encoder's own width) or a positive int")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails early, naming the field, on values that would fail late or train silently wrong."""
  m, t, l = config.model, config.train, config.loss
  _require(isinstance(m.num_bits, int) and 4 <= m.num_bits <= 4096, "model.num_bits",
           m.num_bits, "an integer in [4, 4096]")
  _require(config.input.num_classes >= 2, "input.num_classes", config.input.num_classes,
           "at least 2")
  _require(t.batch_size >= 4 and t.batch_size % 2 == 0, "train.batch_size", t.batch_size,
           "an even number >= 4 (it counts views: two per catalogue item)")
  _require(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "positive")
  types = added_field(config, "train.types_per_batch")
  _require(isinstance(types, int) and types >= 0
           and (not types or (t.batch_size // 2) % types == 0), "train.types_per_batch", types,
           f"0 (uniform batches) or an int dividing the batch's {t.batch_size // 2} items")
  _require(t.num_epochs > 0 or t.get("num_steps", 0) > 0, "train.num_epochs", t.num_epochs,
           "positive (or set train.num_steps)")
  for name in ("classification", "hamming", "hamming_item", "adversarial", "quantization"):
    value = l[f"{name}_weight"]
    _require(value >= 0, f"loss.{name}_weight", value, "non-negative (0 ablates the term)")
  _require(l.gamma > 0, "loss.gamma", l.gamma, "positive")
  _require(l.gamma_item > 0, "loss.gamma_item", l.gamma_item, "positive")
  reference = l.get("gamma_reference_bits", 0)
  _require(isinstance(reference, int) and reference >= 0, "loss.gamma_reference_bits",
           reference, "a non-negative integer (0: gamma as given at every code length)")
  _require(l.adversarial_mode in ("entropy", "flip"), "loss.adversarial_mode",
           l.adversarial_mode, "'entropy' or 'flip'")
  activation = m.get("code_activation", "tanh")
  _require(activation in ("tanh", "sign_ste"), "model.code_activation", activation,
           "'tanh' or 'sign_ste'")
  input_norm = m.get("input_norm", "none")
  _require(input_norm in ("none", "image"), "model.input_norm", input_norm, "'none' or 'image'")
  flip_average = m.get("flip_average", False)
  _require(isinstance(flip_average, bool), "model.flip_average", flip_average,
           "True (codes from the image and its mirror image) or False")
  shift = m.get("shift_average", 0)
  _require(isinstance(shift, int) and not isinstance(shift, bool) and shift >= 0,
           "model.shift_average", shift,
           "a non-negative integer (pixels; 0: codes from the image as it is)")
  _validate_encoder_kwargs(m)
  methods = ("singh2019", "graded", *sorted(baselines.BASELINES))
  method = config.get("method", "singh2019")
  _require(method in methods, "method", method, f"one of {methods}")
  query_views = added_field(config, "input.augment.query_views")
  _require(isinstance(query_views, int) and query_views >= 1, "input.augment.query_views",
           query_views, "a positive int (query views of each item in a step)")
  _require(query_views == 1 or (method == "graded" and not graded_option(
      l.get("graded") or {}, "item_symmetric")), "input.augment.query_views", query_views,
           "1 unless method='graded' without loss.graded.item_symmetric (the objective that "
           "reads every query view)")
  if method == "graded":
    _validate_graded(l.get("graded"), activation=activation, num_bits=m.num_bits,
                     num_classes=config.input.num_classes,
                     batch_items=config.train.batch_size // 2)
  # Sign codes are +-1 already: the quantization term would be 0 with 0 gradient, a weight that
  # silently does nothing.
  _require(not (method == "singh2019" and activation == "sign_ste" and l.quantization_weight > 0),
           "loss.quantization_weight", l.quantization_weight,
           "0 with model.code_activation='sign_ste' (the codes are +-1 already, so the term and "
           "its gradient are 0); it pulls tanh codes to +-1")
  compute_dtype = t.get("compute_dtype", "float32")
  _require(compute_dtype in ("float32", "bfloat16"), "train.compute_dtype", compute_dtype,
           "'float32' or 'bfloat16'")
  _require(t.log_every_steps > 0, "train.log_every_steps", t.log_every_steps, "positive")
  _require(t.checkpoint_every_steps > 0, "train.checkpoint_every_steps",
           t.checkpoint_every_steps, "positive")
  _validate_eval(config.eval)


LEVEL_CODES = ("continuous", "sign_ste")    # what the type and item levels read
SIGN_GRADIENTS = ("difference", "inner_product")
TYPE_LEVEL_VIEWS = ("all", "gallery")


def _validate_graded(g, *, activation: str, num_bits: int, num_classes: int,
                     batch_items: int) -> None:
  """Every check of config.loss.graded, with the fields of other sections it depends on."""
  _require(g is not None, "loss.graded", g, "a ConfigDict (configs/fashion_mnist.py has one)")
  for name in ("pair_weight", "item_weight", "feature_item_weight", "pair_threshold",
               "ap_weight"):
    _require(g[name] >= 0, f"loss.graded.{name}", g[name], "non-negative")
  for name in ("pair_gamma", "item_temperature", "feature_temperature"):
    _require(g[name] > 0, f"loss.graded.{name}", g[name], "positive")
  for name in ("item_bit_weight", "item_bit_margin"):
    value = graded_option(g, name)
    _require(value >= 0, f"loss.graded.{name}", value, "non-negative")
  discount = graded_option(g, "item_type_bit_discount")
  _require(0.0 <= discount <= 1.0, "loss.graded.item_type_bit_discount", discount,
           "between 0 and 1")
  _require(discount == 0.0 or not graded_option(g, "memory_size"),
           "loss.graded.item_type_bit_discount", discount,
           "0 with loss.graded.memory_size > 0 (the memory's distances are not weighted)")
  type_codes = graded_option(g, "type_level_codes")
  _require(type_codes in LEVEL_CODES, "loss.graded.type_level_codes", type_codes,
           f"one of {LEVEL_CODES}")
  _require(type_codes == "continuous" or not g.get("class_bits", 0),
           "loss.graded.type_level_codes", type_codes,
           "'continuous' with loss.graded.class_bits > 0 (the split code's type level reads the "
           "pre-codes of its class bits)")
  item_codes = graded_option(g, "item_level_codes")
  _require(item_codes in LEVEL_CODES, "loss.graded.item_level_codes", item_codes,
           f"one of {LEVEL_CODES}")
  _require(item_codes == "continuous" or not graded_option(g, "memory_size"),
           "loss.graded.item_level_codes", item_codes,
           "'continuous' with loss.graded.memory_size > 0 (the memory keeps continuous codes)")
  sign_gradient = graded_option(g, "sign_gradient")
  _require(sign_gradient in SIGN_GRADIENTS, "loss.graded.sign_gradient", sign_gradient,
           f"one of {SIGN_GRADIENTS}")
  _require(sign_gradient == "difference" or type_codes == "sign_ste",
           "loss.graded.sign_gradient", sign_gradient,
           "'difference' unless loss.graded.type_level_codes='sign_ste' (the form of the "
           "distance between the signs)")
  type_views = graded_option(g, "type_level_views")
  _require(type_views in TYPE_LEVEL_VIEWS, "loss.graded.type_level_views", type_views,
           f"one of {TYPE_LEVEL_VIEWS}")
  _require(type_views == "all" or not g.get("class_bits", 0), "loss.graded.type_level_views",
           type_views, "'all' with loss.graded.class_bits > 0 (the split code's centres are "
           "pulled on every view)")
  classifier_views = graded_option(g, "classifier_views")
  _require(classifier_views in TYPE_LEVEL_VIEWS, "loss.graded.classifier_views",
           classifier_views, f"one of {TYPE_LEVEL_VIEWS}")
  gamma = graded_option(g, "continuation_gamma")
  _require(gamma >= 0, "loss.graded.continuation_gamma", gamma, "non-negative (0: off)")
  _require(not gamma or activation == "tanh", "loss.graded.continuation_gamma", gamma,
           f"0 with model.code_activation={activation!r} (the continuation scales tanh codes)")
  if gamma:
    _require(g.continuation_power > 0, "loss.graded.continuation_power", g.continuation_power,
             "positive")
    _require(isinstance(g.continuation_step_size, int) and g.continuation_step_size > 0,
             "loss.graded.continuation_step_size", g.continuation_step_size, "a positive int")
    _require(not graded_option(g, "memory_size"), "loss.graded.continuation_gamma", gamma,
             "0 with loss.graded.memory_size > 0 (the memory keeps the codes without the scale)")
  _validate_split(g, num_bits, num_classes)
  _validate_memory(g, batch_items)


def _validate_memory(g, batch_items: int) -> None:
  size = graded_option(g, "memory_size")
  _require(isinstance(size, int) and size >= 0 and size % batch_items == 0,
           "loss.graded.memory_size", size,
           f"0 (no memory) or a multiple of the batch's items (train.batch_size / 2 = "
           f"{batch_items})")
  start = graded_option(g, "memory_start_step")
  _require(isinstance(start, int) and start >= 0, "loss.graded.memory_start_step", start,
           "a non-negative int")


def _validate_split(g, num_bits: int, num_classes: int) -> None:
  class_bits = g.get("class_bits", 0)
  _require(isinstance(class_bits, int) and 0 <= class_bits < num_bits
           and (class_bits == 0 or graded.centres_fit(num_classes, class_bits)),
           "loss.graded.class_bits", class_bits,
           f"0 (no split) or a power of 2 below model.num_bits={num_bits} with "
           f"2 * (class_bits - 1) >= input.num_classes={num_classes} (Hadamard centres)")
  if class_bits:
    for name in ("centre_weight", "centre_margin", "centre_bit_weight"):
      _require(g[name] >= 0, f"loss.graded.{name}", g[name], "non-negative")
    _require(g.centre_scale > 0, "loss.graded.centre_scale", g.centre_scale, "positive")


def _validate_eval(e) -> None:
  ties = e.get("ties", "expected")
  _require(ties in ranking.TIES, "eval.ties", ties, f"one of {ranking.TIES}")
  _require(e.batch_size > 0, "eval.batch_size", e.batch_size, "positive")
  cm = e.get("closest_match")
  if cm:
    _require(isinstance(cm.num_queries, int) and cm.num_queries >= 0,
             "eval.closest_match.num_queries", cm.num_queries,
             "a non-negative integer (0: no closest-match protocol)")


def total_steps(config, num_train_examples: int) -> int:
  """`train.num_steps` if set, else `num_epochs` passes over the training items."""
  if config.train.get("num_steps", 0):
    return int(config.train.num_steps)
  steps_per_epoch = num_train_examples // (config.train.batch_size // 2)
  return max(1, int(round(config.train.num_epochs * steps_per_epoch)))


def workdir_path(workdir: str) -> epath.Path:
  """A workdir as a path: local (made absolute, as orbax wants) or a URL such as gs://bucket/run."""
  return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes `data` to `path` (local or a URL such as gs://bucket/f) through a temporary file
  beside it renamed over `path`: a reader finds the old file or the new one, never a torn one.
  Where the write fails, `path` is left as it was and the temporary file is removed."""
  if not isinstance(data, (str, bytes)):
    raise TypeError(f"{path}: expected str or bytes to write, got {type(data).__name__}")
  path = epath.Path(path)
  partial = path.parent / f"{path.name}.tmp{os.getpid()}"
  try:
    if isinstance(data, bytes):
      partial.write_bytes(data)
    else:
      partial.write_text(data)
    partial.replace(path)
  except BaseException:
    if partial.exists():
      partial.unlink()
    raise


def save_config(config, workdir: str) -> None:
  write_atomic(workdir_path(workdir) / CONFIG_FILE, config.to_json_best_effort(indent=2))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with."""
  path = workdir_path(workdir) / CONFIG_FILE
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{path}: no config here; is {workdir!r} a training workdir?") from e
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path}: not valid JSON ({e})") from e


_ABSENT = "(absent)"


def _leaves(node, prefix: str = "") -> dict:
  out = {}
  for key, value in node.items():
    if isinstance(value, dict):
      out.update(_leaves(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def added_field(config, field: str):
  """config's `field` (dotted), or, in a config saved before the field was added, its
  ADDED_FIELDS value."""
  *parents, name = field.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  return node.get(name, ADDED_FIELDS[field])


def graded_option(g, name: str):
  """config.loss.graded's field `name`, or, in a config saved before the field was added, its
  ADDED_FIELDS value (what the code before it trained): the one place that default is written."""
  return g.get(name, ADDED_FIELDS[f"loss.graded.{name}"])


# Fields added to the configs after runs were saved without them, each with the value that trains
# what the code before it trained: a saved config that lacks the field compares equal to a config
# that holds this value (a finished run is not stale, a workdir resumes). The CNN's `conv` "auto"
# is `models.SlicedConv` on CPU, the same function and parameters as the nn.Conv before it.
ADDED_FIELDS = {
    "loss.graded.continuation_gamma": 0.0,
    "loss.graded.continuation_power": 0.5,
    "loss.graded.continuation_step_size": 200,
    "loss.graded.item_symmetric": False,
    "loss.graded.item_type_bit_discount": 0.0,
    "loss.graded.item_bit_weight": 0.0,
    "loss.graded.item_bit_margin": 0.5,
    "loss.graded.memory_size": 0,
    "loss.graded.memory_start_step": 1000,
    "loss.graded.memory_type_ap": False,
    "loss.graded.type_level_codes": "continuous",
    "loss.graded.item_level_codes": "continuous",
    "loss.graded.sign_gradient": "difference",
    "loss.graded.type_level_views": "all",
    "loss.graded.classifier_views": "all",
    "model.encoder_kwargs.conv": "auto",
    "model.encoder_kwargs.feature_dim": None,
    "train.types_per_batch": 0,
    "input.augment.query_views": 1,
}


def config_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """'field: saved -> config' for every leaf where a saved config.json and a config differ
  (compared as JSON, so tuples and lists are equal), sorted by field; a field of ADDED_FIELDS
  that the saved config lacks counts as its value there."""
  before, after = _leaves(saved), _leaves(json.loads(config.to_json_best_effort()))
  for field, value in ADDED_FIELDS.items():
    parent = field.rpartition(".")[0]
    if (field in after and field not in before
        and any(k.startswith(f"{parent}.") for k in before)):
      before[field] = value      # the section was saved, without this field
  return [f"{k}: {before.get(k, _ABSENT)!r} -> {after.get(k, _ABSENT)!r}"
          for k in sorted(before.keys() | after.keys())
          if before.get(k, _ABSENT) != after.get(k, _ABSENT)]


def config_changes(base: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> dict:
  """The fields where `config` differs from `base`, as nested overrides of `base` (the values
  `config` holds; compared as JSON, so tuples and lists are equal)."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict) and isinstance(base.get(key),
                                                                   ml_collections.ConfigDict):
      if changes := config_changes(base[key], value):
        out[key] = changes
    elif key not in base or json.dumps(base[key], default=str) != json.dumps(value, default=str):
      out[key] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
  return out


# What a resumed run may change: how it is evaluated (`eval.`, and the model's fields that make
# the codes only at evaluation, encoder.make_embed_fn: training never reads them), logged, saved
# and watched, where its data are read from and over how many devices (a step gives the same
# parameters on any mesh), not what it trains. A field is named whole, a section by its
# trailing dot. Resuming a finished run under such a change evaluates it again, untrained.
RESUMABLE_FIELDS = ("eval.", "model.flip_average", "model.shift_average",
                    "input.data_dir", "input.source_dir", "mesh",
                    "train.log_every_steps", "train.checkpoint_every_steps",
                    "train.keep_checkpoints", "train.hang_timeout_seconds")


def resumable_field(field: str) -> bool:
  """Whether a resumed run may change `field` ("a.b.c"; RESUMABLE_FIELDS)."""
  return any(field.startswith(f) if f.endswith(".") else field == f for f in RESUMABLE_FIELDS)


def check_resumable(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir's checkpoints under another config than the one they were
  trained with (its config.json), naming each field that differs as `saved -> given`.

  Without it the run would overwrite config.json, so the workdir would no longer say what its
  checkpoints were trained with, and go on training them with another objective, or fail to
  restore them (another code length) and start again from scratch. Fields in RESUMABLE_FIELDS
  may change. Call it only where the workdir holds a checkpoint.
  """
  path = workdir_path(workdir) / CONFIG_FILE
  try:
    saved = json.loads(path.read_text())
  except FileNotFoundError:
    return   # checkpoints without a config: nothing to compare with
  except (OSError, json.JSONDecodeError) as e:
    raise ConfigError(f"{path}: unreadable ({e}); the checkpoints beside it cannot be checked "
                      "against the given config: restore the file, or use another workdir") from e
  differences = [d for d in config_differences(saved, config)
                 if not resumable_field(d.split(":")[0])]
  if differences:
    raise ConfigError(
        f"{workdir} holds checkpoints trained with another config than the one given "
        "(field: saved -> given):\n  " + "\n  ".join(differences)
        + "\nRerun with the config and overrides it was trained with, train in another "
        f"--workdir, or move {path} and the checkpoints aside to train this one anew.")


def flatten_for_hparams(config) -> dict:
  """Scalar leaves of the config as {"a.b": value} for TensorBoard's hparams tab."""
  out = {}

  def walk(prefix, node):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if isinstance(value, (dict, ml_collections.ConfigDict)):
        walk(name + ".", value)
      elif isinstance(value, (int, float, str, bool)):
        out[name] = value
  walk("", config)
  return out


def config_module(name: str):
  """The module `configs/<name>.py`, loaded by path (works whether or not the repo root is on
  sys.path)."""
  path = os.path.join(CONFIGS_DIR, f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"deephash_configs_{name}", path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such config")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def base_config(name: str, variant: str | None = None) -> ml_collections.ConfigDict:
  """`get_config()` (or `get_config(variant)`, what `--config=configs/<name>.py:<variant>`
  loads) of `configs/<name>.py`, for variants that override a few fields."""
  module = config_module(name)
  return module.get_config() if variant is None else module.get_config(variant)


CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

