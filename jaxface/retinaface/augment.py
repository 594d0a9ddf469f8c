"""RetinaFace training augmentation (biubug6 `data_augment.preproc`, REFERENCE.md section 1.6), on the host.

One call turns a BGR uint8 image and its `Sample` into the network input and normalised targets:

  1. square crop: side = 0.3/0.45/0.6/0.8/1.0 x the short side, up to 250 tries; a try is accepted when
     one face lies fully inside it (`matrix_iof >= 1`) and a face is left after the strict centre test;
     the kept faces are clipped to the crop, their landmarks shifted and clipped to [0, side];
  2. photometric distortion on the crop, in one of two orders (p = 1/2 each): brightness, contrast,
     HSV (saturation, hue), back to BGR; or brightness, HSV (saturation, hue), BGR, contrast; each
     step with p = 1/2, every step clipped and truncated to uint8;
  3. pad to a square with the mean colour, only when no crop was found;
  4. mirror (p = 1/2) with the left/right landmark swap;
  5. resize to `image_size` with one of five interpolations drawn at random; BGR minus (104, 117, 123).

The random choices are drawn first, into a `RetinaFacePlan` (`draw_retinaface_plan`), and the pixels
are touched once, by `apply_retinaface_plan`. The plan is what the tests pin down (for instance the
interpolation, to check landmarks against pixels); `retinaface_augment` is the two in a row.

Randomness comes only from the `np.random.Generator` passed in, so with `rng.sample_rng(seed, epoch,
index)` a sample is a pure function of those three numbers. The draws have the reference's
distributions (`randrange(W - w)` with 0 when W == w, `randint(-18, 18)` inclusive, p = 1/2 coins),
not its random stream.

Where the work goes, and why it is exact: the crop is a view (nothing is copied before the first
pixel operation, which writes a new array); brightness, contrast and saturation are 256-entry lookup
tables built with the reference's float64 arithmetic and its clip-then-truncate, so they give the same
bytes as the reference's `_convert`; the mirror flips the crop before the padding (which then goes on
the left), so the flip copies the smaller image; the float conversion happens once, on the resized
image, fused with the mean subtraction. The output is byte-identical to the reference's for the same
draws (tests/test_augment.py runs the reference with scripted draws).

Deliberate departures from the reference (bug fixes; each marked FIX below):
  * boxes with zero or negative width or height (or non-finite coordinates) are dropped before
    anything else and counted as `dropped['degenerate']`: the reference keeps them and its loss
    then takes log(0) (REFERENCE.md 1.12);
  * the minimum face size filter works: `min_face` (pixels at the training resolution, default 0 =
    off, which is what the reference's `> 0` test with its +1 amounts to) drops faces whose shorter
    side after the crop is below it, counted as `dropped['too_small']`; a crop whose remaining faces
    are all too small is rejected, as the reference's filter would reject it;
  * "has landmarks" is `Sample.landmark_valid`, decided by the reader before any augmentation, and
    landmarks of faces without them are zeros in the output (the reference's -1 placeholders turn
    into clipped or mirrored numbers);
  * when no crop is found, boxes are clipped to the image (the reference leaves them as annotated,
    which can reach outside the image); a box with nothing left inside is counted as
    `dropped['outside_image']`;
  * faces marked `ignore` are kept and transformed like the others, but they do not make a crop
    acceptable (the reference has no ignore boxes); an image without any face goes straight to the
    pad-to-square path instead of failing the reference's assertion.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from jaxface.data.sample import Sample
from jaxface.data.transforms import Augmented, centres_inside, check_bgr_uint8, mirror_faces, usable_faces
from jaxface.keypoints import FIVE_POINTS
from jaxface.retinaface.outputs import BGR_MEAN as MEAN_BGR

PRE_SCALES = np.array([0.3, 0.45, 0.6, 0.8, 1.0])  # crop side / short side of the image
CROP_TRIES = 250
CROP_CHUNK = 32  # tries drawn and tested together; most images accept one in the first chunk
# The order the reference indexes with `randrange(5)`.
INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4)

_MEAN_SCALAR = (float(MEAN_BGR[0]), float(MEAN_BGR[1]), float(MEAN_BGR[2]), 0.0)
_IDENTITY_LUT = np.arange(256, dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class Photometric:
  """The photometric distortion of one sample; a `None` step is skipped.

  Even with every step skipped the image makes the BGR -> HSV -> BGR round trip, which is lossy
  in uint8; the reference always makes it.
  """
  contrast_first: bool        # True: contrast before the HSV steps (branch A); False: after (B)
  brightness: float | None    # added to B, G, R, from U(-32, 32)
  contrast: float | None      # factor on B, G, R, from U(0.5, 1.5)
  saturation: float | None    # factor on S, from U(0.5, 1.5)
  hue: int | None             # added to H modulo 180 (OpenCV units of 2 degrees), from [-18, 18]


@dataclasses.dataclass(frozen=True)
class RetinaFacePlan:
  """Every random choice of one augmentation, drawn before any pixel is touched."""
  roi: tuple[int, int, int, int] | None  # accepted square crop x1 y1 x2 y2, or None: pad to square
  photometric: Photometric | None        # None: no distortion at all (not in training; for tests)
  mirror: bool
  interpolation: int                     # one of INTERPOLATIONS


def retinaface_augment(image_bgr_uint8: np.ndarray, sample: Sample, rng: np.random.Generator, *,
                       image_size: int, min_face: float = 0.0) -> Augmented:
  """The reference training augmentation of one image.

  Args:
    image_bgr_uint8: [H, W, 3] uint8 BGR (the loader converts grey, 4-channel and 16-bit images).
    sample: the image's faces in pixels.
    rng: the sample's generator, e.g. `sample_rng(seed, epoch, index)`.
    image_size: output side S (640 for MobileNet-0.25, 840 for ResNet-50).
    min_face: minimum shorter side of a kept face, in output pixels; 0 keeps every face.

  Returns:
    `Augmented` with image [S, S, 3] float32 BGR minus (104, 117, 123).
  """
  check_bgr_uint8(image_bgr_uint8)
  plan = draw_retinaface_plan(sample, image_bgr_uint8.shape[:2], rng, image_size=image_size, min_face=min_face)
  return apply_retinaface_plan(image_bgr_uint8, sample, plan, image_size=image_size, min_face=min_face)


# --- drawing ---------------------------------------------------------------------------------------------------

def draw_retinaface_plan(sample: Sample, image_hw: tuple[int, int], rng: np.random.Generator, *,
                         image_size: int, min_face: float = 0.0) -> RetinaFacePlan:
  """Draws the crop (testing candidates against the faces), distortion, mirror and interpolation."""
  height, width = image_hw
  boxes, _, _, ignore, _ = usable_faces(sample)
  roi = _draw_crop(boxes[~ignore], width, height, rng, image_size, min_face)
  return RetinaFacePlan(roi=roi, photometric=draw_photometric(rng), mirror=bool(rng.integers(2)),
                        interpolation=INTERPOLATIONS[rng.integers(len(INTERPOLATIONS))])


def draw_photometric(rng: np.random.Generator) -> Photometric:
  """The reference's draws, in its order: the branch, then a p = 1/2 coin before each step's value."""
  def coin_then(draw):
    return draw() if rng.integers(2) else None
  brightness = lambda: float(rng.uniform(-32, 32))
  factor = lambda: float(rng.uniform(0.5, 1.5))
  hue = lambda: int(rng.integers(-18, 19))  # randint(-18, 18) includes both ends
  if rng.integers(2):  # branch A
    b, c, s, h = coin_then(brightness), coin_then(factor), coin_then(factor), coin_then(hue)
    return Photometric(True, b, c, s, h)
  b, s, h, c = coin_then(brightness), coin_then(factor), coin_then(hue), coin_then(factor)
  return Photometric(False, b, c, s, h)


def _draw_crop(anchors: np.ndarray, width: int, height: int, rng: np.random.Generator,
               image_size: int, min_face: float) -> tuple[int, int, int, int] | None:
  """The first acceptable square crop of up to CROP_TRIES random ones, or None.

  `anchors` [M, 4] float64 are the faces that can make a crop acceptable (non-ignored, non-degenerate).
  Tries are drawn and tested CROP_CHUNK at a time; the first accepted one in draw order wins, as in
  the reference's loop.
  """
  if not len(anchors):
    return None
  short = min(width, height)
  for start in range(0, CROP_TRIES, CROP_CHUNK):
    n = min(CROP_CHUNK, CROP_TRIES - start)
    side = (PRE_SCALES[rng.integers(len(PRE_SCALES), size=n)] * short).astype(np.int64)  # int(scale * short)
    # randrange(W - w), or 0 when W == w: integers(0, 1) is that 0.
    left = rng.integers(0, np.maximum(width - side, 1))
    top = rng.integers(0, np.maximum(height - side, 1))
    rois = np.stack([left, top, left + side, top + side], axis=1)  # [n, 4]
    ok = (matrix_iof(anchors, rois) >= 1).any(axis=0)
    if min_face > 0:  # FIX: the size filter can empty a crop; the reference would then reject it
      kept = centres_inside(anchors[:, None, :], rois[None].astype(np.float64))  # [M, n]
      wh = (np.minimum(anchors[:, None, 2:], rois[None, :, 2:]) -
            np.maximum(anchors[:, None, :2], rois[None, :, :2]))
      big = wh.min(axis=-1) / side[None, :] * image_size >= min_face
      ok &= (kept & big).any(axis=0)
    if ok.any():
      return tuple(int(v) for v in rois[np.argmax(ok)])
  return None


def matrix_iof(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Intersection over the area of `a` [A, 4] for each box of `b` [B, 4] -> [A, B] (areas of `a` clamped >= 1)."""
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  area_i = np.prod(rb - lt, axis=2) * (lt < rb).all(axis=2)
  area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
  return area_i / np.maximum(area_a[:, None], 1)


