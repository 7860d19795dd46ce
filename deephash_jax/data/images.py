"""The one image loader: every path that turns a file or an upload into model input uses it.

`read_image(path or bytes, size, channels)` = `decode_image` (open, verify, decode every pixel,
with a clear `ImageError` naming the file: unreadable, empty_file, not_image,
unsupported_format, too_large or corrupt) then `to_model_array` (EXIF rotation, transparency on
black, 16-bit and float scaled to 8 bits, greyscale or RGB, bilinear resize). The dataset tree,
`deephash predict`, the demo's uploads and `HashEncoder.encode_files` all read images here, so
one photo gives one code whichever way it comes in.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deephash_jax.data.base import DataError

# PIL format -> file extensions we accept for it (the first is used when a file must be renamed).
FORMATS = {
    "JPEG": (".jpg", ".jpeg", ".jpe"), "MPO": (".jpg", ".jpeg"), "PNG": (".png",),
    "BMP": (".bmp",), "GIF": (".gif",), "WEBP": (".webp",), "TIFF": (".tif", ".tiff"),
}
IMAGE_EXTENSIONS = frozenset(ext for exts in FORMATS.values() for ext in exts)
MAX_SOURCE_PIXELS = 100_000_000            # larger images are refused (decompression bombs)


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
