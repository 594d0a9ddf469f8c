"""The matched encode/decode pair of RetinaFace (SSD-style offsets with variances 0.1 / 0.2).

Everything is in coordinates normalised by the image size, and float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Variances = tuple[float, float]
VARIANCES: Variances = (0.1, 0.2)  # the reference's cfg['variance']: centre, log-size


def center_form(boxes: jax.Array) -> jax.Array:
  """`[..., 4]` xyxy -> cxcywh."""
  return jnp.concatenate([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], axis=-1)


def point_form(boxes: jax.Array) -> jax.Array:
  """`[..., 4]` cxcywh -> xyxy."""
  return jnp.concatenate([boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], axis=-1)


def encode_boxes(boxes: jax.Array, priors: jax.Array, variances: Variances = VARIANCES) -> jax.Array:
  """xyxy boxes `[..., 4]` against cxcywh priors `[..., 4]` -> offsets `[..., 4]`.

  Widths/heights must be positive: a zero-size box has no log-size (callers mask those out
  before encoding; see the matcher).
  """
  c = center_form(boxes)
  d_c = (c[..., :2] - priors[..., :2]) / (variances[0] * priors[..., 2:])
  d_wh = jnp.log(c[..., 2:] / priors[..., 2:]) / variances[1]
  return jnp.concatenate([d_c, d_wh], axis=-1)


def decode_boxes(offsets: jax.Array, priors: jax.Array, variances: Variances = VARIANCES) -> jax.Array:
  """Inverse of `encode_boxes`: offsets `[..., 4]` -> xyxy `[..., 4]`."""
  offsets = offsets.astype(jnp.float32)
  c = priors[..., :2] + offsets[..., :2] * variances[0] * priors[..., 2:]
  wh = priors[..., 2:] * jnp.exp(offsets[..., 2:] * variances[1])
  return jnp.concatenate([c - wh / 2, c + wh / 2], axis=-1)


def encode_landmarks(points: jax.Array, priors: jax.Array, variances: Variances = VARIANCES) -> jax.Array:
  """Points `[..., 5, 2]` -> offsets `[..., 10]` ordered x0, y0, x1, y1, ..."""
  d = (points - priors[..., None, :2]) / (variances[0] * priors[..., None, 2:])
  return d.reshape(*d.shape[:-2], -1)


def decode_landmarks(offsets: jax.Array, priors: jax.Array, variances: Variances = VARIANCES) -> jax.Array:
  """Inverse of `encode_landmarks`: offsets `[..., 10]` -> points `[..., 5, 2]`."""
  d = offsets.astype(jnp.float32).reshape(*offsets.shape[:-1], 5, 2)
  return priors[..., None, :2] + d * variances[0] * priors[..., None, 2:]
