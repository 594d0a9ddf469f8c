"""RetinaFace's network input and how its outputs read: mean subtraction, softmax scores, prior
decoding (REFERENCE.md §1.3, §1.4, §1.8)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.retinaface import anchors, box_coding

BGR_MEAN = (104, 117, 123)  # the reference subtracts it from BGR pixels, and divides by nothing


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 BGR `[B,H,W,3]` -> float32 minus the reference's BGR mean (no std)."""
  return images.astype(jnp.float32) - jnp.asarray(BGR_MEAN, jnp.float32)[None, None, None, :]


def anchor_cells(spec, height: int, width: int) -> np.ndarray:
  """`[A, 3]` (row, col, step) of each prior, in head order."""
  return anchors.prior_grid(height, width, spec.min_sizes, spec.steps)[1]


def scores(outputs) -> jax.Array:
  """`(bbox, logits [B,A,2], landmarks)` -> `[B, A]` face probability, `softmax(logits)[..., 1]`."""
  return jax.nn.softmax(outputs[1].astype(jnp.float32), axis=-1)[..., 1]


def decode(spec, outputs, idx: jax.Array, input_hw: tuple[int, int], image_hw: jax.Array | None = None
           ) -> tuple[jax.Array, jax.Array]:
  """One image's `(bbox [A,4], logits [A,2], landmarks [A,10])` at the priors `idx [K]` of an
  `H x W` input -> `(boxes [K,4] xyxy px, landmarks [K,5,2] px)`. Nothing is clipped to the image
  (`image_hw` unused), as in the reference."""
  h, w = input_hw
  priors = jnp.asarray(anchors.prior_grid(h, w, spec.min_sizes, spec.steps)[0])[idx]
  bbox, _, landmarks = outputs
  pixel_wh = jnp.asarray([w, h], jnp.float32)
  boxes = box_coding.decode_boxes(bbox[idx], priors, spec.variances) * jnp.concatenate([pixel_wh, pixel_wh])[None, :]
  points = box_coding.decode_landmarks(landmarks[idx], priors, spec.variances) * pixel_wh[None, None, :]
  return boxes, points
