"""An independent PyTorch re-statement of hollance's BlazeFace (REFERENCE.md §3.1-3.3), written from
the facts, not from jaxface: NCHW modules with the checkpoint's names, the anchor calculator as a
plain loop, `_decode_boxes` in its [ymin, xmin, ymax, xmax] layout, and the weighted NMS as a numpy
list loop. Tests run it against jaxface's family."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class BlazeBlockRef(nn.Module):
  def __init__(self, cin: int, cout: int, stride: int = 1):
    super().__init__()
    self.stride = stride
    self.channel_pad = cout - cin
    self.convs = nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 0 if stride == 2 else 1, groups=cin, bias=True),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=True))
    self.max_pool = nn.MaxPool2d(stride, stride) if stride == 2 else None

  def forward(self, x):
    if self.stride == 2:
      h = F.pad(x, (0, 2, 0, 2), 'constant', 0)
      x = self.max_pool(x)
    else:
      h = x
    if self.channel_pad > 0:
      x = F.pad(x, (0, 0, 0, 0, 0, self.channel_pad), 'constant', 0)
    return F.relu(self.convs(h) + x)


class FinalBlazeBlockRef(nn.Module):
  def __init__(self, channels: int):
    super().__init__()
    self.convs = nn.Sequential(
        nn.Conv2d(channels, channels, 3, 2, 0, groups=channels, bias=True),
        nn.Conv2d(channels, channels, 1, 1, 0, bias=True))

  def forward(self, x):
    return F.relu(self.convs(F.pad(x, (0, 2, 0, 2), 'constant', 0)))


class BlazeFaceRef(nn.Module):
  """`forward(x [N,3,S,S] in [-1,1]) -> [regressors [N,896,16], logits [N,896,1]]`."""

  def __init__(self, back_model: bool = False):
    super().__init__()
    self.back_model = back_model
    stem = [nn.Conv2d(3, 24, 5, 2, 0, bias=True), nn.ReLU(inplace=True)]
    if back_model:
      blocks = ([BlazeBlockRef(24, 24) for _ in range(7)] + [BlazeBlockRef(24, 24, 2)]
                + [BlazeBlockRef(24, 24) for _ in range(7)] + [BlazeBlockRef(24, 48, 2)]
                + [BlazeBlockRef(48, 48) for _ in range(7)] + [BlazeBlockRef(48, 96, 2)]
                + [BlazeBlockRef(96, 96) for _ in range(7)])
      self.backbone = nn.Sequential(*stem, *blocks)
      self.final = FinalBlazeBlockRef(96)
      c8 = 96
    else:
      chans = [(24, 24, 1), (24, 28, 1), (28, 32, 2), (32, 36, 1), (36, 42, 1), (42, 48, 2), (48, 56, 1),
               (56, 64, 1), (64, 72, 1), (72, 80, 1), (80, 88, 1)]
      self.backbone1 = nn.Sequential(*stem, *[BlazeBlockRef(a, b, s) for a, b, s in chans])
      self.backbone2 = nn.Sequential(BlazeBlockRef(88, 96, 2), *[BlazeBlockRef(96, 96) for _ in range(4)])
      c8 = 88
    self.classifier_8 = nn.Conv2d(c8, 2, 1, bias=True)
    self.classifier_16 = nn.Conv2d(96, 6, 1, bias=True)
    self.regressor_8 = nn.Conv2d(c8, 32, 1, bias=True)
    self.regressor_16 = nn.Conv2d(96, 96, 1, bias=True)

  def forward(self, x):
    x = F.pad(x, (1, 2, 1, 2), 'constant', 0)
    b = x.shape[0]
    if self.back_model:
      x = self.backbone(x)
      h = self.final(x)
    else:
      x = self.backbone1(x)
      h = self.backbone2(x)
    c1 = self.classifier_8(x).permute(0, 2, 3, 1).reshape(b, -1, 1)
    c2 = self.classifier_16(h).permute(0, 2, 3, 1).reshape(b, -1, 1)
    r1 = self.regressor_8(x).permute(0, 2, 3, 1).reshape(b, -1, 16)
    r2 = self.regressor_16(h).permute(0, 2, 3, 1).reshape(b, -1, 16)
    return [torch.cat((r1, r2), dim=1), torch.cat((c1, c2), dim=1)]


def randomize_(model: nn.Module, seed: int = 0, std: float = 0.15) -> nn.Module:
  """Random weights and biases (the released files' names and shapes)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn(p.shape, generator=g) * std)
  return model


def ssd_anchors(input_size: int, num_layers: int, min_scale: float, max_scale: float, strides, offset: float = 0.5,
                interpolated_ratio: float = 1.0) -> np.ndarray:
  """MediaPipe's SsdAnchorsCalculator with fixed anchor size, aspect ratio 1, as a plain loop."""
  def scale_at(i):
    return (min_scale + max_scale) * 0.5 if num_layers == 1 else min_scale + (max_scale - min_scale) * i / (num_layers - 1)
  out = []
  layer = 0
  while layer < num_layers:
    count = 0
    last = layer
    while last < num_layers and strides[last] == strides[layer]:
      count += 1 + (1 if interpolated_ratio > 0 else 0)
      last += 1
    side = int(math.ceil(input_size / strides[layer]))
    for y in range(side):
      for x in range(side):
        for _ in range(count):
          out.append([(x + offset) / side, (y + offset) / side, 1.0, 1.0])
    layer = last
  return np.asarray(out, np.float64)


def decode_boxes(raw: torch.Tensor, anchors: torch.Tensor, scale: float) -> torch.Tensor:
  """`_decode_boxes`: `[N, A, 16]` -> `[N, A, 16]` = ymin, xmin, ymax, xmax, 6 x (x, y), normalised."""
  boxes = torch.zeros_like(raw)
  xc = raw[..., 0] / scale * anchors[:, 2] + anchors[:, 0]
  yc = raw[..., 1] / scale * anchors[:, 3] + anchors[:, 1]
  w = raw[..., 2] / scale * anchors[:, 2]
  h = raw[..., 3] / scale * anchors[:, 3]
  boxes[..., 0] = yc - h / 2.
  boxes[..., 1] = xc - w / 2.
  boxes[..., 2] = yc + h / 2.
  boxes[..., 3] = xc + w / 2.
  for k in range(6):
    boxes[..., 4 + 2 * k] = raw[..., 4 + 2 * k] / scale * anchors[:, 2] + anchors[:, 0]
    boxes[..., 5 + 2 * k] = raw[..., 5 + 2 * k] / scale * anchors[:, 3] + anchors[:, 1]
  return boxes


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """Plain IoU of one [ymin, xmin, ymax, xmax] box with `[K, 4]`."""
  lo = np.maximum(box[:2], boxes[:, :2])
  hi = np.minimum(box[2:], boxes[:, 2:])
  inter = np.clip(hi - lo, 0, None).prod(axis=1)
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  return inter / (area(box) + area(boxes) - inter)


def weighted_nms(detections: np.ndarray, threshold: float = 0.3, top_score: bool = False) -> list[np.ndarray]:
  """`_weighted_non_max_suppression` in numpy on `[K, 17]` (16 coordinates, score); equal scores in
  row order. The merged score is the cluster's mean (hollance) or, with `top_score`, its best
  (MediaPipe)."""
  detections = np.asarray(detections, np.float64)
  out = []
  remaining = np.argsort(-detections[:, 16], kind='stable')
  while len(remaining) > 0:
    det = detections[remaining[0]]
    mask = _iou(det[:4], detections[remaining, :4]) > threshold
    mask[0] = True
    overlapping = remaining[mask]
    remaining = remaining[~mask]
    merged = det.copy()
    if len(overlapping) > 1:
      coords = detections[overlapping, :16]
      scores = detections[overlapping, 16:17]
      merged[:16] = (coords * scores).sum(axis=0) / scores.sum()
      merged[16] = det[16] if top_score else scores.mean()
    out.append(merged)
  return out


def detect(model: BlazeFaceRef, image_rgb: np.ndarray, anchors: np.ndarray, min_score: float,
           top_score: bool = False) -> np.ndarray:
  """hollance's `predict_on_image` on an `S x S` RGB uint8 image -> `[N, 17]` normalised detections."""
  x = torch.from_numpy(image_rgb).permute(2, 0, 1).float()[None] / 127.5 - 1.0
  with torch.no_grad():
    raw_boxes, raw_scores = model(x)
  size = image_rgb.shape[0]
  boxes = decode_boxes(raw_boxes, torch.from_numpy(anchors).float(), size)[0]
  scores = torch.sigmoid(raw_scores.clamp(-100, 100))[0, :, 0]
  keep = scores >= min_score
  dets = torch.cat([boxes[keep], scores[keep, None]], dim=1)
  faces = weighted_nms(dets.numpy(), 0.3, top_score)
  return np.stack(faces) if faces else np.zeros((0, 17))
