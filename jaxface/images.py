"""Image arrays as jaxface takes them: `[H,W,3]` uint8 BGR, as `cv2.imread` returns (numpy only)."""
from __future__ import annotations

import numpy as np


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
