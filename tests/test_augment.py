"""Training augmentation (jaxface.retinaface.augment / jaxface.scrfd.augment), REFERENCE.md sections 1.6 and 2.8.

Three kinds of checks:
  * against the reference re-statements in tests/reference_augment.py, fed scripted draws that
    spell out one of jaxface's plans: same pixels (bit for bit for RetinaFace and for SCRFD's
    photometric distortion), same boxes and landmarks;
  * properties: mirror twice is the identity and swaps eyes and mouth corners, boxes stay inside
    the image, landmarks stay on their pixels (coloured dots drawn on a synthetic image), the
    bug fixes (degenerate boxes, minimum face size, landmark validity, crop fallback);
  * randomness: a pure function of (seed, epoch, index), also in another process; the draws
    cover every branch of the reference.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest

import reference_augment as ref
from jaxface.data import transforms
from jaxface.keypoints import FIVE_POINTS
from jaxface.retinaface import augment as ar
from jaxface.scrfd import augment as asc
from jaxface.data.rng import sample_rng
from jaxface.data.sample import Sample

MEAN = np.array(ar.MEAN_BGR, np.float32)
# Pure colours survive OpenCV's uint8 HSV round trip; one per landmark index.
PALETTE = np.array([(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255)], np.uint8)


def make_sample(boxes, landmarks=None, valid=None, ignore=None) -> Sample:
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  n = len(boxes)
  if landmarks is None:  # a plausible face: eyes, nose, mouth corners inside the box
    x1, y1, x2, y2 = (boxes[:, i:i + 1] for i in range(4))
    fx = np.array([0.3, 0.7, 0.5, 0.35, 0.65])[None]
    fy = np.array([0.35, 0.35, 0.55, 0.75, 0.75])[None]
    landmarks = np.stack([x1 + fx * (x2 - x1), y1 + fy * (y2 - y1)], axis=-1)
  valid = np.ones(n, bool) if valid is None else valid
  ignore = np.zeros(n, bool) if ignore is None else ignore
  return Sample('', boxes, landmarks, valid, ignore)


def random_image(rng, h, w):
  """Smooth random colours (so that interpolation choices make a difference) plus noise."""
  small = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3), dtype=np.uint8)
  img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
  return np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)


def random_faces(rng, h, w, n, lo=8, hi=60):
  wh = rng.uniform(lo, hi, (n, 2))
  xy = rng.uniform(0, 1, (n, 2)) * (np.array([w, h]) - wh)
  return np.concatenate([xy, xy + wh], axis=1)


def dotted_image(h, w, faces_xy, radius):
  """A dark image with a dot of PALETTE[k] at landmark k of every face; the landmarks ([N, 5, 2], at
  pixel centres) and face boxes around them."""
  img = np.full((h, w, 3), 40, np.uint8)
  pts = []
  for cx, cy in faces_xy:
    offs = np.array([(-12, -8), (12, -8), (0, 2), (-10, 12), (10, 12)]) * radius / 4
    p = np.round(np.array([cx, cy]) + offs).astype(int)
    for k, (x, y) in enumerate(p):
      cv2.circle(img, (int(x), int(y)), radius, tuple(int(c) for c in PALETTE[k]), -1)
    pts.append(p + 0.5)
  pts = np.array(pts, np.float32)
  pad = 2 * radius
  boxes = np.concatenate([pts.min(1) - pad, pts.max(1) + pad], axis=1)
  return img, boxes, pts


def _check_targets(out, image_size):
  n = len(out.boxes)
  assert out.image.shape == (image_size, image_size, 3) and out.image.dtype == np.float32
  assert out.boxes.shape == (n, 4) and out.boxes.dtype == np.float32
  assert out.landmarks.shape == (n, 5, 2) and out.landmarks.dtype == np.float32
  assert out.landmark_valid.shape == (n,) and out.landmark_valid.dtype == bool
  assert out.ignore.shape == (n,) and out.ignore.dtype == bool
  assert np.all(out.boxes >= 0) and np.all(out.boxes <= 1), out.boxes
  assert np.all(out.boxes[:, 2:] > out.boxes[:, :2]), out.boxes
  assert np.all(out.landmarks[~out.landmark_valid] == 0)


# --- scripted draws for the reference re-statements ------------------------------------------------------------

class Script:
  """A stand-in for `random` / `np.random` that returns prepared values and checks the call order."""

  def __init__(self, entries):
    self.entries = list(entries)

  def _next(self, method):
    assert self.entries, f'reference drew more than scripted ({method})'
    name, value = self.entries.pop(0)
    assert name == method, f'reference called {method}, script expected {name}'
    return value

  def choice(self, seq, p=None):
    return self._next('choice')

  def randrange(self, n):
    v = self._next('randrange')
    assert 0 <= v < n
    return v

  def randint(self, a, b=None):
    v = self._next('randint')
    if b is not None and not isinstance(self, NumpyScript):
      assert a <= v <= b  # Python's randint includes b
    elif b is not None:
      assert a <= v < b   # numpy's excludes it
    else:
      assert 0 <= v < a
    return v

  def uniform(self, a, b):
    v = self._next('uniform')
    assert a <= v <= b
    return v

  def permutation(self, n):
    return np.array(self._next('permutation'))


class NumpyScript(Script):
  pass


def _scale_for(side, short, scales):
  (s,) = [s for s in scales if int(s * short) == side]
  return s


def retinaface_script(plan, width, height):
  short = min(width, height)
  if plan.roi is None:  # scripted failures: the smallest crop at the top-left corner, 250 times
    side = int(0.3 * short)
    tries = [(0.3, 0, 0)] * 250
  else:
    side = plan.roi[2] - plan.roi[0]
    tries = [(_scale_for(side, short, ref.RETINAFACE_SCALES), plan.roi[0], plan.roi[1])]
  e = []
  for s, l, t in tries:
    e.append(('choice', s))
    if width != side:
      e.append(('randrange', l))
    if height != side:
      e.append(('randrange', t))
  e += retinaface_distort_entries(plan.photometric)
  e.append(('randrange', int(plan.mirror)))
  e.append(('randrange', ar.INTERPOLATIONS.index(plan.interpolation)))
  return Script(e)


def retinaface_distort_entries(p):
  steps = ([('uniform', p.brightness), ('uniform', p.contrast), ('uniform', p.saturation), ('randint', p.hue)]
           if p.contrast_first else
           [('uniform', p.brightness), ('uniform', p.saturation), ('randint', p.hue), ('uniform', p.contrast)])
  e = [('randrange', int(p.contrast_first))]
  for method, value in steps:
    e.append(('randrange', int(value is not None)))
    if value is not None:
      e.append((method, value))
  return e


def scrfd_photometric_script(p):
  e = [('randint', int(p.brightness is not None))] + ([('uniform', p.brightness)] if p.brightness is not None else [])
  e.append(('randint', int(p.contrast_first)))
  steps = [('uniform', p.saturation), ('uniform', p.hue)]
  steps = [('uniform', p.contrast)] + steps if p.contrast_first else steps + [('uniform', p.contrast)]
  steps.append(('permutation', p.channels))
  for method, value in steps:
    e.append(('randint', int(value is not None)))
    if value is not None:
      e.append((method, value))
  return e


def scrfd_geometry_script(plan, width, height):
  short = min(width, height)
  side = plan.patch[2] - plan.patch[0]
  e = [('choice', _scale_for(side, short, ref.SCRFD_SCALES))]
  if width != side:
    e.append(('randint', plan.patch[0]))
  if height != side:
    e.append(('randint', plan.patch[1]))
  return e + [('choice', plan.flip)]


# --- RetinaFace: the reference, draw for draw ------------------------------------------------------------------

@pytest.mark.parametrize('shape', [(120, 160), (150, 100), (96, 96)])
def test_retinaface_matches_reference_preproc(shape):
  """Scripted to one of our plans, the reference's preproc gives the same bytes and targets."""
  h, w = shape
  size = 64
  fallbacks = 0
  for seed in range(12):
    rng = np.random.default_rng(seed)
    img = random_image(rng, h, w)
    n = int(rng.integers(1, 6))
    boxes = random_faces(rng, h, w, n, 6, min(h, w) * 0.5)
    valid = rng.random(n) < 0.7
    if seed % 4 == 3:  # only a face under 1 px^2, which `matrix_iof` never finds inside: pad to square
      boxes, valid = np.array([[10.2, 10.2, 10.7, 10.7]]), valid[:1]
    sample = make_sample(boxes, valid=valid)
    sample.landmarks[~valid] = 0
    plan = ar.draw_retinaface_plan(sample, (h, w), sample_rng(seed, 0, 0), image_size=size)
    fallbacks += plan.roi is None
    ours = ar.apply_retinaface_plan(img, sample, plan, image_size=size)
    targets = ref.retinaface_targets(sample.boxes, sample.landmarks, valid)
    rnd = retinaface_script(plan, w, h)
    ref_img, ref_t = ref.retinaface_preproc(img, targets, size, rnd=rnd)
    assert not rnd.entries
    np.testing.assert_array_equal(ours.image, ref_img.transpose(1, 2, 0))
    np.testing.assert_allclose(ours.boxes, ref_t[:, :4], atol=1e-6)
    np.testing.assert_array_equal(ours.landmark_valid, ref_t[:, 14] > 0)
    lv = ours.landmark_valid
    np.testing.assert_allclose(ours.landmarks[lv].reshape(-1, 10), ref_t[lv, 4:14], atol=1e-6)
  assert fallbacks >= 3


