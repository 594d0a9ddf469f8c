"""SCRFD's static anchor tables (REFERENCE.md §2.6): mmdet's `AnchorGenerator` with centre offset 0.

Per level (strides 8, 16, 32) two square anchors per location, base sizes `(16, 32)`, `(64, 128)`,
`(256, 512)`; location-major then anchor, so anchor `(y*W + x)*2 + a` of a level is centred at
`(x*s, y*s)` pixels: no +0.5, unlike RetinaFace. All numpy, baked into compiled programs.
"""
from __future__ import annotations

import functools

import numpy as np

STRIDES = (8, 16, 32)
ANCHORS_PER_CELL = 2
SIZES = ((16, 32), (64, 128), (256, 512))  # base size x scales (1, 2), per level


def feature_size(n: int, stride: int, max_pool_stem: bool) -> int:
  """The side of a level's feature map for an input side `n`.

  Every stride-2 layer is a 3x3 conv with padding 1 (`ceil(n/2)`), except ResNetV1e's 2x2 max-pool
  after its stride-2 stem, which floors: `floor(ceil(n/2)/2)`. The two agree on multiples of 4, so
  the table is exact for odd sizes too, where mmdet reads the sizes off the feature maps.
  """
  if max_pool_stem:
    n = -(-n // 2) // 2  # stem conv, then the 2x2 max-pool: stride 4
    stride //= 4
  while stride > 1:
    n, stride = -(-n // 2), stride // 2
  return n


@functools.lru_cache(maxsize=64)
def anchor_grid(height: int, width: int, max_pool_stem: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Anchors for an H x W input.

  Returns:
    centres: `[A, 2]` float32 `(x, y)` in pixels; `cells`: `[A, 3]` int32 `(row, col, stride)`;
    both in the head's order (level, row, column, anchor). The box of anchor `a` at a location is
    `SIZES[level][a]` square around its centre (`anchor_boxes`).
  """
  centres, cells = [], []
  for s in STRIDES:
    fh, fw = feature_size(height, s, max_pool_stem), feature_size(width, s, max_pool_stem)
    rows, cols, _ = np.meshgrid(np.arange(fh), np.arange(fw), np.arange(ANCHORS_PER_CELL), indexing='ij')
    rows, cols = rows.ravel(), cols.ravel()
    centres.append(np.stack([cols * s, rows * s], axis=-1))
    cells.append(np.stack([rows, cols, np.full_like(rows, s)], axis=-1))
  centres = np.concatenate(centres).astype(np.float32)
  cells = np.concatenate(cells).astype(np.int32)
  centres.flags.writeable = False
  cells.flags.writeable = False
  return centres, cells


def anchor_boxes(height: int, width: int, max_pool_stem: bool = False) -> np.ndarray:
  """`[A, 4]` float32 xyxy anchor boxes in pixels (what ATSS measures IoUs against)."""
  centres, cells = anchor_grid(height, width, max_pool_stem)
  level_sizes = []
  for s, sizes in zip(STRIDES, SIZES):
    n = int(np.sum(cells[:, 2] == s)) // ANCHORS_PER_CELL
    level_sizes.append(np.tile(np.asarray(sizes, np.float32), n))
  side = np.concatenate(level_sizes)[:, None] / 2
  return np.concatenate([centres - side, centres + side], axis=-1)
