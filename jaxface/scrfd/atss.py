"""ATSS (adaptive training sample selection) as SCRFD trains with it: mmdet's `ATSSAssigner(topk=9,
mode=0)` (REFERENCE.md §2.6), one image over padded ground truth, static shapes, vmappable.

For each face, per pyramid level, the `min(topk, n_level)` anchors whose centres are closest to the
face's centre are its candidates; its IoU threshold is the mean plus the unbiased standard deviation
of the candidates' IoUs. A candidate is positive when its IoU reaches the threshold and its centre
lies inside the face by more than 0.001 of the face's size (`min(l, t, r, b) / sqrt(w*h) > 0.001`,
insightface's "mode 0"). An anchor positive for several faces goes to the one it overlaps most.

Ties. The two anchors of a location are always equally far from a face's centre, so the `topk`-th
pick of a level usually cuts a tie. Here the lower anchor index wins (the first argmin);
`torch.topk`'s order among equal values is unspecified and differs between its CPU and CUDA
kernels, so the reference itself is not deterministic there. An anchor positive for several faces
with equal IoUs goes to the lowest face index (the first maximum, as torch's `max` returns on CPU).

No Python loop over faces or the batch, and nothing of size `[A, G]`: each face's candidates come
from a small block of locations around its centre, and claims are resolved by scatters.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.scrfd.anchors import ANCHORS_PER_CELL

EPS = 1e-6  # mmdet's `bbox_overlaps`: union floored at eps


def aligned_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """mmdet's `bbox_overlaps(a, b, is_aligned=True)`: row-wise IoU of `[..., 4]` boxes -> `[...]`."""
  lt = jnp.maximum(a[..., :2], b[..., :2])
  rb = jnp.minimum(a[..., 2:], b[..., 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  overlap = wh[..., 0] * wh[..., 1]
  area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
  area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  return overlap / jnp.maximum(area_a + area_b - overlap, EPS)


# Candidates are searched in a WINDOW x WINDOW block of locations around the one nearest a face's
# centre, clamped into the grid. Why 5 is enough for topk <= 10 (the 5 nearest locations, 2 anchors
# each): a centre is within half a cell of its nearest location in each axis, and its 5th nearest
# location is at most 1.58 cells away (a centre on a cell corner), so every location as near as that,
# ties included, is within 2 locations of the nearest one. For a centre outside the grid, the nearest
# locations lie along the border within 2 rows (columns) of the clamped one, and a location 3
# columns (rows) in is farther than all of them. A 3x3 block fails the tests.
WINDOW = 5
MAX_TOPK = 10


def _grid(level: np.ndarray) -> tuple[int, int, np.ndarray, float]:
  """A level's `[n, 4]` anchor table -> (rows, columns, centre of location (0, 0) `[2]`, stride);
  the table must be a row-major grid of locations with `ANCHORS_PER_CELL` anchors each."""
  centres = (level[:, :2] + level[:, 2:]) / 2
  xs, ys = np.unique(centres[:, 0]), np.unique(centres[:, 1])
  fh, fw = len(ys), len(xs)
  step = np.diff(xs) if fw > 1 else np.diff(ys)
  stride = float(step[0]) if len(step) else 1.0
  want = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 1, 2).repeat(ANCHORS_PER_CELL, 1).reshape(-1, 2)
  if (fh * fw * ANCHORS_PER_CELL != len(level) or not np.allclose(step, stride)
      or not np.array_equal(centres, want)):
    raise ValueError(f'atss_assign: a level of {len(level)} anchors is not a row-major grid of locations with '
                     f'{ANCHORS_PER_CELL} anchors each (SCRFD\'s anchors.anchor_boxes)')
  return fh, fw, np.asarray([xs[0], ys[0]], np.float32), stride


def _level_candidates(anchor_c: jax.Array, gt_c: jax.Array, fh: int, fw: int, origin: np.ndarray, stride: float,
                      start: int, topk: int) -> jax.Array:
  """`[G, min(topk, n)]` anchor indices of one level nearest each face centre `gt_c [G,2]`, nearest
  first, equal distances by lower index.

  A location's anchors share its centre, so the `topk` nearest anchors are the `ceil(topk / 2)`
  nearest locations' (the last one's first anchor only, for odd `topk`), found by repeated argmin
  over the block (the first minimum: the lower location, so the lower anchor index, wins a tie).
  """
  wy, wx = min(WINDOW, fh), min(WINDOW, fw)
  y0 = jnp.clip(jnp.round((gt_c[:, 1] - origin[1]) / stride).astype(jnp.int32) - wy // 2, 0, fh - wy)
  x0 = jnp.clip(jnp.round((gt_c[:, 0] - origin[0]) / stride).astype(jnp.int32) - wx // 2, 0, fw - wx)
  loc = (y0[:, None, None] + jnp.arange(wy)[None, :, None]) * fw + (x0[:, None, None] + jnp.arange(wx)[None, None, :])
  loc = loc.reshape(gt_c.shape[0], -1)                                              # [G, L], row-major
  d = jnp.sqrt(jnp.sum((anchor_c[start + loc * ANCHORS_PER_CELL] - gt_c[:, None, :]) ** 2, axis=-1))
  k = min(topk, fh * fw * ANCHORS_PER_CELL)
  # Each location's rank among the block's: how many are nearer, or as near with a lower index (the
  # lower location, so the lower anchor index, wins a tie). Comparisons and sums only: XLA:CPU runs
  # them as one fused loop, where an argmin is a slow variadic reduction.
  iota = jnp.arange(loc.shape[1])
  before = (d[:, None, :] < d[:, :, None]) | ((d[:, None, :] == d[:, :, None]) & (iota[None, None, :] < iota[None, :, None]))
  rank = jnp.sum(before, axis=2, dtype=jnp.int32)                                  # [G, L]
  order = jnp.arange(-(-k // ANCHORS_PER_CELL))
  picked = jnp.sum(jnp.where(rank[:, None, :] == order[None, :, None], loc[:, None, :], 0), axis=2)  # [G, ceil(k/2)]
  anchors = picked[..., None] * ANCHORS_PER_CELL + jnp.arange(ANCHORS_PER_CELL)[None, None, :]
  return anchors.reshape(gt_c.shape[0], -1)[:, :k] + start


def atss_assign(anchors: jax.Array, num_level_anchors: Sequence[int], gt_boxes: jax.Array, gt_valid: jax.Array,
                topk: int = 9) -> tuple[jax.Array, jax.Array]:
  """One image's anchors -> faces.

  Args:
    anchors: `[A, 4]` xyxy pixels, levels concatenated in SCRFD's order (`anchors.anchor_boxes`:
      per level a row-major grid of locations, `ANCHORS_PER_CELL` anchors each).
    num_level_anchors: static anchor counts per level, `(n8, n16, n32)`, summing to A.
    gt_boxes: `[G, 4]` xyxy pixels, padded; gt_valid: `[G]` bool, the real rows.
    topk: candidates per level and face (SCRFD: 9).

  Returns:
    `assigned_gt [A]` int32: the face of each positive anchor, -1 for background (mmdet's
    `assigned_gt_inds - 1`); `assigned_iou [A]` float32: its IoU with that face, 0 for background
    (mmdet leaves -1e8 there). No valid face: every anchor is background.

  Cost: `O(A + G * candidates)`. Only a face's candidates can become its positives, so neither the
  `[A, G]` IoUs nor the distances are formed: candidates come from a block of locations around each
  face centre (`WINDOW`; `topk` <= `MAX_TOPK`), and anchors claimed by several faces are resolved by scatters.
  """
  try:
    table = np.asarray(anchors, np.float32)
  except jax.errors.TracerArrayConversionError:
    raise TypeError('atss_assign: anchors must be a static table (numpy, or a constant closed over by jit), '
                    'not a traced value: its grid decides the compiled program') from None
  anchors = jnp.asarray(table)
  gt_boxes = gt_boxes.astype(jnp.float32)
  num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
  if topk > MAX_TOPK:
    raise ValueError(f'atss_assign: topk {topk} > {MAX_TOPK}, beyond what the {WINDOW}x{WINDOW} candidate block covers')
  if sum(num_level_anchors) != num_anchors:
    raise ValueError(f'num_level_anchors {tuple(num_level_anchors)} sum to {sum(num_level_anchors)}, '
                     f'not the {num_anchors} anchors')
  anchor_c = (anchors[:, :2] + anchors[:, 2:]) / 2.0                      # [A, 2]
  gt_c = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2.0                        # [G, 2]

  candidates, start = [], 0
  for n in num_level_anchors:  # static: three levels
    fh, fw, origin, stride = _grid(table[start:start + n])
    candidates.append(_level_candidates(anchor_c, gt_c, fh, fw, origin, stride, start, topk))
    start += n
  cand = jnp.concatenate(candidates, axis=1)                              # [G, C]
  cand_iou = aligned_iou(anchors[cand], gt_boxes[:, None, :])             # [G, C]
  threshold = jnp.mean(cand_iou, axis=1) + jnp.std(cand_iou, axis=1, ddof=1)

  c = anchor_c[cand]                                                      # [G, C, 2]
  sides = jnp.stack([c[..., 0] - gt_boxes[:, None, 0], c[..., 1] - gt_boxes[:, None, 1],
                     gt_boxes[:, None, 2] - c[..., 0], gt_boxes[:, None, 3] - c[..., 1]], axis=-1)
  wh = gt_boxes[:, 2:] - gt_boxes[:, :2]
  size = jnp.sqrt(jnp.maximum(wh[:, 0] * wh[:, 1], 1e-4))                 # [G]
  inside = jnp.min(sides, axis=-1) / size[:, None] > 0.001
  positive = (cand_iou >= threshold[:, None]) & inside & gt_valid[:, None]  # [G, C]

  # An anchor claimed by several faces goes to the highest IoU, then the lowest face index.
  flat = cand.ravel()
  claim = jnp.where(positive, cand_iou, -jnp.inf).ravel()
  best = jnp.full((num_anchors,), -jnp.inf, jnp.float32).at[flat].max(claim)
  face = jnp.broadcast_to(jnp.arange(num_gt, dtype=jnp.int32)[:, None], cand.shape).ravel()
  winner = jnp.full((num_anchors,), num_gt, jnp.int32).at[flat].min(
      jnp.where(positive.ravel() & (claim == best[flat]), face, num_gt))
  hit = winner < num_gt
  assigned = jnp.where(hit, winner, -1)
  iou = jnp.where(hit, best, 0.0)
  return jax.lax.stop_gradient(assigned), jax.lax.stop_gradient(iou)
