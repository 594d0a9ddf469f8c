"""The built-in synthetic face dataset (jaxface.data.synthetic).

The draw-and-check test renders images without blur and camera effects and reads the pixel under
every landmark that shows: it must have the colour the renderer painted for that feature (pupil or
sunglass lens, nose tip, lip), and the eyes and nose must sit at the centre of their disc, so a
landmark 1.5 px off, mirrored, or rotated the wrong way fails. The other tests cover the pixel
convention, determinism, shapes, box and landmark consistency, sizes, distractors, the
difficulty settings and the WIDER ground truth (scored by the evaluator).
"""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from jaxface.data import synthetic, synthetic_draw
from jaxface.data.sample import Sample
from jaxface.data.synthetic import SyntheticFaces, val_ground_truth


@pytest.fixture(scope='module')
def plain_renders():
  """40 val images drawn without blur and camera effects, with everything the renderer knows."""
  ds = SyntheticFaces('val', 40, seed=7, effects=False)
  return [ds.render(i) for i in range(len(ds))]


@pytest.fixture(scope='module')
def layouts():
  """Annotations (no pixels) of 300 train images."""
  ds = SyntheticFaces('train', 300, seed=1)
  return [ds.render(i, pixels=False) for i in range(len(ds))]


def _same_sample(a: Sample, b: Sample) -> bool:
  return (np.array_equal(a.boxes, b.boxes) and np.array_equal(a.landmarks, b.landmarks)
          and np.array_equal(a.landmark_valid, b.landmark_valid) and np.array_equal(a.ignore, b.ignore))


def test_deterministic_per_seed_split_and_index():
  ds = SyntheticFaces('train', 6, seed=3)
  img, s = ds[4]
  _ = ds[1]                                     # no state carried from one image to the next
  img2, s2 = SyntheticFaces('train', 6, seed=3)[4]
  assert np.array_equal(img, img2) and _same_sample(s, s2)
  for other in (SyntheticFaces('val', 6, seed=3), SyntheticFaces('train', 6, seed=4)):
    img3, s3 = other[4]
    assert img3.shape != img.shape or not np.array_equal(img3, img)
    assert not _same_sample(s, s3)
  assert not np.array_equal(ds[0][0], ds[1][0])


def test_shapes_and_dtypes():
  ds = SyntheticFaces('val', 8, seed=0)
  assert len(ds) == 8
  for i in range(len(ds)):
    img, s = ds[i]
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert synthetic.DEFAULT_SIDES[0] <= min(img.shape[:2]) <= max(img.shape[:2]) <= synthetic.DEFAULT_SIDES[1]
    n = len(s)
    assert s.boxes.shape == (n, 4) and s.boxes.dtype == np.float32
    assert s.landmarks.shape == (n, 5, 2) and s.landmarks.dtype == np.float32
    assert s.landmark_valid.shape == (n,) and s.landmark_valid.dtype == bool
    assert s.ignore.shape == (n,) and s.ignore.dtype == bool
    assert s.image_path == '' and s.source == f'synthetic:val:0:{i}'
  fixed = SyntheticFaces('train', 2, image_size=(480, 640), max_faces=5)
  assert fixed[1][0].shape == (480, 640, 3)
  assert all(len(fixed.render(i, pixels=False).sample) <= 5 for i in range(2))
  with pytest.raises(IndexError):
    ds[8]
  with pytest.raises(ValueError, match='split'):
    SyntheticFaces('test', 1)


def test_boxes_and_landmarks_are_consistent(layouts):
  checked = invalid = 0
  for r in layouts:
    s, h, w = r.sample, *r.occupancy.shape
    if not len(s):
      continue
    b = s.boxes
    assert np.all(b >= 0) and np.all(b[:, [0, 2]] <= w) and np.all(b[:, [1, 3]] <= h)
    assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
    lm, v = r.all_landmarks, s.landmark_valid
    inside = (lm[..., 0] >= 0) & (lm[..., 0] < w) & (lm[..., 1] >= 0) & (lm[..., 1] < h)
    assert np.array_equal(v, inside.all(-1))      # valid = all five inside the image
    assert np.array_equal(s.landmarks[v], lm[v]) and np.all(s.landmarks[~v] == 0)
    invalid += int((~v).sum())
    assert np.all(lm[v, 0, 0] < lm[v, 1, 0]) and np.all(lm[v, 3, 0] < lm[v, 4, 0])   # image-left first
    # Faces whose box is not clipped: every landmark inside its box, eyes above the nose tip,
    # nose tip above the mouth corners (faces are rotated by at most 30 degrees).
    unclipped = (b[:, 0] > 0) & (b[:, 1] > 0) & (b[:, 2] < w) & (b[:, 3] < h)
    for k in np.flatnonzero(unclipped):
      assert np.all((lm[k] >= b[k, :2]) & (lm[k] <= b[k, 2:])), (k, lm[k], b[k])
      centre_eyes, nose, centre_mouth = lm[k, :2].mean(0), lm[k, 2], lm[k, 3:].mean(0)
      assert centre_eyes[1] < nose[1] < centre_mouth[1]
      checked += 1
    assert np.array_equal(s.ignore, r.visible < synthetic.IGNORE_BELOW_VISIBLE)
    assert np.all(r.visible >= synthetic.DROP_BELOW_VISIBLE)
  assert checked > 500 and invalid > 10


