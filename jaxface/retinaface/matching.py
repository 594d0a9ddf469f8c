"""Prior-to-face matching and regression targets for RetinaFace training (REFERENCE.md §1.5).

`match_one` and `encode_targets` are pure functions of one image's padded ground truth (G slots,
P priors, static shapes); `match_batch` vmaps both over the loader's batch dict. There is no
Python loop over images, faces or priors.

The reference's `match()` for one image, stated on the *usable* faces (defined below):

  1. IoU of every face with every prior (plain IoU, no +1), `[G, P]`.
  2. Each face's best prior (the first on ties). A face whose best IoU is below `force_thresh`
     (0.2) is not forced.
  3. Each prior's best face (the first on ties) and that IoU.
  4. The best prior of every forced face gets overlap 2: always positive.
  5. `for j in range(G): best_truth_idx[best_prior_idx[j]] = j`: every face, forced or not, takes
     its best prior; when several faces share a best prior, the last row wins.
  6. positive = overlap >= `pos_thresh` (0.35). Positives take the box, landmarks and label of
     the face assigned in 3 and 5.

Decisions, each marked as the reference's behaviour or a deliberate change:

* Step 5 over *all* usable faces (reference). A face whose best IoU is below 0.2 cannot make a
  prior positive, but it takes over its best prior (box, landmarks, label) when another face
  made that prior positive, by IoU >= 0.35 or by forcing. This is the reference's quirk; it is
  kept by default so that the targets are the reference's. `low_iou_faces_steal=False` lets only
  forced faces take priors in step 5.
* Faces that are not usable never take part: their IoUs are replaced by -1 (below every real
  IoU), so they are never a prior's best face, never forced and never take a prior in step 5.
  Not usable are:
  - padding rows (`box_valid` False);
  - ignore boxes (the reference has none; see below);
  - degenerate boxes, width or height <= 0 (CHANGE, §1.12.1). Such a box has IoU 0 with every
    prior, so in the reference it only ever acts through step 5, where it can take a positive
    prior and give it a log(0) = -inf size target (the NaN losses of the reference's issues #10
    and #60). Dropping it changes nothing else. The loader already drops them; any that reach
    the loss are counted (`num_degenerate`).
* Ignore boxes (SCRFD's ignore boxes, TFDS `invalid`): not matched, as above. A prior that is not
  positive but has IoU >= `pos_thresh` with an ignore box is `ignored`: neither positive nor a
  candidate negative, so it gets no classification loss. A prior that is positive for a real
  face stays positive even if it also overlaps an ignore box.
* An image with no usable face, or whose faces all have best IoU < 0.2, has no positive prior:
  all background, as the reference's early return (its overlaps are all < 0.2 < 0.35, and
  step 5 changes assignments, not overlaps).

How it runs: the `[G, P]` IoU matrix is never built. A `lax.fori_loop` walks the face rows
`ROWS_PER_STEP` at a time, only up to the image's last usable row (so padding to `max_faces` costs
nothing); each step computes its rows' IoUs with all priors, updates every prior's best face
elementwise and takes each row's best prior with a chunked first-argmax. On CPU this is 3-4x
faster than `argmax` over the two axes of a materialised matrix (XLA's CPU reductions are slow);
`bench/bench_matching.py` times it against the reference loop.

Numerics: the IoU is the reference's float32 operations in the reference's order, and the
products that feed an addition (the prior and face areas) are computed before the loop, so no
compiler can fuse them into a multiply-add, which rounds differently. On CPU the IoUs are then
bit-identical to the reference's (priors as a numpy constant or as a traced argument), so the
assignments are identical even at ties, e.g. equal-size priors lying wholly inside a large face,
whose IoUs are equal or one ulp apart. A backend that contracts other products (GPUs may) can
move an IoU by one ulp and send such a near-tie to the other prior: a rounding difference, like
the one between the reference on CPU and on GPU.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.retinaface import box_coding

POS_THRESH = 0.35    # the reference's overlap_thresh
FORCE_THRESH = 0.2   # faces whose best prior IoU is below this are not forced onto it


class Match(NamedTuple):
  """One image's assignment of priors to face rows (`[P]` and `[G]` arrays)."""
  matched_idx: jax.Array   # [P] int32, the face row of each prior (meaningful where `positive`)
  positive: jax.Array      # [P] bool
  ignored: jax.Array       # [P] bool, neither positive nor negative (overlaps an ignore box)
  overlap: jax.Array       # [P] float32, best IoU over usable faces; 2 at forced priors; -1 if none usable
  usable: jax.Array        # [G] bool, rows that take part in matching
  forced: jax.Array        # [G] bool, usable rows whose best prior IoU >= force_thresh