def test_retinaface_distortion_is_byte_exact():
  """Every branch and step combination against the reference's float `_convert` and `% 180`."""
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
  seen = set()
  for i in range(120):
    p = ar.draw_photometric(np.random.default_rng(i))
    seen.add((p.contrast_first, p.brightness is None, p.contrast is None, p.saturation is None, p.hue is None))
    view = img[3:37, 5:45]  # a view, as the crop is
    rnd = Script(retinaface_distort_entries(p))
    np.testing.assert_array_equal(ar.distort(view, p), ref.retinaface_distort(view, rnd))
    assert not rnd.entries
  assert len(seen) == 32  # 2 branches x 2^4 step subsets


# --- RetinaFace: properties ------------------------------------------------------------------------------------

def test_mirror_faces_twice_is_identity_and_swaps_sides():
  rng = np.random.default_rng(1)
  boxes = random_faces(rng, 100, 200, 7)
  points = rng.uniform(0, 200, (7, 5, 2))
  b1, p1 = transforms.mirror_faces(boxes, points, 200, FIVE_POINTS.flip_order)
  # x' = W - x, x1 and x2 trade places, eyes 0 <-> 1 and mouth corners 3 <-> 4 trade places.
  np.testing.assert_allclose(b1, np.stack([200 - boxes[:, 2], boxes[:, 1], 200 - boxes[:, 0], boxes[:, 3]], 1))
  for k, src in enumerate([1, 0, 2, 4, 3]):
    np.testing.assert_allclose(p1[:, k, 0], 200 - points[:, src, 0])
    np.testing.assert_allclose(p1[:, k, 1], points[:, src, 1])
  b2, p2 = transforms.mirror_faces(b1, p1, 200, FIVE_POINTS.flip_order)
  np.testing.assert_allclose(b2, boxes, atol=1e-12)
  np.testing.assert_allclose(p2, points, atol=1e-12)


