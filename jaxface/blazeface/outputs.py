"""BlazeFace's network input and how its outputs read (REFERENCE.md §3.1, §3.3, §3.6): RGB
`x / 127.5 - 1`, scores `sigmoid(clip(logit, -100, 100))`, boxes and six keypoints decoded against
the static anchor table and scaled from normalised to input pixels."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.blazeface import anchors, box_coding

# The logit clip of hollance's port and MediaPipe's `TensorsToDetectionsCalculator` (`score_clipping_thresh`).
LOGIT_CLIP = 100.0


def anchor_options(spec) -> anchors.AnchorOptions:
  """The anchor calculator's options of a model, from its input side."""
  return {128: anchors.FRONT, 256: anchors.BACK, 192: anchors.FULL_RANGE}[spec.input_size]


@functools.lru_cache(maxsize=None)
def _table(options: anchors.AnchorOptions):
  return anchors.anchor_table(options)


def anchor_table(spec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`anchors.anchor_table` of the model (cached; static numpy)."""
  return _table(anchor_options(spec))


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 BGR `[B,H,W,3]` -> float32 RGB `x / 127.5 - 1`."""
  return images[..., ::-1].astype(jnp.float32) / 127.5 - 1.0


def anchor_cells(spec, height: int, width: int) -> np.ndarray:
  """`[A, 3]` (row, col, stride) of each anchor in head order (the input is always `S x S`)."""
  if (height, width) != (spec.input_size, spec.input_size):
    raise ValueError(f'BlazeFace takes {spec.input_size} x {spec.input_size} inputs, got {height} x {width}')
  return anchor_table(spec)[2]


def scores(outputs) -> jax.Array:
  """`(regressors [B,A,16], logits [B,A,1])` -> `[B, A]` face probabilities."""
  return jax.nn.sigmoid(jnp.clip(outputs[1][..., 0].astype(jnp.float32), -LOGIT_CLIP, LOGIT_CLIP))


def decode(spec, outputs, idx: jax.Array, input_hw: tuple[int, int], image_hw: jax.Array | None = None
           ) -> tuple[jax.Array, jax.Array]:
  """One image's outputs at the anchors `idx [K]` -> `(boxes [K,4] xyxy, keypoints [K,6,2])` in
  input pixels; nothing is clipped (neither reference clips)."""
  table = jnp.asarray(anchor_table(spec)[0], jnp.float32)[idx]
  boxes, points = box_coding.decode(outputs[0][idx].astype(jnp.float32), table, spec.input_size)
  s = jnp.float32(spec.input_size)
  return boxes * s, points * s
