"""WIDER FACE Easy/Medium/Hard average precision under the official tool's or the Python port's rules.

The algorithm both evaluators share (REFERENCE.md 1.9 and "the official tool and the Python port
disagree"):

1. Scores are min-max normalised over every detection of the val set.
2. For each setting and image, the setting's face count is added first; an image without ground
   truth or without detections adds nothing else.
3. Detections are walked in order; each takes the face `matching.match_faces` picks. On a match
   (overlap >= 0.5) to a non-counting face the detection is dropped (it is no longer a proposal);
   to a counting face not yet found it is a true positive; otherwise (no match, or a face already
   found) it stays a proposal, i.e. a false positive.
4. At each of the 1000 thresholds `1 - t/1000` (t = 1..1000) an image contributes the detections
   up to the **last** one whose normalised score is >= the threshold: their proposals and the
   running true-positive count there. Sums over images give precision = TP / proposals and
   recall = TP / faces; AP is the VOC area under the precision envelope.

Where the two protocols differ:

| | official (MATLAB eval_tools) | python (wondervictor port) |
|---|---|---|
| file order | each file sorted by descending score, stable, NaN first | as in the file |
| normalisation | float32 (it starts from `realmin/realmax('single')`) | float64, starting from max 0, min 1 |
| IoU | int32 arithmetic: the first face with overlap >= 0.5 | float64: the best face |
| envelope | MATLAB `max` skips NaN precision | numpy `maximum` propagates it |

How it is vectorised, with results identical to the loops: the face a detection picks does not
depend on earlier detections, so matching is one array operation per image, and the sequential
part reduces to "the first detection (in walk order) on each face". Detection i lies within an
image's prefix at threshold t exactly when some detection j >= i of that image passes t, i.e.
when t is at least the suffix minimum over j >= i of the first threshold index detection j
passes. Each setting's curve is then two weighted `bincount`s over all detections of the set,
and the three settings share the matching.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from jaxface.evaluation.ground_truth import SETTINGS, GroundTruth
from jaxface.evaluation.detection_matching import match_detections

PROTOCOLS = ('official', 'python')
THRESH_NUM = 1000
PROTOCOL_DESCRIPTIONS = {
    'official': 'official MATLAB eval_tools semantics: files sorted by score, float32 score '
                'normalisation, int32 IoU taking the first face with IoU >= 0.5',
    'python': 'Python port semantics (wondervictor/WiderFace-Evaluation, as in biubug6 and '
              'insightface): file order, float64 normalisation, float IoU taking the best face',
}


def thresholds() -> np.ndarray:
  """The 1000 score thresholds `1 - t/1000`, t = 1..1000 (float64, descending, the last is 0)."""
  return 1 - np.arange(1, THRESH_NUM + 1) / THRESH_NUM


@dataclasses.dataclass(frozen=True, eq=False)
class PRCurve:
  """One setting's curve at the 1000 thresholds (index t-1 holds threshold 1 - t/1000)."""
  thresholds: np.ndarray       # [T] float64, descending
  true_positives: np.ndarray   # [T] int64
  proposals: np.ndarray        # [T] int64, detections counted (true and false positives)
  precision: np.ndarray        # [T] float64, TP / proposals (NaN where there are no proposals)
  recall: np.ndarray           # [T] float64, TP / faces


@dataclasses.dataclass(frozen=True, eq=False)
class EvalResult:
  """Easy/Medium/Hard AP, PR curves and face counts, and the protocol that produced them.

  `warnings` (missing or malformed prediction files, scored as zero detections) and `notes`
  (ignored extra files) come from reading a prediction folder; they are empty for in-memory input.
  """
  protocol: str
  ap: dict[str, float]
  pr_curves: dict[str, PRCurve]
  face_counts: dict[str, int]
  num_detections: int
  warnings: tuple[str, ...] = ()
  notes: tuple[str, ...] = ()

  def summary(self) -> str:
    lines = [f'WIDER FACE AP, protocol={self.protocol} ({PROTOCOL_DESCRIPTIONS[self.protocol]})']
    for s in SETTINGS:
      lines.append(f'  {s.capitalize():6s} AP {self.ap[s]:.4f}   ({self.face_counts[s]} faces)')
    lines.append(f'  {self.num_detections} detections')
    if self.warnings:
      lines.append(f'  {len(self.warnings)} warning(s): prediction files scored as zero detections')
    return '\n'.join(lines)