def test_mirror_through_the_pipeline():
  """Same plan with and without mirror, crop side = output side (no resampling): exact flip."""
  rng = np.random.default_rng(2)
  img = random_image(rng, 90, 120)
  sample = make_sample(random_faces(rng, 90, 120, 5, 10, 30))
  plan = ar.RetinaFacePlan(roi=(20, 10, 100, 90), photometric=ar.draw_photometric(rng), mirror=False,
                           interpolation=cv2.INTER_CUBIC)
  a = ar.apply_retinaface_plan(img, sample, plan, image_size=80)
  b = ar.apply_retinaface_plan(img, sample, dataclasses.replace(plan, mirror=True), image_size=80)
  np.testing.assert_array_equal(b.image, a.image[:, ::-1])
  np.testing.assert_allclose(b.boxes[:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [1, 0, 1, 0], a.boxes, atol=1e-6)
  np.testing.assert_allclose(b.landmarks[:, [1, 0, 2, 4, 3], 0], 1 - a.landmarks[:, :, 0], atol=1e-6)
  np.testing.assert_allclose(b.landmarks[:, [1, 0, 2, 4, 3], 1], a.landmarks[:, :, 1], atol=1e-6)


def test_outputs_shapes_and_boxes_inside_the_image():
  size = 48
  for seed in range(60):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(30, 120, 2))
    img = random_image(rng, h, w)
    boxes = random_faces(rng, h, w, int(rng.integers(1, 8)), 2, min(h, w) * 0.8)
    boxes += rng.normal(0, 4, boxes.shape)  # some reach outside the image, as real annotations do
    before = img.copy()
    out = ar.retinaface_augment(img, make_sample(boxes), sample_rng(seed, 1, 2), image_size=size)
    np.testing.assert_array_equal(img, before)  # the caller's image is never written to
    _check_targets(out, size)
    pixels = out.image + MEAN
    assert np.all(pixels == np.round(pixels)) and pixels.min() >= 0 and pixels.max() <= 255
    assert set(out.dropped) == {'degenerate', 'cropped_out', 'too_small', 'outside_image'}


