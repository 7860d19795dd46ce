r"""`deephash dataset create`: a catalogue tree from a folder of photos and a CSV, or from the
Fashion-MNIST IDX files (see image_tree.py for the tree and docs/CATALOGUE.md).

From a CSV `path,clothing_type[,item_id]` the images are split by item with a seeded ratio so
that no item is in two splits, and copied (the source folder is only read). Bad images are
skipped, each named with its CSV row, and counted in the report; only a tree with nothing usable
left is an error. From Fashion-MNIST the images are exported as PNG files.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os
import re
import shutil
import tempfile
from typing import Sequence

import numpy as np
from PIL import Image

from deephash_jax.data import fashion_mnist
from deephash_jax.data import images as images_lib
from deephash_jax.data.base import DataError
from deephash_jax.data.image_tree import REPORT_FILE, SPLITS

CSV_COLUMNS = ("path", "clothing_type", "item_id")
DEFAULT_SPLIT_RATIOS = (0.8, 0.1, 0.1)


@dataclasses.dataclass
class Problem:
  """One skipped input, for the report: what, where (file, CSV row) and why."""
  reason: str            # short key: missing_file, corrupt, not_image, unsupported_format, ...
  message: str           # names the file and the CSV row
  file: str | None = None
  csv_row: int | None = None


@dataclasses.dataclass
class _Source:
  """A usable image: where it is, and where it goes."""
  source: str                  # absolute path of a file, or "" with `pixels`
  clothing_type: str
  item_id: str | None          # None: the image is an item of its own
  file_name: str
  pixels: np.ndarray | None = None


_UNSAFE = re.compile(r"[\x00-\x1f/\\:*?\"<>|]+")


def safe_name(text: str) -> str:
  """A folder name for a clothing type or item id: path separators and control characters
  become '_', surrounding space and leading dots go ('T-shirt/top' -> 'T-shirt_top')."""
  name = re.sub(r"\s+", " ", _UNSAFE.sub("_", text)).strip().lstrip(".").strip()
  return name


def _parse_ratios(split_ratios: Sequence[float]) -> np.ndarray:
  try:
    ratios = np.array([float(r) for r in split_ratios], np.float64)
  except (TypeError, ValueError) as e:
    raise DataError(f"--split_ratios={split_ratios!r}: expected three numbers") from e
  if ratios.shape != (3,) or np.any(ratios < 0) or ratios.sum() <= 0 or not np.all(
      np.isfinite(ratios)):
    raise DataError(f"--split_ratios={','.join(map(str, split_ratios))}: expected three "
                    "non-negative numbers for train,gallery,query with a positive sum")
  return ratios / ratios.sum()


def split_items(item_keys: Sequence[str], ratios: Sequence[float], rng) -> list[str]:
  """Split of each item: a seeded permutation cut at the cumulative ratios (rounded)."""
  n = len(item_keys)
  order = rng.permutation(n)
  bounds = np.round(np.cumsum(ratios) * n).astype(int)
  out = [""] * n
  for rank, index in enumerate(order):
    out[index] = SPLITS[int(np.searchsorted(bounds, rank, side="right"))]
  return out


def _check_output(output: str, sources: Sequence[str] = ()) -> str:
  output = os.path.abspath(output)
  if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
    raise DataError(f"--output={output}: exists and is not an empty folder; choose a new path")
  for source in sources:
    source = os.path.abspath(source)
    if os.path.commonpath([output, source]) == source:
      raise DataError(f"--output={output} is inside the source folder {source}, which must stay "
                      "unchanged; write the tree elsewhere")
  return output


def _write_tree(output: str, images: Sequence[_Source], splits: Sequence[str],
                report: dict) -> dict:
  """Writes the images into a temporary folder beside `output`, then renames it into place."""
  parent = os.path.dirname(output)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.", dir=parent)
  try:
    used = set()
    counts: dict[str, dict[str, int]] = {}
    for image, split in zip(images, splits):
      folder = [split, image.clothing_type] + ([image.item_id] if image.item_id else [])
      stem, ext = os.path.splitext(image.file_name)
      relative, n = "/".join(folder + [image.file_name]), 1
      while relative in used:  # Two sources with one name in the same folder.
        relative, n = "/".join(folder + [f"{stem}-{n}{ext}"]), n + 1
      used.add(relative)
      destination = os.path.join(staging, *relative.split("/"))
      os.makedirs(os.path.dirname(destination), exist_ok=True)
      if image.pixels is not None:
        Image.fromarray(image.pixels.squeeze(-1) if image.pixels.shape[-1] == 1
                        else image.pixels).save(destination, format="PNG")
      else:
        shutil.copyfile(image.source, destination)  # Reads the source; copies bytes only.
      counts.setdefault(image.clothing_type, {s: 0 for s in SPLITS})[split] += 1
    report["classes"] = {name: counts[name] for name in sorted(counts)}
    report["num_images"] = {s: sum(c[s] for c in counts.values()) for s in SPLITS}
    with open(os.path.join(staging, REPORT_FILE), "w") as f:
      json.dump(report, f, indent=2)
    if os.path.isdir(output):
      os.rmdir(output)  # Empty (checked before).
    os.rename(staging, output)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return report


def _finish_report(report: dict, problems: Sequence[Problem], warnings: Sequence[str]) -> dict:
  by_reason: dict[str, int] = {}
  for problem in problems:
    by_reason[problem.reason] = by_reason.get(problem.reason, 0) + 1
  report["skipped"] = {"count": len(problems), "by_reason": by_reason,
                       "problems": [dataclasses.asdict(p) for p in problems]}
  report["warnings"] = list(warnings)
  return report


def _class_warnings(images: Sequence[_Source], splits: Sequence[str], ratios) -> list[str]:
  warnings = []
  for name in sorted({i.clothing_type for i in images}):
    present = {s for i, s in zip(images, splits) if i.clothing_type == name}
    missing = [s for s, r in zip(SPLITS, ratios) if r > 0 and s not in present]
    if missing:
      warnings.append(f"class {name!r}: too few items to appear in {', '.join(missing)}")
  return warnings


def _nothing_usable(report: dict, what: str) -> DataError:
  return DataError(f"nothing usable in {what}: {report['skipped']['count']} input(s) skipped "
                   f"({format_problems(report)}); no tree was written")


def _read_csv(labels_csv: str) -> tuple[list[list[str]], dict[str, int]]:
  """The CSV's rows (header first) and the column of each known field."""
  try:
    with open(labels_csv, newline="", encoding="utf-8-sig") as f:
      rows = list(csv.reader(f))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise DataError(f"{labels_csv}: cannot read the CSV ({e})") from e
  if not rows:
    raise DataError(f"{labels_csv}: empty; expected a header row path,clothing_type[,item_id]")
  header = [h.strip().lower() for h in rows[0]]
  missing = [c for c in CSV_COLUMNS[:2] if c not in header]
  if missing:
    raise DataError(f"{labels_csv}: missing column(s) {', '.join(missing)} in the header row "
                    f"({','.join(rows[0])}); expected path,clothing_type[,item_id]")
  return rows, {name: header.index(name) for name in CSV_COLUMNS if name in header}