# --- applying --------------------------------------------------------------------------------------------------

def apply_retinaface_plan(image_bgr_uint8: np.ndarray, sample: Sample, plan: RetinaFacePlan, *,
                          image_size: int, min_face: float = 0.0) -> Augmented:
  """The pixels and targets for a drawn plan (deterministic)."""
  check_bgr_uint8(image_bgr_uint8)
  height, width = image_bgr_uint8.shape[:2]
  boxes, points, valid, ignore, dropped = usable_faces(sample)

  if plan.roi is not None:
    l, t, r, b = plan.roi
    side = r - l
    keep = centres_inside(boxes, np.array(plan.roi, np.float64))
    dropped['cropped_out'] = int((~keep).sum())
    boxes, points, valid, ignore = boxes[keep], points[keep], valid[keep], ignore[keep]
    origin = np.array([l, t], np.float64)
    boxes = np.concatenate([np.maximum(boxes[:, :2], origin), np.minimum(boxes[:, 2:], (r, b))], axis=1)
    boxes -= np.tile(origin, 2)
    # Landmarks are shifted and clipped to the crop; a face keeps its landmark label even when its
    # points were outside (reference behaviour).
    points = np.clip(points - origin, 0, side)
    pixels = image_bgr_uint8[t:b, l:r]  # a view
  else:
    side = max(width, height)
    # FIX: clip to the image (the reference passes annotated boxes through untouched here).
    boxes = np.concatenate([np.maximum(boxes[:, :2], 0), np.minimum(boxes[:, 2:], (width, height))], axis=1)
    inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    dropped['outside_image'] = int((~inside).sum())
    boxes, points, valid, ignore = boxes[inside], points[inside], valid[inside], ignore[inside]
    pixels = image_bgr_uint8

  if min_face > 0:  # FIX: the reference's filter (+1, then > 0) never removes anything
    big = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / side * image_size >= min_face
    dropped['too_small'] = int((~big).sum())
    boxes, points, valid, ignore = boxes[big], points[big], valid[big], ignore[big]

  # Pixels: distort (the crop's first copy), mirror, pad (on the left when mirrored), resize, subtract
  # the mean. The distortion must see the pixels where the reference has them: OpenCV's uint8
  # HSV -> BGR rounds the last pixels of a row (its scalar tail) differently from the rest.
  if plan.photometric is not None:
    pixels = distort(pixels, plan.photometric)
  if plan.mirror:
    pixels = cv2.flip(pixels, 1)
    boxes, points = mirror_faces(boxes, points, side, FIVE_POINTS.flip_order)
  if plan.roi is None:
    pad_x = side - width
    pixels = cv2.copyMakeBorder(pixels, 0, side - height, pad_x if plan.mirror else 0,
                                0 if plan.mirror else pad_x, cv2.BORDER_CONSTANT, value=MEAN_BGR)
  pixels = cv2.resize(pixels, (image_size, image_size), interpolation=plan.interpolation)
  out = cv2.subtract(pixels, _MEAN_SCALAR, dtype=cv2.CV_32F)  # exact: small integers

  points[~valid] = 0
  return Augmented(image=out, boxes=(boxes / side).astype(np.float32),
                   landmarks=(points / side).astype(np.float32), landmark_valid=valid, ignore=ignore,
                   dropped=dropped, crop_failed=plan.roi is None)