def _check_protocol(protocol: str) -> None:
  if protocol not in PROTOCOLS:
    raise ValueError(f'unknown protocol {protocol!r}; valid: {PROTOCOLS}')


def voc_ap(recall: np.ndarray, precision: np.ndarray, skip_nan: bool) -> float:
  """VOC area under the precision envelope, sentinels 0 and 1 on recall, 0 on precision.

  Args:
    skip_nan: the official tool's arithmetic: MATLAB `max` ignores a NaN precision and `sum`
      adds left to right. Otherwise the port's: numpy `maximum` carries NaN down the envelope
      and `np.sum` adds pairwise. NaN precision only occurs where recall is 0, so the two agree
      but for the last bits of the sum, except in degenerate cases.
  """
  mrec = np.concatenate(([0.0], np.asarray(recall, np.float64), [1.0]))
  mpre = np.concatenate(([0.0], np.asarray(precision, np.float64), [0.0]))
  running_max = np.fmax if skip_nan else np.maximum
  mpre = running_max.accumulate(mpre[::-1])[::-1]  # mpre[i-1] = max(mpre[i-1], mpre[i]), from the end
  i = np.nonzero(mrec[1:] != mrec[:-1])[0]
  terms = (mrec[i + 1] - mrec[i]) * mpre[i + 1]
  if skip_nan:  # MATLAB/Octave `sum` adds left to right
    return float(np.cumsum(terms)[-1]) if len(terms) else 0.0
  return float(np.sum(terms))  # numpy's pairwise sum, as the port


def _walk_order(scores: np.ndarray, protocol: str) -> np.ndarray:
  if protocol == 'python':
    return np.arange(len(scores))
  # MATLAB sort(..., 'descend') is stable and puts NaN first.
  return np.argsort(np.where(np.isnan(scores), -np.inf, -scores), kind='stable')


def normalise_scores(scores: np.ndarray, protocol: str) -> np.ndarray:
  """The global min-max normalisation of all the set's scores, as the protocol does it (float64 out).

  'official': in float32, from max = realmin('single'), min = realmax('single'), skipping NaN.
  'python': in float64, from max = 0, min = 1 (scores inside [0, 1] do not move the range).
  Equal min and max give NaN (0/0), which passes no threshold, in both tools.
  """
  with np.errstate(all='ignore'):
    if protocol == 'official':
      # norm_score.m: max/min start at realmin/realmax('single') and become single; the double
      # scores are then converted to single for `(s - min) / (max - min)`. MATLAB max/min skip NaN.
      s = scores.astype(np.float32)
      hi = np.fmax.reduce(s, initial=np.finfo(np.float32).tiny)
      lo = np.fmin.reduce(s, initial=np.finfo(np.float32).max)
      return ((s - lo) / (hi - lo)).astype(np.float64)
    hi = max(0.0, float(np.max(scores))) if len(scores) else 0.0
    lo = min(1.0, float(np.min(scores))) if len(scores) else 1.0
    return (scores - lo) / (hi - lo)


