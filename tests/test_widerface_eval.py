"""WIDER FACE evaluation (jaxface.evaluation): both protocols, the file formats, and bad input.

- protocol="python" against a plain re-statement of the port (tests/widerface_port.py) on seeded
  predictions over the real val ground truth, sorted and shuffled files: same AP and PR curves.
- protocol="official": invariant to the order of lines within files; its int32 overlaps against a
  literal scalar emulation of MATLAB int32 arithmetic (and against GNU Octave when installed).
- Hand-made ground truth for each rule: a detection on a non-counting face, a duplicate, the
  first-match rule, detection coordinates rounded to int32, float32 score normalisation, an image
  without detections, the negative-width hard box, a [0 0 0 0] face, NaN scores.
- Reading and writing: missing and malformed files (file:line), strict mode, extra files, a
  missing .mat file, the writer's round trip.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
from fractions import Fraction

import numpy as np
import pytest

import widerface_port as port
from conftest import shared_file
from jaxface.evaluation import (SETTINGS, GroundTruth, PredictionFormatError, evaluate, evaluate_dir,
                                load_wider_mat_ground_truth, plot_pr_curves, read_prediction_file,
                                read_predictions, thresholds, voc_ap, write_prediction_set, write_predictions)
from jaxface.evaluation.detection_matching import matlab_int32, overlaps
from jaxface.evaluation.protocol import normalise_scores

INT32_MAX, INT32_MIN = 2**31 - 1, -2**31


# --- fixtures and helpers ------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def gt_dir():
  return str(shared_file('data', 'widerface_val_gt', 'wider_face_val.mat').parent)


@pytest.fixture(scope='module')
def real_gt(gt_dir):
  return load_wider_mat_ground_truth(gt_dir)


@pytest.fixture(scope='module')
def full_set(real_gt, tmp_path_factory):
  """Seeded predictions over the whole val set, written sorted (the writer) and in random row order."""
  preds = port.synthetic_predictions(real_gt, seed=0)
  root = tmp_path_factory.mktemp('widerface_full')
  write_prediction_set(root / 'sorted', preds)
  port.write_unsorted(root / 'shuffled', preds)
  return preds, root / 'sorted', root / 'shuffled'


def tiny_gt(images: dict[str, list], keep: dict[str, list] | None = None) -> GroundTruth:
  """One event 'e'; `images` name -> xywh boxes; `keep` name -> 0-based counting faces (all settings).

  By default every face counts.
  """
  names = list(images)
  keep = keep or {n: list(range(len(images[n]))) for n in names}
  return GroundTruth(events=['e'], files=[names], boxes=[[np.array(images[n], np.int32).reshape(-1, 4)
                                                          for n in names]],
                     keep={s: [[np.array(keep[n], np.int64) for n in names]] for s in SETTINGS})


def dets(*rows) -> np.ndarray:
  return np.array(rows, np.float64).reshape(-1, 5)


def at(result, threshold: float, setting: str = 'hard') -> tuple[int, int]:
  """(true positives, proposals) of `setting` at the threshold `threshold` (a multiple of 0.001)."""
  t = int(round((1 - threshold) * 1000)) - 1
  curve = result.pr_curves[setting]
  assert math.isclose(curve.thresholds[t], threshold, abs_tol=1e-12)
  return int(curve.true_positives[t]), int(curve.proposals[t])


def both(preds, gt):
  return evaluate(preds, gt, 'official'), evaluate(preds, gt, 'python')


# --- ground truth --------------------------------------------------------------------------------------------

def test_real_ground_truth_counts(real_gt):
  gt = real_gt
  assert (len(gt.events), gt.num_images, gt.num_boxes) == (61, 3226, 39708)
  assert gt.events == tuple(sorted(gt.events))  # lexicographic: '2--Demonstration' after '19--...'
  assert gt.face_counts() == {'easy': 7211, 'medium': 13319, 'hard': 31958}
  empty = {s: sum(len(k) == 0 for ek in gt.keep[s] for k in ek) for s in SETTINGS}
  assert empty == {'easy': 622, 'medium': 207, 'hard': 7}
  for e in range(61):  # Easy within Medium within Hard, image by image
    for easy, medium, hard in zip(gt.keep['easy'][e], gt.keep['medium'][e], gt.keep['hard'][e]):
      assert set(easy) <= set(medium) <= set(hard)
  boxes = {(ev, n): b for (ev, n), b in zip(gt.image_keys(), (b for eb in gt.boxes for b in eb))}
  zero = [k for k, b in boxes.items() if len(b) == 1 and not b.any()]
  assert len(zero) == 4
  ev = gt.events.index('39--Ice_Skating')
  j = gt.files[ev].index('39_Ice_Skating_iceskiing_39_583')
  assert boxes[('39--Ice_Skating', '39_Ice_Skating_iceskiing_39_583')][7].tolist() == [1026, 474, -2, 23]
  assert 7 in gt.keep['hard'][ev][j] and 7 not in gt.keep['medium'][ev][j]
  assert sum(int(((b[:, 2] <= 0) | (b[:, 3] <= 0)).sum()) for b in boxes.values()) == 11


def test_missing_mat_file_is_named(tmp_path):
  for name in ('wider_face_val.mat', 'wider_easy_val.mat', 'wider_hard_val.mat'):
    (tmp_path / name).write_bytes(b'')
  with pytest.raises(FileNotFoundError, match='wider_medium_val.mat'):
    load_wider_mat_ground_truth(tmp_path)


def test_ground_truth_checks_its_input():
  with pytest.raises(ValueError, match='outside'):
    tiny_gt({'a': [[0, 0, 5, 5]]}, keep={'a': [1]})
  with pytest.raises(ValueError, match='integers'):
    GroundTruth(events=['e'], files=[['a']], boxes=[[np.array([[0.5, 0, 5, 5]])]],
                keep={s: [[np.zeros(0, np.int64)]] for s in SETTINGS})
  with pytest.raises(ValueError, match='keep lists'):
    GroundTruth(events=['e'], files=[['a']], boxes=[[np.zeros((1, 4), np.int32)]], keep={'hard': [[[0]]]})


# --- the python protocol reproduces the port; the official protocol ignores line order -----------------------

PORT_EVENTS = ['7--Cheering', '22--Picnic', '39--Ice_Skating', '50--Celebration_Or_Party']


@pytest.mark.parametrize('layout, events', [('sorted', PORT_EVENTS), ('shuffled', PORT_EVENTS[1::2])])
def test_python_protocol_reproduces_the_port(real_gt, gt_dir, tmp_path, layout, events):
  """Degenerate faces included: [0 0 0 0] images (7, 50), zero widths (7), the negative-width hard box (39)."""
  gt = real_gt.select_events(events)
  preds = port.synthetic_predictions(gt, seed=3)
  if layout == 'sorted':
    write_prediction_set(tmp_path, preds)
  else:
    port.write_unsorted(tmp_path, preds)
  expected = port.evaluation(str(tmp_path), port.load_gt_lists(gt_dir, events))
  got = evaluate_dir(tmp_path, gt, protocol='python')
  assert got.protocol == 'python' and not got.warnings and not got.notes
  for s in SETTINGS:
    ap, curve, faces = expected[s]
    assert abs(got.ap[s] - ap) <= 1e-12, (s, got.ap[s], ap)
    np.testing.assert_array_equal(got.pr_curves[s].precision, curve[:, 0])
    np.testing.assert_array_equal(got.pr_curves[s].recall, curve[:, 1])
    assert got.face_counts[s] == faces


def test_official_protocol_ignores_line_order_full_set(real_gt, full_set):
  _, sorted_dir, shuffled_dir = full_set
  a = evaluate_dir(sorted_dir, real_gt)
  b = evaluate_dir(shuffled_dir, real_gt)
  assert a.protocol == 'official' and not a.warnings and not a.notes
  for s in SETTINGS:
    assert a.ap[s] == b.ap[s]
    np.testing.assert_array_equal(a.pr_curves[s].true_positives, b.pr_curves[s].true_positives)
    np.testing.assert_array_equal(a.pr_curves[s].proposals, b.pr_curves[s].proposals)
  assert a.face_counts == {'easy': 7211, 'medium': 13319, 'hard': 31958}
  assert 0.5 < a.ap['hard'] < a.ap['medium'] < a.ap['easy'] < 1  # a plausible detector
  # The port, by contrast, depends on line order (REFERENCE.md: "drastically").
  p_sorted = evaluate_dir(sorted_dir, real_gt, 'python')
  p_shuffled = evaluate_dir(shuffled_dir, real_gt, 'python')
  assert p_shuffled.ap['easy'] < p_sorted.ap['easy'] - 0.3
  # On sorted files the protocols differ only by the IoU and normalisation rules: slightly.
  for s in SETTINGS:
    assert 0 < abs(a.ap[s] - p_sorted.ap[s]) < 0.01
  assert 'protocol=official' in a.summary() and 'protocol=python' in p_sorted.summary()


def test_files_and_memory_give_the_same_numbers(real_gt, full_set):
  preds, sorted_dir, _ = full_set
  for protocol in ('official', 'python'):
    from_files = evaluate_dir(sorted_dir, real_gt, protocol)
    # In memory, the python protocol sees the file order: the writer's sort.
    mem = {k: v[np.argsort(-v[:, 4], kind='stable')] for k, v in preds.items()}
    in_memory = evaluate(mem, real_gt, protocol)
    assert from_files.ap == in_memory.ap
    assert from_files.num_detections == in_memory.num_detections == sum(len(v) for v in preds.values())


# --- the int32 overlap, literally ----------------------------------------------------------------------------

def _i32(x: float) -> int:
  """MATLAB int32(double): round half away from zero (exactly), saturate, NaN -> 0."""
  if math.isnan(x):
    return 0
  if math.isinf(x):
    return INT32_MAX if x > 0 else INT32_MIN
  f = Fraction(x)
  r = math.floor(abs(f) + Fraction(1, 2))
  return max(INT32_MIN, min(INT32_MAX, r if f >= 0 else -r))


def _op(a, b, fn) -> int:
  """A MATLAB int32 operation with an int32 or double operand: computed in double, then int32."""
  return _i32(fn(float(a), float(b)))


def _max(a: int, b: float) -> int:
  return a if math.isnan(b) else _i32(max(float(a), b))  # MATLAB max skips NaN


def _min(a: int, b: float) -> int:
  return a if math.isnan(b) else _i32(min(float(a), b))


def _div(a: int, b: int) -> int:
  if b == 0:
    return INT32_MAX if a > 0 else INT32_MIN if a < 0 else 0
  return _i32(a / b)


def literal_boxoverlap(gt_xywh, det_xywh) -> int:
  """boxoverlap.m for one int32 GT row and one double detection, one MATLAB operation at a time."""
  add, sub, mul = (lambda x, y: x + y), (lambda x, y: x - y), (lambda x, y: x * y)
  a = [int(gt_xywh[0]), int(gt_xywh[1])]
  a += [_op(a[0], gt_xywh[2], add), _op(a[1], gt_xywh[3], add)]
  b = [float(det_xywh[0]), float(det_xywh[1])]
  b += [b[0] + float(det_xywh[2]), b[1] + float(det_xywh[3])]
  x1, y1, x2, y2 = _max(a[0], b[0]), _max(a[1], b[1]), _min(a[2], b[2]), _min(a[3], b[3])
  w, h = _op(_op(x2, x1, sub), 1, add), _op(_op(y2, y1, sub), 1, add)
  inter = _op(w, h, mul)
  aarea = _op(_op(_op(a[2], a[0], sub), 1, add), _op(_op(a[3], a[1], sub), 1, add), mul)
  with np.errstate(all='ignore'):
    barea = float((np.float64(b[2]) - b[0] + 1) * (np.float64(b[3]) - b[1] + 1))
  union = _op(_op(aarea, barea, add), inter, sub)
  o = _div(inter, union)
  return 0 if w <= 0 or h <= 0 else o


def _adversarial_boxes(seed: int, n_gt: int = 40, n_det: int = 120):
  rng = np.random.default_rng(seed)
  gt = rng.integers(0, 40, (n_gt, 4))
  gt[:5, 2:] = [[0, 0], [-2, 5], [3, -1], [0, 7], [-1, -1]]  # degenerate faces
  gt[5] = [INT32_MAX - 10, 3, 50, 4]  # x2 saturates
  gt[6] = [INT32_MIN + 3, 0, 2**31 - 5, 10]  # huge width: the area saturates
  centre = gt[rng.integers(0, n_gt, n_det), :2] + rng.normal(0, 3, (n_det, 2))
  det = np.concatenate([centre, rng.uniform(0.1, 25, (n_det, 2))], axis=1)
  det[::3] = np.round(det[::3] * 2) / 2  # x.5 coordinates: half away from zero
  det[1::7, 0] = 7 + 0.49999999999999994
  det[2::11, 2:] = rng.uniform(-3, 1, (len(det[2::11]), 2))  # negative and sub-pixel sizes
  special = [[np.nan, 3, 5, 5], [3, 3, np.nan, 5], [np.inf, 0, 5, 5], [-np.inf, 0, np.inf, 5],
             [-1e12, -1e12, 2e12, 2e12], [0, 0, 0, 0], [0.2, -0.3, 0.4, 0.1], [INT32_MAX - 8, 3.5, 40, 2.5]]
  return gt, np.concatenate([det, special])


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_official_overlaps_equal_literal_int32_arithmetic(seed):
  gt, det = _adversarial_boxes(seed)
  got = overlaps(det, gt, 'official')
  want = np.array([[literal_boxoverlap(g, d) for g in gt] for d in det])
  np.testing.assert_array_equal(got, want)
  assert set(np.unique(want)) - {0, 1}, 'the adversarial set should reach values other than 0 and 1'


@pytest.mark.parametrize('seed', [0, 1])
def test_python_overlaps_equal_the_port(seed):
  gt, det = _adversarial_boxes(seed)
  det, gt = det[np.all(np.isfinite(det), axis=1)], gt[7:].astype(np.float64)  # the port has no NaN/inf rules
  xyxy = lambda b: np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
  with np.errstate(all='ignore'):
    want = port.bbox_overlaps(xyxy(det), xyxy(gt))
  np.testing.assert_array_equal(overlaps(det, gt, 'python'), want)


def test_matlab_int32_rounding():
  x = np.array([0.5, -0.5, 1.5, -2.5, 0.49999999999999994, 2**31, -2**31 - 1, np.inf, -np.inf, np.nan])
  np.testing.assert_array_equal(matlab_int32(x), [1, -1, 2, -3, 0, INT32_MAX, INT32_MIN, INT32_MAX, INT32_MIN, 0])


@pytest.mark.skipif(shutil.which('octave-cli') is None, reason='GNU Octave (octave-cli) not installed')
def test_official_arithmetic_matches_octave(tmp_path):
  """boxoverlap.m with an int32 GT, and norm_score.m's single-precision normalisation, in real Octave."""
  gt, det = _adversarial_boxes(5, n_gt=30, n_det=60)
  scores = np.concatenate([np.random.default_rng(5).uniform(0.02, 1, 200).round(9), [0.7000000001, 0.1, 0.99]])
  np.savetxt(tmp_path / 'gt.txt', gt, fmt='%d')
  np.savetxt(tmp_path / 'det.txt', det, fmt='%.17g')
  np.savetxt(tmp_path / 'scores.txt', scores, fmt='%.17g')
  (tmp_path / 'check.m').write_text("""
g = int32(load('gt.txt')); d = load('det.txt'); s = load('scores.txt');
g(:,3) = g(:,1) + g(:,3); g(:,4) = g(:,2) + g(:,4);
d(:,3) = d(:,1) + d(:,3); d(:,4) = d(:,2) + d(:,4);
o = zeros(size(d,1), size(g,1));
for h = 1:size(d,1)
  b = d(h,:);
  x1 = max(g(:,1), b(1)); y1 = max(g(:,2), b(2)); x2 = min(g(:,3), b(3)); y2 = min(g(:,4), b(4));
  w = x2 - x1 + 1; hh = y2 - y1 + 1; inter = w .* hh;
  aarea = (g(:,3) - g(:,1) + 1) .* (g(:,4) - g(:,2) + 1); barea = (b(3) - b(1) + 1) * (b(4) - b(2) + 1);
  v = inter ./ (aarea + barea - inter); v(w <= 0) = 0; v(hh <= 0) = 0;
  o(h,:) = double(v');
end
dlmwrite('o.txt', o, 'precision', '%d');
hi = max(realmin('single'), max(s)); lo = min(realmax('single'), min(s));
x = zeros(size(s)); x(:) = (s - lo) / (hi - lo);
fid = fopen('norm.txt', 'w'); fprintf(fid, '%.17g\\n', x); fclose(fid);
""")
  subprocess.run(['octave-cli', '-q', 'check.m'], cwd=tmp_path, check=True, capture_output=True, timeout=120)
  octave_o = np.loadtxt(tmp_path / 'o.txt', delimiter=',').reshape(len(det), len(gt))
  got = overlaps(det, gt, 'official')
  # Octave reads a NaN corner (x, or x + w = -inf + inf) as 0 in max/min; MATLAB skips it.
  with np.errstate(invalid='ignore'):
    nan = np.isnan(det).any(axis=1) | np.isnan(det[:, :2] + det[:, 2:]).any(axis=1)
  np.testing.assert_array_equal(got[~nan], octave_o[~nan])
  assert np.all(got[nan] <= 0) and np.all(octave_o[nan] <= 0)  # never a match either way
  np.testing.assert_array_equal(normalise_scores(scores, 'official'), np.loadtxt(tmp_path / 'norm.txt'))


