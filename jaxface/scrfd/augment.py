"""SCRFD training augmentation (insightface `detection/scrfd` mmdet pipeline, REFERENCE.md section 2.8), on the host.

The reference pipeline, in its order:
  1. `RandomSquareCrop`: side = s x the short side, s from {0.3, 0.45, 0.6, 0.8, 1.0, 1.2, ..., 2.0};
     offsets uniform in [0, W - side) (numpy's exclusive `randint`), or in [W - side, 0) when the
     crop is larger than the image, 0 when equal; a crop is accepted when a face centre is strictly
     inside it; boxes and landmarks are clipped to it; outside the image the crop is grey (128);
     250 tries per scale, a new scale each round;
  2. `Resize` to S x S, bilinear, ignoring the aspect ratio (the crop is square anyway);
  3. `RandomFlip` (p = 1/2), landmarks in the order [1, 0, 2, 4, 3];
  4. `PhotoMetricDistortion` on float pixels, nothing clipped: brightness +U(-32, 32); contrast
     x U(0.5, 1.5) either first or last (p = 1/2); HSV (H in degrees); saturation x U(0.5, 1.5);
     hue + U(-18, 18) degrees, wrapped; back to BGR; a random channel permutation; each step p = 1/2;
  5. `Normalize`: BGR -> RGB, (x - 127.5) / 128.

As in `jaxface.retinaface.augment`, the draws go into a plan first (`draw_scrfd_plan`), and
`apply_scrfd_plan` does the pixel work once; randomness comes only from the generator passed in.

Cost: the crop and its grey border are built in uint8 (one `copyMakeBorder`) and resized in uint8;
the float work (photometric distortion, normalisation) happens at the output size, as in the
reference. The channel permutation and BGR -> RGB are folded into the normalisation, one
`cv2.transform` pass (bit-identical: (x - 127.5) / 128 rounds once either way, 128 being a power of 2).

Deliberate departures from the reference:
  * resampling precision: the reference resizes the float image (`LoadImageFromFile(to_float32=True)`);
    resizing the uint8 crop instead avoids converting crops of up to (2 x short side)^2 pixels to
    float and differs by at most one grey level before the distortion (checked by a test);
  * FIX: the reference retries forever when no crop can keep a face (no face, only ignore boxes, or
    every centre on or outside the border); here after MAX_SCALE_ROUNDS rounds the whole image is
    placed on a grey square (`crop_failed`);
  * FIX: zero-size boxes dropped and counted, `min_face` filter (default off), landmark validity from
    the reader, ignore boxes kept but never making a crop acceptable: as in `jaxface.retinaface.augment`.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from jaxface.data.sample import Sample
from jaxface.data.transforms import Augmented, centres_inside, check_bgr_uint8, mirror_faces, usable_faces
from jaxface.keypoints import FIVE_POINTS

CROP_SCALES = np.array([0.3, 0.45, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0])
CROP_TRIES = 250            # per scale
CROP_CHUNK = 32
MAX_SCALE_ROUNDS = 8        # the reference has no limit
FILL = 128
MEAN, STD = 127.5, 128.0

@dataclasses.dataclass(frozen=True)
class ScrfdPhotometric:
  """The photometric distortion of one sample; a `None` step is skipped."""
  brightness: float | None              # added, from U(-32, 32)
  contrast_first: bool                  # the reference's mode 1: contrast before the HSV steps
  contrast: float | None                # factor, from U(0.5, 1.5)
  saturation: float | None              # factor on S, from U(0.5, 1.5)
  hue: float | None                     # degrees added to H, from U(-18, 18), wrapped into [0, 360]
  channels: tuple[int, int, int] | None  # BGR channel permutation (may be the identity)


@dataclasses.dataclass(frozen=True)
class ScrfdPlan:
  """Every random choice of one augmentation."""
  patch: tuple[int, int, int, int] | None  # square crop x1 y1 x2 y2 (may reach outside the image); None: failed
  flip: bool
  photometric: ScrfdPhotometric | None     # None: no distortion (not in training; for tests)


def scrfd_augment(image_bgr_uint8: np.ndarray, sample: Sample, rng: np.random.Generator, *,
                  image_size: int = 640, min_face: float = 0.0) -> Augmented:
  """The reference SCRFD training augmentation of one image.

  Args:
    image_bgr_uint8: [H, W, 3] uint8 BGR.
    sample: the image's faces in pixels (`ignore` = the reference's `gt_bboxes_ignore`).
    rng: the sample's generator, e.g. `sample_rng(seed, epoch, index)`.
    image_size: output side S (640 in every SCRFD config).
    min_face: minimum shorter side of a kept face, in output pixels; 0 keeps every face.

  Returns:
    `Augmented` with image [S, S, 3] float32 RGB, (x - 127.5) / 128; coordinates divided by S.
  """
  check_bgr_uint8(image_bgr_uint8)
  plan = draw_scrfd_plan(sample, image_bgr_uint8.shape[:2], rng, image_size=image_size, min_face=min_face)
  return apply_scrfd_plan(image_bgr_uint8, sample, plan, image_size=image_size, min_face=min_face)


# --- drawing ---------------------------------------------------------------------------------------------------

def draw_scrfd_plan(sample: Sample, image_hw: tuple[int, int], rng: np.random.Generator, *,
                    image_size: int = 640, min_face: float = 0.0) -> ScrfdPlan:
  height, width = image_hw
  boxes, _, _, ignore, _ = usable_faces(sample)
  patch = _draw_patch(boxes[~ignore], width, height, rng, image_size, min_face)
  return ScrfdPlan(patch=patch, flip=bool(rng.integers(2)), photometric=draw_scrfd_photometric(rng))


def draw_scrfd_photometric(rng: np.random.Generator) -> ScrfdPhotometric:
  """The reference's draws in its order: a p = 1/2 coin before each step's value, the mode after brightness."""
  def coin_then(draw):
    return draw() if rng.integers(2) else None
  factor = lambda: float(rng.uniform(0.5, 1.5))
  brightness = coin_then(lambda: float(rng.uniform(-32, 32)))
  contrast_first = bool(rng.integers(2))
  contrast = coin_then(factor) if contrast_first else None
  saturation = coin_then(factor)
  hue = coin_then(lambda: float(rng.uniform(-18, 18)))
  if not contrast_first:
    contrast = coin_then(factor)
  channels = coin_then(lambda: tuple(int(c) for c in rng.permutation(3)))
  return ScrfdPhotometric(brightness, contrast_first, contrast, saturation, hue, channels)


def _draw_patch(anchors: np.ndarray, width: int, height: int, rng: np.random.Generator,
                image_size: int, min_face: float) -> tuple[int, int, int, int] | None:
  """The first accepted square patch: rounds of one scale and CROP_TRIES offsets, tested in chunks."""
  if not len(anchors):
    return None
  short = min(width, height)
  for _ in range(MAX_SCALE_ROUNDS):
    side = int(CROP_SCALES[rng.integers(len(CROP_SCALES))] * short)
    # numpy randint(low, high) excludes high: [0, W - side) or [W - side, 0); 0 when W == side.
    lo_x, hi_x = (0, width - side) if width > side else (width - side, 0)
    lo_y, hi_y = (0, height - side) if height > side else (height - side, 0)
    for start in range(0, CROP_TRIES, CROP_CHUNK):
      n = min(CROP_CHUNK, CROP_TRIES - start)
      left = rng.integers(lo_x, hi_x, size=n) if hi_x > lo_x else np.zeros(n, np.int64)
      top = rng.integers(lo_y, hi_y, size=n) if hi_y > lo_y else np.zeros(n, np.int64)
      patches = np.stack([left, top, left + side, top + side], axis=1).astype(np.float64)  # [n, 4]
      inside = centres_inside(anchors[:, None, :], patches[None])  # [M, n]
      if min_face > 0:
        wh = (np.minimum(anchors[:, None, 2:], patches[None, :, 2:]) -
              np.maximum(anchors[:, None, :2], patches[None, :, :2]))
        inside &= wh.min(axis=-1) / side * image_size >= min_face
      ok = inside.any(axis=0)
      if ok.any():
        return tuple(int(v) for v in patches[np.argmax(ok)])
  return None


# --- applying --------------------------------------------------------------------------------------------------

def apply_scrfd_plan(image_bgr_uint8: np.ndarray, sample: Sample, plan: ScrfdPlan, *, image_size: int = 640,
                     min_face: float = 0.0) -> Augmented:
  """The pixels and targets for a drawn plan (deterministic)."""
  check_bgr_uint8(image_bgr_uint8)
  height, width = image_bgr_uint8.shape[:2]
  boxes, points, valid, ignore, dropped = usable_faces(sample)
  patch = plan.patch if plan.patch is not None else (0, 0, max(width, height), max(width, height))
  l, t, r, b = patch
  side = r - l

  keep = centres_inside(boxes, np.array(patch, np.float64))
  dropped['cropped_out'] = int((~keep).sum())
  boxes, points, valid, ignore = boxes[keep], points[keep], valid[keep], ignore[keep]
  lo, hi = np.array([l, t], np.float64), np.array([r, b], np.float64)
  boxes = np.concatenate([np.maximum(boxes[:, :2], lo), np.minimum(boxes[:, 2:], hi)], axis=1) - np.tile(lo, 2)
  points = np.clip(points, lo, hi) - lo
  if min_face > 0:
    big = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / side * image_size >= min_face
    dropped['too_small'] = int((~big).sum())
    boxes, points, valid, ignore = boxes[big], points[big], valid[big], ignore[big]

  # The crop with its grey border, in one uint8 copy; resized in uint8.
  x1, y1, x2, y2 = max(l, 0), max(t, 0), min(r, width), min(b, height)
  pixels = cv2.copyMakeBorder(image_bgr_uint8[y1:y2, x1:x2], y1 - t, b - y2, x1 - l, r - x2,
                              cv2.BORDER_CONSTANT, value=(FILL, FILL, FILL))
  pixels = cv2.resize(pixels, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
  factor = np.float32(image_size / side)  # the reference's float32 scale factor, boxes clipped to [0, S]
  boxes = np.clip(boxes.astype(np.float32) * factor, 0, image_size)
  points = np.clip(points.astype(np.float32) * factor, 0, image_size)
  if plan.flip:
    pixels = cv2.flip(pixels, 1)
    boxes, points = mirror_faces(boxes, points, np.float32(image_size), FIVE_POINTS.flip_order)

  image = pixels.astype(np.float32)
  channels = (0, 1, 2)
  if plan.photometric is not None:
    image = distort_float(image, plan.photometric)
    channels = plan.photometric.channels or channels
  image = normalize(image, channels)

  points[~valid] = 0
  return Augmented(image=image, boxes=(boxes / np.float32(image_size)).astype(np.float32),
                   landmarks=(points / np.float32(image_size)).astype(np.float32), landmark_valid=valid,
                   ignore=ignore, dropped=dropped, crop_failed=plan.patch is None)


def distort_float(image: np.ndarray, p: ScrfdPhotometric) -> np.ndarray:
  """`PhotoMetricDistortion` on float32 BGR [H, W, 3], up to (not including) the channel permutation.

  Same operations as the reference, in float32 and unclipped (dark pixels pushed below 0 by the
  brightness step make odd colours in the HSV round trip; that is the reference's behaviour).
  `image` is modified in place and returned or replaced.
  """
  if p.brightness is not None:
    image += np.float32(p.brightness)
  if p.contrast_first and p.contrast is not None:
    image *= np.float32(p.contrast)
  hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
  if p.saturation is not None:
    hsv[..., 1] *= np.float32(p.saturation)
  if p.hue is not None:
    h = hsv[..., 0]
    h += np.float32(p.hue)
    h[h > 360] -= 360
    h[h < 0] += 360
  image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=image)
  if not p.contrast_first and p.contrast is not None:
    image *= np.float32(p.contrast)
  return image


def normalize(image: np.ndarray, channels: tuple[int, int, int] = (0, 1, 2)) -> np.ndarray:
  """out[..., c] = (image[..., channels[2 - c]] - 127.5) / 128: the channel permutation, BGR -> RGB and the
  normalisation in one pass."""
  m = np.zeros((3, 4), np.float32)
  for c in range(3):
    m[c, channels[2 - c]] = 1 / STD
  m[:, 3] = -MEAN / STD
  return cv2.transform(image, m)
