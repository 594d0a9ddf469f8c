"""Image arrays as jaxface takes them: `[H,W,3]` uint8 BGR, as `cv2.imread` returns (numpy and OpenCV only)."""
from __future__ import annotations

import os

import cv2
import numpy as np


class ImageReadError(IOError):
  """An image file that cannot be read; the training loader skips and counts it, the CLIs report it."""


def read_image(path: str) -> np.ndarray:
  """`[H,W,3]` uint8 BGR from any file OpenCV reads (gray, BGRA and 16-bit converted), or an
  `ImageReadError` naming the file and saying why (missing, empty, undecodable, unsupported)."""
  if not os.path.isfile(path):
    raise ImageReadError(f'{path}: no such image file')
  try:
    data = np.fromfile(path, np.uint8)
  except OSError as e:
    raise ImageReadError(f'{path}: cannot read: {e.strerror or e}') from None
  if data.size == 0:
    raise ImageReadError(f'{path}: empty file')
  image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
  if image is None:
    raise ImageReadError(f'{path}: not a decodable image (corrupt, truncated or unsupported format)')
  try:
    return as_bgr_uint8(image, path)
  except ValueError as e:
    raise ImageReadError(str(e)) from None


def as_bgr_uint8(image: np.ndarray, name: str = 'image') -> np.ndarray:
  """Accepts what `cv2.imread(..., IMREAD_UNCHANGED)` can return: gray `[H,W]`/`[H,W,1]`, BGR, BGRA,
  uint8 or uint16 (scaled by 1/257); returns contiguous `[H,W,3]` uint8 BGR, or raises a
  `ValueError` naming `name` and what was wrong."""
  image = np.asarray(image)
  if image.dtype == np.uint16:
    image = np.round(image / 257.0).astype(np.uint8)
  elif image.dtype != np.uint8:
    raise ValueError(f'{name}: expected a uint8 (or uint16) image as cv2.imread returns, got dtype {image.dtype}')
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
    raise ValueError(f'{name}: expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}')
  if image.shape[0] < 1 or image.shape[1] < 1:
    raise ValueError(f'{name}: empty image of shape {image.shape}')
  if image.shape[2] == 1:
    image = np.repeat(image, 3, axis=2)
  elif image.shape[2] == 4:
    image = image[:, :, :3]
  return np.ascontiguousarray(image)
