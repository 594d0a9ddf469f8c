"""ATSS (adaptive training sample selection) as SCRFD trains with it: mmdet's `ATSSAssigner(topk=9,
mode=0)` (REFERENCE.md §2.6), one image over padded ground truth, static shapes, vmappable.

For each face, per pyramid level, the `min(topk, n_level)` anchors whose centres are closest to the
face's centre are its candidates; its IoU threshold is the mean plus the unbiased standard deviation
of the candidates' IoUs. A candidate is positive when its IoU reaches the threshold and its centre
lies inside the face by more than 0.001 of the face's size (`min(l, t, r, b) / sqrt(w*h) > 0.001`,
insightface's "mode 0"). An anchor positive for several faces goes to the one it overlaps most.

Ties. The two anchors of a location are always equally far from a face's centre, so the `topk`-th
pick of a level usually cuts a tie. Here the lower anchor index wins (`lax.top_k` is stable);
`torch.topk`'s order among equal values is unspecified and differs between its CPU and CUDA
kernels, so the reference itself is not deterministic there. An anchor positive for several faces
with equal IoUs goes to the lowest face index (the first maximum, as torch's `max` returns on CPU).

No Python loop over faces or the batch: the IoUs and distances are `[A, G]` arrays, the per-level
candidates a `top_k` over each level's rows.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

EPS = 1e-6  # mmdet's `bbox_overlaps`: union floored at eps


def box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """mmdet's `bbox_overlaps(a, b)` (mode 'iou', plain areas, no +1): `[N,4]`, `[M,4]` xyxy -> `[N, M]`."""
  lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
  rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  overlap = wh[..., 0] * wh[..., 1]
  area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  union = jnp.maximum(area_a[:, None] + area_b[None, :] - overlap, EPS)
  return overlap / union


def aligned_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """mmdet's `bbox_overlaps(a, b, is_aligned=True)`: row-wise IoU of `[..., 4]` boxes -> `[...]`."""
  lt = jnp.maximum(a[..., :2], b[..., :2])
  rb = jnp.minimum(a[..., 2:], b[..., 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  overlap = wh[..., 0] * wh[..., 1]
  area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
  area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  return overlap / jnp.maximum(area_a + area_b - overlap, EPS)


def atss_assign(anchors: jax.Array, num_level_anchors: Sequence[int], gt_boxes: jax.Array, gt_valid: jax.Array,
                topk: int = 9) -> tuple[jax.Array, jax.Array]:
  """One image's anchors -> faces.

  Args:
    anchors: `[A, 4]` xyxy pixels, levels concatenated (`anchors.anchor_boxes`).
    num_level_anchors: static anchor counts per level, `(n8, n16, n32)`, summing to A.
    gt_boxes: `[G, 4]` xyxy pixels, padded; gt_valid: `[G]` bool, the real rows.
    topk: candidates per level and face (SCRFD: 9).

  Returns:
    `assigned_gt [A]` int32: the face of each positive anchor, -1 for background (mmdet's
    `assigned_gt_inds - 1`); `assigned_iou [A]` float32: its IoU with that face, 0 for background
    (mmdet leaves -1e8 there). No valid face: every anchor is background.
  """
  anchors = jnp.asarray(anchors, jnp.float32)
  gt_boxes = gt_boxes.astype(jnp.float32)
  if sum(num_level_anchors) != anchors.shape[0]:
    raise ValueError(f'num_level_anchors {tuple(num_level_anchors)} sum to {sum(num_level_anchors)}, '
                     f'not the {anchors.shape[0]} anchors')
  overlaps = box_iou(anchors, gt_boxes)                                   # [A, G]
  anchor_c = (anchors[:, :2] + anchors[:, 2:]) / 2.0                      # [A, 2]
  gt_c = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2.0                        # [G, 2]
  distances = jnp.sqrt(jnp.sum((anchor_c[:, None, :] - gt_c[None, :, :]) ** 2, axis=-1))  # [A, G]

  candidates, start = [], 0
  for n in num_level_anchors:  # static: three levels
    k = min(topk, n)
    _, idx = jax.lax.top_k(-distances[start:start + n].T, k)              # [G, k], nearest first
    candidates.append(idx.astype(jnp.int32) + start)
    start += n
  cand = jnp.concatenate(candidates, axis=1)                              # [G, C]
  cand_iou = jnp.take_along_axis(overlaps.T, cand, axis=1)                # [G, C]
  threshold = jnp.mean(cand_iou, axis=1) + jnp.std(cand_iou, axis=1, ddof=1)

  c = anchor_c[cand]                                                      # [G, C, 2]
  sides = jnp.stack([c[..., 0] - gt_boxes[:, None, 0], c[..., 1] - gt_boxes[:, None, 1],
                     gt_boxes[:, None, 2] - c[..., 0], gt_boxes[:, None, 3] - c[..., 1]], axis=-1)
  wh = gt_boxes[:, 2:] - gt_boxes[:, :2]
  size = jnp.sqrt(jnp.maximum(wh[:, 0] * wh[:, 1], 1e-4))                 # [G]
  inside = jnp.min(sides, axis=-1) / size[:, None] > 0.001
  positive = (cand_iou >= threshold[:, None]) & inside & gt_valid[:, None]  # [G, C]

  # Each face's candidates are distinct anchors, so scattering its flags back is exact.
  rows = jnp.broadcast_to(jnp.arange(gt_boxes.shape[0])[:, None], cand.shape)
  claimed = jnp.zeros(overlaps.shape[::-1], bool).at[rows, cand].set(positive).T  # [A, G]
  claimed_iou = jnp.where(claimed, overlaps, -jnp.inf)
  best = jnp.argmax(claimed_iou, axis=1).astype(jnp.int32)                # first maximum
  hit = jnp.any(claimed, axis=1)
  assigned = jnp.where(hit, best, -1)
  iou = jnp.where(hit, jnp.take_along_axis(overlaps, best[:, None], axis=1)[:, 0], 0.0)
  return jax.lax.stop_gradient(assigned), jax.lax.stop_gradient(iou)