@pytest.mark.parametrize('fallback', [False, True])
def test_landmarks_stay_on_their_pixels(fallback):
  """Coloured dots at the landmarks: after crop, mirror and a nearest-neighbour resize each kept
  landmark lands on a pixel of its dot's colour (the mirrored side's colour after a mirror)."""
  size = 200
  h, w = 300, 400
  centres = [(70, 70), (200, 80), (330, 70), (70, 220), (200, 210), (330, 230)]
  img, boxes, points = dotted_image(h, w, centres, radius=4)
  if fallback:  # plus a face too wide for any crop: the pad-to-square path
    boxes = np.concatenate([boxes, [[1, 1, w - 1, 150]]])
    points = np.concatenate([points, points[:1]])
    sample = make_sample(boxes, points, ignore=np.arange(7) < 6)  # ignored faces never make a crop acceptable
  else:
    sample = make_sample(boxes, points)
  checked = 0
  for seed in range(16):
    plan = ar.draw_retinaface_plan(sample, (h, w), sample_rng(seed, 0, 0), image_size=size)
    assert (plan.roi is None) == fallback
    plan = dataclasses.replace(plan, photometric=None, interpolation=cv2.INTER_NEAREST)
    out = ar.apply_retinaface_plan(img, sample, plan, image_size=size)
    pixels = (out.image + MEAN).astype(np.uint8)
    colours = PALETTE[list(FIVE_POINTS.flip_order)] if plan.mirror else PALETTE
    for face in range(len(out.boxes)):
      for k in range(5):
        x, y = out.landmarks[face, k]
        if not (0 < x < 1 and 0 < y < 1):  # clipped to the crop border: no dot there
          continue
        px, py = min(int(x * size), size - 1), min(int(y * size), size - 1)
        np.testing.assert_array_equal(pixels[py, px], colours[k], err_msg=f'seed {seed} face {face} point {k}')
        checked += 1
  assert checked > 100


