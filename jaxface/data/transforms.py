"""Pieces every family's training augmentation shares: the output record, input checks, the
degenerate-box filter, the centre test of a crop, and the left-right mirror of boxes and keypoints.

Nothing here knows a family: the number of keypoints comes from the arrays and the order they take
after a mirror (`flip_order`) from the caller (the family's `Keypoints.flip_order`).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxface.data.sample import Sample


@dataclasses.dataclass
class Augmented:
  """One augmented training sample, ready to be batched (NHWC).

  Coordinates are normalised by the side of the square image they refer to before the final resize
  (RetinaFace convention; SCRFD's is the output size, the same square), so they lie in [0, 1].
  """
  image: np.ndarray           # [S, S, 3] float32, normalised for the network
  boxes: np.ndarray           # [N, 4] float32 x1 y1 x2 y2 in [0, 1]
  landmarks: np.ndarray       # [N, K, 2] float32, [0, 1] after a crop (zeros where not valid)
  landmark_valid: np.ndarray  # [N] bool
  ignore: np.ndarray          # [N] bool
  dropped: dict[str, int]     # faces removed, by reason
  crop_failed: bool = False   # no acceptable crop: the whole image was padded to a square


def mirror_faces(boxes: np.ndarray, landmarks: np.ndarray, width: float, flip_order: Sequence[int]
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Boxes [N, 4] and keypoints [N, K, 2] of an image [., width] flipped left-right.

  x' = width - x (pixel edges, so pixel i goes to width - 1 - i); x1 and x2 trade places, and the
  keypoints take the order `flip_order` (keypoint i of the mirrored face is keypoint
  `flip_order[i]` of the original), since "left" means the image's left: the eyes and the mouth
  corners swap for five points, the eyes and the ears for BlazeFace's six.
  """
  if len(flip_order) != landmarks.shape[1]:
    raise ValueError(f'flip_order {tuple(flip_order)} does not fit {landmarks.shape[1]} keypoints')
  boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
  landmarks = landmarks[:, np.asarray(flip_order)].copy()
  landmarks[..., 0] = width - landmarks[..., 0]
  return boxes, landmarks


def check_bgr_uint8(image: np.ndarray) -> None:
  if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
    raise ValueError('augmentation expects an [H, W, 3] uint8 BGR image, got '
                     f'{getattr(image, "shape", None)} {getattr(image, "dtype", type(image).__name__)}')


def usable_faces(sample: Sample):
  """(boxes [N, 4] f64, landmarks [N, K, 2] f64, landmark_valid, ignore, dropped counts) without degenerate boxes.

  FIX: the reference keeps zero-size boxes (and they reach log(0) in the loss); written with `>` so
  that NaN coordinates count as degenerate too.
  """
  boxes = sample.boxes.astype(np.float64)
  ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & np.isfinite(boxes).all(axis=1)
  dropped = {'degenerate': int((~ok).sum()), 'cropped_out': 0, 'too_small': 0, 'outside_image': 0}
  return (boxes[ok], sample.landmarks[ok].astype(np.float64), sample.landmark_valid[ok].copy(),
          sample.ignore[ok].copy(), dropped)


def centres_inside(boxes: np.ndarray, roi: np.ndarray) -> np.ndarray:
  """Box centres strictly inside the roi (x1 < cx < x2 and y1 < cy < y2); broadcasts over leading axes."""
  centres = (boxes[..., :2] + boxes[..., 2:]) / 2
  return ((roi[..., :2] < centres) & (centres < roi[..., 2:])).all(axis=-1)
