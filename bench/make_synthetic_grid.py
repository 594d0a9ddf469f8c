"""A PNG grid of synthetic images with their annotations drawn (the README's picture).

    python bench/make_synthetic_grid.py /tmp/synthetic_grid.png [--split val] [--seed 0] [--rows 3 --cols 4]

Boxes are coloured by the hardest WIDER setting that still counts the face: green easy, yellow
medium, orange hard only, grey ignored. Landmarks use the detect CLI's colours (left eye red,
right eye yellow, nose magenta, left mouth corner green, right blue). Thin cyan corners mark the
face-like distractors, which are not annotated. Each cell's caption: index, scene kind and the
face counts (easy/medium/hard/ignored).
"""
from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (sets sys.path)
import cv2
import numpy as np

from jaxface.data.synthetic import SyntheticFaces
from jaxface.visualize import LANDMARK_COLORS

EASY, MEDIUM, HARD, IGNORED = (60, 200, 60), (0, 220, 255), (0, 130, 255), (150, 150, 150)
DISTRACTOR = (255, 255, 0)
CAPTION_H = 22


def annotated_cell(r, index: int, cell: int) -> np.ndarray:
  """The image scaled to fit a `cell` x `cell` square, annotations drawn at the scaled size."""
  img, s = r.image, r.sample
  scale = cell / max(img.shape[:2])
  h, w = int(round(img.shape[0] * scale)), int(round(img.shape[1] * scale))
  canvas = np.full((cell + CAPTION_H, cell, 3), 40, np.uint8)
  y0, x0 = (cell - h) // 2, (cell - w) // 2
  view = canvas[y0:y0 + h, x0:x0 + w]
  view[...] = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
  for x1, y1, x2, y2 in r.distractor_boxes * scale:
    q = max(3, int(0.2 * min(x2 - x1, y2 - y1)))
    for cx, cy, dx, dy in ((x1, y1, 1, 1), (x2, y1, -1, 1), (x1, y2, 1, -1), (x2, y2, -1, -1)):
      p = (int(cx), int(cy))
      cv2.line(view, p, (int(cx + dx * q), int(cy)), DISTRACTOR, 1, cv2.LINE_AA)
      cv2.line(view, p, (int(cx), int(cy + dy * q)), DISTRACTOR, 1, cv2.LINE_AA)
  for k in range(len(s)):
    color = IGNORED if s.ignore[k] else EASY if r.easy[k] else MEDIUM if r.medium[k] else HARD
    x1, y1, x2, y2 = s.boxes[k] * scale
    cv2.rectangle(view, (int(x1), int(y1)), (int(np.ceil(x2)) - 1, int(np.ceil(y2)) - 1), color, 1, cv2.LINE_AA)
    if s.landmark_valid[k] and (y2 - y1) >= 10:
      for (x, y), c in zip(s.landmarks[k] * scale, LANDMARK_COLORS):
        cv2.circle(view, (int(x), int(y)), 1 if (y2 - y1) < 40 else 2, c, -1, cv2.LINE_AA)
  counts = f'{int(r.easy.sum())}/{int(r.medium.sum())}/{int(r.hard.sum())}/{int(s.ignore.sum())}'
  caption = f'#{index} {r.kind}  {img.shape[1]}x{img.shape[0]}  e/m/h/ign {counts}'
  cv2.putText(canvas, caption, (4, cell + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (230, 230, 230), 1, cv2.LINE_AA)
  return canvas


def legend(width: int) -> np.ndarray:
  bar = np.full((26, width, 3), 25, np.uint8)
  x = 6
  for name, color in (('easy', EASY), ('medium', MEDIUM), ('hard only', HARD), ('ignored', IGNORED),
                      ('distractor (not annotated)', DISTRACTOR)):
    cv2.rectangle(bar, (x, 7), (x + 14, 19), color, -1)
    cv2.putText(bar, name, (x + 20, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (230, 230, 230), 1, cv2.LINE_AA)
    x += 30 + 9 * len(name)
  for name, color in zip(('L eye', 'R eye', 'nose', 'L mouth', 'R mouth'), LANDMARK_COLORS):
    cv2.circle(bar, (x + 6, 13), 5, color, -1, cv2.LINE_AA)
    cv2.putText(bar, name, (x + 15, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (230, 230, 230), 1, cv2.LINE_AA)
    x += 25 + 9 * len(name)
  return bar


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('out', help='PNG path to write')
  p.add_argument('--split', default='val', choices=('train', 'val'))
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--start', type=int, default=0, help='index of the first image')
  p.add_argument('--rows', type=int, default=3)
  p.add_argument('--cols', type=int, default=4)
  p.add_argument('--cell', type=int, default=320, help='cell side in px')
  p.add_argument('--no-effects', action='store_true', help='draw without blur and camera effects')
  args = p.parse_args()
  n = args.rows * args.cols
  ds = SyntheticFaces(args.split, args.start + n, seed=args.seed, effects=not args.no_effects)
  t = time.perf_counter()
  renders = [ds.render(args.start + k) for k in range(n)]
  took = (time.perf_counter() - t) / n
  cells = [annotated_cell(r, args.start + k, args.cell) for k, r in enumerate(renders)]
  rows = [np.concatenate(cells[r * args.cols:(r + 1) * args.cols], axis=1) for r in range(args.rows)]
  grid = np.concatenate(rows, axis=0)
  grid = np.concatenate([grid, legend(grid.shape[1])], axis=0)
  if not cv2.imwrite(args.out, grid):
    raise SystemExit(f'could not write {args.out}')
  faces = sum(len(r.sample) for r in renders)
  print(f'wrote {args.out} ({grid.shape[1]}x{grid.shape[0]}): {n} images, {faces} faces, '
        f'{1e3 * took:.1f} ms per image rendered')


if __name__ == '__main__':
  main()