def test_degenerate_boxes_are_dropped_and_counted():
  rng = np.random.default_rng(3)
  img = random_image(rng, 80, 100)
  boxes = [[10, 10, 40, 40], [50, 20, 50, 30], [60, 30, 70, 30], [20, 50, 15, 60], [np.nan, 1, 5, 5]]
  for fn in (ar.retinaface_augment, asc.scrfd_augment):
    for seed in range(5):
      out = fn(img, make_sample(boxes), sample_rng(seed, 0, 0), image_size=32)
      assert out.dropped['degenerate'] == 4
      assert len(out.boxes) == 1
      _check_targets(out, 32)


def test_min_face_is_off_by_default_and_works_when_enabled():
  rng = np.random.default_rng(4)
  img = random_image(rng, 200, 200)
  tiny = [[100, 100, 103, 103], [40, 150, 42, 160], [150, 40, 154, 43]]  # 3 px, 2 px, 3 px
  big = [[60, 60, 120, 120]]
  sample = make_sample(tiny + big)
  for fn in (ar.retinaface_augment, asc.scrfd_augment):
    kept_tiny = 0
    for seed in range(20):
      out = fn(img, sample, sample_rng(seed, 0, 0), image_size=100)
      kept_tiny += int((np.minimum(*(out.boxes[:, 2:] - out.boxes[:, :2]).T) * 100 < 4).sum())
      assert out.dropped['too_small'] == 0
      out = fn(img, sample, sample_rng(seed, 0, 0), image_size=100, min_face=8)
      sides = np.minimum(*(out.boxes[:, 2:] - out.boxes[:, :2]).T) * 100
      assert len(out.boxes) >= 1 and np.all(sides >= 8 - 1e-3), (fn.__name__, seed, sides)
      assert out.dropped['too_small'] + out.dropped['cropped_out'] + len(out.boxes) == 4
    assert kept_tiny > 0, fn.__name__


def test_faces_without_landmarks_stay_without():
  rng = np.random.default_rng(5)
  img = random_image(rng, 120, 160)
  boxes = random_faces(rng, 120, 160, 6, 20, 40)
  valid = np.array([True, False, True, False, False, True])
  sample = make_sample(boxes, valid=valid)
  sample.landmarks[~valid] = -1  # whatever a reader left there must not leak out
  mirrored = set()
  for draw, apply in ((ar.draw_retinaface_plan, ar.apply_retinaface_plan), (asc.draw_scrfd_plan, asc.apply_scrfd_plan)):
    for seed in range(20):
      plan = draw(sample, (120, 160), sample_rng(seed, 0, 0), image_size=64)
      out = apply(img, sample, plan, image_size=64)
      roi = getattr(plan, 'roi', getattr(plan, 'patch', None))
      mirrored.add(getattr(plan, 'mirror', getattr(plan, 'flip', None)))
      centres = (boxes[:, :2] + boxes[:, 2:]) / 2
      kept = np.ones(6, bool) if roi is None else np.all((centres > roi[:2]) & (centres < roi[2:]), axis=1)
      np.testing.assert_array_equal(out.landmark_valid, valid[kept])  # faces keep their input order
      assert np.all(out.landmarks[~out.landmark_valid] == 0)
      assert np.all(out.landmarks[out.landmark_valid] >= 0) and np.all(out.landmarks[out.landmark_valid] <= 1)
  assert mirrored == {True, False}


def test_a_centre_on_the_crop_border_is_dropped():
  """The centre test is strict in both references: a centre exactly on the crop's edge is out."""
  img = random_image(np.random.default_rng(10), 80, 80)
  boxes = [[20, 20, 40, 40],   # inside
           [5, 30, 15, 40],    # centre x = 10: on the left edge
           [30, 55, 40, 65],   # centre y = 60: on the bottom edge
           [6, 30, 16, 40]]    # centre x = 11: just inside
  sample = make_sample(boxes)
  out = ar.apply_retinaface_plan(img, sample, ar.RetinaFacePlan((10, 10, 60, 60), None, False, cv2.INTER_LINEAR),
                                 image_size=50)
  np.testing.assert_allclose(out.boxes * 50, [[10, 10, 30, 30], [0, 20, 6, 30]])
  assert out.dropped['cropped_out'] == 2
  out = asc.apply_scrfd_plan(img, sample, asc.ScrfdPlan((10, 10, 60, 60), False, None), image_size=50)
  np.testing.assert_allclose(out.boxes * 50, [[10, 10, 30, 30], [0, 20, 6, 30]], atol=1e-5)
  assert out.dropped['cropped_out'] == 2