# --- hand-made cases, one rule each --------------------------------------------------------------------------

def test_detection_on_a_non_counting_face_is_dropped():
  gt = tiny_gt({'a': [[0, 0, 20, 20], [100, 0, 20, 20]]}, keep={'a': [0]})
  preds = {('e', 'a'): dets([100, 0, 20, 20, 1.0], [0, 0, 20, 20, 0.5], [300, 300, 20, 20, 0.0])}
  for r in both(preds, gt):
    assert at(r, 0.9) == (0, 0)  # only the dropped detection passes: no proposal at all
    assert np.isnan(r.pr_curves['hard'].precision[99])
    assert at(r, 0.5) == (1, 1)
    assert at(r, 0.0) == (1, 2)
    assert r.face_counts['hard'] == 1 and r.pr_curves['hard'].recall[-1] == 1.0


def test_duplicate_detection_is_a_false_positive():
  gt = tiny_gt({'a': [[10, 10, 20, 20]]})
  preds = {('e', 'a'): dets([10, 10, 20, 20, 1.0], [12, 11, 20, 20, 0.5], [10, 10, 19, 21, 0.0])}
  for r in both(preds, gt):
    assert at(r, 0.9) == (1, 1)
    assert at(r, 0.5) == (1, 2)
    assert at(r, 0.0) == (1, 3)


