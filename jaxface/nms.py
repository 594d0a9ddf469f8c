"""Greedy and weighted non-maximum suppression with static shapes, on device.

Two IoU conventions: the reference's `py_cpu_nms` (`plus_one=True`: widths are `x2 - x1 + 1`,
as for integer pixel boxes) and plain IoU. Both keep a box when its IoU with every kept,
higher-scoring box is <= the threshold. `iou_matrix` is the all-pairs plain IoU that SSD-style
matching needs.

Greedy NMS has two exact forms with equal results: `nms_argmax`, a loop of one step per kept box
over all K rows, and `nms_tiled`, which sorts the rows once and decides them a tile at a time. `nms`
takes the first for few rows and the second for many (BENCHMARKS.md, "Tiled NMS").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def iou_pairs(a: jax.Array, b: jax.Array, plus_one: bool) -> jax.Array:
  """IoU of every row of `a [T, 4]` with every row of `b [U, 4]` (xyxy) -> `[T, U]`."""
  one = 1.0 if plus_one else 0.0
  area = lambda x: (x[..., 2] - x[..., 0] + one) * (x[..., 3] - x[..., 1] + one)
  w = jnp.maximum(0.0, jnp.minimum(a[:, None, 2], b[None, :, 2]) - jnp.maximum(a[:, None, 0], b[None, :, 0]) + one)
  h = jnp.maximum(0.0, jnp.minimum(a[:, None, 3], b[None, :, 3]) - jnp.maximum(a[:, None, 1], b[None, :, 1]) + one)
  inter = w * h
  return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def iou_one_to_many(box: jax.Array, boxes: jax.Array, plus_one: bool) -> jax.Array:
  """IoU of `box [4]` with `boxes [K, 4]` (xyxy) -> `[K]`."""
  return iou_pairs(box[None], boxes, plus_one)[0]


def iou_matrix(a: jax.Array, b: jax.Array) -> jax.Array:
  """Plain IoU of `[G, 4]` and `[A, 4]` xyxy boxes -> `[G, A]` (0 where a box has no area)."""
  lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
  rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  area = lambda x: jnp.maximum(x[..., 2] - x[..., 0], 0.0) * jnp.maximum(x[..., 3] - x[..., 1], 0.0)
  union = area(a)[:, None] + area(b)[None, :] - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


# Up to this many rows `nms` runs `nms_argmax`: its steps are cheap when K is small, and it needs no sort.
ARGMAX_MAX_ROWS = 512
NMS_TILE = 256


def nms(boxes: jax.Array, scores: jax.Array, candidate: jax.Array, iou_threshold: jax.Array | float,
        max_output: int, plus_one: bool = True) -> tuple[jax.Array, jax.Array]:
  """Greedy NMS over `K` rows in any order: `nms_argmax` for K <= `ARGMAX_MAX_ROWS`, else
  `nms_tiled`. Same arguments and results as those two."""
  if boxes.shape[0] <= ARGMAX_MAX_ROWS:
    return nms_argmax(boxes, scores, candidate, iou_threshold, max_output, plus_one)
  return nms_tiled(boxes, scores, candidate, iou_threshold, max_output, plus_one)


def nms_argmax(boxes: jax.Array, scores: jax.Array, candidate: jax.Array, iou_threshold: jax.Array | float,
               max_output: int, plus_one: bool = True) -> tuple[jax.Array, jax.Array]:
  """Greedy NMS over `K` rows in any order, one loop step per kept box.

  Each step keeps the best-scoring row still alive and removes the rows it suppresses, so the
  input needs no sorting and the loop runs once per kept box, not once per candidate. Each step
  reads all K rows, so many kept boxes among many rows make it slow (`nms_tiled`).

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


def nms_tiled(boxes: jax.Array, scores: jax.Array, candidate: jax.Array, iou_threshold: jax.Array | float,
              max_output: int, plus_one: bool = True, tile: int = NMS_TILE) -> tuple[jax.Array, jax.Array]:
  """Greedy NMS with `nms_argmax`'s arguments and results, deciding `tile` rows per loop step.

  The candidates are sorted once by descending score (equal scores in row order), then taken a
  tile at a time. A tile's rows first lose the ones that a box kept from earlier tiles suppresses
  (compared against the kept boxes only, `tile` of them per step); the tile is then decided by
  iterating `keep_i = alive_i and no kept j < i in the tile suppresses i` from `keep = alive` until
  nothing changes. Each row depends only on earlier rows, so that fixed point is unique and is the
  greedy result; it takes as many iterations as the longest chain of suppressions in the tile
  (a few in practice). The loops run about `candidates / tile * (1 + kept / tile)` steps, against
  one step per kept box over all K rows for `nms_argmax`. Scores must be finite.
  """
  k = boxes.shape[0]
  t = min(tile, k)
  tiles = -(-k // t)
  rows = tiles * t
  key = jnp.where(candidate, -scores, jnp.inf)
  _, order = jax.lax.sort((key, jnp.arange(k, dtype=jnp.int32)), num_keys=1, is_stable=True)
  n = jnp.sum(candidate, dtype=jnp.int32)
  sorted_boxes = jnp.pad(boxes[order], ((0, rows - k), (0, 0))).reshape(tiles, t, 4)
  sorted_alive = jnp.pad(candidate[order], (0, rows - k)).reshape(tiles, t)
  sorted_rows = jnp.pad(order, (0, rows - k)).reshape(tiles, t)
  earlier = jnp.arange(t)[:, None] < jnp.arange(t)[None, :]   # [j, i]: row j comes before row i
  capacity = max(rows, max_output)

  def decide_tile(state):
    u, kept_boxes, kept_rows, count = state
    tile_boxes = sorted_boxes[u]

    def by_kept(c, alive):
      prior = jax.lax.dynamic_slice_in_dim(kept_boxes, c * t, t)
      real = c * t + jnp.arange(t) < count
      return alive & ~jnp.any(real[:, None] & (iou_pairs(prior, tile_boxes, plus_one) > iou_threshold), axis=0)

    alive = jax.lax.fori_loop(0, (count + t - 1) // t, by_kept, sorted_alive[u])
    suppresses = (iou_pairs(tile_boxes, tile_boxes, plus_one) > iou_threshold) & earlier
    step = lambda keep: alive & ~jnp.any(suppresses & keep[:, None], axis=0)
    _, keep = jax.lax.while_loop(lambda s: jnp.any(s[0] != s[1]), lambda s: (s[1], step(s[1])), (alive, step(alive)))
    slot = jnp.where(keep, count + jnp.cumsum(keep) - 1, capacity)  # appended in order; `capacity` is dropped
    kept_boxes = kept_boxes.at[slot].set(tile_boxes, mode='drop')
    kept_rows = kept_rows.at[slot].set(sorted_rows[u], mode='drop')
    return u + 1, kept_boxes, kept_rows, count + jnp.sum(keep, dtype=jnp.int32)

  more = lambda s: (s[0] < (n + t - 1) // t) & (s[3] < max_output)  # greedy stops after max_output boxes
  init = (jnp.int32(0), jnp.zeros((rows, 4), boxes.dtype), jnp.zeros((capacity,), jnp.int32), jnp.int32(0))
  _, _, kept_rows, count = jax.lax.while_loop(more, decide_tile, init)
  return kept_rows[:max_output], jnp.arange(max_output) < count


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
