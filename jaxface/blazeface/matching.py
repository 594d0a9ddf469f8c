"""Anchor-to-face matching for BlazeFace training (the first open recipe; docs/training.md).

BlazeFace decodes against unit-size anchors (`fixed_anchor_size`), which say nothing about which
face an anchor should predict. Matching uses the boxes MediaPipe's anchor calculator would have
made without that option (`anchors.anchor_table`'s sizes: square, one size per anchor of a cell),
SSD-style: an anchor is positive for the face it overlaps most when that IoU is >= `POS_IOU`, and
every face also takes its own best anchor (SSD's bipartite step), so a face smaller or larger than
every anchor still trains one. One image over padded ground truth, static shapes, vmappable; the
`[G, A]` IoUs are small (G <= 64 rows, A <= 2,304 anchors).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxface import nms

POS_IOU = 0.5


def matching_boxes(table: np.ndarray, sizes: np.ndarray) -> np.ndarray:
  """`[A, 4]` xyxy normalised boxes from the anchor centres `table [A, 4]` and the calculator's
  sizes `[A, 2]` (w, h)."""
  centre = table[:, :2]
  return np.concatenate([centre - sizes / 2, centre + sizes / 2], axis=1).astype(np.float32)


def match(boxes: np.ndarray, gt_boxes: jax.Array, gt_valid: jax.Array) -> jax.Array:
  """One image: `boxes [A, 4]` matching anchors (static), `gt_boxes [G, 4]` normalised xyxy,
  `gt_valid [G]` -> `assigned [A]` int32, the face of each positive anchor, -1 for background.

  An anchor that is several faces' best goes to the one it overlaps most (then the lower row);
  forced anchors override the IoU rule."""
  num_anchors, num_gt = boxes.shape[0], gt_boxes.shape[0]
  iou = jnp.where(gt_valid[:, None], nms.iou_matrix(gt_boxes.astype(jnp.float32), jnp.asarray(boxes)), -1.0)  # [G, A]
  best_iou, best_gt = jnp.max(iou, axis=0), jnp.argmax(iou, axis=0).astype(jnp.int32)      # per anchor
  assigned = jnp.where(best_iou >= POS_IOU, best_gt, -1)
  own = jnp.argmax(iou, axis=1)                                                                # [G] best anchor
  own_iou = jnp.where(gt_valid, iou[jnp.arange(num_gt), own], -jnp.inf)
  top = jnp.full((num_anchors,), -jnp.inf).at[own].max(own_iou)
  faces = jnp.arange(num_gt, dtype=jnp.int32)
  winner = jnp.full((num_anchors,), num_gt, jnp.int32).at[own].min(
      jnp.where(gt_valid & (own_iou == top[own]), faces, num_gt))
  return jax.lax.stop_gradient(jnp.where(winner < num_gt, winner, assigned))