def test_official_takes_the_first_face_with_iou_over_half():
  # Faces A and B overlap with IoU 336/546 = 0.615. A detection equal to B has IoU 1 with B but
  # the int32 overlap rounds 0.615 to 1 too, so the official tool takes A, which comes first.
  gt = tiny_gt({'a': [[0, 0, 20, 20], [5, 0, 20, 20]]})
  preds = {('e', 'a'): dets([5, 0, 20, 20, 1.0], [0, 0, 20, 20, 0.0])}
  official, python = both(preds, gt)
  np.testing.assert_array_equal(overlaps(preds[('e', 'a')][:, :4], gt.boxes[0][0], 'official'), [[1, 1], [1, 1]])
  assert at(official, 0.0) == (1, 2)  # both detections pick A: the second is a duplicate
  assert at(python, 0.0) == (2, 2)    # best match: B, then A
  # With A not counting, the official tool drops the first detection instead of finding B.
  gt_b = tiny_gt({'a': [[0, 0, 20, 20], [5, 0, 20, 20]]}, keep={'a': [1]})
  official, python = both({('e', 'a'): dets([5, 0, 20, 20, 1.0], [200, 0, 20, 20, 0.0])}, gt_b)
  assert at(official, 0.5) == (0, 0) and at(python, 0.5) == (1, 1)


