"""A tiny source and augmentation for the loader tests, importable by Grain's worker processes."""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxface.data import pipeline
from jaxface.data.sample import Sample

BAD = 3  # the index whose image cannot be read


@dataclasses.dataclass
class Augmented:
  image: np.ndarray
  boxes: np.ndarray
  landmarks: np.ndarray
  landmark_valid: np.ndarray
  ignore: np.ndarray
  dropped: dict


def augment(image, sample, rng, *, image_size):
  """Stamps the draw into the pixels so tests can see which (seed, epoch, index) made an example."""
  return Augmented(np.full((image_size, image_size, 3), rng.random(), np.float32), sample.boxes, sample.landmarks,
                   sample.landmark_valid, sample.ignore, {'degenerate': 1})


class Source:
  """10 images; image i has i % 4 faces of side i + 1; image BAD is unreadable."""

  def __len__(self):
    return 10

  def __getitem__(self, i):
    if i == BAD:
      raise pipeline.ImageReadError(f'image {i}: not a decodable image')
    n = i % 4
    boxes = np.array([[0, 0, i + 1 + j, i + 1 + j] for j in range(n)], np.float32).reshape(n, 4)
    return np.zeros((8, 8, 3), np.uint8), Sample(f'img{i}.jpg', boxes, np.zeros((n, 5, 2)), np.ones(n, bool),
                                                  np.zeros(n, bool))


class CrashingSource(Source):
  """`Source` whose image 6 raises a bug (not an unreadable image): the loader must not swallow it."""

  def __getitem__(self, i):
    if i == 6:
      raise RuntimeError('bug in the source at image 6')
    return super().__getitem__(i)