def _usable_rows(rows, column, labels_csv: str, images_dir: str):
  """(problems, usable images, clothing types listed) of the CSV rows after the header."""
  problems, images, seen, item_types, listed_types = [], [], {}, {}, set()
  for row_number, row in enumerate(rows[1:], start=2):  # Row 1 is the header, as in a sheet.
    if not any(cell.strip() for cell in row):
      continue
    get = lambda name, row=row: (row[column[name]].strip()
                                 if name in column and column[name] < len(row) else "")
    path, clothing_type, item_id = get("path"), get("clothing_type"), get("item_id")

    def skip(reason, message, file=None, row_number=row_number):
      problems.append(Problem(reason, f"{labels_csv} row {row_number}: {message}", file,
                              row_number))
    if not path:
      skip("missing_path", "empty path")
      continue
    source = os.path.normpath(os.path.join(images_dir, path))
    if os.path.commonpath([source, images_dir]) != images_dir:
      skip("outside_images_dir", f"{path!r} is outside --images_dir={images_dir}", source)
      continue
    type_name, item_name = safe_name(clothing_type), safe_name(item_id)
    listed_types.add(type_name)
    if not type_name:
      skip("missing_clothing_type", f"{path!r}: empty or unusable clothing_type "
           f"{clothing_type!r}", source)
    elif item_id and not item_name:
      skip("bad_item_id", f"{path!r}: unusable item_id {item_id!r}", source)
    elif source in seen:
      skip("duplicate", f"{path!r} is already listed in row {seen[source]}", source)
    elif not os.path.isfile(source):
      seen[source] = row_number
      skip("missing_file", f"{source}: no such file", source)
    elif item_name and item_types.setdefault(item_name, type_name) != type_name:
      seen[source] = row_number
      skip("item_type_conflict", f"item_id {item_id!r} is already of clothing_type "
           f"{item_types[item_name]!r}, not {type_name!r}", source)
    else:
      seen[source] = row_number
      image = _checked_image(source, type_name, item_name, skip)
      if image is not None:
        images.append(image)
  return problems, images, listed_types


