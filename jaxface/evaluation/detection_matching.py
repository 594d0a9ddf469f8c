"""Which ground-truth face each detection matches, under both protocols.

Both evaluators walk the detections of an image in order and, for each one, take the face of
maximal overlap with it (`max`/`argmax`: the first such face on ties). That face does not depend
on what earlier detections matched, so it is computed here for all detections at once; the
order-dependent part (the first detection on a face wins) is done in `protocol.py`.

**Python port** (`protocol="python"`): float64 IoU with the +1 area convention, exactly as the
port's Cython `bbox_overlaps` (same operation order); a match when the best IoU is >= 0.5.
(A zero union, where the Cython would raise ZeroDivisionError, gives inf here.)

**Official tool** (`protocol="official"`): MATLAB `boxoverlap(gt, det)` runs with the ground
truth as **int32**, and MATLAB integer arithmetic makes every quantity that meets an integer an
int32. With `a` the int32 GT rows `[x1 y1 x2 y2]` (x2 = x1 + w, int32) and `b` the double
detection `[x1 y1 x1+w y1+h]` (the sums in double):

  x1 = max(a(:,1), b(1))          int32: the detection coordinate is rounded to int32
  x2 = min(a(:,3), b(3))          (half away from zero, saturating); y likewise
  w = x2 - x1 + 1; h = ...        int32, saturating
  inter = w .* h                  int32, saturating
  aarea = (a3-a1+1).*(a4-a2+1)    int32 (GT only)
  barea = (b3-b1+1)*(b4-b2+1)     **double**: the detection's own area is not rounded
  aarea + barea - inter           (aarea + barea) is computed in double and rounded to int32
                                  (NaN -> 0, saturating); inter is then subtracted in int32
  o = inter ./ union              int32 division: round(inter / union) half away from zero;
                                  x/0 saturates to intmax
  o(w <= 0) = 0; o(h <= 0) = 0

(A mixed int32/double operation is computed in double and the result rounded: MATLAB's rule,
and what GNU Octave does.) So `o` is an integer, normally 0 or 1, and 1 exactly when
inter/union >= 0.5 with the rounded coordinates: `[m, idx] = max(o)` returns the **first** face
in annotation order with o = 1, not the best one, and `m >= 0.5` means `m >= 1`. Degenerate
input gives other values (a detection smaller than a pixel can reach o = 4 once its corners are
rounded; a NaN coordinate makes union = 0 - inter, so o = -1); they are reproduced too.

How it is computed, with identical results: the sign of `w` and `h` does not depend on
saturation, and `o` is 0 wherever either is <= 0, so the only dense `[P, G]` work (per image) is
the intersection test; the exact arithmetic then runs once over the intersecting pairs of the
whole set, and the first maximal face per detection is found by segment reductions. A NaN
detection coordinate is skipped by MATLAB's `max`/`min` (`fmax`/`fmin` here); Octave reads it as
0 instead. Either way such a detection has a NaN area, so it never matches.
"""
from __future__ import annotations

import numpy as np

_I32_MIN, _I32_MAX = int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max)


def matlab_int32(x: np.ndarray, nan: float | None = 0.0) -> np.ndarray:
  """MATLAB's `int32(x)` for doubles, as float64 values: round half away from zero, saturate.

  NaN becomes `nan` (MATLAB's 0; None keeps NaN, for the `max`/`min` that skip it). Exact for
  every double (no `floor(x + 0.5)` trap at 0.49999999999999994).
  """
  x = np.asarray(x, np.float64)
  with np.errstate(invalid='ignore'):
    a = np.abs(x)
    f = np.floor(a)
    r = np.copysign(f + (a - f >= 0.5), x)  # a - f is exact for a >= 0; inf - inf is NaN: no +1
  r = np.minimum(np.maximum(r, _I32_MIN), _I32_MAX)  # keeps NaN
  if nan is not None:
    r = np.where(np.isnan(r), nan, r)
  return r


def _sat(x: np.ndarray) -> np.ndarray:
  """Saturate int64 values to the int32 range."""
  return np.minimum(np.maximum(x, _I32_MIN), _I32_MAX)


