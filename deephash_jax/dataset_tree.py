r"""Your own catalogue as a directory tree: creating it, checking it, and reading it through TFDS.

The tree (see docs/CATALOGUE.md, "Creating Dataset Directory Tree")::

    root/
      dataset_report.json                  what `deephash dataset create` kept and skipped
      train/<clothing_type>/<item_id>/<image files>
      gallery/<clothing_type>/<item_id>/<image files>
      query/<clothing_type>/<image file>   the item level is optional: an image directly under
                                           <clothing_type>/ is an item of its own

* `create_from_csv` / `create_from_fashion_mnist` build such a tree (`deephash dataset create`):
  from a folder of photos plus a CSV `path,clothing_type[,item_id]`, split by item with a seeded
  ratio so that no item is in two splits, copying the files (the source folder is only read); or
  from the Fashion-MNIST IDX files, exported as PNG. Bad images are skipped, each named with its
  CSV row, and counted in the report; only a tree with nothing usable left is an error.
* `load_split(input_config, split)` reads one split through our TFDS builder
  (`ImageFolderTree`), images resized to `input.image_size` with `input.channels`, class names
  sorted over the whole tree (so that labels agree between splits), each image's path relative
  to the root kept in `Split.paths`. Each builder config is named after the tree's path, its
  file listing (path, size, mtime), the image size and the channels, so that two trees, or one
  tree after it changed, never share a prepared dataset.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import functools
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from typing import Iterable, Sequence

from absl import logging
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deephash_jax import input_pipeline
from deephash_jax.input_pipeline import DataError

SPLITS = ("train", "gallery", "query")
REPORT_FILE = "dataset_report.json"
CSV_COLUMNS = ("path", "clothing_type", "item_id")
# PIL format -> file extensions we accept for it (the first is used when a file must be renamed).
FORMATS = {
    "JPEG": (".jpg", ".jpeg", ".jpe"), "MPO": (".jpg", ".jpeg"), "PNG": (".png",),
    "BMP": (".bmp",), "GIF": (".gif",), "WEBP": (".webp",), "TIFF": (".tif", ".tiff"),
}
IMAGE_EXTENSIONS = frozenset(ext for exts in FORMATS.values() for ext in exts)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 512   # config.input.image_size; 64..224 is what we test
MAX_SOURCE_PIXELS = 100_000_000            # larger images are refused (decompression bombs)
DEFAULT_SPLIT_RATIOS = (0.8, 0.1, 0.1)


# --------------------------------------------------------------------------- images


class ImageError(DataError):
  """An unusable image; `kind`: unreadable, empty_file, not_image, unsupported_format,
  too_large or corrupt."""

  def __init__(self, message: str, kind: str):
    super().__init__(message)
    self.kind = kind


_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"),
               (b"GIF89a", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _format_from_signature(source) -> str | None:
  """The format an image file's first bytes announce (PNG, JPEG, GIF, TIFF, WEBP), or None."""
  try:
    if isinstance(source, bytes):
      head = source[:16]
    else:
      with open(source, "rb") as f:
        head = f.read(16)
  except OSError:
    return None
  if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
    return "WEBP"
  return next((fmt for signature, fmt in _SIGNATURES if head.startswith(signature)), None)


def decode_image(source, *, name: str, max_pixels: int = MAX_SOURCE_PIXELS) -> Image.Image:
  """Opens, verifies and fully decodes an image (path or bytes); ImageError names `name`.

  `verify()` checks the container (chunk CRCs, headers); `load()` then decodes every pixel, which
  is what finds truncated files. The pixel count is checked from the header, before decoding.
  """
  opener = (lambda: io.BytesIO(source)) if isinstance(source, bytes) else (lambda: source)
  try:
    num_bytes = len(source) if isinstance(source, bytes) else os.path.getsize(source)
  except OSError as e:
    raise ImageError(f"{name}: cannot read ({e})", "unreadable") from e
  if num_bytes == 0:
    raise ImageError(f"{name}: empty file (0 bytes)", "empty_file")
  try:
    with Image.open(opener()) as probe:
      fmt = probe.format
      width, height = probe.size
      if fmt not in FORMATS:
        raise ImageError(f"{name}: unsupported image format {fmt}; use one of "
                         f"{', '.join(sorted(FORMATS))}", "unsupported_format")
      if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} pixels, more than the {max_pixels:,} "
                         "allowed", "too_large")
      probe.verify()
    image = Image.open(opener())
    image.load()
    return image
  except ImageError:
    raise
  except UnidentifiedImageError as e:
    fmt = _format_from_signature(source)
    if fmt:  # An image file cut short before PIL could read its header.
      raise ImageError(f"{name}: corrupt or truncated image (starts like a {fmt} file, but PIL "
                       "cannot read its header)", "corrupt") from e
    raise ImageError(f"{name}: not an image (PIL cannot identify its format)", "not_image") from e
  except Image.DecompressionBombError as e:
    raise ImageError(f"{name}: too many pixels ({e})", "too_large") from e
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    raise ImageError(f"{name}: corrupt or truncated image ({type(e).__name__}: {e})",
                     "corrupt") from e


