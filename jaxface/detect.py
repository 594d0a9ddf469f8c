"""Detect faces in images and folders; write one JSON record per image (JSON Lines).

CLI:
  python -m jaxface.detect [--weights FILE_OR_DIR [--arch ARCH]] [--protocol NAME] [--conf 0.5]
      [--nms 0.4] [--max-num N] [--json OUT.jsonl] [--save-vis DIR] [--exact] [--cache-dir DIR]
      IMAGES_OR_FOLDERS...

Without --json the records go to stdout (and the progress lines to stderr).

Defaults for a folder of mixed photos (bench/bench_folder.py measured them): images of a family
that takes any size (RetinaFace) are padded up to a few bucket sizes, so a folder compiles a
handful of programs rather than one per distinct size (`--exact`: each image at its own size, as
published numbers are measured); compiled programs are kept in a persistent cache (`--cache-dir`,
default $JAXFACE_CACHE_DIR or ~/.cache/jaxface/xla; `--cache-dir ''` turns it off), so a second
run compiles nothing. A cache that JAX was already given (JAX_COMPILATION_CACHE_DIR) is kept.

Without --weights the model shipped with the package runs (retinaface_mnet_relu: RetinaFace
MobileNet-0.25, biubug6/Pytorch_Retinaface's first release), so nothing needs downloading.

A bad image (missing, unreadable, not an image) is reported on stderr by name and skipped; the
others are still processed, and the exit status is 1 when any input failed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Iterator, TextIO

import cv2
import jax

from jaxface.detector import Detections, load_detector
from jaxface.images import ImageReadError, read_image
from jaxface.families import ARCHS, DEFAULT_MODEL, FAMILIES, protocols
from jaxface.visualize import draw_detections

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')
CACHE_ENV_VAR = 'JAXFACE_CACHE_DIR'
# Images decoded per `detect_batch` call: bounds memory on big folders while still filling
# several compiled batches of the same size.
READ_CHUNK = 64

EPILOG = f"""\
output: --json writes JSON Lines, one object per successfully read image, in input order:
  {{"image": PATH, "height": H, "width": W,
   "faces": [{{"box": [x1, y1, x2, y2], "score": S, "landmarks": [[x, y] x K]}}, ...]}}
faces sorted by descending score; coordinates in input pixels (0.01 px), scores to 5 decimals;
landmarks: RetinaFace and SCRFD (K=5) left eye, right eye, nose, left and right mouth corner
(image left first); BlazeFace (K=6) the person's right eye, left eye, nose, mouth, right ear,
left ear. '--json -' writes to stdout
(the progress lines then go to stderr).

inputs: files of any extension; folders contribute their own images (not sub-folders) with
extensions {', '.join(e[1:] for e in IMAGE_EXTENSIONS)} (any case), sorted by name. Images are
read as stored (cv2.IMREAD_UNCHANGED: EXIF rotation is not applied); gray, BGRA and 16-bit
images are converted to 8-bit BGR.