def _faces(gt_xywh: np.ndarray, protocol: str) -> tuple[np.ndarray, ...]:
  """Per face: (x1, y1, x2, y2, area); int64 holding int32 values (official) or float64 (python)."""
  if protocol == 'official':
    g = np.asarray(gt_xywh, np.int64).reshape(-1, 4)
    x1, y1 = g[:, 0], g[:, 1]
    x2, y2 = _sat(x1 + g[:, 2]), _sat(y1 + g[:, 3])
    return x1, y1, x2, y2, _sat(_sat(_sat(x2 - x1) + 1) * _sat(_sat(y2 - y1) + 1))
  g = np.asarray(gt_xywh, np.float64).reshape(-1, 4)
  x1, y1 = g[:, 0], g[:, 1]
  x2, y2 = g[:, 2] + x1, g[:, 3] + y1  # evaluation.py: _gt[:, 2] = _gt[:, 2] + _gt[:, 0]
  return x1, y1, x2, y2, (x2 - x1 + 1) * (y2 - y1 + 1)


def _detections(pred_xywh: np.ndarray, protocol: str) -> tuple[np.ndarray, ...]:
  """Per detection: (x1, y1, x2, y2, area), float64; official corners rounded to int32 values."""
  p = np.asarray(pred_xywh, np.float64).reshape(-1, 4)
  with np.errstate(invalid='ignore', over='ignore'):  # inf and NaN detections are scored, not warned about
    x2 = p[:, 0] + p[:, 2]  # image_evaluation.m / evaluation.py: x2 = x1 + w, in double
    y2 = p[:, 1] + p[:, 3]
    area = (x2 - p[:, 0] + 1) * (y2 - p[:, 1] + 1)  # from the unrounded detection in both tools
  if protocol == 'official':
    return (*(matlab_int32(v, nan=None) for v in (p[:, 0], p[:, 1], x2, y2)), area)
  return p[:, 0], p[:, 1], x2, y2, area


def _intersecting(det, face, protocol: str) -> tuple[np.ndarray, np.ndarray]:
  """`(rows, cols)` of the detection/face pairs with w > 0 and h > 0, row-major."""
  with np.errstate(invalid='ignore', over='ignore'):
    if protocol == 'official':  # x2 - x1 + 1 > 0  <=>  x2 >= x1 for integers, saturated or not
      ok_x = np.fmin(face[2][None, :], det[2][:, None]) >= np.fmax(face[0][None, :], det[0][:, None])
      ok_y = np.fmin(face[3][None, :], det[3][:, None]) >= np.fmax(face[1][None, :], det[1][:, None])
    else:
      ok_x = np.minimum(det[2][:, None], face[2][None, :]) - np.maximum(det[0][:, None], face[0][None, :]) + 1 > 0
      ok_y = np.minimum(det[3][:, None], face[3][None, :]) - np.maximum(det[1][:, None], face[1][None, :]) + 1 > 0
  return np.nonzero(ok_x & ok_y)


def _pair_overlaps(det, face, rows: np.ndarray, cols: np.ndarray, protocol: str) -> np.ndarray:
  """The overlap of each intersecting pair: int64 int32 values (official) or float64 IoU (python)."""
  with np.errstate(invalid='ignore', over='ignore', divide='ignore'):
    if protocol == 'official':
      x1 = np.fmax(face[0][cols], det[0][rows]).astype(np.int64)
      y1 = np.fmax(face[1][cols], det[1][rows]).astype(np.int64)
      x2 = np.fmin(face[2][cols], det[2][rows]).astype(np.int64)
      y2 = np.fmin(face[3][cols], det[3][rows]).astype(np.int64)
      w = _sat(_sat(x2 - x1) + 1)
      h = _sat(_sat(y2 - y1) + 1)
      inter = _sat(w * h)  # w, h < 2^31: the int64 product is exact
      summed = matlab_int32(face[4][cols].astype(np.float64) + det[4][rows])  # double sum; NaN -> 0
      union = _sat(summed.astype(np.int64) - inter)
      return _matlab_int_divide(inter, union)
    iw = np.minimum(det[2][rows], face[2][cols]) - np.maximum(det[0][rows], face[0][cols]) + 1
    ih = np.minimum(det[3][rows], face[3][cols]) - np.maximum(det[1][rows], face[1][cols]) + 1
    ua = det[4][rows] + face[4][cols] - iw * ih  # the Cython's order: (area_n + area_k) - iw * ih
    return iw * ih / ua