def to_model_array(image: Image.Image, image_size: int, channels: int) -> np.ndarray:
  """A decoded PIL image as the model sees it: uint8 (S, S, C), S = `image_size`.

  Camera rotation (EXIF) is applied; any mode is accepted: transparency is composited on black
  (the dark background the training augmentation assumes), 16-bit and float images are scaled
  to 8 bits, then the image becomes greyscale (C=1) or RGB (C=3) and is resized (bilinear,
  antialiased, aspect ratio not kept) like `inference.load_image`.
  """
  image = ImageOps.exif_transpose(image)
  if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    values = np.asarray(image, np.float64)
    scale = 255.0 / 65535.0 if image.mode.startswith("I;16") else (
        1.0 if values.max(initial=0) <= 255 else 255.0 / values.max())
    image = Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8), "L")
  has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
      image.mode == "P" and "transparency" in image.info)
  if has_alpha:
    rgba = image.convert("RGBA")
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    image = Image.alpha_composite(black, rgba)
  image = image.convert("L" if channels == 1 else "RGB")
  if image.size != (image_size, image_size):
    image = image.resize((image_size, image_size), Image.BILINEAR)
  array = np.asarray(image, np.uint8)
  return array[..., None] if channels == 1 else array


def read_image(source, image_size: int, channels: int, *, name: str | None = None,
               max_pixels: int = MAX_SOURCE_PIXELS) -> np.ndarray:
  """Path or bytes -> uint8 (S, S, C) model input; ImageError (naming the file) if unusable."""
  name = name or (source if isinstance(source, str) else "image")
  with decode_image(source, name=name, max_pixels=max_pixels) as image:
    return to_model_array(image, image_size, channels)


# ----------------------------------------------------------------------------- tree


@dataclasses.dataclass(frozen=True)
class TreeImage:
  split: str
  clothing_type: str
  item_key: str           # "<clothing_type>/<item_id>" or "<clothing_type>/<file name>"
  relative_path: str      # POSIX, relative to the root


@dataclasses.dataclass(frozen=True)
class ScannedTree:
  """The listing of a tree: its images, sorted class names and item keys, and what was ignored."""
  root: str
  images: tuple[TreeImage, ...]
  class_names: tuple[str, ...]
  item_keys: tuple[str, ...]
  ignored: tuple[str, ...]        # messages naming files that are not usable images
  fingerprint: str                # sha256 of the root and (path, size, mtime) of every image

  def splits(self) -> tuple[str, ...]:
    present = {image.split for image in self.images}
    return tuple(s for s in SPLITS if s in present)


def _visible(names: Iterable[str]) -> list[str]:
  return sorted(n for n in names if not n.startswith("."))