def test_crop_fallback_pads_to_square_with_the_mean():
  """No crop can hold a face wider than the short side: pad bottom (and right, or left when
  mirrored) with the mean, which is 0 after the subtraction."""
  rng = np.random.default_rng(6)
  h, w = 60, 120
  img = random_image(rng, h, w)
  sample = make_sample([[2, 5, 118, 50]])
  plan = ar.draw_retinaface_plan(sample, (h, w), sample_rng(0, 0, 0), image_size=120)
  assert plan.roi is None
  for mirror in (False, True):
    out = ar.apply_retinaface_plan(img, sample, dataclasses.replace(plan, mirror=mirror,
                                                                   interpolation=cv2.INTER_NEAREST), image_size=120)
    assert out.crop_failed
    assert np.all(out.image[62:] == 0)  # the padded rows (the image fills rows 0..59)
    assert np.any(out.image[:58] != 0)
    expected = np.array([2, 5, 118, 50]) / 120
    if mirror:
      expected = np.array([1 - expected[2], expected[1], 1 - expected[0], expected[3]])
    np.testing.assert_allclose(out.boxes[0], expected, atol=1e-6)


def test_retinaface_draws_cover_the_reference_choices():
  """Over 200 samples: both branches, all five interpolations, all five crop scales, both mirrors;
  offsets follow randrange (0 <= l < W - w, l = 0 when W == w)."""
  h, w = 100, 160
  grid = [(x, y, x + 4, y + 4) for x in range(2, 156, 8) for y in range(2, 96, 8)]  # faces everywhere
  sample = make_sample(grid)
  plans = [ar.draw_retinaface_plan(sample, (h, w), sample_rng(9, 0, i), image_size=64) for i in range(200)]
  assert {p.photometric.contrast_first for p in plans} == {True, False}
  assert {p.interpolation for p in plans} == set(ar.INTERPOLATIONS)
  assert {p.mirror for p in plans} == {True, False}
  sides = {p.roi[2] - p.roi[0] for p in plans}
  assert sides == {int(s * 100) for s in ar.PRE_SCALES}
  for p in plans:
    side = p.roi[2] - p.roi[0]
    assert 0 <= p.roi[0] < w - side
    assert p.roi[1] == 0 if side == h else 0 <= p.roi[1] < h - side
  hues = [p.photometric.hue for p in plans if p.photometric.hue is not None]
  assert min(hues) >= -18 and max(hues) <= 18
  brightness = [p.photometric.brightness for p in plans if p.photometric.brightness is not None]
  assert min(brightness) >= -32 and max(brightness) <= 32


def test_same_sample_in_another_process():
  code = 'import sys; sys.path[:0] = [".", "tests"]\nimport test_augment as t\nprint(t._digest(7, 3, 11))\n'
  root = pathlib.Path(__file__).resolve().parents[1]
  other = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True, check=True)
  assert other.stdout.strip() == _digest(7, 3, 11)
  assert _digest(7, 3, 11) != _digest(7, 3, 12)


