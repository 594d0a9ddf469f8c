"""RetinaFace's MultiBox loss (REFERENCE.md §1.5): box, class with hard-negative mining, landmarks.

Per image (`image_loss_terms`, vmapped; no Python loop over the batch):

* box: smooth-L1 (beta 1), summed over positive priors and the 4 offsets;
* class: softmax cross-entropy (background 0, face 1) summed over positives and mined negatives;
* landmarks: smooth-L1 summed over positives whose face has landmarks (the reference's label +1)
  and the 10 offsets. Faces without landmarks still count for box and class.

Hard-negative mining, per image, as the reference: each prior's cross-entropy against its target
is set to 0 at positives, the priors are ranked by descending loss, and the negatives are the
priors of rank < `num_neg = min(neg_pos * num_pos, P - 1)`. So an image without positives
contributes no class loss at all. Ties: equal losses are ranked by prior index, as a stable sort
(the reference's torch sort does not promise an order). The loss *value* never depends on the tie
order (tied priors at the cut have equal losses, whichever is taken), only which of them gets a
gradient. No sort is needed for a rank cut (`top_ranked`): the `num_neg`-th largest value is found
bit by bit (32 counting passes over the priors, static shapes), the priors above it are taken and
the first ties at it by index; XLA:CPU's sort of `[B, P]` took 40-55 ms of the 640 px train step.
Extension for ignore boxes: `ignored` priors (see `matching`) are ranked last and never taken
as negatives.

Normalisers are batch-wide, as the reference: box and class sums are divided by
`N = max(total positives, 1)`, the landmark sum by `N1 = max(total positives with landmarks, 1)`.
Total = `loc_weight * loss_loc + loss_cls + loss_landm` (the reference's train.py, loc_weight 2).

Finite by construction: targets are zero wherever they are unused (`matching.encode_targets`),
every mask is applied with `jnp.where`, and the class loss is a log-softmax, so zero-size boxes,
no positives and empty images give finite losses and finite gradients.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from jaxface.losses import smooth_l1
from jaxface.retinaface import anchors, box_coding
from jaxface.retinaface import matching


def _order_keys(x: jax.Array) -> jax.Array:
  """uint32 keys in the order of the float32 values `x` (no NaNs), as XLA:CPU's sort compares them:
  -0.0 and subnormals equal to 0.0."""
  if x.dtype != jnp.float32:
    raise TypeError(f'mining keys are float32 bit patterns; got {x.dtype}')
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  bits = jnp.where(bits & jnp.uint32(0x7F800000) == 0, jnp.uint32(0), bits)  # zero exponent: 0.0
  return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def top_ranked(x: jax.Array, k: jax.Array) -> jax.Array:
  """`[P]` bool: the `k` (0 <= k <= P) largest of `x [P]`, ties taken by index; the same set as
  `argsort(x, descending=True, stable=True)[:k]`."""
  keys = _order_keys(x)
  kth = jnp.uint32(0)  # grows, one bit at a time from the top, to the k-th largest key
  for bit in range(31, -1, -1):
    candidate = kth | jnp.uint32(1 << bit)
    kth = jnp.where(jnp.sum(keys >= candidate, dtype=jnp.int32) >= k, candidate, kth)
  above, tied = keys > kth, keys == kth
  room = k - jnp.sum(above, dtype=jnp.int32)
  return (k > 0) & (above | (tied & (jnp.cumsum(tied, dtype=jnp.int32) <= room)))


def image_loss_terms(pred_loc: jax.Array, pred_logits: jax.Array, pred_landm: jax.Array,
                     targets: matching.Targets, *, neg_pos: int = 7) -> dict[str, jax.Array]:
  """Unnormalised loss sums and counts of one image.

  Args:
    pred_loc: `[P, 4]` predicted box offsets.
    pred_logits: `[P, 2]` (background, face) logits.
    pred_landm: `[P, 10]` predicted landmark offsets.
    targets: that image's `matching.Targets`.
    neg_pos: negatives mined per positive.

  Returns:
    `loc`, `cls`, `landm` (float32 sums) and `num_pos`, `num_neg`, `num_pos_landm`, `num_ignored` (int32).
  """
  num_priors = pred_logits.shape[0]
  pos, ignored, landm_pos = targets.positive, targets.ignored, targets.landm_positive

  log_p = jax.nn.log_softmax(pred_logits.astype(jnp.float32), axis=-1)       # [P, 2]
  ce = -jnp.where(pos, log_p[:, 1], log_p[:, 0])                              # [P], >= 0
  # Mining score: the reference's CE with positives at 0; ignored priors below every real loss.
  mining = jnp.where(ignored, -1.0, jnp.where(pos, 0.0, jax.lax.stop_gradient(ce)))
  num_pos = jnp.sum(pos, dtype=jnp.int32)
  num_neg = jnp.minimum(neg_pos * num_pos, num_priors - 1)
  neg = top_ranked(mining, num_neg) & ~pos & ~ignored

  loc_err = smooth_l1(pred_loc.astype(jnp.float32) - targets.loc)            # [P, 4]
  landm_err = smooth_l1(pred_landm.astype(jnp.float32) - targets.landm)      # [P, 10]
  return dict(
      loc=jnp.sum(jnp.where(pos[:, None], loc_err, 0.0)),
      cls=jnp.sum(jnp.where(pos | neg, ce, 0.0)),
      landm=jnp.sum(jnp.where(landm_pos[:, None], landm_err, 0.0)),
      num_pos=num_pos,
      num_neg=jnp.sum(neg, dtype=jnp.int32),
      num_pos_landm=jnp.sum(landm_pos, dtype=jnp.int32),
      num_ignored=jnp.sum(ignored, dtype=jnp.int32),
  )


def loss_from_targets(pred_loc: jax.Array, pred_logits: jax.Array, pred_landm: jax.Array, targets: matching.Targets,
                      *, neg_pos: int = 7, loc_weight: float = 2.0,
                      axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The batch loss from already matched `targets` (batched `Targets`); see `multibox_loss`.

  With `axis_name` (inside `pmap`/`shard_map` over the batch), the normalisers count the positives
  of the *global* batch, and the returned loss is this shard's share of the global loss: the
  shares (and their gradients) sum to the single-device values. Metrics are global.
  """
  total = (lambda x: jax.lax.psum(x, axis_name)) if axis_name else (lambda x: x)
  terms = jax.vmap(lambda l, c, m, t: image_loss_terms(l, c, m, t, neg_pos=neg_pos))(
      pred_loc, pred_logits, pred_landm, targets)
  num_pos = total(jnp.sum(terms['num_pos']))
  num_pos_landm = total(jnp.sum(terms['num_pos_landm']))
  n = jnp.maximum(num_pos, 1).astype(jnp.float32)
  n1 = jnp.maximum(num_pos_landm, 1).astype(jnp.float32)
  loss_loc = jnp.sum(terms['loc']) / n
  loss_cls = jnp.sum(terms['cls']) / n
  loss_landm = jnp.sum(terms['landm']) / n1
  loss = loc_weight * loss_loc + loss_cls + loss_landm
  metrics = dict(loss=total(loss), loss_loc=total(loss_loc), loss_cls=total(loss_cls),
                 loss_landm=total(loss_landm), num_pos=num_pos, num_neg=total(jnp.sum(terms['num_neg'])),
                 num_pos_landm=num_pos_landm, num_ignored_priors=total(jnp.sum(terms['num_ignored'])))
  return loss, metrics


