"""BlazeFace: jaxface against LiteRT (XNNPACK) on MediaPipe's own .tflite files, and hollance's eager torch model.

    python bench/bench_blazeface.py [--repeats 30] [--threads 2] [--batch 64] [--models face_detection_full_range]

Per model (face_detection_short_range.tflite at 128 px, face_detection_full_range.tflite at 192 px), side by
side in one process:

* LiteRT: `ai_edge_litert`'s Interpreter on the file with its default XNNPACK delegate, `--threads` threads;
  "network" is set_tensor + invoke + reading both outputs, "pipeline" adds the numpy preprocessing and
  MediaPipe's post-processing in numpy (vectorised decode, threshold 0.5, the weighted-NMS loop of
  tests/reference_blazeface.py);
* jaxface: `load_detector(FILE.tflite)`; "network" is the compiled forward on the uint8 image, "pipeline" is
  `detect(img)`, one compiled program (preprocessing, network, decode, weighted NMS);
* torch (front model only; hollance never ported the full-range one): the re-statement of hollance's model
  (tests/reference_blazeface.py), eager, `--threads` threads, network only.

Batch-1 latency on a photo already at the network's size, then `--batch` photos: jaxface's `detect_batch` (one
compiled program per batch) against LiteRT's per-image loop and torch's batched forward, as images per second.
Each timed call follows `--lead-in` untimed calls of the same contender, and more until `--lead-in-ms`
have passed (see `common.interleaved`). `--models` picks the files (default both, short range first): this VM
slows down after ~15-20 s of two-thread load (BENCHMARKS.md, "Freed memory"), so the second model of a run is
often measured in such a spell.
"""
from __future__ import annotations

import argparse

import common  # noqa: F401  (sets sys.path)
import cv2
import jax
import numpy as np
import torch

import reference_blazeface as ref
from jaxface import load_detector
from jaxface.blazeface import anchors

FILES = {'face_detection_short_range': (128, anchors.FRONT), 'face_detection_full_range': (192, anchors.FULL_RANGE)}