def test_official_rounds_detection_coordinates_to_int32():
  # Float IoU of [3.4 0 9 9] with [0 0 9 9] is 66/134 = 0.49; the official tool rounds x1 to 3
  # and x2 = 12.4 to 12, so inter = 70 and union = round(100 + 100) - 70 = 130: 0.54, a match.
  gt = tiny_gt({'a': [[0, 0, 9, 9]]})
  official, python = both({('e', 'a'): dets([3.4, 0, 9, 9, 1.0], [200, 0, 9, 9, 0.0])}, gt)
  assert at(official, 0.5) == (1, 1)
  assert at(python, 0.5) == (0, 1)


def test_official_normalises_scores_in_float32():
  # 0.7000000001 passes the threshold 0.7 in float64 but not as float32 (0.69999999).
  gt = tiny_gt({'a': [[0, 0, 20, 20]]})
  preds = {('e', 'a'): dets([0, 0, 20, 20, 0.7000000001], [200, 0, 20, 20, 1.0], [300, 0, 20, 20, 0.0])}
  official, python = both(preds, gt)
  assert at(python, 0.7) == (1, 2)
  assert at(official, 0.7) == (0, 1)
  assert at(official, 0.699) == (1, 2)


def test_faces_of_images_without_detections_still_count():
  gt = tiny_gt({'a': [[0, 0, 20, 20]], 'b': [[0, 0, 20, 20]]})
  preds = {('e', 'a'): dets([0, 0, 20, 20, 1.0], [200, 0, 20, 20, 0.0])}
  for r in both(preds, gt):
    assert r.face_counts['hard'] == 2
    assert r.pr_curves['hard'].recall[-1] == 0.5
    assert r.ap['hard'] == 0.5
  assert evaluate({**preds, ('e', 'b'): np.zeros((0, 5))}, gt).ap == evaluate(preds, gt).ap


