"""Drawing detections the way the reference `detect.py` does, so pictures compare side by side.

Boxes in red, 2 px; the score in white at the box's top-left corner; the keypoints as filled
dots, the five of RetinaFace/SCRFD in the reference's red, yellow, magenta, green, blue (left eye,
right eye, nose, left and right mouth corner); a sixth (BlazeFace's ears) in orange, and the
colours repeat beyond. Coordinates are truncated to ints as in the reference.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import cv2
import numpy as np

from jaxface.images import as_bgr_uint8

BOX_COLOR = (0, 0, 255)        # BGR red
TEXT_COLOR = (255, 255, 255)   # white
# BGR, in the order of `Detections.landmarks`: red, yellow, magenta, green, blue, orange.
LANDMARK_COLORS = ((0, 0, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0), (0, 128, 255))


def draw_detections(image_bgr: np.ndarray, detections, *, min_score: float = 0.0, thickness: int = 2,
                    show_scores: bool = True, landmark_colors: Sequence[tuple[int, int, int]] = LANDMARK_COLORS,
                    box_color: tuple[int, int, int] = BOX_COLOR) -> np.ndarray:
  """Returns a BGR uint8 copy of `image_bgr` with boxes, scores and landmarks drawn; the input is untouched.

  Args:
    image_bgr: anything `as_bgr_uint8` accepts (gray, BGR, BGRA, uint8/uint16).
    detections: a `jaxface.Detections` (or any object with `boxes [N,4]`, `scores [N]`,
      `landmarks [N,K,2]`), in the image's pixels.
    min_score: faces scoring below it are not drawn (the reference draws above `vis_thres`).
  """
  canvas = as_bgr_uint8(image_bgr).copy()
  boxes = np.asarray(detections.boxes, np.float64).reshape(-1, 4)
  scores = np.asarray(detections.scores, np.float64).reshape(-1)
  landmarks = np.asarray(detections.landmarks, np.float64)
  # Draw the weakest first so that overlapping stronger faces stay on top.
  for i in np.argsort(scores, kind='stable'):
    if scores[i] < min_score or not np.all(np.isfinite(boxes[i])):
      continue
    x1, y1, x2, y2 = (int(v) for v in boxes[i])
    cv2.rectangle(canvas, (x1, y1), (x2, y2), box_color, thickness)
    if show_scores:
      cv2.putText(canvas, f'{scores[i]:.4f}', (x1, y1 + 12), cv2.FONT_HERSHEY_DUPLEX, 0.5, TEXT_COLOR)
    points = landmarks[i].reshape(-1, 2)
    for (x, y), color in zip(points, itertools.islice(itertools.cycle(landmark_colors), len(points))):
      if np.isfinite(x) and np.isfinite(y):
        cv2.circle(canvas, (int(x), int(y)), 1, color, 4)
  return canvas
