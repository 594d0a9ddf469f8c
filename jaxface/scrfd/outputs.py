"""SCRFD's network input and how its outputs read (REFERENCE.md §2.9): RGB `(x - 127.5) / 128`,
sigmoid scores (in the model, as the ONNX export has them), distances x stride from the anchor
centres, keypoints as insightface decodes them; boxes clipped to the unpadded image in mmdet's test
path (`decode`), not in insightface's deployment path (`decode_unclipped`, `insightface_letterbox`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.scrfd import anchors, box_coding

PIXEL_MEAN, PIXEL_STD = 127.5, 128.0
VGA = 640


def input_size(spec) -> int:
  """Every model's fixed network input under mmdet's test protocol: 640 x 640."""
  return VGA


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 BGR `[B,H,W,3]` -> float32 RGB `(x - 127.5) / 128` (mmdet's Normalize, to_rgb)."""
  return (images[..., ::-1].astype(jnp.float32) - PIXEL_MEAN) / PIXEL_STD


def anchor_cells(spec, height: int, width: int) -> np.ndarray:
  """`[A, 3]` (row, col, stride) of each anchor, in head order."""
  return anchors.anchor_grid(height, width, spec.backbone.max_pool_stem)[1]


def scores(outputs) -> jax.Array:
  """`(scores [B,A,1], distances, keypoints)` -> `[B, A]`: the sigmoid is in the model already."""
  return outputs[0][..., 0].astype(jnp.float32)


def decode(spec, outputs, idx: jax.Array, input_hw: tuple[int, int], image_hw: jax.Array | None = None
           ) -> tuple[jax.Array, jax.Array]:
  """One image's outputs at the anchors `idx [K]` of an `H x W` input -> `(boxes [K,4] xyxy px,
  keypoints [K,5,2] px, or [K,0,2] for the models without)`. Boxes are clipped to the unpadded
  image `image_hw` (mmdet's `max_shape`); keypoints are not clipped (insightface's `distance2kps`)."""
  h, w = input_hw
  centres, cells = anchors.anchor_grid(h, w, spec.backbone.max_pool_stem)
  c = jnp.asarray(centres)[idx]
  stride = jnp.asarray(cells[:, 2:], jnp.float32)[idx]  # [K, 1]
  _, distances, keypoints = outputs
  boxes = box_coding.distance2bbox(c, distances[idx].astype(jnp.float32) * stride, image_hw)
  points = box_coding.distance2kps(c, keypoints[idx].astype(jnp.float32) * stride)
  return boxes, points


def decode_unclipped(spec, outputs, idx: jax.Array, input_hw: tuple[int, int], image_hw: jax.Array | None = None
                     ) -> tuple[jax.Array, jax.Array]:
  """`decode` without the clipping: insightface's `scrfd.py`."""
  return decode(spec, outputs, idx, input_hw, None)


def insightface_letterbox(height: int, width: int, size: int) -> tuple[int, int, np.ndarray]:
  """`scrfd.py`'s resize into `size x size`: the side that binds becomes `size`, the other is
  truncated (`int`), and one scale, `new_h / h`, maps both axes back (its `det_scale`).
  Returns `(new_h, new_w, scale [2] float32 (x, y))`."""
  im_ratio = float(height) / width
  if im_ratio > 1.0:  # the model's ratio: a square input
    new_h, new_w = size, int(size / im_ratio)
  else:
    new_h, new_w = int(size * im_ratio), size
  det_scale = np.float32(float(new_h) / height)
  return new_h, new_w, np.array([det_scale, det_scale], np.float32)