def _digest(seed, epoch, index):
  """sha256 of both augmentations of a fixed synthetic sample, drawn with sample_rng(seed, epoch, index)."""
  rng = np.random.default_rng(123)
  img = random_image(rng, 90, 140)
  sample = make_sample(random_faces(rng, 90, 140, 6, 8, 40))
  h = hashlib.sha256()
  for fn in (ar.retinaface_augment, asc.scrfd_augment):
    out = fn(img, sample, sample_rng(seed, epoch, index), image_size=64)
    for a in (out.image, out.boxes, out.landmarks, out.landmark_valid, out.ignore):
      h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def test_rejects_images_that_are_not_bgr_uint8():
  sample = make_sample([[1, 1, 5, 5]])
  for bad in (np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3), np.uint16)):
    with pytest.raises(ValueError, match='uint8 BGR'):
      ar.retinaface_augment(bad, sample, sample_rng(0, 0, 0), image_size=8)
    with pytest.raises(ValueError, match='uint8 BGR'):
      asc.scrfd_augment(bad, sample, sample_rng(0, 0, 0), image_size=8)


# --- SCRFD -----------------------------------------------------------------------------------------------------

def test_scrfd_geometry_matches_reference():
  """Crop (grey fill, negative offsets), float resize, flip: same boxes and landmarks; pixels within
  one grey level of the reference's float resize (jaxface resizes the uint8 crop)."""
  size = 64
  for seed in range(16):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(40, 120, 2))
    img = random_image(rng, h, w)
    n = int(rng.integers(1, 6))
    ignore = np.arange(n) == n - 1 if n > 1 else np.zeros(1, bool)
    sample = make_sample(random_faces(rng, h, w, n, 4, min(h, w) * 0.4), ignore=ignore)
    plan = asc.draw_scrfd_plan(sample, (h, w), sample_rng(seed, 0, 0), image_size=size)
    ours = asc.apply_scrfd_plan(img, sample, dataclasses.replace(plan, photometric=None), image_size=size)
    rnd = NumpyScript(scrfd_geometry_script(plan, w, h))
    gt, ign = sample.boxes[~ignore], sample.boxes[ignore]
    r_img, r_boxes, r_kps, r_ign, _ = (lambda *a: a)(*_scrfd_reference_geometry(img, gt, sample.landmarks[~ignore],
                                                                                ign, size, rnd))
    assert not rnd.entries
    np.testing.assert_allclose(ours.boxes[~ours.ignore] * size, r_boxes, atol=1e-4)
    np.testing.assert_allclose(ours.boxes[ours.ignore] * size, r_ign, atol=1e-4)
    np.testing.assert_allclose(ours.landmarks[~ours.ignore] * size, r_kps, atol=1e-4)
    bgr = (ours.image * 128 + 127.5)[..., ::-1]
    assert np.abs(bgr - r_img).max() <= 1.0


def _scrfd_reference_geometry(img, boxes, kps, ignore_boxes, size, rnd):
  f = img.astype(np.float32)
  f, boxes, kps, ign, kept = ref.scrfd_square_crop(f, boxes, kps, ignore_boxes, rnd)
  f, boxes, kps, ign = ref.scrfd_resize(f, boxes, kps, ign, size)
  f, boxes, kps, ign = ref.scrfd_flip(f, boxes, kps, ign, rnd)
  return f, boxes, kps, ign, kept


def test_scrfd_photometric_and_normalisation_are_bit_exact():
  rng = np.random.default_rng(7)
  base = rng.uniform(0, 255, (32, 40, 3)).astype(np.float32)
  base[:4] = rng.uniform(0, 20, (4, 40, 3))  # dark pixels, pushed below 0 by the brightness step
  seen = set()
  for i in range(80):
    p = asc.draw_scrfd_photometric(np.random.default_rng(i))
    seen.add((p.contrast_first, p.channels is None, p.hue is None))
    ours = asc.normalize(asc.distort_float(base.copy(), p), p.channels or (0, 1, 2))
    rnd = NumpyScript(scrfd_photometric_script(p))
    theirs = ref.scrfd_normalize(ref.scrfd_photometric(base.copy(), rnd))
    assert not rnd.entries
    np.testing.assert_array_equal(ours, theirs)
  assert len(seen) == 8


