"""BlazeFace's box and keypoint coding (REFERENCE.md §3.3), a matched decode/encode pair.

A regressor row is `[x, y, w, h, kx0, ky0, ..., kx5, ky5]` in input pixels relative to the anchor:
`cx = x / S * aw + ax`, `w = w / S * aw`, keypoint `kx = kx / S * aw + ax`, with `S` the input side
(MediaPipe's `x_scale = y_scale = w_scale = h_scale = S`) and anchors `[ax, ay, aw, ah]`
normalised (aw = ah = 1 for the released models). Results are normalised to [0, 1].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NUM_KEYPOINTS = 6


def decode(regressors: jax.Array, anchors: jax.Array, input_size: int) -> tuple[jax.Array, jax.Array]:
  """`regressors [..., 16]`, `anchors [..., 4]` -> `(boxes [..., 4] xyxy, keypoints [..., 6, 2] xy)`,
  normalised to the input."""
  s = jnp.float32(input_size)
  centre = anchors[..., :2]
  size = anchors[..., 2:]
  xy = regressors[..., 0:2] / s * size + centre
  wh = regressors[..., 2:4] / s * size
  boxes = jnp.concatenate([xy - wh / 2, xy + wh / 2], axis=-1)
  k = regressors[..., 4:].reshape(regressors.shape[:-1] + (NUM_KEYPOINTS, 2))
  points = k / s * size[..., None, :] + centre[..., None, :]
  return boxes, points


def encode(boxes: jax.Array, points: jax.Array, anchors: jax.Array, input_size: int) -> jax.Array:
  """The inverse of `decode`: `boxes [..., 4]` xyxy and `points [..., 6, 2]` normalised, matched
  `anchors [..., 4]` -> regressor targets `[..., 16]`."""
  s = jnp.float32(input_size)
  centre = anchors[..., :2]
  size = anchors[..., 2:]
  xy = ((boxes[..., :2] + boxes[..., 2:]) / 2 - centre) / size * s
  wh = (boxes[..., 2:] - boxes[..., :2]) / size * s
  k = (points - centre[..., None, :]) / size[..., None, :] * s
  return jnp.concatenate([xy, wh, k.reshape(k.shape[:-2] + (2 * NUM_KEYPOINTS,))], axis=-1)
