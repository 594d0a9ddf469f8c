"""The released 2019 checkpoint through `load_detector`, against the reference pipeline.

Same detections as the PyTorch re-statement with the reference post-processing (conf 0.02,
NMS 0.4): same count, boxes within 0.01 px, scores within 1e-5. Plus what a user relies on:
batching gives the same answers, thresholds never recompile, bucketing finds the same faces.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import shared_file
from jaxface import load_detector

ARCH = 'retinaface_mnet_relu'
IMAGES = ['1face.png', '3faces.png', '4faces.png', 'street.jpg', 'crowd.jpg']


@pytest.fixture(scope='module')
def weights():
  return str(shared_file('data', 'weights', 'retinaface_mnet025_relu_2019.pth'))


@pytest.fixture(scope='module')
def det(weights):
  return load_detector(weights, arch=ARCH)


def _image(name):
  return cv2.imread(str(shared_file('data', 'images', name)))


@pytest.mark.parametrize('name', IMAGES)
def test_same_detections_as_reference(det, weights, name):
  assert_reference_detections(det, weights, _image(name))


def assert_reference_detections(det, weights, img, arch: str = ARCH):
  """`det`'s detections on `img` are the PyTorch re-statement's with the reference post-processing
  (conf 0.02, NMS 0.4): same count, scores within 1e-5, boxes and landmarks within 0.01 px."""
  torch = pytest.importorskip('torch')
  import reference_torch as ref
  torch.set_num_threads(2)
  model = ref.load_state_dict_file(ref.build_reference(arch), weights).eval()
  boxes, scores, landmarks = ref.reference_detect(model, img, conf_threshold=0.02, nms_threshold=0.4)
  got = det.detect(img, conf_threshold=0.02, nms_threshold=0.4)
  assert len(got) == len(scores)
  np.testing.assert_allclose(got.scores, scores, rtol=0, atol=1e-5)
  np.testing.assert_allclose(got.boxes, boxes, rtol=0, atol=0.01)
  np.testing.assert_allclose(got.landmarks, landmarks, rtol=0, atol=0.01)


def test_published_numbers(det):
  """REFERENCE.md 1.13: the 2019 checkpoint on 1face.png and 3faces.png."""
  one = det.detect(_image('1face.png'))
  assert len(one) == 1
  np.testing.assert_allclose(one.boxes[0], [42.02, 29.61, 62.27, 56.34], atol=0.01)
  np.testing.assert_allclose(one.scores[0], 0.978, atol=5e-4)
  np.testing.assert_allclose(one.landmarks[0], [[49.5, 39.2], [58.4, 39.6], [54.8, 44.5], [49.7, 49.1],
                                                [57.2, 49.4]], atol=0.06)
  three = det.detect(_image('3faces.png'), conf_threshold=0.5)
  np.testing.assert_allclose(three.scores, [0.979, 0.907, 0.824], atol=5e-4)


def test_crowd_has_about_27_faces(det):
  crowd = det.detect(_image('crowd.jpg'))
  assert 25 <= int((crowd.scores > 0.5).sum()) <= 29
  assert np.all(np.diff(crowd.scores) <= 0), 'sorted by descending score'
  assert np.all(crowd.boxes[:, 2:] > crowd.boxes[:, :2])


def test_thresholds_and_repeats_do_not_recompile(weights):
  det = load_detector(weights, arch=ARCH)
  img = _image('street.jpg')
  counts = [len(det.detect(img, conf_threshold=c, nms_threshold=n)) for c, n in ((0.02, 0.4), (0.5, 0.3), (0.9, 0.5))]
  assert counts[0] > counts[1] > 0
  assert det.compiled_shapes == [(1, 302, 450, 3)]
  det.detect(_image('1face.png'))
  assert det.compiled_shapes == [(1, 302, 450, 3), (1, 128, 128, 3)]


def test_batch_equals_single(det):
  imgs = [_image('1face.png'), _image('3faces.png'), _image('street.jpg'), _image('4faces.png')]
  batch = det.detect_batch(imgs)
  for img, got in zip(imgs, batch):
    want = det.detect(img)
    assert len(got) == len(want)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)


def test_bucketed_mode_finds_the_same_faces(weights, det):
  """Padding to a bucket changes only what the network sees near the padded border: every
  face above 0.5 is found again, with scores within 0.02 and boxes within 3 px on these
  images (bench/bench_bucketing.py measures more sizes; see README)."""
  bucketed = load_detector(weights, arch=ARCH, bucketed=True)
  for name in ('street.jpg', 'crowd.jpg'):
    img = _image(name)
    want, got = det.detect(img), bucketed.detect(img)
    faces = want.boxes[want.scores > 0.5]
    for box, score in zip(faces, want.scores[want.scores > 0.5]):
      j = np.abs(got.boxes - box).max(axis=1).argmin()
      assert np.abs(got.boxes[j] - box).max() < 3.0, name
      assert abs(got.scores[j] - score) < 0.02, name
  # Two sizes that share a bucket (302x450 and 280x470 -> 384x512) share one program.
  street = _image('street.jpg')
  bucketed.detect(cv2.resize(street, (470, 280)))
  assert sorted(set(bucketed.compiled_shapes)) == [(1, 384, 512, 3), (1, 640, 1024, 3)]


def test_image_formats(det):
  img = _image('1face.png')
  want = det.detect(img)
  bgra = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=-1)
  np.testing.assert_allclose(det.detect(bgra).boxes, want.boxes, atol=1e-4)
  wide = det.detect(img.astype(np.uint16) * 257)
  np.testing.assert_allclose(wide.boxes, want.boxes, atol=1e-4)
  gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
  np.testing.assert_allclose(det.detect(gray).boxes, det.detect(np.repeat(gray[:, :, None], 3, 2)).boxes, atol=1e-4)
  with pytest.raises(ValueError, match='uint8'):
    det.detect(img.astype(np.float32))
  with pytest.raises(ValueError, match='shape'):
    det.detect(np.zeros((4, 4, 2), np.uint8))
