"""data/tree_create.py: `deephash dataset create` from a CSV of photos or from Fashion-MNIST."""
import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deephash_jax.data import fashion_mnist
from deephash_jax.data import image_tree
from deephash_jax.data import tree_create
from deephash_jax.data.base import DataError
from tests.data import photos

FASHION_MNIST_DIR = fashion_mnist.DEBIAN_FASHION_MNIST_DIR
needs_fashion_mnist = pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
    reason=f"Debian's dataset-fashion-mnist is not installed ({FASHION_MNIST_DIR})")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def messy_source(tmp_path):
  """A folder of photos with every kind of bad input, and its CSV."""
  src = tmp_path / "photos"
  rows = [("path", "clothing_type", "item_id")]
  for i in range(12):  # 6 shirts of 3 items, 6 trousers each its own item
    kind = "shirt" if i < 6 else "trouser"
    photos.save(photos.photo((200, 40 + 10 * i, 40)), str(src / f"{kind}{i}.jpg"), "JPEG")
    rows.append((f"{kind}{i}.jpg", kind, f"s{i // 2}" if kind == "shirt" else ""))
  photos.save(photos.photo((255, 0, 0), mode="RGBA"), str(src / "rgba.png"), "PNG")
  photos.save(photos.photo((0, 255, 0), mode="P"), str(src / "palette.gif"), "GIF")
  photos.save(photos.photo((90, 90, 90), mode="L"), str(src / "grey.png"), "PNG")
  photos.save(photos.photo((0, 0, 255)), str(src / "png_named.dat"), "PNG")  # right content, odd name
  rows += [("rgba.png", "dress", "d1"), ("palette.gif", "dress", "d1"),
           ("grey.png", "dress", "d2"), ("png_named.dat", "dress", "")]
  buffer = io.BytesIO()
  photos.photo((1, 2, 3), size=(200, 200)).save(buffer, "JPEG")
  (src / "truncated.jpg").write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
  (src / "notes.jpg").write_text("not an image at all")
  (src / "readme.txt").write_text("hello")
  png = io.BytesIO()
  photos.photo((5, 5, 5)).save(png, "PNG")
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
  photos.save(photos.photo((9, 9, 9)), str(tmp_path / "outside.jpg"), "JPEG")
  (src / "gone.jpg").write_bytes(b"")
  rows.append(("gone.jpg", "shirt", "s0"))   # row 26: empty file
  with open(src / "labels.csv", "w", newline="") as f:
    csv.writer(f).writerows(rows)
  return src


def test_create_from_csv_skips_and_reports_bad_input_and_never_touches_the_source(
    messy_source, tmp_path):
  before = photos.checksums(str(messy_source))
  out = tmp_path / "tree"
  report = tree_create.create_from_csv(str(messy_source), str(messy_source / "labels.csv"),
                                        str(out), split_ratios=(0.5, 0.25, 0.25), seed=3)
  assert photos.checksums(str(messy_source)) == before  # Nothing changed, added or removed.

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
  assert json.load(open(out / image_tree.REPORT_FILE))["skipped"]["count"] == 9
  files = photos.tree_files(str(out))
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
  text = tree_create.format_report(report)
  assert "row 22" in text and "9 (" in text

  # Same seed, same split.
  again = tree_create.create_from_csv(str(messy_source), csv_path, str(tmp_path / "tree2"),
                                       split_ratios=(0.5, 0.25, 0.25), seed=3)
  assert photos.tree_files(str(tmp_path / "tree2")) == files
  assert again["num_items"] == report["num_items"]


def test_csv_errors_are_named(messy_source, tmp_path):
  bad = tmp_path / "bad.csv"
  bad.write_text("file,type\nshirt0.jpg,shirt\n")
  with pytest.raises(DataError, match=r"bad.csv: missing column\(s\) path, clothing_type"):
    tree_create.create_from_csv(str(messy_source), str(bad), str(tmp_path / "t"))
  bad.write_text("")
  with pytest.raises(DataError, match="bad.csv: empty"):
    tree_create.create_from_csv(str(messy_source), str(bad), str(tmp_path / "t"))
  with pytest.raises(DataError, match="cannot read the CSV"):
    tree_create.create_from_csv(str(messy_source), str(tmp_path / "nope.csv"),
                                 str(tmp_path / "t"))
  csv_path = str(messy_source / "labels.csv")
  with pytest.raises(DataError, match="inside the source folder"):
    tree_create.create_from_csv(str(messy_source), csv_path, str(messy_source / "tree"))
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("x")
  with pytest.raises(DataError, match="exists and is not an empty folder"):
    tree_create.create_from_csv(str(messy_source), csv_path, str(tmp_path / "full"))
  with pytest.raises(DataError, match="--split_ratios"):
    tree_create.create_from_csv(str(messy_source), csv_path, str(tmp_path / "t"),
                                 split_ratios=(1, -1, 0))
  assert not (tmp_path / "t").exists()


def test_nothing_usable_fails_without_writing_a_tree(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  (src / "a.jpg").write_text("text")
  (src / "labels.csv").write_text("path,clothing_type\na.jpg,shirt\nb.jpg,shirt\n")
  with pytest.raises(DataError, match=r"nothing usable .* 2 input\(s\) skipped"):
    tree_create.create_from_csv(str(src), str(src / "labels.csv"), str(tmp_path / "tree"))
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


@needs_fashion_mnist
def test_fashion_mnist_export(tmp_path):
  report = tree_create.create_from_fashion_mnist(FASHION_MNIST_DIR, str(tmp_path / "fm"),
                                                  per_class_limit=6, seed=1)
  assert report["num_images"] == {"train": 60, "gallery": 30, "query": 30}
  files = photos.tree_files(str(tmp_path / "fm"))
  assert len(files) == 120
  assert "train/T-shirt_top/train-00001.png" in files
  assert all(f.split("/")[0] in ("train", "gallery", "query") for f in files)
  test_ids = [f.rsplit("/", 1)[1] for f in files if "/t10k-" in f]
  assert len(test_ids) == len(set(test_ids)) == 60  # each test image in one split
  pixels, _ = fashion_mnist.read_fashion_mnist_split(FASHION_MNIST_DIR, "train")
  png = np.asarray(Image.open(tmp_path / "fm" / "train/T-shirt_top/train-00001.png"))
  np.testing.assert_array_equal(png, pixels[1, ..., 0])  # lossless
  with pytest.raises(DataError, match="gallery and query ratios are both 0"):
    tree_create.create_from_fashion_mnist(FASHION_MNIST_DIR, str(tmp_path / "x"),
                                           split_ratios=(1, 0, 0))
