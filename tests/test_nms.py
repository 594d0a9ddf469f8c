"""Static-shape greedy NMS (jaxface.nms) and per-image post-processing (jaxface.inference.postprocess
with RetinaFace's scores and decode against hand-made priors).

NMS is checked against the reference's `py_cpu_nms` (torch re-statement, REFERENCE.md section 1.8) on
seeded random clustered boxes, and on hand examples for the +1 convention, ties with the threshold,
masks, truncation, degenerate boxes and retracing; each case for both exact forms (`nms_argmax`, and
`nms_tiled` with 16-row tiles, so that the 48 rows span three tiles), and the two forms against each
other on larger sets with ties, chains and duplicates.
"""
from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import inference
from jaxface.nms import iou_matrix, iou_one_to_many, nms, nms_argmax, nms_tiled
from jaxface.retinaface import FAMILY, box_coding


def postprocess_one(bbox, logits, landmarks, priors, prior_ok, conf_threshold, nms_threshold, pixel_wh, cfg,
                    conf_inclusive=False, scale=None):
  """One image's `[A,4]`, `[A,2]`, `[A,10]` head outputs through the shared post-processing, with
  RetinaFace's softmax scores and a decode against arbitrary `priors [A,4]` (normalised cxcywh)."""
  def decode(outputs, idx, image_hw):
    loc, _, landm = outputs
    p = priors[idx]
    boxes = box_coding.decode_boxes(loc[idx], p) * jnp.concatenate([pixel_wh, pixel_wh])[None, :]
    return boxes, box_coding.decode_landmarks(landm[idx], p) * pixel_wh[None, None, :]
  outputs = (bbox[None], logits[None], landmarks[None])
  image_hw = jnp.asarray([[pixel_wh[1], pixel_wh[0]]], jnp.int32)
  out = inference.postprocess(outputs, FAMILY.scores(outputs), prior_ok[None], image_hw, decode, conf_threshold,
                              nms_threshold, nms_plus_one=True, cfg=cfg, conf_inclusive=conf_inclusive,
                              scale=None if scale is None else scale[None])
  return jax.tree_util.tree_map(lambda a: a[0], out)

K = 48  # boxes per random set: one compiled program for every seed and threshold.

# `tile`: 0 runs `nms_argmax`, else `nms_tiled` with tiles of that many rows.
FORMS = pytest.mark.parametrize('tile', [0, 16], ids=['argmax', 'tiled'])


def _form(tile):
  return nms_argmax if tile == 0 else functools.partial(nms_tiled, tile=tile)


@functools.partial(jax.jit, static_argnames=('max_output', 'plus_one', 'tile'))
def _nms(boxes, candidate, thr, max_output, plus_one=True, tile=0):
  """NMS on rows already sorted by descending score (scores = -row index)."""
  return _form(tile)(boxes, -jnp.arange(boxes.shape[0], dtype=jnp.float32), candidate, thr, max_output, plus_one)
_iou = jax.jit(iou_one_to_many, static_argnames='plus_one')


@pytest.fixture(scope='module')
def ref():
  pytest.importorskip('torch')
  import reference_torch
  return reference_torch


def _clustered_boxes(seed, integer):
  """`K` xyxy pixel boxes in 5 clusters (heavy overlap inside a cluster), distinct scores, a mask."""
  rng = np.random.default_rng(seed)
  centres = rng.uniform(40, 600, (5, 2))
  sizes = rng.uniform(15, 150, (5, 1))
  which = rng.integers(0, 5, K)
  c = centres[which] + rng.normal(0, 0.15, (K, 2)) * sizes[which]
  wh = sizes[which] * rng.uniform(0.7, 1.4, (K, 2))
  boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=-1)
  if integer:  # integer pixel boxes: every +1 area is exact, and IoU can equal the threshold
    boxes = np.round(boxes)
  scores = rng.permutation(K) / K + rng.uniform(0, 0.5 / K)  # distinct
  candidate = rng.uniform(size=K) < 0.85
  return boxes.astype(np.float32), scores.astype(np.float32), candidate


