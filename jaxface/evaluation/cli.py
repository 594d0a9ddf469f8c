"""`evaluate.py`: WIDER FACE (or synthetic) Easy/Medium/Hard AP from a checkpoint or a prediction folder.

The work is in the libraries: `evaluation.run` (protocols, detection over a val set) and
`evaluation.widerface` (scoring); this module parses flags and prints.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from jaxface.evaluation.ground_truth import SETTINGS, load_wider_mat_ground_truth
from jaxface.evaluation.plot import plot_pr_curves
from jaxface.evaluation.predictions import write_predictions
from jaxface.evaluation.protocol import PROTOCOLS, EvalResult
from jaxface.evaluation.run import TEST_SCALES, detect_all, shard, synthetic_val, wider_image_loader
from jaxface.evaluation.widerface import evaluate_dir


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
  p.add_argument('--test-scale', choices=TEST_SCALES,
                 help="test-time image scale protocol (default: the model family's: original for RetinaFace)")
  p.add_argument('--detector-protocol', metavar='NAME',
                 help="the detector's test protocol (default: the one the training run scored with, else the "
                      "family's own; SCRFD: mmdet, or insightface for scrfd.py's letterbox, unclipped boxes and "
                      "+1 NMS at 0.4; BlazeFace: hollance or mediapipe)")
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
    from jaxface.saved_models import read_meta
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
    protocol = args.detector_protocol or _trained_eval_protocol(args.ckpt)
    try:
      detector = load_detector(args.ckpt, step=args.step, protocol=protocol, bucketed=not args.exact,
                               batch_size=args.batch_size)
    except (FileNotFoundError, ValueError) as e:  # no such step, an unreadable or wrong checkpoint
      say(f'error: {e}')
      return 2
    # The synthetic val set runs at its own size, as the train loop scores it; WIDER with the
    # protocol of the family's published numbers.
    args.test_scale = args.test_scale or ('original' if dataset == 'synthetic' else detector.family.test_scale)
    pred_dir = args.out or os.path.join(args.ckpt, f'widerface_{dataset}_{args.test_scale}')
    keys = shard([(e, n) for e, names in zip(gt.events, gt.files) for n in names], args.num_shards, args.shard_index)
    say(f'{detector.arch} ({detector.family.protocol} protocol) on {len(keys)} {dataset} val images, '
        f'test scale {args.test_scale}, conf {args.conf}, writing {pred_dir}')
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


def _trained_eval_protocol(ckpt: str) -> str | None:
  """The test protocol a `train.py` run's periodic evaluation used (`eval_protocol` in jaxface.json)."""
  from jaxface import saved_models
  path = os.path.join(ckpt, saved_models.META_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f).get('eval_protocol')