def multibox_loss(pred_loc: jax.Array, pred_logits: jax.Array, pred_landm: jax.Array,
                  batch: Mapping[str, jax.Array], priors: jax.Array, *, neg_pos: int = 7, loc_weight: float = 2.0,
                  variances: box_coding.Variances = box_coding.VARIANCES, pos_thresh: float = matching.POS_THRESH,
                  force_thresh: float = matching.FORCE_THRESH, low_iou_faces_steal: bool = True,
                  axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """RetinaFace's training loss for a batch: matching, targets and the three terms.

  Args:
    pred_loc: `[B, P, 4]` box offsets from the model.
    pred_logits: `[B, P, 2]` class logits (background, face).
    pred_landm: `[B, P, 10]` landmark offsets.
    batch: the loader's dict (`boxes`, `landmarks`, `box_valid`, `landmark_valid`, optional `ignore`).
    priors: `[P, 4]` cxcywh priors of the batch's image size (a numpy constant: bake it in with
      `functools.partial` before `jax.jit`).
    neg_pos: mined negatives per positive (reference 7).
    loc_weight: weight of the box term (reference `cfg['loc_weight']` = 2).
    variances, pos_thresh, force_thresh, low_iou_faces_steal: see `matching`.
    axis_name: the batch's device axis inside `pmap` (see `loss_from_targets`); None under jit.

  Returns:
    `(loss, metrics)`: the scalar total and a dict of `loss`, `loss_loc`, `loss_cls`, `loss_landm`,
    and the batch counts `num_pos`, `num_neg` (mined negatives that are not positive: when
    `neg_pos * num_pos` exceeds an image's non-positive priors the reference's rank cut also
    covers positives, which count once, as positives), `num_pos_landm`, `num_ignored_priors`,
    `num_degenerate` (valid boxes with zero size, dropped from matching) and `num_low_iou_faces`
    (usable faces whose best prior IoU is below `force_thresh`: never positive on their own).
  """
  match, targets = matching.match_batch(batch, priors, pos_thresh=pos_thresh, force_thresh=force_thresh,
                                        low_iou_faces_steal=low_iou_faces_steal, variances=variances)
  loss, metrics = loss_from_targets(pred_loc, pred_logits, pred_landm, targets, neg_pos=neg_pos,
                                    loc_weight=loc_weight, axis_name=axis_name)
  total = (lambda x: jax.lax.psum(x, axis_name)) if axis_name else (lambda x: x)
  metrics['num_degenerate'] = total(jnp.sum(batch['box_valid'] & ~matching.nondegenerate(batch['boxes']),
                                            dtype=jnp.int32))
  metrics['num_low_iou_faces'] = total(jnp.sum(match.usable & ~match.forced, dtype=jnp.int32))
  return loss, metrics


def family_loss(spec, outputs, batch: Mapping[str, jax.Array], *, axis_name: str | None = None,
                **hyper) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`multibox_loss` as `Family.training.loss` takes it: the model's `(loc, logits, landmarks)` on
  a batch of square images, priors from `spec` at the batch's size; `hyper` (e.g. `loc_weight`)
  goes to `multibox_loss`."""
  s = batch['image'].shape[1]
  priors = jnp.asarray(anchors.prior_boxes(s, s, min_sizes=spec.min_sizes, steps=spec.steps))
  loc, logits, landm = outputs
  return multibox_loss(loc, logits, landm, batch, priors, variances=spec.variances, axis_name=axis_name, **hyper)