def _checked_image(source: str, type_name: str, item_name: str, skip) -> _Source | None:
  """The image of a CSV row, named by its real format; None (skipped) if it is unusable."""
  try:
    with images_lib.decode_image(source, name=source) as image:
      fmt = image.format
  except images_lib.ImageError as e:
    skip(e.kind, str(e), source)
    return None
  stem, ext = os.path.splitext(os.path.basename(source))
  if ext.lower() not in images_lib.FORMATS[fmt]:  # The tree is read by extension: name it so.
    stem, ext = stem + ext.replace(".", "_"), images_lib.FORMATS[fmt][0]
  return _Source(source, type_name, item_name or None, stem + ext)


def create_from_csv(images_dir: str, labels_csv: str, output: str, *,
                    split_ratios: Sequence[float] = DEFAULT_SPLIT_RATIOS,
                    seed: int = 0) -> dict:
  """Builds a tree from a folder of images and a CSV `path,clothing_type[,item_id]`.

  `path` is relative to `images_dir`. Rows sharing an `item_id` are one item (photos of one
  garment); rows without one are items of their own. Items are split per clothing type with
  `split_ratios` (train, gallery, query) and `seed`. Files are copied, never moved or changed.

  Returns the report (also written to `output/dataset_report.json`). Raises DataError for an
  unreadable CSV, missing columns, a bad output path, or when no usable image is left.
  """
  ratios = _parse_ratios(split_ratios)
  images_dir = os.path.abspath(images_dir)
  if not os.path.isdir(images_dir):
    raise DataError(f"--images_dir={images_dir}: no such folder")
  output = _check_output(output, [images_dir])
  rows, column = _read_csv(labels_csv)
  problems, images, listed_types = _usable_rows(rows, column, labels_csv, images_dir)
  warnings = [f"class {name!r}: no usable images, so it is left out"
              for name in sorted(listed_types - {i.clothing_type for i in images} - {""})]
  report = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "source": {"kind": "csv", "images_dir": images_dir,
                       "labels_csv": os.path.abspath(labels_csv)},
            "split_ratios": ratios.round(6).tolist(), "seed": seed}
  if not images:
    raise _nothing_usable(_finish_report(report, problems, warnings), labels_csv)
  splits = _assign_splits(images, ratios, seed)
  warnings += _class_warnings(images, splits, ratios)
  report["num_items"] = _count_items(images, splits)
  return _write_tree(output, images, splits, _finish_report(report, problems, warnings))


def _item_key(image: _Source) -> str:
  return image.item_id or f"\0{image.source or image.file_name}"


def _assign_splits(images: Sequence[_Source], ratios, seed: int) -> list[str]:
  """Per clothing type, a seeded split of its items; every image follows its item."""
  rng = np.random.default_rng(seed)
  split_of = {}
  for name in sorted({i.clothing_type for i in images}):
    keys = sorted({_item_key(i) for i in images if i.clothing_type == name})
    split_of.update(zip(keys, split_items(keys, ratios, rng)))
  return [split_of[_item_key(i)] for i in images]


def _count_items(images, splits) -> dict:
  return {s: len({_item_key(i) for i, t in zip(images, splits) if t == s}) for s in SPLITS}


