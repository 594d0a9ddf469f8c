"""From a checkpoint to WIDER FACE AP: run the detector over the val images, write, score.

`evaluate.py` is a thin launcher over `main`. Test-time protocols (REFERENCE.md 1.8, 2.9):

- `original`: the image as it is (biubug6's default, "original image scale");
- `mxnet`: resize so the short side is 1600, unless the long side would exceed 2150, then so
  that it is 2150 (biubug6's "same parameter with Mxnet");
- `vga`: letterbox into 640x640: scale the long side to 640 (sizes rounded as mmcv's
  `imrescale`), pad bottom/right with the mean colour (zero after normalisation, as mmdet's
  pad) - SCRFD's protocol. Every image then shares one compiled program.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from jaxface.evaluation.ground_truth import SETTINGS, GroundTruth, load_wider_mat_ground_truth
from jaxface.evaluation.plot import plot_pr_curves
from jaxface.evaluation.predictions import write_predictions
from jaxface.evaluation.protocol import PROTOCOLS, EvalResult
from jaxface.evaluation.widerface import evaluate_dir

TEST_SCALES = ('original', 'mxnet', 'vga')
VGA = 640


def test_scale_factor(height: int, width: int, test_scale: str) -> float:
  """The resize factor a protocol applies to an H x W image."""
  if test_scale == 'original':
    return 1.0
  if test_scale == 'mxnet':
    resize = 1600 / min(height, width)
    if round(resize * max(height, width)) > 2150:
      resize = 2150 / max(height, width)
    return resize
  if test_scale == 'vga':
    return VGA / max(height, width)
  raise ValueError(f'unknown test scale {test_scale!r}; valid: {", ".join(TEST_SCALES)}')


def prepare(image: np.ndarray, test_scale: str) -> tuple[np.ndarray, float]:
  """The network input for a protocol and the factor from original to input pixels."""
  h, w = image.shape[:2]
  s = test_scale_factor(h, w, test_scale)
  if s == 1.0:
    return image, s
  size = (max(1, int(w * s + 0.5)), max(1, int(h * s + 0.5)))  # (W, H), mmcv's rounding
  resized = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
  if test_scale != 'vga':
    return resized, s
  from jaxface.inference import pad_to
  return pad_to(resized, VGA, VGA), s


def detect_all(detector, keys: Sequence[tuple[str, str]], load: Callable[[str, str], np.ndarray], *,
               test_scale: str, conf_threshold: float, nms_threshold: float | None, chunk: int = 32,
               progress: Callable[[str], None] | None = None) -> Iterator[tuple[tuple[str, str], np.ndarray]]:
  """Yields `((event, name), [P, 5] x y w h score)` in original-image pixels for every key.

  Images go through `detector.detect_batch` in chunks, so same-size (or same-bucket) images
  share compiled batches.
  """
  start = time.time()
  for first in range(0, len(keys), chunk):
    batch_keys = keys[first:first + chunk]
    inputs, scales = zip(*(prepare(load(*k), test_scale) for k in batch_keys))
    results = detector.detect_batch(list(inputs), conf_threshold, nms_threshold)
    for key, det, s in zip(batch_keys, results, scales):
      boxes = det.boxes / s
      yield key, np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2], det.scores[:, None]], axis=1)
    if progress is not None:
      done = min(first + chunk, len(keys))
      rate = done / max(time.time() - start, 1e-9)
      progress(f'[{done:5d}/{len(keys)}] {rate:5.1f} img/s  ETA {clock((len(keys) - done) / rate)}')


def clock(seconds: float) -> str:
  """`h:mm:ss`, for progress lines and ETAs."""
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f'{h:d}:{m:02d}:{s:02d}'


def wider_image_loader(root: str) -> Callable[[str, str], np.ndarray]:
  """`(event, name) -> BGR image` from `<root>/WIDER_val/images/<event>/<name>.jpg`."""
  from jaxface.images import read_image

  def load(event: str, name: str) -> np.ndarray:
    return read_image(os.path.join(root, 'WIDER_val', 'images', event, name + '.jpg'))
  return load


def synthetic_val(num_images: int, seed: int, image_size: tuple[int, int] | None = None
                  ) -> tuple[GroundTruth, Callable[[str, str], np.ndarray]]:
  """The built-in synthetic val set: its ground truth and image loader (`image_size` (h, w): all
  images that size, so one compiled program serves them; None: sides drawn in 320..640)."""
  from jaxface.data import synthetic
  gt = synthetic.val_ground_truth(num_images, seed, image_size)
  faces = synthetic.SyntheticFaces('val', num_images, seed=seed, image_size=image_size)
  # The ground truth groups images by event; an image's index is in its name (`synthetic_<i>`).
  index = {(e, n): int(n.rsplit('_', 1)[1]) for e, names in zip(gt.events, gt.files) for n in names}
  return gt, lambda event, name: faces[index[(event, name)]][0]


def shard(keys: Sequence, num_shards: int, index: int) -> list:
  """Every `num_shards`-th key from `index`: the images one process of several evaluates."""
  if not 0 <= index < num_shards:
    raise ValueError(f'shard index {index} is not in [0, {num_shards})')
  return list(keys[index::num_shards])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog='python evaluate.py',
      description='WIDER FACE Easy/Medium/Hard AP: run a checkpoint over the val set (--ckpt), or score an '
                  'existing prediction folder (--preds).')
  what = p.add_mutually_exclusive_group(required=True)
  what.add_argument('--ckpt', help='jaxface checkpoint directory (from train.py or python -m jaxface.convert)')
  p.add_argument('--step', type=int, help='with --ckpt on a train.py workdir: this checkpoint step (default: latest)')
  what.add_argument('--preds', help='prediction folder <event>/<name>.txt (from jaxface or any detector)')
  p.add_argument('--gt', help='folder with the four WIDER .mat files (default: <wider-root>/ground_truth)')
  p.add_argument('--dataset', choices=('wider', 'synthetic'),
                 help='val set (default: the checkpoint\'s training dataset, else wider)')
  p.add_argument('--wider-root', default=os.environ.get('WIDER_ROOT'),
                 help='WIDER FACE root holding WIDER_val/images (default: $WIDER_ROOT)')
  p.add_argument('--synthetic-images', type=int, help='synthetic val images (default: the checkpoint\'s)')
  p.add_argument('--synthetic-seed', type=int, help='synthetic val seed (default: the checkpoint\'s)')
  p.add_argument('--protocol', choices=PROTOCOLS, default='official',
                 help='official: the MATLAB tool\'s rules (default); python: the common Python port\'s')
  p.add_argument('--test-scale', choices=TEST_SCALES, default='original', help='test-time image scale protocol')
  p.add_argument('--conf', type=float, default=0.02, help='confidence threshold (default 0.02, the standard)')
  p.add_argument('--nms', type=float, help='NMS IoU threshold (default: the model\'s; 0.4 for RetinaFace)')
  p.add_argument('--exact', action='store_true',
                 help='run each image at its exact size (one compile per size; reproduces the reference) '
                      'instead of padding to size buckets')
  p.add_argument('--batch-size', type=int, default=8, help='images per compiled batch')
  p.add_argument('--out', help='where to write prediction files (default: <ckpt>/widerface_<dataset>_<scale>)')
  p.add_argument('--num-shards', type=int, default=1, help='split the images over this many processes')
  p.add_argument('--shard-index', type=int, default=0,
                 help='this process\'s shard; with several shards, only predictions are written '
                      '(score the merged folder with --preds)')
  p.add_argument('--json', help='also write the APs, face counts and settings to this JSON file')
  p.add_argument('--plot', help='also draw the three PR curves to this PNG (default: <out>/pr_curves.png)')
  p.add_argument('--events', help='comma-separated event folders to evaluate (default: all); for quick checks, '
                                  'the AP is then that of the subset')
  p.add_argument('--strict', action='store_true', help='a missing or malformed prediction file is an error')
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  say = lambda msg: print(msg, file=sys.stderr, flush=True)
  meta = {}
  if args.ckpt:
    from jaxface.checkpoint_io import read_meta
    try:
      meta = read_meta(args.ckpt)
    except (FileNotFoundError, ValueError) as e:
      say(f'error: {e}')
      return 2
  trained_on = meta.get('dataset', {})
  dataset = args.dataset or trained_on.get('name', 'wider')

  if dataset == 'synthetic':
    n = args.synthetic_images or trained_on.get('val_images', 500)
    seed = args.synthetic_seed if args.synthetic_seed is not None else trained_on.get('val_seed', 1)
    size = trained_on.get('val_image_size')
    gt, load = synthetic_val(n, seed, tuple(size) if size else None)
  else:
    gt_dir = args.gt or (os.path.join(args.wider_root, 'ground_truth') if args.wider_root else None)
    if gt_dir is None:
      say('error: WIDER FACE ground truth not given: pass --gt DIR (the four .mat files) or --wider-root ROOT')
      return 2
    gt = load_wider_mat_ground_truth(gt_dir)
    load = None
    if args.ckpt:
      if not args.wider_root or not os.path.isdir(os.path.join(args.wider_root, 'WIDER_val', 'images')):
        say(f'error: WIDER FACE val images not found: expected <root>/WIDER_val/images with --wider-root '
            f'(or $WIDER_ROOT), got {args.wider_root!r}')
        return 2
      load = wider_image_loader(args.wider_root)

  if args.events:
    gt = gt.select_events(args.events.split(','))

  pred_dir = args.preds
  if args.ckpt:
    from jaxface import load_detector
    pred_dir = args.out or os.path.join(args.ckpt, f'widerface_{dataset}_{args.test_scale}')
    try:
      detector = load_detector(args.ckpt, step=args.step, bucketed=not args.exact, batch_size=args.batch_size)
    except (FileNotFoundError, ValueError) as e:  # no such step, an unreadable or wrong checkpoint
      say(f'error: {e}')
      return 2
    keys = shard([(e, n) for e, names in zip(gt.events, gt.files) for n in names], args.num_shards, args.shard_index)
    say(f'{detector.arch} on {len(keys)} {dataset} val images, test scale {args.test_scale}, '
        f'conf {args.conf}, writing {pred_dir}')
    from jaxface.images import ImageReadError
    try:
      for (event, name), dets in detect_all(detector, keys, load, test_scale=args.test_scale,
                                            conf_threshold=args.conf, nms_threshold=args.nms, progress=say):
        write_predictions(pred_dir, event, name, dets[:, :4], dets[:, 4])
    except ImageReadError as e:  # an evaluation that silently skipped images would report a wrong AP
      say(f'error: {e}')
      return 1
    if args.num_shards > 1:
      say(f'shard {args.shard_index}/{args.num_shards} written; score the merged folder with --preds {pred_dir}')
      return 0

  result = evaluate_dir(pred_dir, gt, protocol=args.protocol, strict=args.strict)
  for w in result.warnings[:20]:
    say(f'warning: {w}')
  for note in result.notes[:5]:
    say(f'note: {note}')
  print(result.summary())
  plot = args.plot or os.path.join(pred_dir, 'pr_curves.png')
  plot_pr_curves(result, plot, title=f'{dataset} val, protocol={result.protocol}')
  say(f'PR curves: {plot}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result_record(result, dataset=dataset, test_scale=args.test_scale if args.ckpt else None,
                              conf=args.conf if args.ckpt else None, preds=pred_dir), f, indent=2)
  return 0


def result_record(result: EvalResult, **settings) -> dict:
  """What `--json` writes: the APs with the protocol and the settings that produced them."""
  return dict(protocol=result.protocol, ap={s: result.ap[s] for s in SETTINGS}, face_counts=result.face_counts,
              num_detections=result.num_detections, warnings=len(result.warnings), **settings)
