"""Precision-recall curves of an `EvalResult` as a PNG, drawn with OpenCV (no matplotlib needed)."""
from __future__ import annotations

import os

import numpy as np

from jaxface.evaluation.ground_truth import SETTINGS

COLORS = {'easy': (40, 160, 40), 'medium': (200, 110, 20), 'hard': (30, 30, 210)}  # BGR
WIDTH, HEIGHT = 900, 700
LEFT, RIGHT, TOP, BOTTOM = 90, 40, 60, 80  # margins around the unit square


def plot_pr_curves(result, path_png: str | os.PathLike, title: str | None = None) -> str:
  """Draws the Easy, Medium and Hard precision-recall curves, AP in the legend; returns the path.

  Args:
    result: an `EvalResult`.
    path_png: where to write the image (its folder is created).
    title: defaults to naming the protocol.
  """
  import cv2  # here, so that the evaluator itself needs only numpy

  canvas = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
  box_w, box_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
  to_px = lambda r, p: np.stack([LEFT + r * box_w, TOP + (1 - p) * box_h], axis=-1)
  font = cv2.FONT_HERSHEY_SIMPLEX
  for k in range(11):  # grid and ticks every 0.1
    v = k / 10
    x, y = int(round(LEFT + v * box_w)), int(round(TOP + (1 - v) * box_h))
    cv2.line(canvas, (x, TOP), (x, TOP + box_h), (225, 225, 225), 1)
    cv2.line(canvas, (LEFT, y), (LEFT + box_w, y), (225, 225, 225), 1)
    cv2.putText(canvas, f'{v:.1f}', (x - 14, TOP + box_h + 22), font, 0.45, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.putText(canvas, f'{v:.1f}', (LEFT - 38, y + 5), font, 0.45, (60, 60, 60), 1, cv2.LINE_AA)
  cv2.rectangle(canvas, (LEFT, TOP), (LEFT + box_w, TOP + box_h), (0, 0, 0), 1)
  cv2.putText(canvas, 'Recall', (LEFT + box_w // 2 - 30, HEIGHT - 25), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
  cv2.putText(canvas, 'Precision', (10, TOP - 15), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
  title = title or f'WIDER FACE precision-recall (protocol={result.protocol})'
  cv2.putText(canvas, title, (LEFT, 30), font, 0.65, (0, 0, 0), 1, cv2.LINE_AA)
  for i, setting in enumerate(SETTINGS):
    curve = result.pr_curves[setting]
    ok = np.isfinite(curve.precision) & np.isfinite(curve.recall)
    points = to_px(curve.recall[ok], curve.precision[ok])
    if len(points):
      pts = np.round(points * 16).astype(np.int32)[:, None, :]  # 4 fractional bits
      cv2.polylines(canvas, [pts], False, COLORS[setting], 2, cv2.LINE_AA, shift=4)
    y = TOP + box_h - 20 - 28 * (len(SETTINGS) - 1 - i)
    cv2.line(canvas, (LEFT + 20, y - 5), (LEFT + 60, y - 5), COLORS[setting], 3, cv2.LINE_AA)
    cv2.putText(canvas, f'{setting.capitalize()}  AP {result.ap[setting]:.4f}', (LEFT + 70, y), font, 0.6,
                (0, 0, 0), 1, cv2.LINE_AA)
  path = os.fspath(path_png)
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  if not cv2.imwrite(path, canvas):
    raise OSError(f'could not write {path}')
  return path