def test_box_is_the_head_ellipse(plain_renders):
  """The box is the tight box of the drawn head (forehead to chin, cheek to cheek), to a pixel."""
  checked = 0
  for r in plain_renders:
    h, w = r.occupancy.shape
    for k, box in enumerate(r.sample.boxes):
      if r.visible[k] < 0.999 or box[3] - box[1] < 30 or box[0] <= 0 or box[1] <= 0 or box[2] >= w or box[3] >= h:
        continue
      ys, xs = np.nonzero(r.occupancy == k + 1)
      drawn = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
      np.testing.assert_allclose(drawn, box, atol=1.5)
      checked += 1
  assert checked >= 10


def test_face_sizes_span_8_to_400(layouts):
  heights = np.concatenate([r.sample.boxes[:, 3] - r.sample.boxes[:, 1] for r in layouts])
  assert heights.min() < 10 and heights.max() > 300
  counts, _ = np.histogram(heights, bins=[8, 16, 32, 64, 128, 256, 512])
  assert np.all(counts >= 20), counts           # every octave is well represented
  per_image = [len(r.sample) for r in layouts]
  assert min(per_image) == 0 and max(per_image) >= 25


def _overlay(r, path) -> str:
  """The image with boxes and landmarks drawn (for a failure message)."""
  canvas = r.image.copy()
  for box, lm in zip(r.sample.boxes, r.sample.landmarks):
    cv2.rectangle(canvas, tuple(int(v) for v in box[:2]), tuple(int(v) for v in box[2:]), (0, 255, 0), 1)
    for (x, y) in lm:
      cv2.drawMarker(canvas, (int(x), int(y)), (0, 0, 255), cv2.MARKER_CROSS, 6, 1)
  cv2.imwrite(str(path), canvas)
  return str(path)


def test_drawing_uses_continuous_pixel_coordinates():
  """Pixel (i, j) covers [j, j+1) x [i, i+1): shapes land where their float coordinates say
  (the centroid of the anti-aliased coverage, to 0.15 px: OpenCV's anti-aliased polygon fill is
  biased by up to ~0.1 px; a half-pixel convention slip would be 0.5)."""
  ys, xs = np.mgrid[:40, :40] + 0.5
  for cx, cy in ((20.0, 20.0), (20.25, 13.75), (17.5, 22.6)):
    for draw_one in (lambda im: synthetic_draw.fill_circle(im, (cx, cy), 4.3, (255,)),
                     lambda im: synthetic_draw.fill_ellipse(im, (cx, cy), (6.0, 3.5), 25.0, (255,)),
                     lambda im: synthetic_draw.fill_poly(
                         im, synthetic_draw.ellipse_points(5, 5, 0, 360, 48) + (cx, cy), (255,))):
      im = np.zeros((40, 40), np.uint8)
      draw_one(im)
      wgt = im.astype(float)
      centroid = ((xs * wgt).sum() / wgt.sum(), (ys * wgt).sum() / wgt.sum())
      np.testing.assert_allclose(centroid, (cx, cy), atol=0.15)


def _run_length(img, x: int, y: int, dx: int, dy: int, want: np.ndarray, limit: int) -> int:
  """How many pixels from (x, y) (exclusive) in direction (dx, dy) still have colour `want`."""
  n = 0
  while n < limit:
    x, y = x + dx, y + dy
    if not (0 <= y < img.shape[0] and 0 <= x < img.shape[1]) or np.abs(img[y, x].astype(int) - want).max() > TOL:
      break
    n += 1
  return n


TOL = 6   # colour tolerance (max over channels) for a fully covered pixel of a feature


