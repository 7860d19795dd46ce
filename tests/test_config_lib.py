"""config_lib.py: checks that name the field and the value, and a workdir's saved config."""
import pytest

from deephash_jax import config_lib


def test_the_product_configs_are_valid():
  for name in ("fashion_mnist", "graded", "tiny", "image_folder", "image_folder_224",
               "image_folder_tiny"):
    config = config_lib.base_config(name)
    if name.startswith("image_folder"):
      config.input.num_classes = 5
    config_lib.validate_config(config)


@pytest.mark.parametrize("field,value,message", [
    ("eval.ties", "random", "config.eval.ties='random': one of ('expected', 'index')"),
    ("eval.closest_match.num_queries", -1, "config.eval.closest_match.num_queries=-1"),
    ("eval.batch_size", 0, "config.eval.batch_size=0: positive"),
    ("train.batch_size", 7, "config.train.batch_size=7: an even number"),
    ("train.types_per_batch", 3, "config.train.types_per_batch=3: 0 (uniform batches) or an int "
     "dividing the batch's 16 items"),
    ("method", "magic", "config.method='magic'"),
    ("model.input_norm", "batch", "config.model.input_norm='batch': 'none' or 'image'"),
    ("model.shift_average", -1, "config.model.shift_average=-1: a non-negative integer"),
    ("model.encoder_kwargs.pool", "max", "config.model.encoder_kwargs.pool='max': 'mean' or"),
    ("model.encoder_kwargs.conv", "cudnn", "config.model.encoder_kwargs.conv='cudnn': one of"),
    ("model.encoder_kwargs.feature_dim", 0,
     "config.model.encoder_kwargs.feature_dim=0: None (the encoder's own width) or a positive"),
    ("loss.graded.item_temperature", 0.0, "config.loss.graded.item_temperature=0.0: positive"),
    ("loss.graded.class_bits", 12, "config.loss.graded.class_bits=12: 0 (no split) or a power"),
    ("loss.graded.centre_scale", 0.0, "config.loss.graded.centre_scale=0.0: positive"),
    ("loss.graded.ap_weight", -1.0, "config.loss.graded.ap_weight=-1.0: non-negative"),
    ("loss.graded.memory_size", 20, "config.loss.graded.memory_size=20: 0 (no memory) or a "
     "multiple of the batch's items (train.batch_size / 2 = 16)"),
    ("loss.graded.memory_start_step", -5, "config.loss.graded.memory_start_step=-5: a non-neg"),
    ("loss.graded.item_bit_weight", -1.0, "config.loss.graded.item_bit_weight=-1.0: non-neg"),
    ("loss.graded.item_bit_margin", -0.5, "config.loss.graded.item_bit_margin=-0.5: non-neg"),
    ("loss.graded.item_type_bit_discount", 1.5,
     "config.loss.graded.item_type_bit_discount=1.5: between 0 and 1"),
    ("loss.graded.continuation_gamma", -0.1,
     "config.loss.graded.continuation_gamma=-0.1: non-negative (0: off)"),
    ("loss.graded.type_level_codes", "sign",
     "config.loss.graded.type_level_codes='sign': one of ('continuous', 'sign_ste')"),
    ("loss.graded.item_level_codes", "signs",
     "config.loss.graded.item_level_codes='signs': one of ('continuous', 'sign_ste')"),
    ("loss.graded.sign_gradient", "dot",
     "config.loss.graded.sign_gradient='dot': one of ('difference', 'inner_product')"),
    ("loss.graded.sign_gradient", "inner_product",
     "config.loss.graded.sign_gradient='inner_product': 'difference' unless "
     "loss.graded.type_level_codes='sign_ste'"),
    ("loss.graded.type_level_views", "query",
     "config.loss.graded.type_level_views='query': one of ('all', 'gallery')"),
    ("input.augment.query_views", 0,
     "config.input.augment.query_views=0: a positive int"),
    ("loss.graded.classifier_views", "query",
     "config.loss.graded.classifier_views='query': one of ('all', 'gallery')"),
])
def test_bad_values_are_named(field, value, message):
  config = config_lib.base_config("tiny")
  *parents, leaf = field.split(".")
  node = config
  for key in parents:
    node = node[key]
  node[leaf] = value
  if field.startswith("loss.graded"):
    config.method = "graded"
  if field.startswith("loss.graded.centre"):
    config.loss.graded.class_bits = 8       # the centre fields matter only with a split code
  with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_lib.validate_config(config)


