"""Image trees: creation (CSV, Fashion-MNIST), bad input, TFDS reading, end-to-end training."""

import csv
import hashlib
import io
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from deephash_jax import config_lib
from deephash_jax import dataset_tree
from deephash_jax import evaluate
from deephash_jax import input_pipeline
from deephash_jax import models
from deephash_jax import train
from deephash_jax.dataset_tree import DataError

FASHION_MNIST_DIR = input_pipeline.DEBIAN_FASHION_MNIST_DIR
needs_fashion_mnist = pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
    reason=f"Debian's dataset-fashion-mnist is not installed ({FASHION_MNIST_DIR})")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _photo(colour, size=(40, 30), mode="RGB"):
  """A garment-like picture: a bright rectangle on black."""
  image = Image.new("RGB", size, (0, 0, 0))
  image.paste(Image.new("RGB", (size[0] // 2, size[1] // 2), colour),
              (size[0] // 4, size[1] // 4))
  return image.convert(mode) if mode != "RGB" else image


def _save(image, path, fmt, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path, format=fmt, **kwargs)


def _checksums(folder):
  out = {}
  for directory, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = (hashlib.sha256(f.read()).hexdigest(),
                                              os.stat(path).st_mtime_ns)
  return out


def _tree_files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                for d, _, files in os.walk(root) for f in files if f != dataset_tree.REPORT_FILE)


def _input_config(root, tmp_path, **overrides):
  config = ml_collections.ConfigDict(dict(
      dataset="image_folder", root=str(root), image_size=64, channels=3, num_classes=0,
      data_dir=str(tmp_path / "tfds")))
  config.update(overrides)
  return config


@pytest.fixture
def messy_source(tmp_path):
  """A folder of photos with every kind of bad input, and its CSV."""
  src = tmp_path / "photos"
  rows = [("path", "clothing_type", "item_id")]
  for i in range(12):  # 6 shirts of 3 items, 6 trousers each its own item
    kind = "shirt" if i < 6 else "trouser"
    _save(_photo((200, 40 + 10 * i, 40)), str(src / f"{kind}{i}.jpg"), "JPEG")
    rows.append((f"{kind}{i}.jpg", kind, f"s{i // 2}" if kind == "shirt" else ""))
  _save(_photo((255, 0, 0), mode="RGBA"), str(src / "rgba.png"), "PNG")
  _save(_photo((0, 255, 0), mode="P"), str(src / "palette.gif"), "GIF")
  _save(_photo((90, 90, 90), mode="L"), str(src / "grey.png"), "PNG")
  _save(_photo((0, 0, 255)), str(src / "png_named.dat"), "PNG")  # right content, odd name
  rows += [("rgba.png", "dress", "d1"), ("palette.gif", "dress", "d1"),
           ("grey.png", "dress", "d2"), ("png_named.dat", "dress", "")]
  buffer = io.BytesIO()
  _photo((1, 2, 3), size=(200, 200)).save(buffer, "JPEG")
  (src / "truncated.jpg").write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
  (src / "notes.jpg").write_text("not an image at all")
  (src / "readme.txt").write_text("hello")
  png = io.BytesIO()
  _photo((5, 5, 5)).save(png, "PNG")
  data = bytearray(png.getvalue())
  data[60] ^= 0xFF  # inside IDAT: CRC mismatch
  (src / "corrupt.png").write_bytes(bytes(data))
  rows += [
      ("truncated.jpg", "coat", ""),          # row 18: corrupt (truncated)
      ("notes.jpg", "coat", ""),              # row 19: not an image
      ("readme.txt", "coat", ""),             # row 20: not an image
      ("corrupt.png", "coat", ""),            # row 21: corrupt
      ("missing.jpg", "shirt", "s9"),         # row 22: missing file
      ("shirt0.jpg", "shirt", "s0"),          # row 23: duplicate of row 2
      ("trouser6.jpg", "", ""),               # row 24: empty clothing_type (listed in row 8 too)
      ("../outside.jpg", "shirt", ""),        # row 25: outside --images_dir
  ]
  _save(_photo((9, 9, 9)), str(tmp_path / "outside.jpg"), "JPEG")
  (src / "gone.jpg").write_bytes(b"")
  rows.append(("gone.jpg", "shirt", "s0"))   # row 26: empty file
  with open(src / "labels.csv", "w", newline="") as f:
    csv.writer(f).writerows(rows)
  return src


def test_create_from_csv_skips_and_reports_bad_input_and_never_touches_the_source(
    messy_source, tmp_path):
  before = _checksums(str(messy_source))
  out = tmp_path / "tree"
  report = dataset_tree.create_from_csv(str(messy_source), str(messy_source / "labels.csv"),
                                        str(out), split_ratios=(0.5, 0.25, 0.25), seed=3)
  assert _checksums(str(messy_source)) == before  # Nothing changed, added or removed.

  by_row = {p["csv_row"]: p for p in report["skipped"]["problems"]}
  expected = {18: "corrupt", 19: "not_image", 20: "not_image", 21: "corrupt",
              22: "missing_file", 23: "duplicate", 24: "missing_clothing_type",
              25: "outside_images_dir", 26: "empty_file"}
  assert {row: p["reason"] for row, p in by_row.items()} == expected
  csv_path = str(messy_source / "labels.csv")
  for row, problem in by_row.items():
    assert problem["message"].startswith(f"{csv_path} row {row}: "), problem
  assert "truncated.jpg" in by_row[18]["message"] and "missing.jpg" in by_row[22]["message"]
  assert "row 2" in by_row[23]["message"]
  assert report["skipped"]["count"] == 9
  assert any("'coat': no usable images" in w for w in report["warnings"])

  # The report is in the tree root; 16 usable images are in the tree, each in one split.
  assert json.load(open(out / dataset_tree.REPORT_FILE))["skipped"]["count"] == 9
  files = _tree_files(str(out))
  assert len(files) == 16 == sum(report["num_images"].values())
  assert sorted(report["classes"]) == ["dress", "shirt", "trouser"]
  # Items: an item folder holds all its images, and no item is in two splits.
  split_of_item = {}
  for path in files:
    parts = path.split("/")
    if len(parts) == 4:
      assert split_of_item.setdefault(parts[2], parts[0]) == parts[0], path
  assert len([f for f in files if "/s0/" in f]) == 2
  assert any(f.endswith("/d1/rgba.png") for f in files)
  assert any(f.endswith("png_named_dat.png") for f in files)  # renamed to what it is

  # Copies are byte-identical to their sources.
  copied = next(f for f in files if f.endswith("shirt3.jpg"))
  assert (out / copied).read_bytes() == (messy_source / "shirt3.jpg").read_bytes()

  # Text for the terminal names every skipped row.
  text = dataset_tree.format_report(report)
  assert "row 22" in text and "9 (" in text

  # Same seed, same split.
  again = dataset_tree.create_from_csv(str(messy_source), csv_path, str(tmp_path / "tree2"),
                                       split_ratios=(0.5, 0.25, 0.25), seed=3)
  assert _tree_files(str(tmp_path / "tree2")) == files
  assert again["num_items"] == report["num_items"]


def test_csv_errors_are_named(messy_source, tmp_path):
  bad = tmp_path / "bad.csv"
  bad.write_text("file,type\nshirt0.jpg,shirt\n")
  with pytest.raises(DataError, match=r"bad.csv: missing column\(s\) path, clothing_type"):
    dataset_tree.create_from_csv(str(messy_source), str(bad), str(tmp_path / "t"))
  bad.write_text("")
  with pytest.raises(DataError, match="bad.csv: empty"):
    dataset_tree.create_from_csv(str(messy_source), str(bad), str(tmp_path / "t"))
  with pytest.raises(DataError, match="cannot read the CSV"):
    dataset_tree.create_from_csv(str(messy_source), str(tmp_path / "nope.csv"),
                                 str(tmp_path / "t"))
  csv_path = str(messy_source / "labels.csv")
  with pytest.raises(DataError, match="inside the source folder"):
    dataset_tree.create_from_csv(str(messy_source), csv_path, str(messy_source / "tree"))
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("x")
  with pytest.raises(DataError, match="exists and is not an empty folder"):
    dataset_tree.create_from_csv(str(messy_source), csv_path, str(tmp_path / "full"))
  with pytest.raises(DataError, match="--split_ratios"):
    dataset_tree.create_from_csv(str(messy_source), csv_path, str(tmp_path / "t"),
                                 split_ratios=(1, -1, 0))
  assert not (tmp_path / "t").exists()


def test_nothing_usable_fails_without_writing_a_tree(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  (src / "a.jpg").write_text("text")
  (src / "labels.csv").write_text("path,clothing_type\na.jpg,shirt\nb.jpg,shirt\n")
  with pytest.raises(DataError, match=r"nothing usable .* 2 input\(s\) skipped"):
    dataset_tree.create_from_csv(str(src), str(src / "labels.csv"), str(tmp_path / "tree"))
  assert not (tmp_path / "tree").exists()
  assert sorted(os.listdir(tmp_path)) == ["src"]  # no staging folder left behind


def test_cli_dataset_create(messy_source, tmp_path):
  """`deephash dataset create` prints the report; exits non-zero only when nothing is usable."""
  command = [sys.executable, "-m", "deephash_jax.main", "dataset", "create"]
  ok = subprocess.run(command + [f"--images_dir={messy_source}",
                                 f"--labels_csv={messy_source / 'labels.csv'}",
                                 f"--output={tmp_path / 'tree'}", "--split_ratios=0.6,0.2,0.2"],
                      capture_output=True, text=True, cwd=REPO, timeout=120)
  assert ok.returncode == 0, ok.stderr
  assert "skipped:          9" in ok.stdout and "row 19" in ok.stdout
  assert "wrote " + str(tmp_path / "tree") in ok.stdout
  bad_csv = tmp_path / "only_bad.csv"
  bad_csv.write_text("path,clothing_type\nnotes.jpg,coat\n")
  failed = subprocess.run(command + [f"--images_dir={messy_source}", f"--labels_csv={bad_csv}",
                                     f"--output={tmp_path / 'tree_bad'}"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
  assert failed.returncode != 0
  assert "deephash dataset create: nothing usable" in failed.stderr
  assert "1 not_image" in failed.stderr
  usage = subprocess.run(command + [f"--output={tmp_path / 'x'}"], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
  assert usage.returncode != 0 and "--labels_csv" in usage.stderr


def test_image_conversions():
  rgba = Image.new("RGBA", (10, 10), (255, 255, 255, 0))  # fully transparent white
  rgba.paste((200, 100, 50, 255), (0, 0, 5, 10))
  array = dataset_tree.to_model_array(rgba, 16, 3)
  assert array.shape == (16, 16, 3) and array.dtype == np.uint8
  assert array[:, -3:].max() == 0              # transparency -> black background
  assert tuple(array[8, 2]) == (200, 100, 50)
  palette = _photo((0, 250, 0)).convert("P", palette=Image.ADAPTIVE)
  assert dataset_tree.to_model_array(palette, 16, 3).max() > 200
  grey16 = Image.fromarray(np.full((8, 8), 65535, np.uint16))
  assert dataset_tree.to_model_array(grey16, 8, 1).min() == 255
  grey = dataset_tree.to_model_array(_photo((90, 90, 90), mode="L"), 28, 1)
  assert grey.shape == (28, 28, 1)
  with pytest.raises(dataset_tree.ImageError, match="not an image") as info:
    dataset_tree.read_image(b"hello", 16, 3, name="upload")
  assert info.value.kind == "not_image"
  with pytest.raises(dataset_tree.ImageError, match="more than the 100 allowed") as info:
    dataset_tree.read_image(_png_bytes(_photo((1, 1, 1))), 16, 3, max_pixels=100)
  assert info.value.kind == "too_large"


def _png_bytes(image):
  buffer = io.BytesIO()
  image.save(buffer, "PNG")
  return buffer.getvalue()


def test_user_tree_loose_images_items_and_problems(tmp_path):
  """A hand-made tree: loose images are items of their own; bad files are skipped on load."""
  root = tmp_path / "my tree"
  _save(_photo((200, 0, 0)), str(root / "train/shirt/i1/a.jpg"), "JPEG")
  _save(_photo((210, 0, 0)), str(root / "train/shirt/i1/b.png"), "PNG")
  _save(_photo((0, 200, 0)), str(root / "train/shirt/loose.png"), "PNG")
  _save(_photo((0, 0, 200)), str(root / "train/trouser/t.png"), "PNG")
  (root / "train/trouser/broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
  (root / "train/trouser/notes.txt").write_text("x")
  (root / "train/empty_type").mkdir()
  _save(_photo((0, 0, 210)), str(root / "gallery/trouser/g.png"), "PNG")
  tree = dataset_tree.scan_tree(str(root))
  assert tree.class_names == ("shirt", "trouser")
  assert tree.splits() == ("train", "gallery")
  assert any("notes.txt: unsupported file type" in m for m in tree.ignored)
  assert any("empty_type: empty clothing type folder" in m for m in tree.ignored)

  config = _input_config(root, tmp_path, num_classes=2, image_size=32, channels=1)
  split = dataset_tree.load_split(config, "train")
  assert list(split.paths) == ["train/shirt/i1/a.jpg", "train/shirt/i1/b.png",
                               "train/shirt/loose.png", "train/trouser/t.png"]  # broken skipped
  assert split.images.shape == (4, 32, 32, 1) and split.images.dtype == np.uint8
  assert list(split.labels) == [0, 0, 0, 1]
  assert split.items[0] == split.items[1] != split.items[2] != split.items[3]
  assert split.class_names == ("shirt", "trouser")
  gallery = dataset_tree.load_split(config, "gallery")
  assert list(gallery.labels) == [1]  # same label space as train

  # Errors name the field or the folder.
  with pytest.raises(DataError, match="no images in split 'query'"):
    dataset_tree.load_split(config, "query")
  with pytest.raises(DataError, match="--config.input.num_classes=2"):
    dataset_tree.load_split(_input_config(root, tmp_path, num_classes=5), "train")
  with pytest.raises(DataError, match="config.input.root is not set"):
    dataset_tree.load_split(_input_config("", tmp_path), "train")
  with pytest.raises(DataError, match="config.input.image_size=4"):
    dataset_tree.load_split(_input_config(root, tmp_path, image_size=4), "train")
  with pytest.raises(DataError, match="none of the split folders"):
    dataset_tree.load_split(_input_config(tmp_path, tmp_path), "train")

  # A changed tree is a new builder config: the new image is read, nothing stale.
  _save(_photo((0, 90, 200)), str(root / "train/trouser/t2.png"), "PNG")
  assert len(dataset_tree.load_split(config, "train")) == 5


def test_builder_configs_are_keyed_by_tree_size_and_channels(tmp_path):
  roots = [tmp_path / "a", tmp_path / "b"]
  for root in roots:
    _save(_photo((200, 0, 0)), str(root / "train/shirt/x.png"), "PNG")
  names = {dataset_tree.image_folder_builder(str(r), s, c).builder_config.name
           for r in roots for s, c in ((32, 1), (64, 3))}
  assert len(names) == 4


@needs_fashion_mnist
def test_fashion_mnist_export(tmp_path):
  report = dataset_tree.create_from_fashion_mnist(FASHION_MNIST_DIR, str(tmp_path / "fm"),
                                                  per_class_limit=6, seed=1)
  assert report["num_images"] == {"train": 60, "gallery": 30, "query": 30}
  files = _tree_files(str(tmp_path / "fm"))
  assert len(files) == 120
  assert "train/T-shirt_top/train-00001.png" in files
  assert all(f.split("/")[0] in ("train", "gallery", "query") for f in files)
  test_ids = [f.rsplit("/", 1)[1] for f in files if "/t10k-" in f]
  assert len(test_ids) == len(set(test_ids)) == 60  # each test image in one split
  pixels, _ = input_pipeline.read_fashion_mnist_split(FASHION_MNIST_DIR, "train")
  png = np.asarray(Image.open(tmp_path / "fm" / "train/T-shirt_top/train-00001.png"))
  np.testing.assert_array_equal(png, pixels[1, ..., 0])  # lossless
  with pytest.raises(DataError, match="gallery and query ratios are both 0"):
    dataset_tree.create_from_fashion_mnist(FASHION_MNIST_DIR, str(tmp_path / "x"),
                                           split_ratios=(1, 0, 0))


def test_encoders_at_catalogue_sizes():
  """The 28x28 "cnn" runs at 64 px (global pooling); AlexNet's shapes at 224 px."""
  config = config_lib.base_config("image_folder")
  config.input.num_classes = 5
  net, _ = models.create_models(config.model, 5)
  images = np.zeros((2, 64, 64, 3), np.float32)
  variables = net.init(jax.random.key(0), images, train=False)
  codes, inter = net.apply(variables, images, train=False)
  assert codes.shape == (2, config.model.num_bits) and inter["logits"].shape == (2, 5)
  big = config_lib.base_config("image_folder_224")
  assert config_lib.image_shape(big) == (224, 224, 3)
  net224, _ = models.create_models(big.model, 5)
  shapes = jax.eval_shape(lambda: net224.init(jax.random.key(0), jax.numpy.zeros(
      (2, 224, 224, 3)), train=False))
  out = jax.eval_shape(lambda v: net224.apply(v, jax.numpy.zeros((2, 224, 224, 3)),
                                              train=False), shapes)
  assert out[0].shape == (2, 64)


@needs_fashion_mnist
def test_train_and_evaluate_on_an_exported_tree(tmp_path):
  """Export 20 images per class, train the tiny image-folder config, then evaluate."""
  dataset_tree.create_from_fashion_mnist(FASHION_MNIST_DIR, str(tmp_path / "fm"),
                                         per_class_limit=20)
  config = config_lib.base_config("image_folder_tiny")
  config.input.root = str(tmp_path / "fm")
  config.input.data_dir = str(tmp_path / "tfds")
  config.train.num_steps = 8
  config.train.checkpoint_every_steps = 4
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(config, workdir)
  assert results["num_queries"] == 100 and results["num_database"] == 100
  assert results["num_bits"] == 16
  assert 0.0 < results["map_all"] <= 1.0
  again = evaluate.evaluate_workdir(workdir)
  assert again["map_all"] == pytest.approx(results["map_all"])
  assert again["step"] == 8