def test_landmarks_land_on_the_drawn_features(plain_renders, tmp_path):
  """The pixel under each visible landmark has the colour of its feature (pupil, nose tip, lip),
  and the eyes and the nose tip sit at the centre of their disc (runs of that colour left and
  right, up and down, equal to two pixels: a point 1.5 px off fails)."""
  names = ('left eye', 'right eye', 'nose tip', 'left mouth corner', 'right mouth corner')
  checked, centred, shifted_hits = 0, 0, 0
  for i, r in enumerate(plain_renders):
    h, w = r.occupancy.shape
    for k in range(len(r.sample)):
      if not r.sample.landmark_valid[k]:
        continue
      for j, (x, y) in enumerate(r.sample.landmarks[k]):
        px, py = int(np.floor(x)), int(np.floor(y))
        radius = float(r.feature_radii[k, j])
        # The feature is a solid disc of radius >= 2 px around the point, and the face's own head
        # shows around it (no occluder or other face there).
        m = int(np.ceil(radius)) + 2
        if radius < 2 or not (m <= px < w - m and m <= py < h - m):
          continue
        if not np.all(r.occupancy[py - m:py + m + 1, px - m:px + m + 1] == k + 1):
          continue
        got = r.image[py, px].astype(int)
        want = np.round(r.feature_colors[k, j]).astype(int)
        where = f'image {i} face {k} {names[j]} at ({x:.2f}, {y:.2f})'
        if np.abs(got - want).max() > TOL:
          pytest.fail(f'{where}: pixel {got}, drawn colour {want}; '
                      f'overlay in {_overlay(r, tmp_path / f"overlay_{i}.png")}')
        checked += 1
        if j <= 2 and radius >= 2.5:   # the mouth corners' discs merge with the lips: no symmetry there
          runs = [_run_length(r.image, px, py, dx, dy, want, 3 * m) for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))]
          # Flooring the point to a pixel, and edge pixels of low contrast, each unbalance the runs by <= 1.
          if abs(runs[0] - runs[1]) > 2 or abs(runs[2] - runs[3]) > 2:
            pytest.fail(f'{where} is off the centre of its disc: runs right/left/down/up {runs}; '
                        f'overlay in {_overlay(r, tmp_path / f"overlay_{i}.png")}')
          centred += 1
        # Control: 2.5 feature radii further down, the colour is usually something else.
        qy = int(np.floor(y + 2.5 * radius))
        if qy < h and np.abs(r.image[qy, px].astype(int) - want).max() <= TOL:
          shifted_hits += 1
  assert checked >= 150 and centred >= 60, (checked, centred)
  assert shifted_hits < 0.2 * checked


def test_effects_change_pixels_not_annotations():
  sharp = SyntheticFaces('val', 6, seed=2, effects=False)
  real = SyntheticFaces('val', 6, seed=2)
  differ = 0
  for i in range(6):
    a, b = sharp.render(i), real.render(i)
    assert _same_sample(a.sample, b.sample)
    assert np.array_equal(a.easy, b.easy) and np.array_equal(a.medium, b.medium)
    differ += not np.array_equal(a.image, b.image)
  assert differ >= 3


def test_distractors_exist_and_are_not_annotated():
  ds = SyntheticFaces('train', 40, seed=5)
  total = 0
  for i in range(len(ds)):
    r = ds.render(i, pixels=False)
    d, f = r.distractor_boxes, r.sample.boxes
    total += len(d)
    if len(d) and len(f):
      assert synthetic._overlaps(d.astype(np.float64), f.astype(np.float64)).max() == 0
  assert total >= 40


def test_difficulty_settings_are_nested(layouts):
  counts = np.zeros(3, int)
  for r in layouts:
    hard, medium, easy = r.hard, r.medium, r.easy
    assert np.all(medium <= hard) and np.all(easy <= medium)
    heights = r.sample.boxes[:, 3] - r.sample.boxes[:, 1]
    assert np.all(heights[medium] >= synthetic.MEDIUM_MIN_HEIGHT)
    assert np.all(heights[easy] >= synthetic.EASY_MIN_HEIGHT)
    assert np.all(r.visible[easy] >= synthetic.EASY_MIN_VISIBLE)
    counts += [easy.sum(), medium.sum(), hard.sum()]
  assert 0 < counts[0] < counts[1] < counts[2], counts


def test_val_ground_truth_matches_the_dataset_and_scores_perfect_detections():
  from jaxface.evaluation import GroundTruth, evaluate

  gt = val_ground_truth(30, seed=4)
  ds = SyntheticFaces('val', 30, seed=4)
  assert isinstance(gt, GroundTruth) and gt.num_images == 30
  assert set(gt.events) <= set(synthetic.EVENTS)
  rng = np.random.default_rng(0)
  preds = {}
  for event, name in gt.image_keys():
    i = int(name.split('_')[1])
    assert ds.event(i) == (event, name)
    r = ds.render(i, pixels=False)
    e, n = gt.events.index(event), gt.files[gt.events.index(event)].index(name)
    np.testing.assert_array_equal(gt.boxes[e][n], synthetic.wider_boxes(r.sample.boxes))
    for setting, mask in (('easy', r.easy), ('medium', r.medium), ('hard', r.hard)):
      np.testing.assert_array_equal(gt.keep[setting][e][n], np.flatnonzero(mask))
    boxes = gt.boxes[e][n].astype(np.float64)
    preds[(event, name)] = np.concatenate([boxes, rng.uniform(0.5, 1.0, (len(boxes), 1))], axis=1)
  counts = gt.face_counts()
  assert 0 < counts['easy'] < counts['medium'] < counts['hard']
  result = evaluate(preds, gt)
  assert result.ap == pytest.approx({'easy': 1.0, 'medium': 1.0, 'hard': 1.0})


def test_render_speed_sanity():
  ds = SyntheticFaces('train', 12, seed=0, image_size=(480, 640))
  ds.render(0)
  times = []
  for i in range(1, 12):
    t = time.perf_counter()
    ds.render(i)
    times.append(time.perf_counter() - t)
  assert np.median(times) < 0.2, times     # ~20 ms on an idle 2-core machine; loose for shared CI