def test_negative_width_hard_box_counts_but_never_matches():
  gt = tiny_gt({'a': [[1026, 474, -2, 23], [0, 0, 20, 20]]})
  preds = {('e', 'a'): dets([1026, 474, -2, 23, 1.0], [1024, 474, 2, 23, 0.9], [0, 0, 20, 20, 0.0])}
  for r in both(preds, gt):
    assert r.face_counts['hard'] == 2
    assert at(r, 0.0) == (1, 3)
    assert r.pr_curves['hard'].recall.max() == 0.5


def test_zero_face_and_images_without_ground_truth():
  # The real [0 0 0 0] faces count in no setting: a detection on one is dropped; only a detection
  # smaller than a pixel at the origin matches it. An image without faces contributes nothing.
  gt = tiny_gt({'zero': [[0, 0, 0, 0]], 'face': [[0, 0, 20, 20]], 'none': []},
               keep={'zero': [], 'face': [0], 'none': []})
  preds = {('e', 'zero'): dets([0, 0, 0, 0, 0.9], [0, 0, 1, 1, 0.8]),
           ('e', 'face'): dets([0, 0, 20, 20, 1.0]),
           ('e', 'none'): dets([5, 5, 10, 10, 0.95], [0, 0, 0, 0, 0.0])}
  for r in both(preds, gt):
    assert r.face_counts['hard'] == 1
    assert at(r, 0.0) == (1, 2)  # the face, plus the 1x1 detection as a false positive