def distort(image: np.ndarray, p: Photometric) -> np.ndarray:
  """The reference `_distort` on a uint8 BGR image (a view is fine); returns a new array.

  Brightness and contrast are lookup tables (composed when both come before the HSV steps),
  saturation and hue one three-channel table on the HSV image: byte for byte what the reference's
  float `_convert` (clip to [0, 255], truncate) and `(H + d) % 180` give.
  """
  lut = None
  if p.brightness is not None:
    lut = _affine_lut(1.0, p.brightness)
  if p.contrast_first and p.contrast is not None:
    contrast = _affine_lut(p.contrast, 0.0)
    lut = contrast if lut is None else contrast[lut]
  if lut is not None:
    image = cv2.LUT(image, lut)
  hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
  if p.saturation is not None or p.hue is not None:
    hue = _IDENTITY_LUT if p.hue is None else ((np.arange(256) + p.hue) % 180).astype(np.uint8)
    sat = _IDENTITY_LUT if p.saturation is None else _affine_lut(p.saturation, 0.0)
    hsv = cv2.LUT(hsv, np.stack([hue, sat, _IDENTITY_LUT], axis=-1)[:, None, :], dst=hsv)
  image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
  if not p.contrast_first and p.contrast is not None:
    image = cv2.LUT(image, _affine_lut(p.contrast, 0.0), dst=image)
  return image


def _affine_lut(alpha: float, beta: float) -> np.ndarray:
  """uint8 table of trunc(clip(x * alpha + beta, 0, 255)), in float64 like the reference's `_convert`."""
  return np.clip(np.arange(256, dtype=np.float64) * alpha + beta, 0, 255).astype(np.uint8)
