"""Static RetinaFace prior tables: numpy constants per input size, baked into compiled code."""
from __future__ import annotations

import functools
import math

import numpy as np


@functools.lru_cache(maxsize=64)
def prior_grid(height: int, width: int, min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512)),
               steps: tuple[int, ...] = (8, 16, 32)) -> tuple[np.ndarray, np.ndarray]:
  """Priors for an H x W input and each prior's grid cell.

  Returns:
    priors: `[A, 4]` float32 `(cx, cy, w, h)` normalised by (W, H); centres at cell + 0.5.
    cells: `[A, 3]` int32 `(row, col, step)`, so a padded input can mask out the priors that
      the unpadded size would not have (`jaxface.inference.cells_inside`).
  Order: level (stride 8, 16, 32), row, column, then min_size - the head's output order.
  A is 16,800 at 640x640 and 29,126 at 840x840 (feature maps ceil(H/step) x ceil(W/step)).
  """
  priors, cells = [], []
  for sizes, step in zip(min_sizes, steps):
    fh, fw = math.ceil(height / step), math.ceil(width / step)
    rows, cols, size = np.meshgrid(np.arange(fh), np.arange(fw), np.asarray(sizes), indexing='ij')
    rows, cols, size = rows.ravel(), cols.ravel(), size.ravel()
    priors.append(np.stack([(cols + 0.5) * step / width, (rows + 0.5) * step / height,
                            size / width, size / height], axis=-1))
    cells.append(np.stack([rows, cols, np.full_like(rows, step)], axis=-1))
  priors = np.concatenate(priors).astype(np.float32)
  cells = np.concatenate(cells).astype(np.int32)
  priors.flags.writeable = False
  cells.flags.writeable = False
  return priors, cells


def prior_boxes(height: int, width: int, **kwargs) -> np.ndarray:
  """`[A, 4]` priors `(cx, cy, w, h)`, normalised; see `prior_grid`."""
  return prior_grid(height, width, **kwargs)[0]