@pytest.mark.parametrize("method,symmetric", [("singh2019", False), ("dch", False),
                                              ("graded", True)])
def test_more_query_views_outside_the_graded_item_level_are_named(method, symmetric):
  config = config_lib.base_config("tiny")
  config.method, config.input.augment.query_views = method, 2
  config.loss.graded.item_symmetric = symmetric
  with pytest.raises(config_lib.ConfigError, match="query_views=2: 1 unless method='graded' "
                     "without loss.graded.item_symmetric"):
    config_lib.validate_config(config)
  config.method, config.loss.graded.item_symmetric = "graded", False
  config_lib.validate_config(config)


def test_sign_type_level_with_a_split_code_is_named():
  config = config_lib.base_config("tiny")
  config.method = "graded"
  config.loss.graded.type_level_codes, config.loss.graded.class_bits = "sign_ste", 8
  with pytest.raises(config_lib.ConfigError, match="type_level_codes='sign_ste': 'continuous' "
                     "with loss.graded.class_bits > 0"):
    config_lib.validate_config(config)


def test_gallery_type_level_with_a_split_code_is_named():
  config = config_lib.base_config("tiny")
  config.method = "graded"
  config.loss.graded.type_level_views = "gallery"
  config_lib.validate_config(config)
  config.loss.graded.class_bits = 8
  with pytest.raises(config_lib.ConfigError, match="type_level_views='gallery': 'all' with "
                     "loss.graded.class_bits > 0"):
    config_lib.validate_config(config)


@pytest.mark.parametrize("field,value,message", [
    ("item_type_bit_discount", 0.5,
     r"item_type_bit_discount=0.5: 0 with loss.graded.memory_size > 0"),
    ("item_level_codes", "sign_ste",
     r"item_level_codes='sign_ste': 'continuous' with loss.graded.memory_size > 0")])
def test_graded_options_the_memory_does_not_serve_are_named_with_one(field, value, message):
  config = config_lib.base_config("tiny")
  config.method = "graded"
  config.loss.graded[field] = value
  config_lib.validate_config(config)
  config.loss.graded.memory_size = 32
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate_config(config)


def test_bad_continuation_settings_are_named():
  config = config_lib.base_config("tiny")
  config.method = "graded"
  config.loss.graded.continuation_gamma = 0.005
  config_lib.validate_config(config)
  for field, value, message in (
      ("continuation_power", 0.0, "continuation_power=0.0: positive"),
      ("continuation_step_size", 0, "continuation_step_size=0: a positive int"),
      ("memory_size", 32, "continuation_gamma=0.005: 0 with loss.graded.memory_size > 0")):
    bad = config.copy_and_resolve_references()
    bad.loss.graded[field] = value
    with pytest.raises(config_lib.ConfigError, match=message):
      config_lib.validate_config(bad)
  config.model.code_activation, config.loss.quantization_weight = "sign_ste", 0.0
  with pytest.raises(config_lib.ConfigError,
                     match="continuation_gamma=0.005: 0 with model.code_activation='sign_ste'"):
    config_lib.validate_config(config)