def test_official_walks_nan_scores_first():
  # MATLAB sort(..., 'descend') puts NaN first: that detection takes the face, the 1.0 one is a
  # duplicate; NaN passes no threshold but is counted once a later detection passes.
  gt = tiny_gt({'a': [[0, 0, 20, 20]]})
  r = evaluate({('e', 'a'): dets([0, 0, 20, 20, 1.0], [0, 0, 20, 20, np.nan], [100, 0, 20, 20, 0.0])}, gt)
  assert at(r, 0.5) == (1, 2)
  assert at(r, 0.0) == (1, 3)


def test_voc_ap():
  assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5]), skip_nan=False) == 0.75
  # A NaN precision (no proposals) where recall is 0: skipped by MATLAB max, kept by numpy maximum.
  rec, prec = np.array([0.0, 0.5, 1.0]), np.array([np.nan, 1.0, 0.5])
  assert voc_ap(rec, prec, skip_nan=True) == voc_ap(rec, prec, skip_nan=False) == 0.75
  assert voc_ap(np.zeros(3), np.full(3, np.nan), skip_nan=True) == 0.0


def test_thresholds():
  t = thresholds()
  assert len(t) == 1000 and t[0] == 1 - 1 / 1000 and t[-1] == 0.0
  assert np.all(np.diff(t) < 0)


