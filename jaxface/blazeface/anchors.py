"""MediaPipe's `SsdAnchorsCalculator` (REFERENCE.md §3.2, §3.6) as static numpy tables.

The calculator walks its layers, merges consecutive layers of the same stride into one grid, and
gives each grid cell one anchor per (aspect ratio, scale) of those layers, plus the interpolated
scale `sqrt(s_i * s_{i+1})` where `interpolated_scale_aspect_ratio > 0`. BlazeFace's detectors use
`fixed_anchor_size`: every decode anchor is `[cx, cy, 1, 1]` (normalised), so only the centres
matter to inference; the calculator's own widths and heights (`sizes`) are what training matches
faces against (`jaxface.blazeface` training docs).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class AnchorOptions:
  """The calculator options BlazeFace's graphs set (aspect ratio 1, offsets 0.5, fixed size)."""
  input_size: int
  num_layers: int
  min_scale: float
  max_scale: float
  strides: tuple[int, ...]
  interpolated_scale_aspect_ratio: float = 1.0
  aspect_ratios: tuple[float, ...] = (1.0,)
  anchor_offset: float = 0.5


FRONT = AnchorOptions(128, 4, 0.1484375, 0.75, (8, 16, 16, 16))
BACK = AnchorOptions(256, 4, 0.15625, 0.75, (16, 32, 32, 32))
FULL_RANGE = AnchorOptions(192, 1, 0.1484375, 0.75, (4,), interpolated_scale_aspect_ratio=0.0)


def _scale(options: AnchorOptions, layer: int) -> float:
  if options.num_layers == 1:
    return (options.min_scale + options.max_scale) / 2
  return options.min_scale + (options.max_scale - options.min_scale) * layer / (options.num_layers - 1)


def grids(options: AnchorOptions) -> list[tuple[int, int, np.ndarray]]:
  """`[(stride, cells per side, sizes [P, 2] (w, h) normalised)]`, one per run of equal strides."""
  out = []
  layer = 0
  while layer < options.num_layers:
    sizes = []
    last = layer
    while last < options.num_layers and options.strides[last] == options.strides[layer]:
      scale = _scale(options, last)
      for ratio in options.aspect_ratios:
        sizes.append((scale * math.sqrt(ratio), scale / math.sqrt(ratio)))
      if options.interpolated_scale_aspect_ratio > 0:
        following = 1.0 if last == options.num_layers - 1 else _scale(options, last + 1)
        r = options.interpolated_scale_aspect_ratio
        s = math.sqrt(scale * following)
        sizes.append((s * math.sqrt(r), s / math.sqrt(r)))
      last += 1
    stride = options.strides[layer]
    out.append((stride, math.ceil(options.input_size / stride), np.asarray(sizes, np.float64)))
    layer = last
  return out


def anchor_table(options: AnchorOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`(anchors [A, 4] float64 (cx, cy, 1, 1) normalised, sizes [A, 2] (w, h) normalised,
  cells [A, 3] int32 (row, col, stride))`, row-major (y, x, anchor) per grid, grids in order."""
  anchors, sizes, cells = [], [], []
  for stride, n, wh in grids(options):
    y, x, p = np.meshgrid(np.arange(n), np.arange(n), np.arange(len(wh)), indexing='ij')
    y, x, p = y.ravel(), x.ravel(), p.ravel()
    centre = np.stack([(x + options.anchor_offset) / n, (y + options.anchor_offset) / n], axis=1)
    anchors.append(np.concatenate([centre, np.ones_like(centre)], axis=1))
    sizes.append(wh[p])
    cells.append(np.stack([y, x, np.full_like(y, stride)], axis=1))
  return (np.concatenate(anchors), np.concatenate(sizes),
          np.concatenate(cells).astype(np.int32))
