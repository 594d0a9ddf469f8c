"""A PyTorch re-statement of SCRFD's training targets and loss (insightface's mmdet fork), for tests.

Written from REFERENCE.md §2.6-2.7 as plain per-face / per-anchor torch, independent of
`jaxface.scrfd.atss` and `jaxface.scrfd.loss`:

* `atss_reference`: `ATSSAssigner(topk=9, mode=0)` one face at a time; the per-level nearest
  anchors by a *stable* sort of the distances (equal distances: lower anchor index first, the tie
  order jaxface documents; torch's own `topk` leaves it unspecified);
* `scrfd_loss_reference`: `SCRFDHead.loss` over a batch (QFL beta 2, DIoU weight 2, keypoint
  smooth-L1 beta 1/9 weight 0.1), all levels at once (the per-level sums share their normalisers).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

INF = 1e8


def iou_matrix(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
  """mmdet `bbox_overlaps` (iou, not aligned): [N,4] x [M,4] -> [N,M]."""
  lt = torch.max(a[:, None, :2], b[None, :, :2])
  rb = torch.min(a[:, None, 2:], b[None, :, 2:])
  wh = (rb - lt).clamp(min=0)
  overlap = wh[..., 0] * wh[..., 1]
  area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  union = torch.clamp(area_a[:, None] + area_b[None, :] - overlap, min=eps)
  return overlap / union


def iou_aligned(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
  lt = torch.max(a[:, :2], b[:, :2])
  rb = torch.min(a[:, 2:], b[:, 2:])
  wh = (rb - lt).clamp(min=0)
  overlap = wh[:, 0] * wh[:, 1]
  area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  return overlap / torch.clamp(area_a + area_b - overlap, min=eps)


def atss_reference(anchors: np.ndarray, num_level_anchors, gt_boxes: np.ndarray, topk: int = 9
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Assigned face index per anchor (-1 background) and its IoU (0 for background), float32 torch."""
  anchors_t = torch.from_numpy(np.asarray(anchors, np.float32))
  gts = torch.from_numpy(np.asarray(gt_boxes, np.float32).reshape(-1, 4))
  num_anchors = anchors_t.shape[0]
  if len(gts) == 0:
    return np.full(num_anchors, -1, np.int64), np.zeros(num_anchors, np.float32)
  overlaps = iou_matrix(anchors_t, gts)                                     # [A, G]
  acx = (anchors_t[:, 0] + anchors_t[:, 2]) / 2.0
  acy = (anchors_t[:, 1] + anchors_t[:, 3]) / 2.0
  best_iou = torch.full((num_anchors,), -INF)
  best_gt = torch.full((num_anchors,), -1, dtype=torch.long)
  for g in range(len(gts)):
    x1, y1, x2, y2 = gts[g]
    gcx, gcy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    dist = ((acx - gcx) ** 2 + (acy - gcy) ** 2).sqrt()
    chosen, start = [], 0
    for n in num_level_anchors:
      order = torch.sort(dist[start:start + n], stable=True).indices[:min(topk, n)]
      chosen.append(order + start)
      start += n
    chosen = torch.cat(chosen)
    ious = overlaps[chosen, g]
    thr = ious.mean() + ious.std()
    size = torch.sqrt(torch.clamp((x2 - x1) * (y2 - y1), min=1e-4))
    l, t = acx[chosen] - x1, acy[chosen] - y1
    r, b = x2 - acx[chosen], y2 - acy[chosen]
    inside = torch.stack([l, t, r, b], 1).min(1).values / size > 0.001
    for a, iou, ok in zip(chosen.tolist(), ious.tolist(), ((ious >= thr) & inside).tolist()):
      if ok and iou > best_iou[a]:  # strictly greater: equal IoUs keep the lower face index
        best_iou[a], best_gt[a] = overlaps[a, g], g
  iou = torch.where(best_gt >= 0, best_iou, torch.zeros(()))
  return best_gt.numpy(), iou.numpy()