exit status: 0 all images processed; 1 some input failed or the weights could not be loaded;
2 bad arguments.
"""


def find_images(inputs: list[str]) -> tuple[list[str], list[str]]:
  """Expands folders (non-recursively) into their image files.

  Returns (paths in input order without repeats, error messages for inputs that name nothing usable).
  """
  paths, errors, seen = [], [], set()
  for item in inputs:
    if os.path.isdir(item):
      names = sorted(n for n in os.listdir(item)
                     if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, n)))
      if not names:
        errors.append(f'{item}: folder holds no images ({", ".join(IMAGE_EXTENSIONS)})')
      found = [os.path.join(item, n) for n in names]
    elif os.path.exists(item):
      found = [item]
    else:
      errors.append(f'{item}: no such file or folder')
      found = []
    for path in found:
      key = os.path.realpath(path)
      if key not in seen:
        seen.add(key)
        paths.append(path)
  return paths, errors


def to_record(path: str, image_hw: tuple[int, int], det: Detections) -> dict:
  """The JSON object for one image; floats rounded so files stay small and diffs stay readable."""
  faces = [{'box': [round(float(v), 2) for v in box],
            'score': round(float(score), 5),
            'landmarks': [[round(float(x), 2), round(float(y), 2)] for x, y in points]}
           for box, score, points in zip(det.boxes, det.scores, det.landmarks)]
  return {'image': path, 'height': int(image_hw[0]), 'width': int(image_hw[1]), 'faces': faces}


def vis_path(out_dir: str, src: str, used: set[str]) -> str:
  """`out_dir/<basename>`, never the source itself nor a name already written in this run."""
  stem, ext = os.path.splitext(os.path.basename(src))
  ext = ext if ext.lower() in IMAGE_EXTENSIONS else '.png'
  candidate, n = os.path.join(out_dir, stem + ext), 0
  while candidate in used or (os.path.exists(candidate) and os.path.samefile(candidate, src)):
    n += 1
    candidate = os.path.join(out_dir, f'{stem}_vis{n if n > 1 else ""}{ext}')
  used.add(candidate)
  return candidate


def _chunks(paths: list[str], size: int) -> Iterator[list[str]]:
  for start in range(0, len(paths), size):
    yield paths[start:start + size]


def run(detector, paths: list[str], out: TextIO, *, conf: float | None, nms: float | None, vis_dir: str | None,
        log: TextIO, err: TextIO, max_num: int = 0) -> tuple[int, int, int]:
  """Detects, writes records and pictures; returns (images done, faces found, images failed)."""
  done = faces = failed = 0
  used: set[str] = set()
  for chunk in _chunks(paths, READ_CHUNK):
    good, images = [], []
    for path in chunk:
      try:
        images.append(read_image(path))
        good.append(path)
      except ImageReadError as e:  # one bad input: reported, the run goes on without it
        print(f'error: {e}', file=err)
        failed += 1
    if not images:
      continue
    for path, image, det in zip(good, images, detector.detect_batch(images, conf, nms, max_num)):
      out.write(json.dumps(to_record(path, image.shape[:2], det)) + '\n')
      line = f'{path}: {len(det)} face{"" if len(det) == 1 else "s"}'
      if vis_dir is not None:
        target = vis_path(vis_dir, path, used)
        if cv2.imwrite(target, draw_detections(image, det)):
          line += f' -> {target}'
        else:
          print(f'error: {path}: could not write the visualisation {target}', file=err)
          failed += 1
      print(line, file=log)
      done += 1
      faces += len(det)
    out.flush()
  return done, faces, failed


def _fraction(name: str, low_open: bool):
  def parse(text: str) -> float:
    value = float(text)
    if not (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0):
      raise argparse.ArgumentTypeError(f'{name} must be in {"(0" if low_open else "[0"}, 1], got {text}')
    return value
  return parse


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m jaxface.detect', description=__doc__.split('\n')[0],
                                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--weights',
                      help='PyTorch checkpoint (.pth/.tar; needs --arch), released .onnx (SCRFD) or .tflite (BlazeFace) '
                           'file, or a converted checkpoint directory '
                           '(default: the model shipped with jaxface, retinaface_mnet_relu, nothing to download)')
  parser.add_argument('--arch', help=f'one of: {", ".join(ARCHS)} (optional for a converted directory)')
  names = sorted({p for f in FAMILIES for p in protocols(f)})
  parser.add_argument('--protocol', choices=names, default=None,
                      help="test protocol (default: the family's own; SCRFD: mmdet, or insightface for "
                           "scrfd.py's deployment path, which also sets --conf 0.5 and --nms 0.4 by default)")
  parser.add_argument('--conf', type=_fraction('--conf', low_open=False), default=None,
                      help="keep faces scoring above this (default: 0.5, or the protocol's where --protocol is given or "
                           "its threshold is higher: BlazeFace 0.75 front, 0.65 back, 0.5 MediaPipe's)")
  parser.add_argument('--nms', type=_fraction('--nms', low_open=True), default=None,
                      help="NMS IoU threshold (default: the protocol's; 0.4 for RetinaFace, 0.45 for SCRFD's mmdet)")
  parser.add_argument('--max-num', type=int, default=0, metavar='N',
                      help="keep each image's N largest, most central faces (insightface's max_num; default: all)")
  parser.add_argument('--json', default='-', metavar='OUT.jsonl',
                      help="output file, JSON Lines (one object per image); '-' for stdout (default)")
  parser.add_argument('--save-vis', metavar='DIR',
                      help='also write each image with its faces drawn to DIR (same file name)')
  parser.add_argument('--exact', action='store_true',
                      help='run each image at its own size, one compile per distinct size, detections equal to '
                           "the reference's (default: pad up to a few bucket sizes so mixed sizes share compiled "
                           'programs; detections near the padded border may differ slightly; docs/inference.md)')
  parser.add_argument('--bucketed', action='store_true', help=argparse.SUPPRESS)  # the default; kept for old scripts
  parser.add_argument('--cache-dir', default=None, metavar='DIR',
                      help="where compiled programs persist between runs (default: $JAXFACE_CACHE_DIR or "
                           "~/.cache/jaxface/xla; '' for none)")
  parser.add_argument('--batch-size', type=int, default=8,
                      help='images per compiled call among images of one size (default: %(default)s)')
  parser.add_argument('inputs', nargs='+', metavar='IMAGES_OR_FOLDERS')
  return parser


def use_compile_cache(cache_dir: str | None) -> str | None:
  """Points JAX's persistent compilation cache at `cache_dir` (None: $JAXFACE_CACHE_DIR, else
  ~/.cache/jaxface/xla; '': none) unless JAX already has one; returns the directory in use."""
  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  if cache_dir is None:
    cache_dir = os.environ.get(CACHE_ENV_VAR) or os.path.join(os.path.expanduser('~'), '.cache', 'jaxface', 'xla')
  if not cache_dir:
    return None
  try:
    os.makedirs(cache_dir, exist_ok=True)
  except OSError as e:
    print(f'warning: no compile cache ({cache_dir}: {e.strerror})', file=sys.stderr)
    return None
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  return cache_dir


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.arch is not None and args.arch not in ARCHS:
    parser.error(f'unknown --arch {args.arch!r}; valid: {", ".join(ARCHS)}')
  if args.batch_size < 1:
    parser.error(f'--batch-size must be at least 1, got {args.batch_size}')
  if args.weights is not None and not os.path.exists(args.weights):
    print(f'error: no such checkpoint file or directory: {args.weights}', file=sys.stderr)
    return 1
  if (args.weights is not None and not os.path.isdir(args.weights)
      and not args.weights.lower().endswith(('.onnx', '.tflite'))
      and args.arch is None):
    parser.error(f'{args.weights} is a PyTorch file: pass --arch (one of {", ".join(ARCHS)})')

  paths, errors = find_images(args.inputs)
  for message in errors:
    print(f'error: {message}', file=sys.stderr)
  if not paths:
    print('error: no images to process', file=sys.stderr)
    return 1
  to_stdout = args.json == '-'
  log = sys.stderr if to_stdout else sys.stdout
  with contextlib.ExitStack() as stack:
    # Open the outputs before the slow model load so that a bad path fails at once.
    try:
      out = sys.stdout if to_stdout else stack.enter_context(open(args.json, 'w', encoding='utf-8'))
      if args.save_vis is not None:
        os.makedirs(args.save_vis, exist_ok=True)
    except OSError as e:
      print(f'error: cannot write {e.filename}: {e.strerror}', file=sys.stderr)
      return 1
    use_compile_cache(args.cache_dir)
    try:
      detector = load_detector(args.weights, arch=args.arch, protocol=args.protocol, bucketed=not args.exact,
                               batch_size=args.batch_size)
    except (OSError, ValueError, TypeError, EOFError) as e:
      name = args.weights or DEFAULT_MODEL
      message = str(e) if name in str(e) else f'{name}: {e}'
      print(f'error: cannot load the weights: {message}', file=sys.stderr)
      return 1
    start = time.perf_counter()
    conf = args.conf
    if conf is None and args.protocol is None and detector.family.default_conf(detector.spec) < 0.5:
      conf = 0.5  # a display threshold over the evaluation protocols' 0.02 (BlazeFace's own are higher)
    done, faces, failed = run(detector, paths, out, conf=conf, nms=args.nms, vis_dir=args.save_vis,
                              log=log, err=sys.stderr, max_num=args.max_num)
  failed += len(errors)
  seconds = time.perf_counter() - start
  summary = f'{done} image{"" if done == 1 else "s"}, {faces} face{"" if faces == 1 else "s"} in {seconds:.1f} s'
  if not to_stdout:
    summary += f'; wrote {args.json}'
  print(summary, file=log)
  if failed:
    print(f'error: {failed} input{"" if failed == 1 else "s"} failed (named above)', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