def test_scrfd_outputs_and_grey_fill():
  size = 48
  fills = 0
  for seed in range(40):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(30, 100, 2))
    img = random_image(rng, h, w)
    sample = make_sample(random_faces(rng, h, w, int(rng.integers(1, 6)), 3, min(h, w) * 0.6))
    plan = asc.draw_scrfd_plan(sample, (h, w), sample_rng(seed, 0, 0), image_size=size)
    out = asc.apply_scrfd_plan(img, sample, dataclasses.replace(plan, photometric=None, flip=False),
                               image_size=size)
    _check_targets(out, size)
    l, t, r, b = plan.patch
    if l < -3 and r - l > 8:  # a crop reaching left of the image: grey columns on the left
      fills += 1
      cols = int(-l * size / (r - l)) - 1
      np.testing.assert_array_equal(out.image[:, :cols], np.float32(0.5 / 128))
    full = asc.scrfd_augment(img, sample, sample_rng(seed, 0, 0), image_size=size)
    _check_targets(full, size)
  assert fills > 3


def test_scrfd_landmarks_stay_on_their_pixels():
  size = 200
  h, w = 300, 400
  centres = [(70, 70), (200, 80), (330, 70), (70, 220), (200, 210), (330, 230)]
  img, boxes, points = dotted_image(h, w, centres, radius=7)
  sample = make_sample(boxes, points)
  checked = 0
  for seed in range(16):
    plan = asc.draw_scrfd_plan(sample, (h, w), sample_rng(seed, 0, 0), image_size=size)
    out = asc.apply_scrfd_plan(img, sample, dataclasses.replace(plan, photometric=None), image_size=size)
    pixels = np.round(out.image * 128 + 127.5)[..., ::-1].astype(np.uint8)
    colours = PALETTE[list(FIVE_POINTS.flip_order)] if plan.flip else PALETTE
    for face in range(len(out.boxes)):
      for k in range(5):
        x, y = out.landmarks[face, k]
        if not (0 < x < 1 and 0 < y < 1):
          continue
        px, py = min(int(x * size), size - 1), min(int(y * size), size - 1)
        np.testing.assert_array_equal(pixels[py, px], colours[k], err_msg=f'seed {seed} face {face} point {k}')
        checked += 1
  assert checked > 100


def test_scrfd_fallback_when_no_crop_can_keep_a_face():
  """Only ignore boxes: the reference would loop forever; here the image goes on a grey square."""
  rng = np.random.default_rng(8)
  img = random_image(rng, 50, 80)
  sample = make_sample([[10, 10, 30, 30]], ignore=[True])
  out = asc.scrfd_augment(img, sample, sample_rng(0, 0, 0), image_size=80)
  assert out.crop_failed and out.ignore.tolist() == [True]
  _check_targets(out, 80)


def test_scrfd_draws_cover_the_reference_choices():
  h, w = 100, 160
  sample = make_sample([(x, y, x + 4, y + 4) for x in range(2, 156, 8) for y in range(2, 96, 8)])
  plans = [asc.draw_scrfd_plan(sample, (h, w), sample_rng(9, 0, i), image_size=64) for i in range(200)]
  assert {p.patch[2] - p.patch[0] for p in plans} == {int(s * 100) for s in asc.CROP_SCALES}
  for p in plans:
    side = p.patch[2] - p.patch[0]
    lo, hi = (0, w - side) if w > side else (w - side, 0)
    assert lo <= p.patch[0] < hi or (w == side and p.patch[0] == 0)
  assert {p.flip for p in plans} == {True, False}
  assert {p.photometric.contrast_first for p in plans} == {True, False}
  perms = {p.photometric.channels for p in plans}
  assert None in perms and len(perms) == 7  # skipped, or any of the 6 permutations


def test_an_image_without_faces():
  """The reference asserts on it; here it is the no-crop path with empty targets."""
  img = random_image(np.random.default_rng(11), 50, 70)
  for fn in (ar.retinaface_augment, asc.scrfd_augment):
    out = fn(img, Sample.empty(), sample_rng(0, 0, 0), image_size=32)
    assert out.crop_failed and len(out.boxes) == 0
    _check_targets(out, 32)