def diou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
  lt = torch.max(pred[:, :2], target[:, :2])
  rb = torch.min(pred[:, 2:], target[:, 2:])
  wh = (rb - lt).clamp(min=0)
  overlap = wh[:, 0] * wh[:, 1]
  ap = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
  ag = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
  ious = overlap / (ap + ag - overlap + eps)
  enclose = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])).clamp(min=0)
  c2 = enclose[:, 0] ** 2 + enclose[:, 1] ** 2 + eps
  rho2 = (((target[:, 0] + target[:, 2]) - (pred[:, 0] + pred[:, 2])) ** 2
          + ((target[:, 1] + target[:, 3]) - (pred[:, 1] + pred[:, 3])) ** 2) / 4
  return 1 - (ious - rho2 / c2)


def smooth_l1(x: torch.Tensor, beta: float) -> torch.Tensor:
  a = x.abs()
  return torch.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def scrfd_loss_reference(logits, distances, kps, anchors, strides, assigned, gt_boxes, gt_kps, kps_visible):
  """SCRFDHead's loss for a batch, all levels at once, on one device.

  Args (torch tensors): logits `[B,A]`, distances `[B,A,4]` (after Scale, stride units), kps
    `[B,A,10]`; anchors `[A,4]` px; strides `[A]`; assigned `[B,A]` face index or -1 (from ATSS);
    gt_boxes `[B,G,4]` px; gt_kps `[B,G,5,2]` px; kps_visible `[B,G]` (mean of the 5 visibility
    weights).
  Returns: dict of loss, loss_cls, loss_bbox, loss_kps.
  """
  B = logits.shape[0]
  centres = (anchors[:, :2] + anchors[:, 2:]) / 2 / strides[:, None]
  cls_sum = bbox_sum = kps_sum = weight_sum = logits.new_zeros(())
  num_total_pos = 0
  for i in range(B):
    pos = torch.nonzero(assigned[i] >= 0).squeeze(1)
    num_total_pos += max(len(pos), 1)
    score = logits.new_zeros(logits.shape[1])
    sig = logits[i].sigmoid()
    if len(pos):
      g = assigned[i][pos]
      target = gt_boxes[i][g] / strides[pos, None]
      c = centres[pos]
      d = distances[i][pos]
      pred_box = torch.cat([c - d[:, :2], c + d[:, 2:]], 1)
      w = sig.detach()[pos]
      score[pos] = iou_aligned(pred_box.detach(), target)
      bbox_sum = bbox_sum + 2.0 * (w * diou_loss(pred_box, target)).sum()
      kt = (gt_kps[i][g] / strides[pos, None, None] - c[:, None, :]).reshape(-1, 10)
      kw = (kps_visible[i][g] * w)[:, None]
      kps_sum = kps_sum + 0.1 * (kw * smooth_l1(kps[i][pos] - kt, 1.0 / 9.0)).sum()
      weight_sum = weight_sum + w.sum()
    # Quality focal loss (beta 2): negatives against 0, positives against their IoU.
    neg_term = F.binary_cross_entropy_with_logits(logits[i], torch.zeros_like(logits[i]), reduction='none') * sig.pow(2)
    pos_term = F.binary_cross_entropy_with_logits(logits[i], score, reduction='none') * (score - sig).abs().pow(2)
    is_pos = assigned[i] >= 0
    cls_sum = cls_sum + torch.where(is_pos, pos_term, neg_term).sum()
  loss_cls = cls_sum / max(float(num_total_pos), 1.0)
  loss_bbox = bbox_sum / weight_sum if weight_sum > 0 else bbox_sum * 0
  loss_kps = kps_sum / weight_sum if weight_sum > 0 else kps_sum * 0
  return dict(loss=loss_cls + loss_bbox + loss_kps, loss_cls=loss_cls, loss_bbox=loss_bbox, loss_kps=loss_kps)
