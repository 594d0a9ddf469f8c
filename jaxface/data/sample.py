"""One annotated image, as every reader produces it and every augmentation consumes it."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Sample:
  """An image's faces in pixel coordinates of the original image.

  `landmark_valid` says which faces have their K keypoints (decided by the reader, before any
  augmentation: cropping and mirroring destroy the reference's -1 placeholders); `ignore` marks
  boxes that should neither be matched nor penalised (SCRFD ignore boxes, TFDS `invalid`).
  K and the keypoints' meaning come from the annotation (WIDER's five: left eye, right eye, nose,
  left and right mouth corner, "left" being the image's left; see `jaxface.keypoints`).
  """
  image_path: str                 # where the pixels are ('' for in-memory images, e.g. synthetic)
  boxes: np.ndarray               # [N, 4] float32 x1 y1 x2 y2
  landmarks: np.ndarray           # [N, K, 2] float32 (zeros where not valid)
  landmark_valid: np.ndarray      # [N] bool
  ignore: np.ndarray              # [N] bool
  source: str = ''                # 'file:line' of the annotation, for error messages

  def __post_init__(self):
    n = len(self.boxes)
    self.boxes = np.asarray(self.boxes, np.float32).reshape(n, 4)
    landmarks = np.asarray(self.landmarks, np.float32)
    if landmarks.ndim != 3 or landmarks.shape[0] != n or landmarks.shape[2] != 2:
      raise ValueError(f'{self.source or self.image_path or "sample"}: landmarks must be [{n}, K, 2], '
                       f'got {landmarks.shape}')
    self.landmarks = landmarks
    self.landmark_valid = np.asarray(self.landmark_valid, bool).reshape(n)
    self.ignore = np.asarray(self.ignore, bool).reshape(n)

  def __len__(self) -> int:
    return len(self.boxes)

  @property
  def num_keypoints(self) -> int:
    return self.landmarks.shape[1]

  @classmethod
  def empty(cls, image_path: str = '', source: str = '', num_keypoints: int = 5) -> 'Sample':
    return cls(image_path, np.zeros((0, 4)), np.zeros((0, num_keypoints, 2)), np.zeros((0,), bool),
               np.zeros((0,), bool), source)

  def select(self, keep: np.ndarray) -> 'Sample':
    """The faces where `keep` ([N] bool or indices) holds."""
    return dataclasses.replace(self, boxes=self.boxes[keep], landmarks=self.landmarks[keep],
                               landmark_valid=self.landmark_valid[keep], ignore=self.ignore[keep])