def photos(shared, size: int, n: int) -> list[np.ndarray]:
  """`n` BGR photos at `size x size`: the three shared face crops, flipped and shifted variants."""
  base = [cv2.imread(str(shared / 'data' / 'images' / f)) for f in ('1face.png', '3faces.png', '4faces.png')]
  out = []
  for i in range(n):
    img = cv2.resize(base[i % 3], (size, size), interpolation=cv2.INTER_LINEAR)
    img = img[:, ::-1] if (i // 3) % 2 else img
    out.append(np.ascontiguousarray(np.roll(img, (i // 6) % 7, axis=1)))
  return out


class LiteRT:
  """One interpreter and MediaPipe's post-processing in numpy."""

  def __init__(self, path: str, threads: int, table: np.ndarray, size: int):
    from ai_edge_litert.interpreter import Interpreter
    self.it = Interpreter(model_path=path, num_threads=threads)
    self.it.allocate_tensors()
    self.input = self.it.get_input_details()[0]['index']
    outs = sorted(self.it.get_output_details(), key=lambda o: o['shape'][-1])
    self.classificators, self.regressors = outs[0]['index'], outs[1]['index']
    self.table, self.size = table.astype(np.float32), size

  def network(self, x: np.ndarray):
    self.it.set_tensor(self.input, x)
    self.it.invoke()
    return self.it.get_tensor(self.regressors)[0], self.it.get_tensor(self.classificators)[0]

  def pipeline(self, bgr: np.ndarray) -> list[np.ndarray]:
    x = (bgr[None, :, :, ::-1].astype(np.float32) / 127.5 - 1.0)
    r, c = self.network(x)
    scores = 1 / (1 + np.exp(-np.clip(c[:, 0].astype(np.float64), -100, 100)))
    keep = scores >= 0.5
    r, a, s = r[keep] / self.size, self.table[keep], scores[keep]
    xc, yc, w, h = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1], r[:, 2], r[:, 3]
    kp = r[:, 4:].reshape(-1, 6, 2) + a[:, None, :2]
    rows = np.concatenate([np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], 1), kp.reshape(-1, 12),
                           s[:, None]], axis=1)
    return ref.weighted_nms(rows, 0.3, top_score=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--repeats', type=int, default=30)
  p.add_argument('--threads', type=int, default=2, help='LiteRT / torch threads')
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--lead-in', type=int, default=2)
  p.add_argument('--models', nargs='+', choices=list(FILES), default=list(FILES))
  p.add_argument('--lead-in-ms', type=float, default=60.0,
                 help='and untimed calls until this long has passed (ONNX Runtime\'s workers spin for 20-40 ms)')
  args = p.parse_args()
  torch.set_num_threads(args.threads)
  shared = common.shared_dir()
  import ai_edge_litert
  print(common.machine())
  print(f'ai-edge-litert {getattr(ai_edge_litert, "__version__", "?")} (XNNPACK, {args.threads} threads), '
        f'torch {torch.__version__} ({args.threads} threads)')
  for name in args.models:
    size, options = FILES[name]
    path = str(shared / 'data' / 'weights' / 'mediapipe' / f'{name}.tflite')
    det = load_detector(path, batch_size=args.batch)
    lite = LiteRT(path, args.threads, anchors.anchor_table(options)[0], size)
    imgs = photos(shared, size, args.batch)
    img = imgs[1]
    one = np.asarray([[size, size]], np.int32)
    forward = lambda: jax.block_until_ready(det._forward(det.variables, img[None], one))
    x = img[None, :, :, ::-1].astype(np.float32) / 127.5 - 1.0
    got, want = det.detect(img), lite.pipeline(img)
    assert len(got) == len(want), (len(got), len(want))
    det.detect_batch(imgs)
    fns = {'LiteRT network': lambda: lite.network(x), 'jaxface network': forward,
           'LiteRT pipeline (+ numpy pre/post)': lambda: lite.pipeline(img), 'jaxface pipeline (detect)': lambda: det.detect(img)}
    torch_model = None
    if size == 128:
      torch_model = ref.randomize_(ref.BlazeFaceRef(False).eval())
      xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
      def torch_forward(xt=xt):
        with torch.no_grad():
          return torch_model(xt)
      fns['torch eager network (hollance)'] = torch_forward
    times = common.interleaved(fns, args.repeats, lead_in=args.lead_in, lead_in_ms=args.lead_in_ms)
    print(f'\n{name} ({size} px): {len(got)} faces on the timed photo (LiteRT\'s pipeline finds the same count)')
    print(common.report(times, 'LiteRT pipeline (+ numpy pre/post)'))
    med = {k: np.median(v) for k, v in times.items()}
    print(f'batch 1: jaxface pipeline / LiteRT pipeline = {med["jaxface pipeline (detect)"] / med["LiteRT pipeline (+ numpy pre/post)"]:.2f}x '
          f'the time (target <= 2); network alone {med["jaxface network"] / med["LiteRT network"]:.2f}x')
    batch_fns = {f'LiteRT pipeline, per-image loop': lambda: [lite.pipeline(im) for im in imgs],
                 'jaxface detect_batch': lambda: det.detect_batch(imgs)}
    if torch_model is not None:
      xb = torch.from_numpy(np.stack([im[:, :, ::-1].transpose(2, 0, 1) for im in imgs]).astype(np.float32) / 127.5 - 1)
      def torch_batch(xb=xb):
        with torch.no_grad():
          return torch_model(xb)
      batch_fns['torch eager network, batched'] = torch_batch
    batch = common.interleaved(batch_fns, max(3, args.repeats // 5), lead_in=1, lead_in_ms=args.lead_in_ms)
    ips = {k: len(imgs) / np.median(v) for k, v in batch.items()}
    print(f'{args.batch} photos, images/s: ' + ', '.join(f'{k} {v:.0f}' for k, v in ips.items()))
    print(f'jaxface detect_batch / LiteRT loop: {ips["jaxface detect_batch"] / ips["LiteRT pipeline, per-image loop"]:.2f}x '
          f'the throughput (target > 1)')


if __name__ == '__main__':
  main()
