"""Greedy non-maximum suppression with static shapes, on device.

Two IoU conventions: the reference's `py_cpu_nms` (`plus_one=True`: widths are `x2 - x1 + 1`,
as for integer pixel boxes) and plain IoU. Both keep a box when its IoU with every kept,
higher-scoring box is <= the threshold.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def iou_one_to_many(box: jax.Array, boxes: jax.Array, plus_one: bool) -> jax.Array:
  """IoU of `box [4]` with `boxes [K, 4]` (xyxy) -> `[K]`."""
  one = 1.0 if plus_one else 0.0
  area = lambda b: (b[..., 2] - b[..., 0] + one) * (b[..., 3] - b[..., 1] + one)
  w = jnp.maximum(0.0, jnp.minimum(box[2], boxes[:, 2]) - jnp.maximum(box[0], boxes[:, 0]) + one)
  h = jnp.maximum(0.0, jnp.minimum(box[3], boxes[:, 3]) - jnp.maximum(box[1], boxes[:, 1]) + one)
  inter = w * h
  return inter / (area(box) + area(boxes) - inter)


def nms(boxes: jax.Array, scores: jax.Array, candidate: jax.Array, iou_threshold: jax.Array | float,
        max_output: int, plus_one: bool = True) -> tuple[jax.Array, jax.Array]:
  """Greedy NMS over `K` rows in any order.

  Each step keeps the best-scoring row still alive and removes the rows it suppresses, so the
  input needs no sorting and the loop runs once per kept box, not once per candidate.

  Args:
    boxes: `[K, 4]` xyxy.
    scores: `[K]`; equal scores are taken in row order.
    candidate: `[K]` bool, which rows take part (the others are never kept).
    iou_threshold: suppress a box whose IoU with a kept box is > this.
    max_output: M, the static number of output slots.
    plus_one: the reference's +1 pixel convention.

  Returns:
    `keep [M]` int32 row indices in keep order (descending score) and `valid [M]` bool, a prefix.
  """
  k = boxes.shape[0]
  iota = jnp.arange(k)

  def cond(state):
    i, _, alive = state
    return (i < max_output) & jnp.any(alive)

  def body(state):
    i, keep, alive = state
    j = jnp.argmax(jnp.where(alive, scores, -jnp.inf))
    keep = keep.at[i].set(j)
    suppressed = iou_one_to_many(boxes[j], boxes, plus_one) > iou_threshold
    alive = alive & ~suppressed & (iota != j)
    return i + 1, keep, alive

  n, keep, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), jnp.zeros((max_output,), jnp.int32), candidate))
  return keep, jnp.arange(max_output) < n