def test_a_pool_for_the_alexnet_encoder_is_named():
  config = config_lib.base_config("image_folder_224")
  config.input.num_classes = 5
  config.model.encoder_kwargs.pool = "flatten"
  with pytest.raises(config_lib.ConfigError,
                     match="config.model.encoder_kwargs.pool='flatten': absent with model.encoder"):
    config_lib.validate_config(config)
  del config.model.encoder_kwargs["pool"]
  config.model.encoder_kwargs.conv = "sliced"
  with pytest.raises(config_lib.ConfigError,
                     match="config.model.encoder_kwargs.conv='sliced': absent with model.encoder"):
    config_lib.validate_config(config)


def test_a_flip_average_that_is_not_a_bool_is_named():
  config = config_lib.base_config("tiny")
  with config.ignore_type():        # what a hand-edited config.json can hold
    config.model.flip_average = "yes"
  with pytest.raises(config_lib.ConfigError, match="config.model.flip_average='yes': True"):
    config_lib.validate_config(config)


def test_a_saved_config_loads_back_and_a_missing_one_is_named(tmp_path):
  config = config_lib.base_config("tiny")
  config_lib.save_config(config, str(tmp_path))
  # JSON has lists where the config has tuples; the values are the same.
  assert config_lib.load_config(str(tmp_path)).to_json() == config.to_json()
  with pytest.raises(FileNotFoundError, match="is 'nowhere' a training workdir"):
    config_lib.load_config("nowhere")
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(config_lib.ConfigError, match="not valid JSON"):
    config_lib.load_config(str(tmp_path))


def test_write_atomic_replaces_whole_or_leaves_the_old_file(tmp_path):
  path = tmp_path / "eval_results.json"
  config_lib.write_atomic(str(path), '{"map_all": 0.5}')
  assert path.read_text() == '{"map_all": 0.5}'
  config_lib.write_atomic(path, b"\x89PNG")          # bytes, over the old file, as a Path
  assert path.read_bytes() == b"\x89PNG"
  # A write that fails part-way (text that cannot be encoded) leaves the old file and no
  # temporary file beside it.
  with pytest.raises(UnicodeEncodeError):
    config_lib.write_atomic(path, "{" + "x" * 100_000 + "\ud800}")
  assert path.read_bytes() == b"\x89PNG"
  with pytest.raises(TypeError, match=r"eval_results.json: expected str or bytes .* dict"):
    config_lib.write_atomic(path, {"map_all": 0.5})
  assert sorted(p.name for p in tmp_path.iterdir()) == ["eval_results.json"]


