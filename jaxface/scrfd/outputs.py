"""SCRFD's network input and how its outputs read (REFERENCE.md §2.9, mmdet's test path): RGB
`(x - 127.5) / 128`, sigmoid scores (in the model, as the ONNX export has them), distances x stride
from the anchor centres, boxes clipped to the unpadded image, keypoints as insightface decodes them."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.scrfd import anchors, box_coding

PIXEL_MEAN, PIXEL_STD = 127.5, 128.0


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