def _matlab_int_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  """MATLAB int32 `num ./ den` for num >= 1: round half away from zero; x/0 is intmax."""
  mag = np.maximum(np.abs(den), 1)
  q = (2 * num + mag) // (2 * mag)  # round(num / |den|) half up, exact in int64
  return np.where(den > 0, q, np.where(den < 0, -q, _I32_MAX))


def match_detections(pred_xywh: np.ndarray, pred_counts: np.ndarray, gt_xywh: np.ndarray,
                     gt_counts: np.ndarray, protocol: str) -> np.ndarray:
  """The face each detection matches, for many images at once.

  Args:
    pred_xywh: `[N, 4]` float detections `x, y, w, h` of all images, concatenated, each image's
      in walk order.
    pred_counts: `[I]` detections per image.
    gt_xywh: `[M, 4]` integer faces `x, y, w, h` of the same images, concatenated.
    gt_counts: `[I]` faces per image.
    protocol: 'official' (the first face with int32 overlap >= 1) or 'python' (the best float
      IoU, if >= 0.5).

  Returns:
    `[N]` int64: the matched face's row in `gt_xywh`, or -1.
  """
  det, face = _detections(pred_xywh, protocol), _faces(gt_xywh, protocol)
  det_start = np.concatenate(([0], np.cumsum(pred_counts)))
  face_start = np.concatenate(([0], np.cumsum(gt_counts)))
  rows, cols = [], []
  for n in np.nonzero((np.asarray(pred_counts) > 0) & (np.asarray(gt_counts) > 0))[0]:
    ds, de, fs, fe = det_start[n], det_start[n + 1], face_start[n], face_start[n + 1]
    r, c = _intersecting(tuple(v[ds:de] for v in det), tuple(v[fs:fe] for v in face), protocol)
    rows.append(r + ds)
    cols.append(c + fs)
  rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
  cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
  return _first_maximum(rows, cols, _pair_overlaps(det, face, rows, cols, protocol), len(pred_xywh), protocol)


def _first_maximum(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, num_dets: int,
                   protocol: str) -> np.ndarray:
  """Per detection, the first column of maximal value if that value passes the threshold, else -1.

  `rows` must be sorted, and `cols` ascending within a row. Faces that do not intersect have
  overlap 0 and so never matter: a match needs a positive maximum.
  """
  matched_face = np.full(num_dets, -1, np.int64)
  if len(rows) == 0:
    return matched_face
  starts = np.concatenate(([0], np.flatnonzero(np.diff(rows)) + 1))
  best = np.maximum.reduceat(values, starts)  # NaN propagates, as in numpy's max (python protocol)
  with np.errstate(invalid='ignore'):
    passes = best >= (1 if protocol == 'official' else 0.5)
  at_best = values == np.repeat(best, np.diff(np.concatenate((starts, [len(rows)]))))
  first_rows, first_at = np.unique(rows[at_best], return_index=True)  # earliest column per row
  first_cols = cols[at_best][first_at]
  winners = np.isin(first_rows, rows[starts[passes]])
  matched_face[first_rows[winners]] = first_cols[winners]
  return matched_face


def match_faces(pred_xywh: np.ndarray, gt_xywh: np.ndarray, protocol: str) -> np.ndarray:
  """`match_detections` for one image: `[P]` matched face index or -1."""
  return match_detections(pred_xywh, np.array([len(pred_xywh)]), gt_xywh, np.array([len(gt_xywh)]), protocol)


def overlaps(pred_xywh: np.ndarray, gt_xywh: np.ndarray, protocol: str) -> np.ndarray:
  """The full overlap matrix `[P, G]` a protocol computes, 0 where the boxes do not intersect.

  'official': int64 holding MATLAB's int32 `boxoverlap` values; 'python': the port's float64 IoU.
  """
  det, face = _detections(pred_xywh, protocol), _faces(gt_xywh, protocol)
  out = np.zeros((len(det[0]), len(face[0])), np.int64 if protocol == 'official' else np.float64)
  rows, cols = _intersecting(det, face, protocol)
  out[rows, cols] = _pair_overlaps(det, face, rows, cols, protocol)
  return out