def test_total_steps_from_epochs_or_steps():
  config = config_lib.base_config("fashion_mnist")
  assert config_lib.total_steps(config, 60000) == 15 * (60000 // 128)
  config.train.num_steps = 7
  assert config_lib.total_steps(config, 60000) == 7


def test_a_resumed_workdir_must_keep_what_it_trains(tmp_path):
  workdir = str(tmp_path)
  config = config_lib.base_config("graded")
  config_lib.check_resumable(config, workdir)        # no config.json: nothing to compare
  config_lib.save_config(config, workdir)
  config_lib.check_resumable(config, workdir)
  same_training = config.copy_and_resolve_references()
  same_training.eval.closest_match.num_queries = 100
  same_training.train.keep_checkpoints, same_training.input.data_dir = 9, "/elsewhere"
  same_training.mesh = [("data", 2)]
  # How the codes are made at evaluation only (encoder.make_embed_fn); training never reads it.
  same_training.model.shift_average, same_training.model.flip_average = 0, False
  config_lib.check_resumable(same_training, workdir)
  other = config.copy_and_resolve_references()
  other.loss.graded.ap_weight, other.train.num_epochs = 5.0, 15
  del other.model["input_norm"]
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check_resumable(other, workdir)
  message = str(e.value)
  assert "loss.graded.ap_weight: 11.0 -> 5.0" in message
  assert "model.input_norm: 'image' -> '(absent)'" in message
  assert "train.num_epochs: 18 -> 15" in message
  assert "eval." not in message and workdir in message
  (tmp_path / config_lib.CONFIG_FILE).write_text('{"method": "gra')   # truncated
  with pytest.raises(config_lib.ConfigError, match=r"config\.json: unreadable"):
    config_lib.check_resumable(config, workdir)


def test_a_config_saved_before_a_field_was_added_compares_as_its_neutral_value():
  import json
  config = config_lib.base_config("fashion_mnist")
  for field, value in config_lib.ADDED_FIELDS.items():   # the configs' defaults are those values
    assert config_lib._leaves(json.loads(config.to_json_best_effort()))[field] == value, field
  saved = json.loads(config.to_json_best_effort())
  del saved["loss"]["graded"]["item_type_bit_discount"], saved["model"]["encoder_kwargs"]["conv"]
  assert config_lib.config_differences(saved, config) == []
  changed = config.copy_and_resolve_references()
  changed.loss.graded.item_type_bit_discount = 0.5      # not the value the old code trained
  assert config_lib.config_differences(saved, changed) == [
      "loss.graded.item_type_bit_discount: 0.0 -> 0.5"]
  # A field the current config lacks too (another encoder's kwargs) stays absent on both sides.
  alexnet = config_lib.base_config("image_folder_224")
  saved = json.loads(alexnet.to_json_best_effort())
  assert "model.encoder_kwargs.conv" not in config_lib._leaves(saved)
  assert config_lib.config_differences(saved, alexnet) == []
  # A section saved whole without the field is filled; one not saved at all is not.
  del saved["loss"]
  assert ("loss.graded.memory_size: '(absent)' -> 0"
          in config_lib.config_differences(saved, alexnet))


def test_graded_option_reads_the_field_or_the_value_a_config_saved_without_it_trained():
  import ml_collections
  graded = config_lib.base_config("graded").loss.graded
  assert config_lib.graded_option(graded, "type_level_codes") == "sign_ste"
  saved = ml_collections.ConfigDict(graded.to_dict())
  del saved["type_level_codes"], saved["item_type_bit_discount"]
  assert config_lib.graded_option(saved, "type_level_codes") == "continuous"
  assert config_lib.graded_option(saved, "item_type_bit_discount") == 0.0
  with pytest.raises(KeyError, match="loss.graded.pair_weight"):   # not an added field
    config_lib.graded_option(saved, "pair_weight")


def test_config_changes_are_the_overrides_that_make_one_config_of_another():
  base, graded = config_lib.base_config("fashion_mnist"), config_lib.base_config("graded")
  assert config_lib.config_changes(base, base) == {}
  changes = config_lib.config_changes(base, graded)
  assert changes["method"] == "graded" and changes["loss"] == {"graded": {
      "ap_weight": 11.0, "item_type_bit_discount": 1.0, "type_level_codes": "sign_ste",
      "type_level_views": "gallery"}}
  assert "gallery" not in changes["input"]["augment"]      # unchanged sections are left out
  assert changes["model"]["encoder_kwargs"] == {"layers": ((32, 1), (64, 2), (128, 2), (128, 1))}
  rebuilt = base.copy_and_resolve_references()
  rebuilt.model.encoder_kwargs.layers = changes["model"]["encoder_kwargs"].pop("layers")  # new key
  rebuilt.update_from_flattened_dict({k: v for k, v in _flat(changes).items()})
  assert rebuilt.to_json_best_effort(sort_keys=True) == graded.to_json_best_effort(sort_keys=True)
  assert "encoder_kwargs" not in config_lib.config_changes(
      base, config_lib.base_config("graded", "full"))["model"]
  with pytest.raises(ValueError, match="configs/graded.py:tiny: expected one of"):
    config_lib.base_config("graded", "tiny")
  listed = base.copy_and_resolve_references()
  listed.input.augment.query.scale_range = list(base.input.augment.query.scale_range)
  assert config_lib.config_changes(base, listed) == {}      # a tuple equals its list


def _flat(nested, prefix=""):
  out = {}
  for key, value in nested.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out