def _greedy_numpy(boxes, thr, plus_one):
  """Plain-Python greedy NMS over rows already in score order (test-only, for the plain-IoU variant)."""
  one = 1.0 if plus_one else 0.0
  area = (boxes[:, 2] - boxes[:, 0] + one) * (boxes[:, 3] - boxes[:, 1] + one)
  keep, alive = [], np.ones(len(boxes), bool)
  for i in range(len(boxes)):
    if not alive[i]:
      continue
    keep.append(i)
    w = np.maximum(0, np.minimum(boxes[i, 2], boxes[:, 2]) - np.maximum(boxes[i, 0], boxes[:, 0]) + one)
    h = np.maximum(0, np.minimum(boxes[i, 3], boxes[:, 3]) - np.maximum(boxes[i, 1], boxes[:, 1]) + one)
    inter = w * h
    alive &= ~(inter / (area[i] + area - inter) > thr)
  return keep


def _run_sorted(boxes, scores, candidate, thr, max_output, plus_one=True, tile=0):
  """Sort by descending score, run jaxface NMS, return kept indices into the unsorted rows."""
  order = np.argsort(-scores, kind='stable')
  keep, valid = _nms(jnp.asarray(boxes[order]), jnp.asarray(candidate[order]), thr, max_output=max_output,
                     plus_one=plus_one, tile=tile)
  keep, valid = np.asarray(keep), np.asarray(valid)
  assert keep.shape == valid.shape == (max_output,) and keep.dtype == np.int32
  n = int(valid.sum())
  assert valid[:n].all() and not valid[n:].any()  # the valid rows are a prefix
  return [int(i) for i in order[keep[:n]]]


@pytest.mark.parametrize('thr', [0.3, 0.4, 0.5])
@pytest.mark.parametrize('integer', [False, True], ids=['float', 'integer'])
@FORMS
def test_matches_py_cpu_nms(ref, thr, integer, tile):
  suppressed = 0
  for seed in range(40):
    boxes, scores, candidate = _clustered_boxes(seed, integer)
    cand = np.flatnonzero(candidate)
    dets = np.concatenate([boxes, scores[:, None]], axis=1)[cand]
    want = [int(cand[i]) for i in ref.py_cpu_nms(dets, thr)]
    got = _run_sorted(boxes, scores, candidate, thr, max_output=K, tile=tile)
    assert got == want, f'seed {seed}'
    # The +1 result is also what the test-only greedy loop gives on sorted candidate rows.
    order = np.argsort(-scores)
    order = order[candidate[order]]
    assert [int(order[i]) for i in _greedy_numpy(boxes[order], thr, True)] == want
    suppressed += len(cand) - len(want)
  # The clusters do make NMS work: on average well over half of the candidates are suppressed.
  assert suppressed > 40 * 0.85 * K * 0.5


@pytest.mark.parametrize('thr', [0.3, 0.5])
@FORMS
def test_plain_iou_matches_numpy_greedy(thr, tile):
  differ = 0
  for seed in range(20):
    boxes, scores, candidate = _clustered_boxes(seed, integer=False)
    order = np.argsort(-scores)
    order = order[candidate[order]]
    want = [int(order[i]) for i in _greedy_numpy(boxes[order], thr, plus_one=False)]
    got = _run_sorted(boxes, scores, candidate, thr, max_output=K, plus_one=False, tile=tile)
    assert got == want, f'seed {seed}'
    differ += got != _run_sorted(boxes, scores, candidate, thr, max_output=K, plus_one=True, tile=tile)
  assert differ > 0  # the two conventions are really different programs on these sets