def create_from_fashion_mnist(source_dir: str, output: str, *,
                              split_ratios: Sequence[float] = DEFAULT_SPLIT_RATIOS,
                              seed: int = 0, per_class_limit: int = 0) -> dict:
  """Exports Fashion-MNIST (IDX files) as a tree of PNG files, one item per image.

  Fashion-MNIST keeps its own division: train/ comes from its training images, gallery/ and
  query/ from its test images in the ratio of the last two `split_ratios`. `per_class_limit`
  > 0 keeps the first N images of each class of each source split (small trees for tests).
  """
  ratios = _parse_ratios(split_ratios)
  if ratios[1] + ratios[2] <= 0:
    raise DataError("--split_ratios: gallery and query ratios are both 0; Fashion-MNIST's test "
                    "images have nowhere to go")
  if per_class_limit < 0:
    raise DataError(f"--per_class_limit={per_class_limit}: expected >= 0 (0: no limit)")
  output = _check_output(output, [source_dir])
  names = [safe_name(n) for n in fashion_mnist.FASHION_MNIST_CLASSES]
  images, splits = [], []
  rng = np.random.default_rng(seed)
  test_ratios = np.array([0.0, ratios[1], ratios[2]]) / (ratios[1] + ratios[2])
  for source_split, prefix in (("train", "train"), ("test", "t10k")):
    pixels, labels = fashion_mnist.read_fashion_mnist_split(source_dir, source_split)
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class_limit or None]
                                   for c in range(len(names))]))
    split_of = {}
    for c in range(len(names)):  # Per class, like create_from_csv.
      in_class = keep[labels[keep] == c].tolist()
      split_of.update(zip(in_class, ["train"] * len(in_class) if source_split == "train"
                          else split_items(in_class, test_ratios, rng)))
    splits += [split_of[i] for i in keep.tolist()]
    images += [_Source("", names[labels[i]], None, f"{prefix}-{i:05d}.png", pixels[i])
               for i in keep]
  report = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "source": {"kind": "fashion_mnist", "source_dir": os.path.abspath(source_dir),
                       "per_class_limit": per_class_limit},
            "split_ratios": ratios.round(6).tolist(), "seed": seed,
            "num_items": {s: splits.count(s) for s in SPLITS}}
  warnings = _class_warnings(images, splits, [1.0, ratios[1], ratios[2]])
  return _write_tree(output, images, splits, _finish_report(report, [], warnings))


def create(output: str | None, *, images_dir: str | None = None, labels_csv: str | None = None,
           fashion_mnist_dir: str | None = None,
           split_ratios: Sequence[float] = DEFAULT_SPLIT_RATIOS, seed: int = 0,
           per_class_limit: int = 0) -> dict:
  """`deephash dataset create`: from a CSV (images_dir defaults to the CSV's folder) or from
  Fashion-MNIST; returns the report, whose `output` is the tree written."""
  if not output or bool(labels_csv) == bool(fashion_mnist_dir):
    raise DataError("dataset create needs --output and either --labels_csv (with --images_dir, "
                    "default: the CSV's folder) or --fashion_mnist_dir")
  if fashion_mnist_dir:
    report = create_from_fashion_mnist(fashion_mnist_dir, output, split_ratios=split_ratios,
                                       seed=seed, per_class_limit=per_class_limit)
  else:
    report = create_from_csv(images_dir or os.path.dirname(os.path.abspath(labels_csv)),
                             labels_csv, output, split_ratios=split_ratios, seed=seed)
  report["output"] = os.path.abspath(output)
  return report


def format_problems(report: dict) -> str:
  by_reason = report["skipped"]["by_reason"]
  return ", ".join(f"{n} {reason}" for reason, n in sorted(by_reason.items())) or "none"


def format_report(report: dict, *, max_problems: int = 50) -> str:
  """The report as text for the terminal: counts, every skipped input (up to a limit), warnings."""
  lines = []
  if "num_images" in report:
    lines.append("images per split: " + ", ".join(f"{s} {report['num_images'][s]}"
                                                  for s in SPLITS))
    lines.append("items per split:  " + ", ".join(f"{s} {report['num_items'][s]}"
                                                  for s in SPLITS))
    lines.append(f"clothing types:   {len(report['classes'])} "
                 f"({', '.join(report['classes'])})")
  skipped = report["skipped"]
  lines.append(f"skipped:          {skipped['count']} ({format_problems(report)})")
  for problem in skipped["problems"][:max_problems]:
    lines.append(f"  {problem['message']}")
  if skipped["count"] > max_problems:
    lines.append(f"  ... and {skipped['count'] - max_problems} more (see {REPORT_FILE})")
  for warning in report["warnings"]:
    lines.append(f"warning: {warning}")
  if "output" in report:
    lines.append(f"wrote {report['output']} (report: {REPORT_FILE} there)")
  return "\n".join(lines)
