"""Greedy and weighted non-maximum suppression with static shapes, on device.

Two IoU conventions: the reference's `py_cpu_nms` (`plus_one=True`: widths are `x2 - x1 + 1`,
as for integer pixel boxes) and plain IoU. Both keep a box when its IoU with every kept,
higher-scoring box is <= the threshold. `iou_matrix` is the all-pairs plain IoU that SSD-style
matching needs.
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


def iou_matrix(a: jax.Array, b: jax.Array) -> jax.Array:
  """Plain IoU of `[G, 4]` and `[A, 4]` xyxy boxes -> `[G, A]` (0 where a box has no area)."""
  lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
  rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  area = lambda x: jnp.maximum(x[..., 2] - x[..., 0], 0.0) * jnp.maximum(x[..., 3] - x[..., 1], 0.0)
  union = area(a)[:, None] + area(b)[None, :] - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


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


# Weighted NMS (BlazeFace, REFERENCE.md §3.3): clusters instead of survivors. The merged score of a
# cluster is one of these `(scores [K], members [K] bool, top index) -> scalar` rules.
def mean_score(scores: jax.Array, members: jax.Array, top: jax.Array) -> jax.Array:
  """The mean score of the cluster (hollance's port)."""
  return jnp.sum(jnp.where(members, scores, 0.0)) / jnp.sum(members)


def top_score(scores: jax.Array, members: jax.Array, top: jax.Array) -> jax.Array:
  """The score of the cluster's best detection (MediaPipe's `WeightedNonMaxSuppression`)."""
  return scores[top]


def weighted_nms(boxes: jax.Array, points: jax.Array, scores: jax.Array, candidate: jax.Array,
                 iou_threshold: jax.Array | float, max_output: int, merged_score=mean_score
                 ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Weighted NMS over `K` rows in any order, as MediaPipe's `WeightedNonMaxSuppression`.

  Each step takes the best-scoring row still alive; every alive row whose IoU with it (plain, no
  `+1`) is > the threshold, itself included, joins its cluster and leaves the pool. A cluster of
  more than one row becomes the score-weighted mean of its boxes and keypoints and `merged_score`
  of its scores; a cluster of one is its row unchanged.

  Args:
    boxes: `[K, 4]` xyxy; points: `[K, P, 2]`; scores: `[K]` (equal scores in row order).
    candidate: `[K]` bool, which rows take part.
    max_output: M, the static number of output slots.
  Returns:
    `(boxes [M, 4], points [M, P, 2], scores [M], valid [M])`, clusters in order of their best score.
  """
  k = boxes.shape[0]
  iota = jnp.arange(k)
  flat = jnp.concatenate([boxes, points.reshape(k, -1)], axis=1)  # [K, 4 + 2P]

  def cond(state):
    i, _, _, alive = state
    return (i < max_output) & jnp.any(alive)

  def body(state):
    i, merged, merged_scores, alive = state
    j = jnp.argmax(jnp.where(alive, scores, -jnp.inf))
    members = alive & ((iou_one_to_many(boxes[j], boxes, False) > iou_threshold) | (iota == j))
    w = jnp.where(members, scores, 0.0)
    mean = jnp.sum(w[:, None] * flat, axis=0) / jnp.sum(w)
    single = jnp.sum(members) == 1
    merged = merged.at[i].set(jnp.where(single, flat[j], mean))
    score = jnp.where(single, scores[j], merged_score(scores, members, j))
    merged_scores = merged_scores.at[i].set(score)
    return i + 1, merged, merged_scores, alive & ~members

  init = (jnp.int32(0), jnp.zeros((max_output, flat.shape[1]), flat.dtype), jnp.zeros((max_output,), scores.dtype),
          candidate)
  n, merged, merged_scores, _ = jax.lax.while_loop(cond, body, init)
  return merged[:, :4], merged[:, 4:].reshape(max_output, -1, 2), merged_scores, jnp.arange(max_output) < n