def test_iou_matrix_is_the_plain_iou_of_every_pair():
  rng = np.random.default_rng(5)
  a = np.sort(rng.uniform(0, 1, (7, 2, 2)), axis=1).transpose(0, 2, 1).reshape(7, 4)[:, [0, 2, 1, 3]]
  b = np.sort(rng.uniform(0, 1, (9, 2, 2)), axis=1).transpose(0, 2, 1).reshape(9, 4)[:, [0, 2, 1, 3]]
  a[3] = [0.5, 0.5, 0.5, 0.9]   # no area: IoU 0 with everything, not NaN
  got = np.asarray(jax.jit(iou_matrix)(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
  want = np.zeros((7, 9))
  for i in range(7):
    for j in range(9):
      w = max(0.0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
      h = max(0.0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
      union = (a[i, 2] - a[i, 0]) * (a[i, 3] - a[i, 1]) + (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1]) - w * h
      want[i, j] = w * h / union if union > 0 else 0.0
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert (want > 0.05).any() and not got[3].any()
  # Each row's entries equal the one-to-many form's.
  np.testing.assert_allclose(got[0], np.asarray(iou_one_to_many(jnp.asarray(a[0], jnp.float32),
                                                                jnp.asarray(b, jnp.float32), False)), atol=1e-6)


@FORMS
def test_truncation_keeps_the_first_m(tile):
  for seed in range(10):
    boxes, scores, candidate = _clustered_boxes(seed, integer=True)
    full = _run_sorted(boxes, scores, candidate, 0.4, max_output=K, tile=tile)
    assert len(full) >= 4
    for m in (1, 3):
      assert _run_sorted(boxes, scores, candidate, 0.4, max_output=m, tile=tile) == full[:m]


@FORMS
def test_non_candidates_never_kept_and_never_suppress(tile):
  # Row 0 (top score) is not a candidate: it must neither appear nor suppress row 1 (IoU 1 with it).
  boxes = jnp.asarray([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], jnp.float32)
  keep, valid = _nms(boxes, jnp.asarray([False, True, True, False]), 0.4, max_output=4, tile=tile)
  assert np.asarray(valid).tolist() == [True, False, False, False]
  assert int(keep[0]) == 1  # row 2 is suppressed by row 1; row 3 is isolated but not a candidate
  for seed in range(10):
    boxes, scores, candidate = _clustered_boxes(seed, integer=False)
    assert all(candidate[i] for i in _run_sorted(boxes, scores, candidate, 0.5, max_output=K, tile=tile))


@FORMS
def test_all_candidates_false_gives_nothing(tile):
  boxes, _, _ = _clustered_boxes(0, integer=False)
  keep, valid = _nms(jnp.asarray(boxes), jnp.zeros((K,), bool), 0.4, max_output=8, tile=tile)
  assert not np.asarray(valid).any()
  assert keep.shape == (8,)


@FORMS
def test_plus_one_versus_plain_iou_hand_example(ref, tile):
  # A = [0, 0, 10, 10], B = [5, 0, 15, 10]:
  #   plain: inter 5 * 10 = 50, union 100 + 100 - 50 = 150 -> IoU 1/3 = 0.3333;
  #   +1:    inter (10 - 5 + 1) * (10 - 0 + 1) = 66, areas 11 * 11 = 121 each, union 242 - 66 = 176
  #          -> IoU 66 / 176 = 0.375.
  # At threshold 0.35 only the +1 convention suppresses B.
  boxes = jnp.asarray([[0, 0, 10, 10], [5, 0, 15, 10]], jnp.float32)
  np.testing.assert_allclose(_iou(boxes[0], boxes, plus_one=False), [1.0, 1 / 3], rtol=1e-6)
  np.testing.assert_allclose(_iou(boxes[0], boxes, plus_one=True), [1.0, 0.375], rtol=1e-6)
  both = jnp.ones((2,), bool)
  _, valid = _nms(boxes, both, 0.35, max_output=2, plus_one=True, tile=tile)
  assert np.asarray(valid).tolist() == [True, False]
  _, valid = _nms(boxes, both, 0.35, max_output=2, plus_one=False, tile=tile)
  assert np.asarray(valid).tolist() == [True, True]
  dets = np.asarray([[0, 0, 10, 10, 0.9], [5, 0, 15, 10, 0.8]], np.float32)
  assert ref.py_cpu_nms(dets, 0.35) == [0]


@pytest.mark.parametrize('plus_one', [True, False])
@FORMS
def test_iou_equal_to_threshold_is_kept(plus_one, tile):
  # +1: A = [0, 0, 9, 9] has area 10 * 10 = 100, B = [0, 0, 9, 4] area 10 * 5 = 50 inside A: IoU = 0.5.
  # plain: A = [0, 0, 10, 10] area 100, B = [0, 0, 10, 5] area 50 inside A: IoU = 0.5.
  # 50 / 100 is exact in float32, so "suppress when IoU > thr" keeps B at thr = 0.5 exactly.
  e = 9 if plus_one else 10
  boxes = jnp.asarray([[0, 0, e, e], [0, 0, e, 4 if plus_one else 5]], jnp.float32)
  assert float(_iou(boxes[0], boxes, plus_one=plus_one)[1]) == 0.5
  both = jnp.ones((2,), bool)
  assert np.asarray(_nms(boxes, both, 0.5, max_output=2, plus_one=plus_one, tile=tile)[1]).tolist() == [True, True]
  assert np.asarray(_nms(boxes, both, 0.49, max_output=2, plus_one=plus_one, tile=tile)[1]).tolist() == [True, False]


@FORMS
def test_traced_threshold_does_not_retrace(tile):
  chex.clear_trace_counter()  # the counter is per source function, and this test runs once per form
  boxes, scores, candidate = _clustered_boxes(3, integer=False)
  order = np.argsort(-scores)
  boxes, candidate = jnp.asarray(boxes[order]), jnp.asarray(candidate[order])

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(b, c, thr):
    return _form(tile)(b, -jnp.arange(b.shape[0], dtype=jnp.float32), c, thr, max_output=K)

  counts = []
  for thr in (0.1, 0.3, 0.5, 0.7, 0.9):
    counts.append(int(run(boxes, candidate, thr)[1].sum()))
  # A higher threshold suppresses less, so never keeps fewer boxes here; the values really reached
  # the compiled program (the counts change) without a second trace.
  assert counts == sorted(counts) and counts[0] < counts[-1]


@FORMS
def test_degenerate_zero_area_boxes_plain_iou(tile):
  # Under plain IoU a zero-area box has area 0: against a normal box the intersection is 0 and the
  # union the other box's area, so IoU = 0; against another zero-area box it is 0 / 0 = NaN, and
  # `NaN > thr` is False. So degenerate boxes neither suppress nor get suppressed (they are all kept),
  # and the normal boxes are unaffected: no NaN spreads into the greedy result.
  boxes = jnp.asarray([
      [0, 0, 10, 10],    # 0: A, kept
      [5, 5, 5, 8],      # 1: zero width, inside A: IoU(A, .) = 0 -> kept
      [5, 5, 5, 8],      # 2: a copy of 1: IoU(1, 2) = 0/0 = NaN -> not suppressed, kept
      [1, 0, 11, 10],    # 3: IoU(A, .) = 90 / 110 = 0.818 -> suppressed by A
      [7, 7, 7, 7],      # 4: a point -> kept
      [20, 20, 30, 30],  # 5: isolated normal box -> kept
  ], jnp.float32)
  iou = np.asarray(_iou(boxes[1], boxes, plus_one=False))
  assert iou[0] == 0 and np.isnan(iou[2]) and np.isnan(iou[4]) and iou[5] == 0
  keep, valid = _nms(boxes, jnp.ones((6,), bool), 0.4, max_output=6, plus_one=False, tile=tile)
  n = int(np.asarray(valid).sum())
  assert np.asarray(keep)[:n].tolist() == [0, 1, 2, 4, 5]
  # With +1 a zero-area box is a 1-pixel-wide box: the copy (IoU 1) is suppressed; box 1
  # (1 x 4 px) inside A (11 x 11 px) has IoU 4 / 121 and stays.
  keep, valid = _nms(boxes, jnp.ones((6,), bool), 0.4, max_output=6, plus_one=True, tile=tile)
  n = int(np.asarray(valid).sum())
  assert np.asarray(keep)[:n].tolist() == [0, 1, 4, 5]


# ------------------------------------------------------------------------------------------------
# The post-processing on hand-made head outputs.
# ------------------------------------------------------------------------------------------------

W, H = 200.0, 100.0  # pixel_wh
# Eight priors (cx, cy, w, h), normalised: 20 x 20 px boxes on a 2 x 5 grid, far apart.
PRIORS = np.asarray([[0.1, 0.25, 0.1, 0.2], [0.3, 0.25, 0.1, 0.2], [0.5, 0.25, 0.1, 0.2], [0.7, 0.25, 0.1, 0.2],
                     [0.9, 0.25, 0.1, 0.2], [0.1, 0.75, 0.1, 0.2], [0.3, 0.75, 0.1, 0.2], [0.5, 0.75, 0.1, 0.2]],
                    np.float32)
# Face probabilities; prior 3 has equal logits -> softmax exactly 0.5; prior 5 (0.99) is masked out.
PROBS = [0.9, 0.3, 0.95, 0.5, 0.7, 0.99, 0.1, 0.8]
PRIOR_OK = np.asarray([True] * 5 + [False] + [True] * 2)


def _logit(p):
  return 0.0 if p == 0.5 else math.log(p / (1 - p))


def _head_outputs():
  # logits (0, logit(p)): softmax column 1 = 1 / (1 + exp(-logit(p))) = p. Stored as (l0, l1) with a
  # nonzero l0 on some rows to show only the difference matters.
  shift = np.asarray([0.0, 1.0, -2.0, 3.0, 0.0, 0.5, 0.0, -1.0])
  logits = np.stack([shift, shift + [_logit(p) for p in PROBS]], axis=1).astype(np.float32)
  bbox = np.zeros((8, 4), np.float32)
  landmarks = np.zeros((8, 10), np.float32)
  # Prior 2: offsets (1, -1, log(2) / 0.2, 0): centre (0.5 + 1 * 0.1 * 0.1, 0.25 - 1 * 0.1 * 0.2) =
  # (0.51, 0.23) -> (102, 23) px; size (0.1 * 2, 0.2) -> (40, 20) px; box [82, 13, 122, 33].
  bbox[2] = [1.0, -1.0, math.log(2.0) / 0.2, 0.0]
  # Its points: centre + d * 0.1 * (0.1, 0.2) -> (100 + 2 dx, 25 + 2 dy) px.
  landmarks[2] = [1, 1, -1, -1, 0, 0, 2, 0, 0, 2]
  return bbox, logits, landmarks


# Zero offsets decode to the prior: prior 0 -> centre (20, 25) px, box [10, 15, 30, 35];
# prior 7 -> centre (100, 75), box [90, 65, 110, 85]; prior 4 -> centre (180, 25), box [170, 15, 190, 35].
BOX = {0: [10, 15, 30, 35], 1: [50, 15, 70, 35], 2: [82, 13, 122, 33], 3: [130, 15, 150, 35],
       4: [170, 15, 190, 35], 6: [50, 65, 70, 85], 7: [90, 65, 110, 85]}
POINTS2 = [[102, 27], [98, 23], [100, 25], [104, 25], [100, 29]]


@functools.lru_cache(maxsize=None)
def _postprocess(pre_nms_top_k, max_detections, conf_inclusive=False):
  cfg = inference.PostprocessConfig(pre_nms_top_k=pre_nms_top_k, max_detections=max_detections)
  return jax.jit(functools.partial(postprocess_one, cfg=cfg, conf_inclusive=conf_inclusive))


def _detect(conf, pre_nms_top_k=8, max_detections=8, prior_ok=PRIOR_OK, conf_inclusive=False, scale=None):
  bbox, logits, landmarks = _head_outputs()
  out = _postprocess(pre_nms_top_k, max_detections, conf_inclusive)(
      bbox, logits, landmarks, PRIORS, prior_ok, conf, 0.4, np.asarray([W, H], np.float32), scale=scale)
  return {k: np.asarray(v) for k, v in out.items()}


def test_postprocess_scores_order_and_pixels():
  out = _detect(conf=0.5)
  assert out['boxes'].shape == (8, 4) and out['scores'].shape == (8,)
  assert out['landmarks'].shape == (8, 5, 2) and out['valid'].shape == (8,)
  # Scores > 0.5 among unmasked priors: 0.95 (2), 0.9 (0), 0.8 (7), 0.7 (4). Prior 3's exact 0.5 is
  # not > 0.5; prior 5's 0.99 is masked.
  assert out['valid'].tolist() == [True] * 4 + [False] * 4
  np.testing.assert_allclose(out['scores'][:4], [0.95, 0.9, 0.8, 0.7], atol=1e-6)
  np.testing.assert_allclose(out['boxes'][:4], [BOX[2], BOX[0], BOX[7], BOX[4]], atol=1e-4)
  np.testing.assert_allclose(out['landmarks'][0], POINTS2, atol=1e-4)
  # Zero landmark offsets: every point at the prior centre in pixels (prior 0: (20, 25)).
  np.testing.assert_allclose(out['landmarks'][1], [[20, 25]] * 5, atol=1e-4)
  # Invalid rows are zeroed.
  assert not out['boxes'][4:].any() and not out['scores'][4:].any() and not out['landmarks'][4:].any()


def test_postprocess_threshold_is_strict():
  # Just below 0.5 the exact-0.5 prior 3 enters, between 0.7 and 0.3: 0.95, 0.9, 0.8, 0.7, 0.5.
  out = _detect(conf=0.4999)
  assert int(out['valid'].sum()) == 5
  np.testing.assert_allclose(out['scores'][:5], [0.95, 0.9, 0.8, 0.7, 0.5], atol=1e-6)
  np.testing.assert_allclose(out['boxes'][4], BOX[3], atol=1e-4)
  # Above the best score nothing is left.
  assert not _detect(conf=0.96)['valid'].any()


def test_postprocess_inclusive_threshold_and_scale():
  # `conf_inclusive` (insightface's scores >= thresh): the exact-0.5 prior 3 enters at conf 0.5.
  out = _detect(conf=0.5, conf_inclusive=True)
  np.testing.assert_allclose(out['scores'][:int(out['valid'].sum())], [0.95, 0.9, 0.8, 0.7, 0.5], atol=1e-6)
  # `scale` (x, y) divides boxes and points before NMS: prior 2's box and points at half x, quarter y.
  out = _detect(conf=0.5, scale=np.asarray([2.0, 4.0], np.float32))
  np.testing.assert_allclose(out['boxes'][0], np.asarray(BOX[2]) / [2, 4, 2, 4], atol=1e-4)
  np.testing.assert_allclose(out['landmarks'][0], np.asarray(POINTS2) / [2, 4], atol=1e-4)


def test_postprocess_masked_priors_never_appear():
  out = _detect(conf=0.0)
  # Every unmasked prior (7 of 8) passes conf 0: descending 0.95 .. 0.1, never the masked 0.99.
  assert int(out['valid'].sum()) == 7
  np.testing.assert_allclose(out['scores'][:7], [0.95, 0.9, 0.8, 0.7, 0.5, 0.3, 0.1], atol=1e-6)
  masked_box = np.asarray([0.05 * W, 0.65 * H, 0.15 * W, 0.85 * H])  # prior 5 decoded, [10, 65, 30, 85]
  assert not np.any(np.all(np.abs(out['boxes'] - masked_box) < 1e-3, axis=1))
  # Masking everything leaves nothing, even at conf 0.
  assert not _detect(conf=0.0, prior_ok=np.zeros(8, bool))['valid'].any()
  # With pre_nms_top_k = 3 the masked 0.99 does not take one of the three slots.
  out = _detect(conf=0.0, pre_nms_top_k=3)
  assert int(out['valid'].sum()) == 3
  np.testing.assert_allclose(out['scores'][:3], [0.95, 0.9, 0.8], atol=1e-6)


def test_postprocess_max_detections():
  out = _detect(conf=0.0, max_detections=2)
  assert out['valid'].tolist() == [True, True]
  np.testing.assert_allclose(out['scores'], [0.95, 0.9], atol=1e-6)
  np.testing.assert_allclose(out['boxes'], [BOX[2], BOX[0]], atol=1e-4)


def test_postprocess_nms_suppresses_lower_duplicate():
  # Move prior 6's box onto prior 7's: dx = (0.5 - 0.3) / (0.1 * 0.1) = 20 -> centre x 0.5, box
  # [90, 65, 110, 85], IoU 1 with prior 7's. Prior 6 is given score 0.85 > 0.8, so 7 is suppressed.
  b, logits, landmarks = _head_outputs()
  b[6] = [20.0, 0.0, 0.0, 0.0]
  logits[6] = [0.0, _logit(0.85)]
  out = _postprocess(8, 8)(b, logits, landmarks, PRIORS, PRIOR_OK, 0.5, 0.4, np.asarray([W, H], np.float32))
  out = {k: np.asarray(v) for k, v in out.items()}
  assert int(out['valid'].sum()) == 4
  np.testing.assert_allclose(out['scores'][:4], [0.95, 0.9, 0.85, 0.7], atol=1e-6)
  np.testing.assert_allclose(out['boxes'][:4], [BOX[2], BOX[0], BOX[7], BOX[4]], atol=1e-4)


@FORMS
def test_unsorted_rows_give_the_same_keep_set(ref, tile):
  """NMS picks by score, so shuffling the rows changes only the indices, not what is kept."""
  for seed in range(10):
    boxes, scores, candidate = _clustered_boxes(seed, integer=False)
    want = _run_sorted(boxes, scores, candidate, 0.4, max_output=len(boxes), tile=tile)
    perm = np.random.default_rng(seed).permutation(len(boxes))
    keep, valid = _form(tile)(jnp.asarray(boxes[perm]), jnp.asarray(scores[perm]), jnp.asarray(candidate[perm]),
                              0.4, max_output=len(boxes))
    got = [int(perm[i]) for i in np.asarray(keep)[np.asarray(valid)]]
    assert got == want


def _agree(boxes, scores, candidate, thr, max_output, plus_one, tile):
  """Both forms on the same rows: the same kept rows in the same order."""
  args = (jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(candidate), thr, max_output, plus_one)
  keep_a, valid_a = jax.jit(nms_argmax, static_argnums=(4, 5))(*args)
  keep_t, valid_t = jax.jit(functools.partial(nms_tiled, tile=tile), static_argnums=(4, 5))(*args)
  valid_a, valid_t = np.asarray(valid_a), np.asarray(valid_t)
  assert valid_a.tolist() == valid_t.tolist()
  assert np.asarray(keep_a)[valid_a].tolist() == np.asarray(keep_t)[valid_t].tolist()
  return int(valid_a.sum())


@pytest.mark.parametrize('tile', [64, 256])
def test_tiled_equals_argmax_on_large_sets(tile):
  """600 rows (tiles that do not divide them), with tied scores, candidate masks and truncation;
  a chain where each box suppresses only the next (the tile's fixed point takes the longest path);
  identical boxes; and `nms` itself, which takes the tiled form above `ARGMAX_MAX_ROWS` rows."""
  rng = np.random.default_rng(tile)
  k = 600
  for spread in (40.0, 300.0, 900.0):
    xy = rng.uniform(0, spread, (k, 2))
    boxes = np.round(np.concatenate([xy, xy + rng.uniform(2, 40, (k, 2))], axis=1)).astype(np.float32)
    scores = (np.round(rng.uniform(size=k) * 8) / 8).astype(np.float32)  # many ties: row order decides
    for candidate, thr, m, plus_one in ((rng.uniform(size=k) < 0.7, 0.4, k, True), (np.ones(k, bool), 0.3, k, False),
                                        (np.ones(k, bool), 0.5, 9, True), (np.zeros(k, bool), 0.4, k, True)):
      _agree(boxes, scores, candidate, thr, m, plus_one, tile)
  x = np.arange(k, dtype=np.float32) * 6  # box i overlaps i + 1 (IoU 0.25 plain), not i + 2
  chain = np.stack([x, np.zeros(k), x + 10, np.full(k, 10)], axis=1).astype(np.float32)
  assert _agree(chain, -np.arange(k, dtype=np.float32), np.ones(k, bool), 0.2, k, False, tile) == k // 2
  assert _agree(chain, np.zeros(k, np.float32), np.ones(k, bool), 0.2, k, False, tile) == k // 2
  same = np.tile(np.float32([[5, 5, 25, 25]]), (k, 1))
  assert _agree(same, rng.uniform(size=k).astype(np.float32), np.ones(k, bool), 0.5, k, True, tile) == 1
  keep, valid = jax.jit(nms, static_argnums=(4, 5))(jnp.asarray(chain), -jnp.arange(k, dtype=jnp.float32),
                                                    jnp.ones(k, bool), 0.2, k, False)
  assert np.asarray(keep)[np.asarray(valid)].tolist() == list(range(0, k, 2))


def test_tiled_under_vmap_matches_each_image():
  """In a batch the tiled form's loops run to the busiest image's trip counts (vmap's batched
  predicates): images with 0, a few and many candidates each get their own greedy result."""
  rng = np.random.default_rng(7)
  k, tile = 700, 64
  xy = rng.uniform(0, 400, (3, k, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (3, k, 2))], axis=-1).astype(np.float32)
  scores = rng.uniform(size=(3, k)).astype(np.float32)
  candidate = rng.uniform(size=(3, k)) < np.asarray([0.0, 0.05, 0.95])[:, None]
  batched = jax.jit(jax.vmap(lambda b, s, c: nms_tiled(b, s, c, 0.4, k, True, tile)))
  keep, valid = (np.asarray(a) for a in batched(jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(candidate)))
  counts = []
  for i in range(3):
    want_keep, want_valid = (np.asarray(a) for a in nms_argmax(jnp.asarray(boxes[i]), jnp.asarray(scores[i]),
                                                                 jnp.asarray(candidate[i]), 0.4, k, True))
    assert valid[i].tolist() == want_valid.tolist()
    assert keep[i][valid[i]].tolist() == want_keep[want_valid].tolist()
    counts.append(int(want_valid.sum()))
  assert counts[0] == 0 < counts[1] < 3 * tile < counts[2]


def test_select_candidates_compacts_or_falls_back_to_top_k():
  scores = jnp.asarray([0.1, 0.9, 0.3, 0.8, 0.05, 0.7, 0.6, 0.2])
  # 3 priors pass, K=4: all of them, in prior order, padded with a non-passing row.
  ok = scores > 0.65
  idx = np.asarray(inference.select_candidates(scores, ok, 4))
  assert idx[:3].tolist() == [1, 3, 5] and not np.asarray(ok)[idx[3]]
  # 6 priors pass, K=4: the four best, as the reference's top_k.
  ok = scores > 0.15
  idx = np.asarray(jax.jit(inference.select_candidates, static_argnums=2)(scores, ok, 4))
  assert sorted(idx.tolist()) == [1, 3, 5, 6]
  # K >= A: every prior.
  assert np.asarray(inference.select_candidates(scores, ok, 8)).tolist() == list(range(8))


@pytest.mark.parametrize('conf, top_k, copies', [(0.3, 5000, 3), (0.05, 5000, 3), (0.3, 1000, 3), (0.5, 20000, 5)],
                         ids=['2048-tier', '5000-tier', 'top-k-fallback', '8192-tier'])
def test_postprocess_tiers_match_reference(ref, conf, top_k, copies):
  """Enough candidates to reach every NMS tier (512 / 2048 / 8192 / pre_nms_top_k) and the top-k path
  (more candidates than pre_nms_top_k), against the reference decode + sort + py_cpu_nms."""
  rng = np.random.default_rng(0)
  h, w = 160, 320  # 2 * (20*40 + 10*20 + 5*10) = 2100 priors
  priors = ref.prior_box(h, w)
  a = len(priors)
  logits = np.stack([np.zeros(a), rng.normal(0, 2, a)], -1).astype(np.float32)
  bbox = rng.normal(0, 1, (a, 4)).astype(np.float32)
  lm = rng.normal(0, 1, (a, 10)).astype(np.float32)
  tiled = lambda x: np.concatenate([x] * copies)  # 6300 or 10500 priors: some boxes repeat, scores do not
  priors3 = tiled(priors)
  # The face column only (a softmax ignores common shifts): copy i shifted by +-1e-3 * ceil(i / 2).
  shifts = [((i + 1) // 2) * (1 if i % 2 else -1) * 1e-3 for i in range(copies)]
  logits3 = np.concatenate([logits + np.array([0.0, d], np.float32) for d in shifts])
  scores = np.exp(logits3[:, 1]) / (1 + np.exp(logits3[:, 1]))
  cfg = inference.PostprocessConfig(pre_nms_top_k=top_k, max_detections=6300)
  out = jax.jit(functools.partial(postprocess_one, cfg=cfg))(
      jnp.asarray(tiled(bbox)), jnp.asarray(logits3), jnp.asarray(tiled(lm)), jnp.asarray(priors3),
      jnp.ones(copies * a, bool), jnp.float32(conf), jnp.float32(0.4), jnp.asarray([w, h], jnp.float32))
  valid = np.asarray(out['valid'])
  # Reference: threshold, sort descending, top_k, py_cpu_nms, on pixel boxes.
  boxes = tiled(np.asarray(ref.decode(bbox, priors)) * np.array([w, h, w, h], np.float32))
  inds = np.where(scores > conf)[0]
  assert len(inds) > {5000: 2048, 1000: 1000, 20000: 2048}[top_k], 'the case must reach its tier'
  assert top_k != 20000 or len(inds) <= 8192, 'the case must stay in the 8192 tier'
  order = inds[np.argsort(-scores[inds], kind='stable')][:top_k]
  dets = np.hstack([boxes[order], scores[order, None]]).astype(np.float32)
  keep = ref.py_cpu_nms(dets, 0.4)
  assert int(valid.sum()) == len(keep)
  np.testing.assert_allclose(np.asarray(out['scores'])[valid], scores[order][keep], atol=1e-6)
  np.testing.assert_allclose(np.asarray(out['boxes'])[valid], boxes[order][keep], atol=1e-3)
