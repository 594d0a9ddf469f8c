"""Which keypoints a family predicts, and the order they take when an image is mirrored.

A family names its keypoints once (`Family.keypoints`); the data layer, the augmentations, the
detector and the drawing take the count and the mirror order from there.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Keypoints:
  """K named keypoints per face.

  `flip_order[i]` is the keypoint of the original face that becomes keypoint i after a left-right
  mirror: "left" is the image's left, so the left and right eye trade places.
  """
  names: tuple[str, ...]
  flip_order: tuple[int, ...]

  def __post_init__(self):
    if sorted(self.flip_order) != list(range(len(self.names))):
      raise ValueError(f'flip_order {self.flip_order} is not a permutation of {len(self.names)} keypoints')

  def __len__(self) -> int:
    return len(self.names)


# RetinaFace's and SCRFD's five landmarks (WIDER FACE's annotation), image-left first.
FIVE_POINTS = Keypoints(('left_eye', 'right_eye', 'nose', 'left_mouth', 'right_mouth'), (1, 0, 2, 4, 3))