class Targets(NamedTuple):
  """One image's training targets; zeros wherever they are not used."""
  loc: jax.Array             # [P, 4] encoded box offsets, zero where not positive
  landm: jax.Array           # [P, 10] encoded landmarks, zero where not landm_positive
  positive: jax.Array        # [P] bool
  landm_positive: jax.Array  # [P] bool, positives whose face has landmarks (reference label +1)
  ignored: jax.Array         # [P] bool


def nondegenerate(boxes: jax.Array) -> jax.Array:
  """`[..., 4]` xyxy -> `[...]` bool: width and height > 0 (False for NaN coordinates too)."""
  return (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


ROWS_PER_STEP = 4   # face rows per step of the matching loop (fewer, larger steps; measured on CPU)
ARGMAX_CHUNKS = 8   # per-face best prior: an 8-way elementwise pass, then one short reduction


def prior_corners(priors) -> jax.Array | np.ndarray:
  """`[P, 4]` cxcywh -> `[5, P]` rows x1, y1, x2, y2, area, each contiguous.

  numpy in, numpy out (a constant of the compiled program), computed with the reference's float32
  operations (`point_form`, then `(x2 - x1) * (y2 - y1)`).
  """
  xp = np if isinstance(priors, np.ndarray) else jnp
  p = priors.astype(xp.float32)
  xy = xp.concatenate([p[:, :2] - p[:, 2:] / 2, p[:, :2] + p[:, 2:] / 2], axis=1)
  area = (xy[:, 2] - xy[:, 0]) * (xy[:, 3] - xy[:, 1])
  return xp.concatenate([xy.T, area[None, :]], axis=0)


def _iou_rows(boxes: jax.Array, areas: jax.Array, corners) -> jax.Array:
  """IoU of `boxes [R, 4]` (areas `[R]`) with the priors' `corners [5, P]` -> `[R, P]`.

  The reference's operations and order. The areas come in precomputed, so that no compiler can
  fuse their multiply into the union's add (an FMA rounds differently from the reference).
  """
  w = jnp.maximum(0.0, jnp.minimum(boxes[:, 2:3], corners[None, 2]) - jnp.maximum(boxes[:, 0:1], corners[None, 0]))
  h = jnp.maximum(0.0, jnp.minimum(boxes[:, 3:4], corners[None, 3]) - jnp.maximum(boxes[:, 1:2], corners[None, 1]))
  inter = w * h
  return inter / (areas[:, None] + corners[None, 4] - inter)


def _first_argmax(row: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`(max, first index of the max)` of `row [P]`, like `jnp.argmax`, but faster on CPU.

  The row is cut into `ARGMAX_CHUNKS` contiguous pieces combined elementwise (the earlier piece
  wins ties), then the smallest index among the maxima of the pieces' columns is taken.
  """
  num = row.shape[0]
  n = -(-num // ARGMAX_CHUNKS)
  pieces = jnp.pad(row, (0, n * ARGMAX_CHUNKS - num), constant_values=-jnp.inf).reshape(ARGMAX_CHUNKS, n)
  best, piece = pieces[0], jnp.zeros((n,), jnp.int32)
  for c in range(1, ARGMAX_CHUNKS):
    better = pieces[c] > best
    best, piece = jnp.where(better, pieces[c], best), jnp.where(better, c, piece)
  top = jnp.max(best)
  index = piece * n + jnp.arange(n, dtype=jnp.int32)
  return top, jnp.min(jnp.where(best == top, index, num))


def _overlap_passes(boxes: jax.Array, usable: jax.Array, ignore: jax.Array | None, corners):
  """Both argmaxes of the reference's `[G, P]` overlap matrix without building it.

  Overlaps are IoUs at usable rows and -1 elsewhere. A loop over the face rows, `ROWS_PER_STEP` at
  a time and only up to the last usable (or ignore) row, so padding costs nothing: each step
  computes the IoUs of its rows with all priors, updates every prior's running best row (a
  strictly greater IoU replaces it: the first row wins ties, as `argmax`) and takes each row's
  best prior.

  Returns:
    best_truth_iou [P], best_truth_idx [P] int32, best_prior_iou [G], best_prior_idx [G] int32,
    ignore_iou [P] (max IoU with an ignore row, -1 if none; None when `ignore` is None).
  """
  num_gt, num_priors = boxes.shape[0], corners.shape[1]
  r = ROWS_PER_STEP
  padded = -(-num_gt // r) * r
  pad = lambda x: jnp.pad(x, [(0, padded - num_gt)] + [(0, 0)] * (x.ndim - 1))
  boxes, usable = pad(boxes), pad(usable)
  ignore = None if ignore is None else pad(ignore)
  visit = usable if ignore is None else usable | ignore
  areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  num_steps = (jnp.max(jnp.where(visit, jnp.arange(1, padded + 1), 0)) + r - 1) // r

  def step(i, state):
    bt_iou, bt_idx, bp_iou, bp_idx, ig_iou = state
    g0 = i * r
    rows = lambda x: jax.lax.dynamic_slice_in_dim(x, g0, r)
    iou = _iou_rows(rows(boxes), rows(areas), corners)                      # [r, P]
    overlaps = jnp.where(rows(usable)[:, None], iou, -1.0)
    step_ignore = None if ig_iou is None else rows(ignore)
    for k in range(r):  # elementwise over the r rows: XLA's reductions over a short axis are slow on CPU
      better = overlaps[k] > bt_iou
      bt_iou, bt_idx = jnp.where(better, overlaps[k], bt_iou), jnp.where(better, g0 + k, bt_idx)
      if ig_iou is not None:
        ig_iou = jnp.where(step_ignore[k], jnp.maximum(ig_iou, iou[k]), ig_iou)
    top, arg = jax.vmap(_first_argmax)(overlaps)
    bp_iou = jax.lax.dynamic_update_slice_in_dim(bp_iou, top, g0, 0)
    bp_idx = jax.lax.dynamic_update_slice_in_dim(bp_idx, arg, g0, 0)
    return bt_iou, bt_idx, bp_iou, bp_idx, ig_iou

  fill = lambda n: jnp.full((n,), -1.0, areas.dtype)  # the IoUs' dtype, also under jax_enable_x64
  state = (fill(num_priors), jnp.zeros((num_priors,), jnp.int32), fill(padded), jnp.zeros((padded,), jnp.int32),
           None if ignore is None else fill(num_priors))
  bt_iou, bt_idx, bp_iou, bp_idx, ig_iou = jax.lax.fori_loop(0, num_steps, step, state)
  return bt_iou, bt_idx, bp_iou[:num_gt], bp_idx[:num_gt], ig_iou


def match_one(gt_boxes: jax.Array, gt_valid: jax.Array, priors, *, gt_ignore: jax.Array | None = None,
              pos_thresh: float = POS_THRESH, force_thresh: float = FORCE_THRESH,
              low_iou_faces_steal: bool = True) -> Match:
  """Assigns each prior of one image to a face row (see the module docstring for the rules).

  Args:
    gt_boxes: `[G, 4]` normalised xyxy, padded.
    gt_valid: `[G]` bool, the loader's `box_valid`.
    priors: `[P, 4]` normalised cxcywh (`anchors.prior_boxes`); a numpy array becomes a constant
      of the compiled program (the intended use), a jax array works too (same bits on CPU).
    gt_ignore: `[G]` bool ignore boxes, or None for none.
    pos_thresh: a prior is positive at overlap >= this.
    force_thresh: a face's best prior is forced positive when its IoU is >= this.
    low_iou_faces_steal: the reference's step-5 quirk (faces below `force_thresh` still take
      their best prior); True reproduces the reference.

  Returns:
    A `Match`.
  """
  num_gt, num_priors = gt_boxes.shape[0], priors.shape[0]
  gt_boxes = gt_boxes.astype(jnp.float32)
  shaped = gt_valid & nondegenerate(gt_boxes)
  usable = shaped if gt_ignore is None else shaped & ~gt_ignore
  ignore = None if gt_ignore is None else shaped & gt_ignore

  best_truth_iou, best_truth_idx, best_prior_iou, best_prior_idx, ignore_iou = _overlap_passes(
      gt_boxes, usable, ignore, prior_corners(priors))

  forced = usable & (best_prior_iou >= force_thresh)
  takers = usable if low_iou_faces_steal else forced
  rows = jnp.arange(num_gt, dtype=jnp.int32)
  # Step 5 as a scatter-max: on a prior that is the best of several taking rows, the last row wins.
  last_taker = jnp.full((num_priors,), -1, jnp.int32).at[best_prior_idx].max(jnp.where(takers, rows, -1))
  forced_prior = jnp.zeros((num_priors,), jnp.int32).at[best_prior_idx].max(forced.astype(jnp.int32)) > 0

  matched_idx = jnp.where(last_taker >= 0, last_taker, best_truth_idx)
  overlap = jnp.where(forced_prior, 2.0, best_truth_iou)
  positive = overlap >= pos_thresh
  ignored = jnp.zeros((num_priors,), bool) if ignore_iou is None else ~positive & (ignore_iou >= pos_thresh)
  return Match(matched_idx=matched_idx, positive=positive, ignored=ignored, overlap=overlap,
               usable=usable, forced=forced)


def encode_targets(match: Match, gt_boxes: jax.Array, gt_landmarks: jax.Array, gt_landmark_valid: jax.Array,
                   priors: jax.Array, variances: box_coding.Variances = box_coding.VARIANCES) -> Targets:
  """Box and landmark targets of one image from its `Match`.

  Args:
    match: from `match_one`.
    gt_boxes: `[G, 4]` normalised xyxy.
    gt_landmarks: `[G, 5, 2]` normalised points.
    gt_landmark_valid: `[G]` bool, faces that have landmarks (the reference's label +1; -1 without).
    priors: `[P, 4]` cxcywh.
    variances: of the box coding.

  Returns:
    `Targets`. Encoding only reads matched rows of positive priors (usable, so non-degenerate);
    everywhere else the prior itself is encoded and the result replaced by zeros, so no log(0)
    or inf ever appears, not even in discarded values.
  """
  priors = jnp.asarray(priors, jnp.float32)
  idx, positive = match.matched_idx, match.positive
  boxes = jnp.where(positive[:, None], gt_boxes.astype(jnp.float32)[idx], box_coding.point_form(priors))
  loc = jnp.where(positive[:, None], box_coding.encode_boxes(boxes, priors, variances), 0.0)
  landm_positive = positive & gt_landmark_valid[idx]
  points = jnp.where(landm_positive[:, None, None], gt_landmarks.astype(jnp.float32)[idx], priors[:, None, :2])
  landm = jnp.where(landm_positive[:, None], box_coding.encode_landmarks(points, priors, variances), 0.0)
  return Targets(loc=loc, landm=landm, positive=positive, landm_positive=landm_positive, ignored=match.ignored)


def match_batch(batch: Mapping[str, jax.Array], priors: jax.Array, *, pos_thresh: float = POS_THRESH,
                force_thresh: float = FORCE_THRESH, low_iou_faces_steal: bool = True,
                variances: box_coding.Variances = box_coding.VARIANCES) -> tuple[Match, Targets]:
  """`match_one` + `encode_targets` vmapped over the loader's batch.

  Args:
    batch: the loader's dict: `boxes [B, G, 4]`, `landmarks [B, G, 5, 2]`, `box_valid [B, G]`,
      `landmark_valid [B, G]` and optionally `ignore [B, G]`; other keys are not read.
    priors: `[P, 4]` cxcywh, shared by the batch (a numpy constant under jit).

  Returns:
    `(Match, Targets)` with a leading batch axis on every field.
  """
  def one(boxes, landmarks, box_valid, landmark_valid, ignore=None):
    m = match_one(boxes, box_valid, priors, gt_ignore=ignore, pos_thresh=pos_thresh, force_thresh=force_thresh,
                  low_iou_faces_steal=low_iou_faces_steal)
    return m, encode_targets(m, boxes, landmarks, landmark_valid, priors, variances)

  args = [batch['boxes'], batch['landmarks'], batch['box_valid'], batch['landmark_valid']]
  if batch.get('ignore') is not None:
    args.append(batch['ignore'])
  return jax.vmap(one)(*args)
