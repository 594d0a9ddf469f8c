"""SCRFD's training loss (SCRFDHead.loss, REFERENCE.md §2.7): ATSS targets, Quality Focal Loss,
DIoU and keypoint smooth-L1, in stride units, per image vmapped over the batch.

Per image, from `atss.atss_assign` over all anchors:

* cls, QFL (beta 2) on every anchor: a negative scores `BCE(x, 0) * sigmoid(x)^2`; a positive
  `BCE(x, q) * |q - sigmoid(x)|^2`, where the quality target q is the IoU of its decoded box
  (detached) with its face's box;
* bbox, DIoU (weight 2, eps 1e-6) between the decoded box `distance2bbox(centre / stride, d)` and
  the face's box / stride, weighted by the detached score `w = sigmoid(x)` of each positive;
* kps, smooth-L1 (beta 1/9, weight 0.1) between the raw keypoint outputs and
  `(keypoints - centre) / stride`, weighted by `visible * w`: `visible` is 1 for a face with its five
  keypoints and 0 without (the reference's mean of the five visibility flags; WIDER's faces have
  all or none).

Normalisers are batch-wide, as `reduce_mean` makes them over GPUs whose losses DDP averages: cls by
`num_total_samples = max(sum over images of max(positives, 1), 1)`, bbox and kps by the sum of `w`
over all positives. Under `axis_name` both are summed over the devices and each device returns its
share, so the shares (and their gradients) add up to the single-device loss.

Finite with no faces: where no anchor is positive the bbox and kps sums are 0 and so are their
terms (FIX: the reference divides 0 by 0 there, and its CUDA-only `torch.tensor(0).cuda()` crashes
on CPU). Padded face rows never become positive; zero-size faces are never positive (ATSS's inside
test), so no target divides by a zero area.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.losses import bce_with_logits, smooth_l1
from jaxface.scrfd import anchors, box_coding
from jaxface.scrfd.atss import aligned_iou, atss_assign

QFL_BETA = 2.0
DIOU_WEIGHT = 2.0
DIOU_EPS = 1e-6
KPS_BETA = 1.0 / 9.0
KPS_WEIGHT = 0.1
TOPK = 9


def diou(pred: jax.Array, target: jax.Array, eps: float = DIOU_EPS) -> jax.Array:
  """mmdet's `diou_loss` before weighting: `1 - (IoU - rho^2 / c^2)` of `[..., 4]` xyxy boxes."""
  lt = jnp.maximum(pred[..., :2], target[..., :2])
  rb = jnp.minimum(pred[..., 2:], target[..., 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  overlap = wh[..., 0] * wh[..., 1]
  ap = (pred[..., 2] - pred[..., 0]) * (pred[..., 3] - pred[..., 1])
  ag = (target[..., 2] - target[..., 0]) * (target[..., 3] - target[..., 1])
  ious = overlap / (ap + ag - overlap + eps)
  enclose = jnp.maximum(jnp.maximum(pred[..., 2:], target[..., 2:]) - jnp.minimum(pred[..., :2], target[..., :2]), 0.0)
  c2 = enclose[..., 0] ** 2 + enclose[..., 1] ** 2 + eps
  rho2 = (((target[..., 0] + target[..., 2]) - (pred[..., 0] + pred[..., 2])) ** 2
          + ((target[..., 1] + target[..., 3]) - (pred[..., 1] + pred[..., 3])) ** 2) / 4
  return 1.0 - (ious - rho2 / c2)


def image_loss_terms(logits, distances, kps, anchor_boxes, strides, num_level_anchors, gt_boxes, gt_valid,
                     gt_kps, kps_visible) -> dict[str, jax.Array]:
  """Unnormalised sums of one image.

  Args:
    logits `[A]`, distances `[A,4]` (after `Scale`, stride units), kps `[A,10]` (or `[A,0]`): the
      head's training outputs; anchor_boxes `[A,4]` px and strides `[A]` (static numpy tables);
    gt_boxes `[G,4]` px, gt_valid `[G]`, gt_kps `[G,5,2]` px, kps_visible `[G]` float.
  Returns: `cls`, `bbox`, `kps`, `weight` (sum of w over positives), `num_pos`.
  """
  assigned, _ = atss_assign(anchor_boxes, num_level_anchors, gt_boxes, gt_valid, TOPK)
  anchor_boxes, strides = jnp.asarray(anchor_boxes, jnp.float32), jnp.asarray(strides, jnp.float32)
  pos = assigned >= 0
  g = jnp.maximum(assigned, 0)
  stride = strides[:, None]
  centres = (anchor_boxes[:, :2] + anchor_boxes[:, 2:]) / 2.0 / stride          # [A, 2] stride units
  target = gt_boxes[g] / stride                                                  # [A, 4]
  pred_box = box_coding.distance2bbox(centres, distances)
  sig = jax.nn.sigmoid(logits)
  w = jnp.where(pos, jax.lax.stop_gradient(sig), 0.0)
  quality = jnp.where(pos, aligned_iou(jax.lax.stop_gradient(pred_box), target), 0.0)
  cls = jnp.where(pos, bce_with_logits(logits, quality) * jnp.abs(quality - sig) ** QFL_BETA,
                  bce_with_logits(logits, 0.0) * sig ** QFL_BETA)
  # Only positives enter DIoU: elsewhere a unit box stands in for both boxes, so that an inverted
  # prediction's 0/0 cannot reach the sum or its gradient.
  unit = jnp.asarray([0.0, 0.0, 1.0, 1.0], jnp.float32)
  bbox = DIOU_WEIGHT * jnp.sum(w * diou(jnp.where(pos[:, None], pred_box, unit), jnp.where(pos[:, None], target, unit)))
  out = dict(cls=jnp.sum(cls), bbox=bbox, weight=jnp.sum(w), num_pos=jnp.sum(pos, dtype=jnp.int32))
  if kps.shape[-1]:
    kps_target = box_coding.kps2distance(centres, gt_kps[g] / stride[..., None])  # [A, 10]
    kw = w * kps_visible[g]
    out['kps'] = KPS_WEIGHT * jnp.sum(kw[:, None] * smooth_l1(kps - kps_target, KPS_BETA))
  else:
    out['kps'] = jnp.zeros((), jnp.float32)
  return out


def scrfd_loss(logits, distances, kps, batch: Mapping[str, jax.Array], anchor_boxes: np.ndarray,
               strides: np.ndarray, num_level_anchors: tuple[int, ...], *,
               axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The batch loss: `logits [B,A]`, `distances [B,A,4]`, `kps [B,A,10|0]` against the loader's
  batch (`boxes [B,G,4]` and `landmarks [B,G,5,2]` normalised to the image side, `box_valid`,
  `landmark_valid`, `ignore`: ignore boxes take no part, as the reference's `ignore_iof_thr=-1`)."""
  side = batch['image'].shape[1]
  gt_boxes = batch['boxes'].astype(jnp.float32) * side
  gt_kps = batch['landmarks'].astype(jnp.float32) * side
  gt_valid = batch['box_valid'] & ~batch.get('ignore', jnp.zeros_like(batch['box_valid']))
  visible = batch['landmark_valid'].astype(jnp.float32)
  terms = jax.vmap(lambda l, d, k, b, v, p, s: image_loss_terms(l, d, k, anchor_boxes, strides, num_level_anchors,
                                                                 b, v, p, s))(
      logits.astype(jnp.float32), distances.astype(jnp.float32), kps.astype(jnp.float32),
      gt_boxes, gt_valid, gt_kps, visible)
  total = (lambda x: jax.lax.psum(x, axis_name)) if axis_name else (lambda x: x)
  num_pos = total(jnp.sum(terms['num_pos']))
  samples = total(jnp.sum(jnp.maximum(terms['num_pos'], 1))).astype(jnp.float32)
  weight = total(jnp.sum(terms['weight']))
  loss_cls = jnp.sum(terms['cls']) / jnp.maximum(samples, 1.0)
  safe = jnp.where(weight > 0, weight, 1.0)
  loss_bbox = jnp.where(weight > 0, jnp.sum(terms['bbox']) / safe, 0.0)
  loss_kps = jnp.where(weight > 0, jnp.sum(terms['kps']) / safe, 0.0)
  loss = loss_cls + loss_bbox + loss_kps
  metrics = dict(loss=total(loss), loss_cls=total(loss_cls), loss_bbox=total(loss_bbox), loss_kps=total(loss_kps),
                 num_pos=num_pos)
  return loss, metrics


def family_loss(spec, outputs, batch: Mapping[str, jax.Array], *, axis_name: str | None = None,
                **hyper) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`scrfd_loss` as `Family.training.loss` takes it: the model's training outputs `(logits [B,A,1],
  distances, keypoints)` on a batch of square images, the anchor tables of the batch's size."""
  if hyper:
    raise ValueError(f'SCRFD\'s loss takes no hyper-parameters; got {sorted(hyper)} (config.loss must be empty)')
  side = batch['image'].shape[1]
  pool = spec.backbone.max_pool_stem
  boxes = anchors.anchor_boxes(side, side, pool)
  _, cells = anchors.anchor_grid(side, side, pool)
  counts = tuple(int(np.sum(cells[:, 2] == s)) for s in anchors.STRIDES)
  logits, distances, kps = outputs
  return scrfd_loss(logits[..., 0], distances, kps, batch, boxes, cells[:, 2].astype(np.float32), counts,
                    axis_name=axis_name)
