"""What bucketed inference (padding to a few sizes) changes in the detections, and what it saves.

    python bench/bench_bucketing.py

For each photo (the shared images, plus crowd.jpg rescaled to several odd sizes so the padding
varies), detections of the exact-size program are matched to the bucketed ones (IoU >= 0.5,
faces with score >= 0.5): recall of exact faces, largest score change, largest box-corner shift.
Also counts compiled programs for the mixed-size set in each mode.
"""
from __future__ import annotations

import common  # noqa: F401
import cv2
import numpy as np

from jaxface import inference, load_detector

ARCH = 'retinaface_mnet_relu'


def iou_matrix(a, b):
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
  area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=-1)
  return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def compare(exact, bucketed, min_score=0.5):
  """(faces, matched, max |score diff|, max corner shift px) for exact faces above min_score."""
  e = exact.scores >= min_score
  if not e.any():
    return 0, 0, 0.0, 0.0
  iou = iou_matrix(exact.boxes[e], bucketed.boxes) if len(bucketed) else np.zeros((e.sum(), 0))
  best = iou.argmax(1) if iou.shape[1] else np.zeros(e.sum(), int)
  ok = iou.max(1) >= 0.5 if iou.shape[1] else np.zeros(e.sum(), bool)
  ds = np.abs(exact.scores[e][ok] - bucketed.scores[best[ok]])
  db = np.abs(exact.boxes[e][ok] - bucketed.boxes[best[ok]])
  return int(e.sum()), int(ok.sum()), float(ds.max(initial=0)), float(db.max(initial=0))


def main():
  shared = common.shared_dir()
  weights = str(shared / 'data' / 'weights' / 'retinaface_mnet025_relu_2019.pth')
  exact = load_detector(weights, arch=ARCH)
  bucketed = load_detector(weights, arch=ARCH, bucketed=True)
  images = {p.name: cv2.imread(str(p)) for p in sorted((shared / 'data' / 'images').iterdir())}
  crowd = images['crowd.jpg']
  for scale in (0.45, 0.7, 0.83, 1.3):
    im = cv2.resize(crowd, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    images[f'crowd.jpg x{scale}'] = im
  print(common.machine())
  print(f'{"image":22s} {"size":>10s} {"bucket":>10s} {"faces>=0.5":>10s} {"matched":>8s} '
        f'{"max dscore":>10s} {"max dbox px":>11s}')
  total = [0, 0]
  worst = [0.0, 0.0]
  for name, im in images.items():
    h, w = im.shape[:2]
    bh, bw = inference.bucket_size(h, inference.BUCKETS), inference.bucket_size(w, inference.BUCKETS)
    n, m, ds, db = compare(exact.detect(im), bucketed.detect(im))
    total[0] += n
    total[1] += m
    worst = [max(worst[0], ds), max(worst[1], db)]
    print(f'{name:22s} {w:>4d}x{h:<5d} {bw:>4d}x{bh:<5d} {n:10d} {m:8d} {ds:10.4f} {db:11.2f}')
  print(f'all: {total[1]}/{total[0]} faces found by both; worst score change {worst[0]:.4f}, '
        f'worst box shift {worst[1]:.2f} px')
  sizes = {im.shape[:2] for im in images.values()}
  buckets = {(inference.bucket_size(h, inference.BUCKETS), inference.bucket_size(w, inference.BUCKETS))
             for h, w in sizes}
  print(f'programs compiled for these {len(images)} images: exact {len(sizes)}, bucketed {len(buckets)}')


if __name__ == '__main__':
  main()