def evaluate(preds: Mapping[tuple[str, str], np.ndarray], gt: GroundTruth, protocol: str = 'official',
             *, warnings: tuple[str, ...] = (), notes: tuple[str, ...] = ()) -> EvalResult:
  """Scores detections against WIDER-style ground truth.

  Args:
    preds: `(event, name) -> [P, 5]` float `x, y, w, h, score` per image, in file order (any
      order for the official protocol, which sorts). A missing or empty entry means no detections.
      Keys must be images of `gt`.
    gt: the ground truth (`load_wider_mat_ground_truth`, or built directly).
    protocol: 'official' (default) or 'python'; see the module docstring.
    warnings, notes: passed through to the result (from reading the files).

  Returns:
    An `EvalResult` whose `protocol` names the rules that produced its numbers.
  """
  _check_protocol(protocol)
  index = {key: n for n, key in enumerate(gt.image_keys())}
  unknown = [k for k in preds if k not in index]
  if unknown:
    raise KeyError(f'{len(unknown)} prediction keys are not images of the ground truth, e.g. {unknown[:3]} '
                   f'(keys are (event, name) without extension)')
  gt_boxes = [b for event_boxes in gt.boxes for b in event_boxes]
  gt_offsets = np.concatenate(([0], np.cumsum([len(b) for b in gt_boxes])))

  # Detections of all images in walk order, concatenated: boxes, raw scores, image of each.
  ordered, owners = [], []
  for key, dets in preds.items():
    dets = np.asarray(dets, np.float64)
    if dets.size == 0:
      continue
    if dets.ndim != 2 or dets.shape[1] != 5:
      raise ValueError(f'predictions of {key} must be [P, 5] (x, y, w, h, score), got shape {dets.shape}')
    ordered.append(dets[_walk_order(dets[:, 4], protocol)])
    owners.append(index[key])
  sort = np.argsort(owners, kind='stable')  # images in ground-truth order
  ordered = [ordered[i] for i in sort]
  owners = [owners[i] for i in sort]
  counts = np.array([len(d) for d in ordered], np.int64)
  dets = np.concatenate(ordered) if ordered else np.zeros((0, 5))
  image_of = np.repeat(np.asarray(owners, np.int64), counts)
  scores = normalise_scores(dets[:, 4], protocol)

  # Matching (setting-independent): the global face row each detection matches, or -1.
  per_image = np.zeros(len(gt_boxes), np.int64)
  per_image[owners] = counts
  all_boxes = np.concatenate(gt_boxes) if gt_boxes else np.zeros((0, 4), np.int32)
  face = match_detections(dets[:, :4], per_image, all_boxes, np.diff(gt_offsets), protocol)
  matched = face >= 0
  has_gt = (gt_offsets[image_of + 1] > gt_offsets[image_of]) if len(dets) else np.zeros(0, bool)
  # The first detection (in walk order) on each face: concatenation keeps images apart.
  first = np.zeros(len(dets), bool)
  matched_at = np.nonzero(matched)[0]
  _, first_of_face = np.unique(face[matched_at], return_index=True)
  first[matched_at[first_of_face]] = True

  # First threshold index each detection passes (T = never; NaN passes none), then the suffix
  # minimum within each image: detection i is in the prefix at t iff t >= that minimum.
  thr = thresholds()
  passed = np.searchsorted(thr[::-1], scores, side='right')  # how many thresholds are <= score
  passed[np.isnan(scores)] = 0
  enters = THRESH_NUM - passed
  if len(dets):
    offset = image_of * (THRESH_NUM + 1)  # keeps the running minimum inside each image
    enters = np.minimum.accumulate((enters + offset)[::-1])[::-1] - offset

  ap, curves, face_counts = {}, {}, gt.face_counts()
  for setting in SETTINGS:
    counting = np.zeros(int(gt_offsets[-1]), bool)
    for n, keep in enumerate(k for event_keep in gt.keep[setting] for k in event_keep):
      counting[gt_offsets[n] + keep] = True
    on_counting = np.zeros(len(dets), bool)  # matched to a face that counts in this setting
    on_counting[matched_at] = counting[face[matched_at]]
    true_positive = first & on_counting
    proposal = has_gt & ~(matched & ~on_counting)
    tp = _cumulative(enters, true_positive)
    prop = _cumulative(enters, proposal)
    with np.errstate(divide='ignore', invalid='ignore'):
      precision = tp / prop
      recall = tp / np.float64(face_counts[setting])
    curves[setting] = PRCurve(thr, tp, prop, precision, recall)
    ap[setting] = voc_ap(recall, precision, skip_nan=(protocol == 'official'))
  return EvalResult(protocol=protocol, ap=ap, pr_curves=curves, face_counts=face_counts,
                    num_detections=len(dets), warnings=tuple(warnings), notes=tuple(notes))


def _cumulative(enters: np.ndarray, selected: np.ndarray) -> np.ndarray:
  """Per threshold index, how many selected detections have entered by then."""
  hist = np.bincount(enters[selected], minlength=THRESH_NUM + 1)
  return np.cumsum(hist)[:THRESH_NUM].astype(np.int64)