def test_evaluate_rejects_bad_input():
  gt = tiny_gt({'a': [[0, 0, 20, 20]]})
  with pytest.raises(ValueError, match='protocol'):
    evaluate({}, gt, protocol='matlab')
  with pytest.raises(KeyError, match='a.jpg'):
    evaluate({('e', 'a.jpg'): dets([0, 0, 1, 1, 1])}, gt)
  with pytest.raises(ValueError, match=r'\[P, 5\]'):
    evaluate({('e', 'a'): np.zeros((2, 4))}, gt)


# --- reading and writing -------------------------------------------------------------------------------------

def _two_images_written(tmp_path):
  gt = tiny_gt({'a': [[0, 0, 20, 20]], 'b': [[50, 50, 20, 20]]})
  a = dets([0, 0, 20, 20, 0.9], [200, 0, 20, 20, 0.1])
  write_predictions(tmp_path, 'e', 'a', a[:, :4], a[:, 4])
  return gt, {('e', 'a'): a}


@pytest.mark.parametrize('protocol', ['official', 'python'])
def test_missing_file_is_zero_detections_with_a_warning(tmp_path, protocol):
  gt, only_a = _two_images_written(tmp_path)
  r = evaluate_dir(tmp_path, gt, protocol)
  assert len(r.warnings) == 1 and str(tmp_path / 'e' / 'b.txt') in r.warnings[0] and 'missing' in r.warnings[0]
  assert r.ap == evaluate(only_a, gt, protocol).ap
  with pytest.raises(PredictionFormatError, match='b.txt'):
    evaluate_dir(tmp_path, gt, protocol, strict=True)


def test_missing_event_folder_is_one_warning(tmp_path):
  gt = tiny_gt({'a': [[0, 0, 20, 20]], 'b': [[50, 50, 20, 20]]})
  _, report = read_predictions(tmp_path, gt)
  assert report.warnings == [f'{tmp_path / "e"}: missing event folder; its 2 images are scored as zero detections']
  with pytest.raises(FileNotFoundError):
    read_predictions(tmp_path / 'nowhere', gt)


@pytest.mark.parametrize('protocol', ['official', 'python'])
def test_malformed_line_names_file_and_line(tmp_path, protocol):
  gt, only_a = _two_images_written(tmp_path)
  path = tmp_path / 'e' / 'b.txt'
  path.write_text('b\n3\n50 50 20 20 0.8\n60 60 20 20 0.7\n1 2 three 4 0.5\n')
  r = evaluate_dir(tmp_path, gt, protocol)
  assert len(r.warnings) == 1 and f'{path}:5:' in r.warnings[0] and 'three' in r.warnings[0]
  assert r.ap == evaluate(only_a, gt, protocol).ap  # the whole file counts as zero detections
  with pytest.raises(PredictionFormatError, match=f'{path}:5:'):
    evaluate_dir(tmp_path, gt, protocol, strict=True)
  with pytest.raises(PredictionFormatError, match=f'{path}:5:'):
    read_prediction_file(path, protocol)


