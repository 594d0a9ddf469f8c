"""`jaxface.scrfd.atss_assign` against a per-face torch re-statement of mmdet's ATSSAssigner
(tests/reference_scrfd_train.py): identical assignments, IoUs to 1e-6, on random and adversarial
ground truth, padded to a fixed number of rows and vmapped over a batch as the train step runs it."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.scrfd import anchors as scrfd_anchors
from jaxface.scrfd.atss import atss_assign

torch = pytest.importorskip('torch')
import reference_scrfd_train as ref  # noqa: E402  (needs torch)

G = 64  # padded face rows


def _anchors(size):
  boxes = scrfd_anchors.anchor_boxes(size, size)
  _, cells = scrfd_anchors.anchor_grid(size, size)
  counts = tuple(int(np.sum(cells[:, 2] == s)) for s in scrfd_anchors.STRIDES)
  return boxes, counts


@functools.lru_cache(maxsize=None)
def _batched(size):
  boxes, counts = _anchors(size)
  fn = jax.jit(jax.vmap(lambda gt, valid: atss_assign(boxes, counts, gt, valid)))
  return fn, boxes, counts


def _random_faces(rng, n, size, lo=4.0, hi=200.0):
  wh = rng.uniform(lo, hi, (n, 2))
  xy = rng.uniform(-0.1 * size, size, (n, 2))
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def _check(faces_per_image, size=640):
  fn, boxes, counts = _batched(size)
  gt = np.zeros((len(faces_per_image), G, 4), np.float32)
  valid = np.zeros((len(faces_per_image), G), bool)
  for i, f in enumerate(faces_per_image):
    gt[i, :len(f)] = f
    valid[i, :len(f)] = True
  gt[~valid] = np.asarray([3.0, 5.0, 40.0, 60.0], np.float32)  # padding rows that would match if not masked
  assigned, iou = jax.device_get(fn(gt, valid))
  for i, f in enumerate(faces_per_image):
    want_gt, want_iou = ref.atss_reference(boxes, counts, f)
    np.testing.assert_array_equal(assigned[i], want_gt, err_msg=f'image {i}')
    np.testing.assert_allclose(iou[i], want_iou, rtol=0, atol=1e-6, err_msg=f'image {i}')
  return assigned, iou


def test_random_faces_several_images():
  rng = np.random.default_rng(0)
  assigned, _ = _check([_random_faces(rng, n, 640) for n in (1, 5, 27, 60)])
  assert (assigned >= 0).sum() > 100


def test_no_faces_is_all_background():
  assigned, iou = _check([np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32)])
  assert (assigned == -1).all() and (iou == 0).all()


def test_one_face_and_a_full_set_of_rows():
  rng = np.random.default_rng(1)
  one = np.asarray([[100, 120, 180, 210]], np.float32)
  _check([one, _random_faces(rng, G, 640, 8, 120)])


def test_tiny_faces_2_to_4_px():
  rng = np.random.default_rng(2)
  xy = rng.uniform(0, 630, (20, 2)).astype(np.float32)
  tiny = np.concatenate([xy, xy + rng.uniform(2, 4, (20, 2)).astype(np.float32)], 1)
  on_grid = np.asarray([[8, 8, 10, 10], [15.5, 15.5, 17.5, 19.5], [0, 0, 3, 3]], np.float32)
  _check([tiny, on_grid])


def test_faces_larger_than_every_anchor_and_on_the_border():
  huge = np.asarray([[-100, -50, 700, 690], [0, 0, 640, 640]], np.float32)
  border = np.asarray([[0, 0, 30, 40], [600, 590, 640, 640], [-20, 300, 25, 350], [620, -10, 660, 30]],
                      np.float32)
  # Centres outside the image (one past a corner): the nearest anchors are on the border.
  outside = np.asarray([[-60, 100, 20, 180], [600, 620, 700, 700], [-90, -70, 30, 20], [300, 610, 420, 720]],
                       np.float32)
  assigned, _ = _check([huge, border, outside])
  assert (assigned[2] >= 0).any()


def test_duplicate_boxes_go_to_the_lower_index():
  box = np.asarray([120, 80, 200, 190], np.float32)
  dup = np.stack([box, box, box + 1, box])
  assigned, _ = _check([dup])
  pos = assigned[0][assigned[0] >= 0]
  assert set(pos.tolist()) <= {0, 2} and 0 in pos  # the exact copies (1, 3) never win a tie


def test_zero_size_faces_are_never_positive():
  flat = np.asarray([[50, 50, 50, 90], [100, 100, 140, 100], [200, 200, 200, 200]], np.float32)
  assigned, _ = _check([flat])
  assert (assigned == -1).all()


def test_small_input_with_fewer_anchors_than_topk_per_level():
  """At 64 px the stride-32 level has 2 x 2 x 2 = 8 anchors: every one is a candidate."""
  rng = np.random.default_rng(3)
  _, counts = _anchors(64)
  assert counts[-1] == 8
  _check([_random_faces(rng, 4, 64, 4, 40), np.asarray([[0, 0, 64, 64]], np.float32)], size=64)


def test_candidates_tie_by_lower_anchor_index():
  """A face centred on a location: its two anchors (and symmetric neighbours) are equally far; the
  9th pick of a level cuts such a tie, and the lower anchor index is the one kept."""
  face = np.asarray([[60, 60, 100, 100]], np.float32)  # centre (80, 80): a stride-8 and -16 location
  _check([face])
