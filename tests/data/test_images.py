"""data/images.py: the one image loader (formats, modes, sizes, and the errors it names)."""
import io

import numpy as np
import pytest
from PIL import Image

from deephash_jax.data import images
from tests.data import photos


def test_image_conversions():
  rgba = Image.new("RGBA", (10, 10), (255, 255, 255, 0))  # fully transparent white
  rgba.paste((200, 100, 50, 255), (0, 0, 5, 10))
  array = images.to_model_array(rgba, 16, 3)
  assert array.shape == (16, 16, 3) and array.dtype == np.uint8
  assert array[:, -3:].max() == 0              # transparency -> black background
  assert tuple(array[8, 2]) == (200, 100, 50)
  palette = photos.photo((0, 250, 0)).convert("P", palette=Image.ADAPTIVE)
  assert images.to_model_array(palette, 16, 3).max() > 200
  grey16 = Image.fromarray(np.full((8, 8), 65535, np.uint16))
  assert images.to_model_array(grey16, 8, 1).min() == 255
  grey = images.to_model_array(photos.photo((90, 90, 90), mode="L"), 28, 1)
  assert grey.shape == (28, 28, 1)
  with pytest.raises(images.ImageError, match="not an image") as info:
    images.read_image(b"hello", 16, 3, name="upload")
  assert info.value.kind == "not_image"
  with pytest.raises(images.ImageError, match="more than the 100 allowed") as info:
    images.read_image(_png_bytes(photos.photo((1, 1, 1))), 16, 3, max_pixels=100)
  assert info.value.kind == "too_large"


def _png_bytes(image):
  buffer = io.BytesIO()
  image.save(buffer, "PNG")
  return buffer.getvalue()
