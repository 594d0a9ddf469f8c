"""Running a detector over a val set: the test-time protocols, the val image loaders, batched detection.

`evaluation.cli` (behind `evaluate.py`) and the train loop's periodic evaluation both use it.
Test-time protocols (REFERENCE.md 1.8, 2.9):

- `original`: the image as it is (biubug6's default, "original image scale");
- `mxnet`: resize so the short side is 1600, unless the long side would exceed 2150, then so
  that it is 2150 (biubug6's "same parameter with Mxnet");
- `vga`: letterbox into 640x640: scale the long side to 640 (sizes rounded as mmcv's
  `imrescale`), pad bottom/right with the family's `pad_bgr` (zero after normalisation, as mmdet's
  pad) - SCRFD's protocol. Every image then shares one compiled program.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from jaxface.evaluation.ground_truth import GroundTruth
from jaxface.inference import pad_to
from jaxface.progress import clock

TEST_SCALES = ('original', 'mxnet', 'vga')
VGA = 640


def test_scale_factor(height: int, width: int, test_scale: str) -> float:
  """The resize factor a protocol applies to an H x W image."""
  if test_scale == 'original':
    return 1.0
  if test_scale == 'mxnet':
    resize = 1600 / min(height, width)
    if round(resize * max(height, width)) > 2150:
      resize = 2150 / max(height, width)
    return resize
  if test_scale == 'vga':
    return VGA / max(height, width)
  raise ValueError(f'unknown test scale {test_scale!r}; valid: {", ".join(TEST_SCALES)}')


def prepare(image: np.ndarray, test_scale: str, pad_bgr: tuple[int, int, int]) -> tuple[np.ndarray, float]:
  """The network input for a protocol and the factor from original to input pixels; `pad_bgr` is
  the letterbox colour (the family's)."""
  h, w = image.shape[:2]
  s = test_scale_factor(h, w, test_scale)
  if s == 1.0:
    return image, s
  size = (max(1, int(w * s + 0.5)), max(1, int(h * s + 0.5)))  # (W, H), mmcv's rounding
  resized = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
  if test_scale != 'vga':
    return resized, s
  return pad_to(resized, VGA, VGA, pad_bgr), s


def detect_all(detector, keys: Sequence[tuple[str, str]], load: Callable[[str, str], np.ndarray], *,
               test_scale: str, conf_threshold: float, nms_threshold: float | None, chunk: int = 32,
               progress: Callable[[str], None] | None = None) -> Iterator[tuple[tuple[str, str], np.ndarray]]:
  """Yields `((event, name), [P, 5] x y w h score)` in original-image pixels for every key.

  Images go through `detector.detect_batch` in chunks, so same-size (or same-bucket) images
  share compiled batches.
  """
  start = time.time()
  for first in range(0, len(keys), chunk):
    batch_keys = keys[first:first + chunk]
    if test_scale == 'vga' and detector.input_size == VGA:
      # The family's own protocol: the detector letterboxes (padding zero after normalisation,
      # boxes clipped to the image) and maps back to the image's pixels itself.
      inputs, scales = [load(*k) for k in batch_keys], [1.0] * len(batch_keys)
    else:
      inputs, scales = zip(*(prepare(load(*k), test_scale, detector.family.pad_bgr) for k in batch_keys))
    results = detector.detect_batch(list(inputs), conf_threshold, nms_threshold)
    for key, det, s in zip(batch_keys, results, scales):
      boxes = det.boxes / s
      yield key, np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2], det.scores[:, None]], axis=1)
    if progress is not None:
      done = min(first + chunk, len(keys))
      rate = done / max(time.time() - start, 1e-9)
      progress(f'[{done:5d}/{len(keys)}] {rate:5.1f} img/s  ETA {clock((len(keys) - done) / rate)}')


def wider_image_loader(root: str) -> Callable[[str, str], np.ndarray]:
  """`(event, name) -> BGR image` from `<root>/WIDER_val/images/<event>/<name>.jpg`."""
  from jaxface.images import read_image

  def load(event: str, name: str) -> np.ndarray:
    return read_image(os.path.join(root, 'WIDER_val', 'images', event, name + '.jpg'))
  return load


def synthetic_val(num_images: int, seed: int, image_size: tuple[int, int] | None = None
                  ) -> tuple[GroundTruth, Callable[[str, str], np.ndarray]]:
  """The built-in synthetic val set: its ground truth and image loader (`image_size` (h, w): all
  images that size, so one compiled program serves them; None: sides drawn in 320..640)."""
  from jaxface.data import synthetic
  gt = synthetic.val_ground_truth(num_images, seed, image_size)
  faces = synthetic.SyntheticFaces('val', num_images, seed=seed, image_size=image_size)
  # The ground truth groups images by event; an image's index is in its name (`synthetic_<i>`).
  index = {(e, n): int(n.rsplit('_', 1)[1]) for e, names in zip(gt.events, gt.files) for n in names}
  return gt, lambda event, name: faces[index[(event, name)]][0]


def shard(keys: Sequence, num_shards: int, index: int) -> list:
  """Every `num_shards`-th key from `index`: the images one process of several evaluates."""
  if not 0 <= index < num_shards:
    raise ValueError(f'shard index {index} is not in [0, {num_shards})')
  return list(keys[index::num_shards])


