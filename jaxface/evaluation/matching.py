"""Which ground-truth face each detection of one image matches, under both protocols.

Both evaluators walk the detections of an image in order and, for each one, take the face of
maximal overlap with it (`max`/`argmax`, so the first such face on ties). That face does not
depend on what earlier detections matched, so it is computed here for all detections at once;
the order-dependent part (first detection on a face wins) is done in `protocol.py`.

**Python port** (`protocol="python"`): float64 IoU with the +1 area convention, exactly as the
port's Cython `bbox_overlaps` (same operation order); a match when the best IoU is >= 0.5.

**Official tool** (`protocol="official"`): the MATLAB `boxoverlap(gt, det)` runs with the ground
truth as **int32**, and MATLAB integer arithmetic makes every quantity that meets an integer an
int32. With `a` the int32 GT rows `[x1 y1 x2 y2]` (x2 = x1 + w, int32) and `b` the double
detection `[x1 y1 x1+w y1+h]`:

  x1 = max(a(:,1), b(1))          int32: the detection coordinate is rounded to int32
  x2 = min(a(:,3), b(3))          (round half away from zero, saturating; y likewise)
  w = x2 - x1 + 1; h = ...        int32, saturating
  inter = w .* h                  int32, saturating
  aarea = (a3-a1+1).*(a4-a2+1)    int32 (GT only)
  barea = (b3-b1+1)*(b4-b2+1)     **double**: the detection's own area is not rounded
  aarea + barea - inter           int32: (aarea + barea) is computed in double and rounded
                                  (NaN -> 0, saturating), then inter is subtracted in int32
  o = inter ./ union              int32 division: round(inter / union) half away from zero;
                                  x/0 saturates to intmax (0/0 is 0)
  o(w <= 0) = 0; o(h <= 0) = 0

(MATLAB computes a mixed int32/double operation in double and rounds the result; GNU Octave
agrees.) So `o` is an integer, normally 0 or 1: 1 exactly when inter/union >= 0.5 with the
rounded coordinates. `[m, idx] = max(o)` then returns the **first** face in annotation order with
`o = 1`, not the best one, and `m >= 0.5` means `m >= 1`. Degenerate inputs can give other values
(a detection smaller than a pixel can reach o = 4 once its corners are rounded; a NaN coordinate
gives union = 0 - inter, so o = -1): they are reproduced too.

Faster than the literal formula, with identical results: the sign of `w` and `h` does not depend
on saturation, and `o` is forced to 0 wherever either is <= 0, so the dense `[P, G]` work is only
the intersection test; the exact int32 arithmetic then runs on the few intersecting pairs.
A NaN detection coordinate is ignored by MATLAB's `max`/`min` (`fmax`/`fmin` here); Octave
instead reads it as 0. Either way such a detection has a NaN area, so it can never match.
"""
from __future__ import annotations

import numpy as np

INT32_MIN = float(np.iinfo(np.int32).min)
INT32_MAX = float(np.iinfo(np.int32).max)


def matlab_int32(x: np.ndarray, nan: float | None = 0.0) -> np.ndarray:
  """MATLAB's `int32(x)` for doubles, as float64 values: round half away from zero, saturate.

  NaN becomes `nan` (MATLAB's 0 by default; None keeps NaN, for the max/min that ignore it).
  Exact for every double (no `floor(x + 0.5)` rounding trap).
  """
  x = np.asarray(x, np.float64)
  with np.errstate(invalid='ignore'):
    a = np.abs(x)
    f = np.floor(a)
    r = np.copysign(f + (a - f >= 0.5), x)  # a - f is exact for a >= 0; inf - inf -> NaN -> no +1
  r = np.clip(r, INT32_MIN, INT32_MAX)
  if nan is not None:
    r = np.where(np.isnan(r), nan, r)
  return r


def _sat(x: np.ndarray) -> np.ndarray:
  return np.clip(x, np.iinfo(np.int32).min, np.iinfo(np.int32).max)


def _gt_int32_corners(gt_xywh: np.ndarray):
  g = np.asarray(gt_xywh, np.int64).reshape(-1, 4)
  x1, y1 = g[:, 0], g[:, 1]
  x2, y2 = _sat(x1 + g[:, 2]), _sat(y1 + g[:, 3])
  area = _sat(_sat(_sat(x2 - x1) + 1) * _sat(_sat(y2 - y1) + 1))
  return x1, y1, x2, y2, area