@pytest.mark.parametrize('text, line', [('b\n3\n1 2 3 4 0.5\n5 6 7 8 0.4\n', 5), ('b\n2.5\n1 2 3 4 0.5\n', 2),
                                        ('b\n', 2), ('b\n2\n1 2 3 4 0.5\n\n5 6 7 8 0.4\n', 4),
                                        ('b\n1\n1 2 3 4\n', 3)])
def test_official_reader_rejects(tmp_path, text, line):
  path = tmp_path / 'b.txt'
  path.write_text(text)
  with pytest.raises(PredictionFormatError, match=f'{path}:{line}:'):
    read_prediction_file(path, 'official')


def test_official_reads_exactly_count_lines_python_reads_all(tmp_path):
  path = tmp_path / 'b.txt'
  path.write_text('b\n1\n1,2,3,4,0.5,9\n\n5 6 7 8 0.4\r\n')
  np.testing.assert_array_equal(read_prediction_file(path, 'official'), [[1, 2, 3, 4, 0.5]])
  with pytest.raises(PredictionFormatError, match=f'{path}:3:'):  # the port has no commas
    read_prediction_file(path, 'python')
  path.write_text('b\n1\n1 2 3 4 0.5 extra\n\n5 6 7 8 0.4\r\n')
  np.testing.assert_array_equal(read_prediction_file(path, 'python'), [[1, 2, 3, 4, 0.5], [5, 6, 7, 8, 0.4]])
  path.write_text('b\n0\n')
  assert read_prediction_file(path, 'official').shape == (0, 5)


def test_extra_files_are_ignored_with_a_note(tmp_path):
  gt, _ = _two_images_written(tmp_path)
  write_predictions(tmp_path, 'e', 'b', [[50, 50, 20, 20]], [0.5])
  clean = evaluate_dir(tmp_path, gt)
  write_predictions(tmp_path, 'e', 'c', [[0, 0, 20, 20]], [0.99])
  write_predictions(tmp_path, 'other--Event', 'x', [[0, 0, 20, 20]], [0.99])
  (tmp_path / 'README').write_text('hello')
  r = evaluate_dir(tmp_path, gt, strict=True)
  assert not r.warnings and r.ap == clean.ap and len(r.notes) == 3
  notes = '\n'.join(r.notes)
  assert 'c.txt' in notes and 'other--Event' in notes and 'README' in notes


def test_writer_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  boxes = rng.uniform(0, 500, (30, 4)) * [1, 1, 0.2, 0.2]
  scores = rng.choice([0.1, 0.25, 0.5, 1 / 3, 0.7000000001, 0.9], 30)  # ties on purpose
  path = write_predictions(tmp_path, 'ev', 'img_1', boxes, scores)
  lines = open(path).read().split('\n')
  assert lines[0] == 'img_1' and lines[1] == '30' and len(lines) == 33 and lines[-1] == ''
  back = read_prediction_file(path)
  order = np.argsort(-scores, kind='stable')
  np.testing.assert_array_equal(back, np.concatenate([boxes, scores[:, None]], axis=1)[order])
  assert np.all(np.diff(back[:, 4]) <= 0)
  empty = write_predictions(tmp_path, 'ev', 'img_2', np.zeros((0, 4)), [])
  assert open(empty).read() == 'img_2\n0\n' and read_prediction_file(empty).shape == (0, 5)
  with pytest.raises(ValueError, match='scores'):
    write_predictions(tmp_path, 'ev', 'img_3', boxes, scores[:3])


def test_plot_pr_curves(tmp_path, real_gt, full_set):
  import cv2
  result = evaluate_dir(full_set[1], real_gt)
  path = plot_pr_curves(result, tmp_path / 'sub' / 'pr.png')
  image = cv2.imread(path)
  assert image.shape == (700, 900, 3) and (image < 128).any()
