"""SCRFD's matched encode/decode pairs (mmdet `bbox2distance`/`distance2bbox`, insightface
`kps2distance`/`distance2kps`): distances from an anchor centre, in whatever unit the centre is in
(pixels at test time; stride units in the loss, REFERENCE.md §2.7). float32 throughout.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def distance2bbox(centres: jax.Array, distances: jax.Array, max_hw: jax.Array | None = None) -> jax.Array:
  """Centres `[..., 2]` (x, y) and distances `[..., 4]` (left, top, right, bottom) -> xyxy `[..., 4]`.

  With `max_hw` (h, w), x is clipped to [0, w] and y to [0, h], as mmdet's `max_shape` clipping.
  """
  distances = distances.astype(jnp.float32)
  boxes = jnp.concatenate([centres - distances[..., :2], centres + distances[..., 2:]], axis=-1)
  if max_hw is None:
    return boxes
  hi = jnp.asarray(max_hw, jnp.float32)[::-1]  # (w, h)
  hi = jnp.concatenate([hi, hi]).reshape((1,) * (boxes.ndim - 1) + (4,))
  return jnp.clip(boxes, 0.0, hi)


def bbox2distance(centres: jax.Array, boxes: jax.Array) -> jax.Array:
  """Inverse of `distance2bbox` (no clipping): xyxy `[..., 4]` -> (left, top, right, bottom) `[..., 4]`."""
  return jnp.concatenate([centres - boxes[..., :2], boxes[..., 2:] - centres], axis=-1)


def distance2kps(centres: jax.Array, distances: jax.Array) -> jax.Array:
  """Centres `[..., 2]` and offsets `[..., 2K]` (x0, y0, x1, ...) -> keypoints `[..., K, 2]`."""
  d = distances.astype(jnp.float32).reshape(*distances.shape[:-1], -1, 2)
  return centres[..., None, :] + d


def kps2distance(centres: jax.Array, points: jax.Array) -> jax.Array:
  """Inverse of `distance2kps`: keypoints `[..., K, 2]` -> offsets `[..., 2K]`."""
  d = points - centres[..., None, :]
  return d.reshape(*d.shape[:-2], -1)
