"""BlazeFace training augmentation (the first open recipe; docs/training.md), on the host.

BlazeFace sees one small square input (128, 192 or 256 px) and a narrow range of face sizes, so the
crop is chosen by face size rather than by image size:

  1. one annotated face is picked at random, and a relative size r drawn log-uniformly from the
     model's range (`FACE_RANGE`, by input side: the front model is for faces filling 15-75 % of
     the input, the back and full-range models for smaller ones);
  2. the square crop has side `sqrt(w * h) / r` and a random position that keeps the picked face's
     centre inside its middle half; it may reach outside the image, which is then black (as
     MediaPipe's letterbox pads);
  3. brightness and contrast jitter (p = 1/2 each), a mirror (p = 1/2) that swaps the eyes and the
     ears, then one bilinear warp to the input side and RGB `x / 127.5 - 1`;
  4. faces whose centre leaves the crop are dropped; boxes are clipped to it.

Five-landmark annotations (WIDER's, the synthetic set's; image-left first) become BlazeFace's six
keypoints (the person's right eye is the image's left one): right eye, left eye, nose, the mouth as
the mean of its two corners, and the ears at zero (`loss.TRAINED_KEYPOINTS` never trains them).
Randomness comes only from the generator passed in.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from jaxface.data.sample import Sample
from jaxface.data.transforms import Augmented, centres_inside, check_bgr_uint8, mirror_faces, usable_faces

# Input side -> the range of face size / input side the model is trained for.
FACE_RANGE = {128: (0.15, 0.75), 256: (0.06, 0.5), 192: (0.05, 0.5)}
SIX_FLIP = (1, 0, 2, 3, 5, 4)


def six_keypoints(landmarks: np.ndarray) -> np.ndarray:
  """`[N, 5, 2]` WIDER landmarks (left eye, right eye, nose, left and right mouth corner, image-left
  first) -> `[N, 6, 2]` BlazeFace keypoints, the ears zero; `[N, 6, 2]` passes through."""
  if landmarks.shape[1] == 6:
    return landmarks
  if landmarks.shape[1] != 5:
    raise ValueError(f'BlazeFace trains from five or six keypoints per face, got {landmarks.shape[1]}')
  out = np.zeros((len(landmarks), 6, 2), landmarks.dtype)
  out[:, :3] = landmarks[:, :3]
  out[:, 3] = (landmarks[:, 3] + landmarks[:, 4]) / 2
  return out


def blazeface_augment(image_bgr_uint8: np.ndarray, sample: Sample, rng: np.random.Generator, *, image_size: int,
                      min_face: float = 0.0) -> Augmented:
  """One training sample at `image_size` (module docstring). `min_face`: minimum shorter side of a
  kept face, in output pixels (0 keeps every face)."""
  check_bgr_uint8(image_bgr_uint8)
  if image_size not in FACE_RANGE:
    raise ValueError(f'BlazeFace trains at 128, 192 or 256 px (its models\' inputs), got {image_size}')
  h, w = image_bgr_uint8.shape[:2]
  boxes, landmarks, landmark_valid, ignore, dropped = usable_faces(sample)
  ears = landmarks.shape[1] == 6  # five-landmark annotations have none: they stay zero
  landmarks = six_keypoints(landmarks)
  lo, hi = FACE_RANGE[image_size]
  real = np.flatnonzero(~ignore)
  if len(real):
    b = boxes[rng.choice(real)]
    size = math.sqrt((b[2] - b[0]) * (b[3] - b[1]))
    side = size / math.exp(rng.uniform(math.log(lo), math.log(hi)))
    centre = (b[:2] + b[2:]) / 2 - rng.uniform(-0.25, 0.25, 2) * side
  else:  # no face: a random crop of the whole range of sides
    side = min(h, w) * rng.uniform(0.3, 1.0)
    centre = np.array([rng.uniform(0, w), rng.uniform(0, h)])
  x0, y0 = centre - side / 2
  roi = np.array([x0, y0, x0 + side, y0 + side])
  keep = centres_inside(boxes, roi)
  dropped['cropped_out'] += int((~keep).sum())
  boxes, landmarks, landmark_valid, ignore = boxes[keep], landmarks[keep], landmark_valid[keep], ignore[keep]
  boxes = np.clip(boxes - roi[[0, 1, 0, 1]], 0, side)
  landmarks = landmarks - roi[None, None, :2]
  if min_face > 0:
    big = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * image_size / side >= min_face
    dropped['too_small'] += int((~big).sum())
    boxes, landmarks, landmark_valid, ignore = boxes[big], landmarks[big], landmark_valid[big], ignore[big]
  scale = image_size / side
  m = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])
  out = cv2.warpAffine(image_bgr_uint8, m, (image_size, image_size), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
  out = out.astype(np.float32)
  if rng.integers(2):  # brightness
    out = out + rng.uniform(-32, 32)
  if rng.integers(2):  # contrast
    out = (out - 127.5) * rng.uniform(0.6, 1.4) + 127.5
  out = np.clip(out, 0, 255)
  if rng.integers(2):
    out = out[:, ::-1]
    boxes, landmarks = mirror_faces(boxes, landmarks, side, SIX_FLIP)
  image = out[..., ::-1] / 127.5 - 1.0
  landmarks = np.where(landmark_valid[:, None, None], landmarks / side, 0.0)
  if not ears:
    landmarks[:, 4:] = 0.0
  return Augmented(image=np.ascontiguousarray(image, np.float32), boxes=(boxes / side).astype(np.float32),
                   landmarks=landmarks.astype(np.float32), landmark_valid=landmark_valid, ignore=ignore,
                   dropped=dropped)