def _official_sparse(pred_xywh: np.ndarray, gt_xywh: np.ndarray):
  """`(rows, cols, o)`: the official int32 overlap `o` for every intersecting (w > 0, h > 0) pair."""
  p = np.asarray(pred_xywh, np.float64).reshape(-1, 4)
  gx1, gy1, gx2, gy2, aarea = _gt_int32_corners(gt_xywh)
  px2 = p[:, 0] + p[:, 2]  # image_evaluation.m: pred_info(:,3) = pred_info(:,1) + pred_info(:,3), double
  py2 = p[:, 1] + p[:, 3]
  barea = (px2 - p[:, 0] + 1) * (py2 - p[:, 1] + 1)  # double, from the unrounded detection
  rx1, ry1, rx2, ry2 = (matlab_int32(v, nan=None) for v in (p[:, 0], p[:, 1], px2, py2))
  # Dense: the intersection test. X2 - X1 + 1 > 0 <=> X2 >= X1 for integers, saturation or not.
  x1 = np.fmax(gx1[None, :], rx1[:, None])
  x2 = np.fmin(gx2[None, :], rx2[:, None])
  y1 = np.fmax(gy1[None, :], ry1[:, None])
  y2 = np.fmin(gy2[None, :], ry2[:, None])
  rows, cols = np.nonzero((x2 >= x1) & (y2 >= y1))
  # Sparse: the exact int32 arithmetic of boxoverlap.m on the intersecting pairs.
  cx1, cx2 = x1[rows, cols].astype(np.int64), x2[rows, cols].astype(np.int64)
  cy1, cy2 = y1[rows, cols].astype(np.int64), y2[rows, cols].astype(np.int64)
  w = _sat(_sat(cx2 - cx1) + 1)
  h = _sat(_sat(cy2 - cy1) + 1)
  inter = _sat(w * h)  # w, h <= 2^31 - 1: the int64 product is exact
  with np.errstate(invalid='ignore', over='ignore'):
    summed = matlab_int32(aarea[cols].astype(np.float64) + barea[rows])  # NaN -> 0
  union = _sat(summed.astype(np.int64) - inter)
  return rows, cols, _matlab_int_divide(inter, union)


def _matlab_int_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  """MATLAB int32 `num ./ den` for num >= 1: round half away from zero; x/0 = intmax."""
  mag = np.abs(den)
  safe = np.maximum(mag, 1)
  q = (2 * num + safe) // (2 * safe)  # round(num / mag) half up, exact in int64
  return np.where(den > 0, q, np.where(den < 0, -q, np.iinfo(np.int32).max))


def official_overlaps(pred_xywh: np.ndarray, gt_xywh: np.ndarray) -> np.ndarray:
  """The official tool's overlap values `[P, G]` (int64 holding the int32 results), 0 where disjoint."""
  p = np.asarray(pred_xywh, np.float64).reshape(-1, 4)
  g = np.asarray(gt_xywh).reshape(-1, 4)
  out = np.zeros((len(p), len(g)), np.int64)
  rows, cols, o = _official_sparse(p, g)
  out[rows, cols] = o
  return out


def _port_sparse(pred_xywh: np.ndarray, gt_xywh: np.ndarray):
  """`(rows, cols, iou)` of the port's float64 `bbox_overlaps` for the pairs with iw > 0 and ih > 0."""
  p = np.asarray(pred_xywh, np.float64).reshape(-1, 4)
  g = np.asarray(gt_xywh, np.float64).reshape(-1, 4)
  px1, py1 = p[:, 0], p[:, 1]
  px2, py2 = p[:, 2] + px1, p[:, 3] + py1  # evaluation.py: _pred[:, 2] = _pred[:, 2] + _pred[:, 0]
  gx1, gy1 = g[:, 0], g[:, 1]
  gx2, gy2 = g[:, 2] + gx1, g[:, 3] + gy1
  iw = np.minimum(px2[:, None], gx2[None, :]) - np.maximum(px1[:, None], gx1[None, :]) + 1
  ih = np.minimum(py2[:, None], gy2[None, :]) - np.maximum(py1[:, None], gy1[None, :]) + 1
  rows, cols = np.nonzero((iw > 0) & (ih > 0))
  iw, ih = iw[rows, cols], ih[rows, cols]
  gt_area = (gx2 - gx1 + 1) * (gy2 - gy1 + 1)
  pred_area = (px2 - px1 + 1) * (py2 - py1 + 1)
  with np.errstate(divide='ignore', invalid='ignore'):
    ua = pred_area[rows] + gt_area[cols] - iw * ih  # the Cython's order: (area_n + area_k) - iw * ih
    iou = iw * ih / ua
  return rows, cols, iou


def port_overlaps(pred_xywh: np.ndarray, gt_xywh: np.ndarray) -> np.ndarray:
  """The Python port's IoU matrix `[P, G]` (float64, +1 convention), 0 where disjoint."""
  p = np.asarray(pred_xywh, np.float64).reshape(-1, 4)
  g = np.asarray(gt_xywh).reshape(-1, 4)
  out = np.zeros((len(p), len(g)), np.float64)
  rows, cols, iou = _port_sparse(p, g)
  out[rows, cols] = iou
  return out


def match_faces(pred_xywh: np.ndarray, gt_xywh: np.ndarray, protocol: str) -> tuple[np.ndarray, np.ndarray]:
  """For each detection, the face `max`/`argmax` picks and whether the overlap passes 0.5.

  Args:
    pred_xywh: `[P, 4]` float detections `x, y, w, h`.
    gt_xywh: `[G, 4]` integer faces, G >= 1.
    protocol: 'official' (first face with int32 overlap >= 1) or 'python' (best float IoU >= 0.5).

  Returns:
    `face [P]` int64 (meaningful where matched) and `matched [P]` bool.
  """
  num_pred, num_gt = len(pred_xywh), len(gt_xywh)
  if protocol == 'official':
    rows, cols, values = _official_sparse(pred_xywh, gt_xywh)
    dense = np.zeros((num_pred, num_gt), np.int64)
    threshold = 1  # int32 overlap >= 0.5
  else:
    rows, cols, values = _port_sparse(pred_xywh, gt_xywh)
    dense = np.zeros((num_pred, num_gt), np.float64)
    threshold = 0.5
  dense[rows, cols] = values
  face = np.argmax(dense, axis=1)  # first maximum, as MATLAB max and numpy argmax
  with np.errstate(invalid='ignore'):
    matched = dense[np.arange(num_pred), face] >= threshold
  return face, matched