def scan_tree(root: str) -> ScannedTree:
  """Lists `root/<split>/<clothing_type>/[<item_id>/]<image>`; raises DataError if no split."""
  root = os.path.abspath(root)
  if not os.path.isdir(root):
    raise DataError(f"{root}: no such directory; create a tree with `deephash dataset create` "
                    "(docs/CATALOGUE.md)")
  images, ignored, stats = [], [], []

  def add_file(split, clothing_type, item_key, path):
    relative = os.path.relpath(path, root).replace(os.sep, "/")
    if os.path.splitext(path)[1].lower() not in IMAGE_EXTENSIONS:
      ignored.append(f"{path}: unsupported file type (expected "
                     f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
      return
    stat = os.stat(path)
    images.append(TreeImage(split, clothing_type, item_key, relative))
    stats.append(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}")

  for split in SPLITS:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      continue
    for type_name in _visible(os.listdir(split_dir)):
      type_dir = os.path.join(split_dir, type_name)
      if not os.path.isdir(type_dir):
        ignored.append(f"{type_dir}: not inside a <clothing_type>/ folder")
        continue
      count_before = len(images)
      for entry in _visible(os.listdir(type_dir)):
        path = os.path.join(type_dir, entry)
        if os.path.isdir(path):
          for file_name in _visible(os.listdir(path)):
            file_path = os.path.join(path, file_name)
            if os.path.isdir(file_path):
              ignored.append(f"{file_path}: folders below <item_id>/ are not read")
            else:
              add_file(split, type_name, f"{type_name}/{entry}", file_path)
        else:
          add_file(split, type_name, f"{type_name}/{entry}", path)
      if len(images) == count_before:
        ignored.append(f"{type_dir}: empty clothing type folder (no images)")
  if not any(os.path.isdir(os.path.join(root, s)) for s in SPLITS):
    raise DataError(f"{root}: none of the split folders {', '.join(SPLITS)} exists; expected "
                    "root/<split>/<clothing_type>/[<item_id>/]<images> (docs/CATALOGUE.md)")
  digest = hashlib.sha256(root.encode())
  for line in stats:
    digest.update(line.encode() + b"\n")
  return ScannedTree(
      root=root, images=tuple(images),
      class_names=tuple(sorted({image.clothing_type for image in images})),
      item_keys=tuple(sorted({image.item_key for image in images})),
      ignored=tuple(ignored), fingerprint=digest.hexdigest())


def _check_image_format(image_size, channels):
  if not isinstance(image_size, int) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
    raise DataError(f"config.input.image_size={image_size!r}: expected an integer in "
                    f"[{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] (64..224 is what is tested)")
  if channels not in (1, 3):
    raise DataError(f"config.input.channels={channels!r}: expected 1 (greyscale) or 3 (RGB)")


@functools.cache
def _image_folder_builder_class():
  """Defines (once: TFDS registers builder classes by name) the builder over a tree."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class ImageFolderTree(tfds.core.GeneratorBasedBuilder):
    """A `root/<split>/<clothing_type>/[<item_id>/]<image>` tree; one builder config per tree."""

    name = "deephash_image_folder"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Images, clothing type, item id and relative path."}

    def __init__(self, *, tree: ScannedTree, image_size: int, channels: int, **kwargs):
      self.tree = tree
      self.image_size = image_size
      self.channels = channels
      slug = re.sub(r"[^a-z0-9]+", "_", os.path.basename(tree.root).lower()).strip("_") or "tree"
      key = hashlib.sha256(f"{tree.fingerprint}:{image_size}:{channels}".encode()).hexdigest()
      config = tfds.core.BuilderConfig(
          name=f"{slug[:40]}_{image_size}px_{channels}c_{key[:16]}",
          description=f"{tree.root} at {image_size}x{image_size}x{channels}")
      super().__init__(config=config, **kwargs)

    def _info(self):
      shape = (self.image_size, self.image_size, self.channels)
      return self.dataset_info_from_configs(
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=shape),
              "label": tfds.features.ClassLabel(names=self.tree.class_names),
              "item": tfds.features.Scalar(dtype=np.int64),
              "path": tfds.features.Text(),
          }),
          supervised_keys=("image", "label"),
          description=f"Image tree at {self.tree.root}.",
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # Nothing to download: the tree is local.
      return {split: self._generate_examples(split) for split in self.tree.splits()}

    def _generate_examples(self, split):
      labels = {name: i for i, name in enumerate(self.tree.class_names)}
      items = {key: i for i, key in enumerate(self.tree.item_keys)}
      for entry in self.tree.images:
        if entry.split != split:
          continue
        path = os.path.join(self.tree.root, entry.relative_path)
        try:
          image = read_image(path, self.image_size, self.channels)
        except DataError as e:
          logging.warning("Skipping %s", e)
          continue
        yield entry.relative_path, {"image": image, "label": labels[entry.clothing_type],
                                    "item": items[entry.item_key], "path": entry.relative_path}

  return ImageFolderTree


def image_folder_builder(root: str, image_size: int, channels: int, data_dir: str | None = None):
  """Our TFDS builder over the tree at `root` (TF imported lazily)."""
  _check_image_format(image_size, channels)
  tree = scan_tree(root)
  for message in tree.ignored:
    logging.warning("Ignoring %s", message)
  input_pipeline._hide_tf_from_accelerators()  # pylint: disable=protected-access
  return _image_folder_builder_class()(tree=tree, image_size=image_size, channels=channels,
                                       data_dir=data_dir)


def load_split(input_config, split: str) -> input_pipeline.Split:
  """Builds (once per tree version) and reads one split into memory, paths included.

  Examples are sorted by relative path. When `input_config.num_classes` is set it must equal
  the number of clothing types in the tree.
  """
  root = input_config.get("root")
  if not root:
    raise DataError("config.input.root is not set: pass --config.input.root=/path/to/tree")
  builder = image_folder_builder(root, input_config.get("image_size"),
                                 input_config.get("channels"), input_config.get("data_dir"))
  class_names = builder.tree.class_names
  num_classes = input_config.get("num_classes")
  if num_classes and num_classes != len(class_names):
    raise DataError(
        f"config.input.num_classes={num_classes} but {builder.tree.root} has "
        f"{len(class_names)} clothing types ({', '.join(class_names)}); pass "
        f"--config.input.num_classes={len(class_names)}")
  if split not in builder.tree.splits():
    raise DataError(f"{os.path.join(builder.tree.root, split)}: no images in split {split!r}; "
                    f"this tree has {', '.join(builder.tree.splits()) or 'no images'}")
  builder.download_and_prepare()
  num_examples = builder.info.splits[split].num_examples if split in builder.info.splits else 0
  if not num_examples:
    raise DataError(f"{os.path.join(builder.tree.root, split)}: no readable images (see the "
                    "warnings above)")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  paths = np.array([p.decode() for p in arrays["path"]])
  order = np.argsort(paths, kind="stable")
  return input_pipeline.Split(
      images=arrays["image"][order], labels=arrays["label"][order].astype(np.int32),
      items=arrays["item"][order].astype(np.int32), class_names=tuple(class_names),
      paths=paths[order])


# ------------------------------------------------------------------------- creation


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
  column = {name: header.index(name) for name in CSV_COLUMNS if name in header}

  problems, images, seen, item_types, listed_types = [], [], {}, {}, set()
  for row_number, row in enumerate(rows[1:], start=2):  # Row 1 is the header, as in a sheet.
    if not any(cell.strip() for cell in row):
      continue
    where = f"{labels_csv} row {row_number}"
    get = lambda name, row=row: (row[column[name]].strip()
                                 if name in column and column[name] < len(row) else "")
    path, clothing_type, item_id = get("path"), get("clothing_type"), get("item_id")

    def skip(reason, message, file=None, row_number=row_number, where=where):
      problems.append(Problem(reason, f"{where}: {message}", file, row_number))
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
      continue
    if item_id and not item_name:
      skip("bad_item_id", f"{path!r}: unusable item_id {item_id!r}", source)
      continue
    if source in seen:
      skip("duplicate", f"{path!r} is already listed in row {seen[source]}", source)
      continue
    seen[source] = row_number
    if not os.path.isfile(source):
      skip("missing_file", f"{source}: no such file", source)
      continue
    if item_name and item_types.setdefault(item_name, type_name) != type_name:
      skip("item_type_conflict", f"item_id {item_id!r} is already of clothing_type "
           f"{item_types[item_name]!r}, not {type_name!r}", source)
      continue
    try:
      with decode_image(source, name=source) as image:
        fmt = image.format
    except ImageError as e:
      skip(e.kind, str(e), source)
      continue
    stem, ext = os.path.splitext(os.path.basename(source))
    if ext.lower() not in FORMATS[fmt]:  # The tree is read by extension: name it as it is.
      stem, ext = stem + ext.replace(".", "_"), FORMATS[fmt][0]
    images.append(_Source(source, type_name, item_name or None, stem + ext))

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
  names = [safe_name(n) for n in input_pipeline.FASHION_MNIST_CLASSES]
  images, splits = [], []
  rng = np.random.default_rng(seed)
  test_ratios = np.array([0.0, ratios[1], ratios[2]]) / (ratios[1] + ratios[2])
  for source_split, prefix in (("train", "train"), ("test", "t10k")):
    pixels, labels = input_pipeline.read_fashion_mnist_split(source_dir, source_split)
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
