"""SCRFD detection at VGA: jaxface against the torch re-statement and insightface's deployment pipeline.

    python bench/bench_scrfd_detect.py [--repeats 20] [--threads 2] [--arch scrfd_500m_bnkps scrfd_10g_bnkps]

Per architecture, side by side in one process (random weights with the released names and shapes: no SCRFD
weights exist on these machines; the classifier keeps its reference initialisation, bias -4.595, with damped
weights, and the confidence threshold is `--conf` (default 0.05), raised to the 301st score where more faces
pass, so that the post-processing's share stays that of a photo of a crowd):

* (a) the re-statement (`tests/reference_scrfd.py`) eager in torch with mmdet's post-processing
  (`mmdet_detect`: letterbox, forward, decode, NMS 0.45), conf `--conf`;
* (b) insightface's deployment pipeline: ONNX Runtime on the exported file (BN folded, as the released
  files) plus `scrfd.py`'s numpy decode and NMS (`insightface_detect`: NMS 0.4 with +1 areas), its
  threshold set to the same conf: its default 0.5 passes no face of random weights, and the comparison
  is of the same work;
* jaxface: `load_detector(FILE.onnx).detect(img, conf)`, one compiled program, under the protocol of the
  pipeline it is compared with: mmdet's (the default) against (a), insightface's
  (`protocol='insightface'`) against (b). Each pair finds the same faces (counts asserted).

One photo (crowd.jpg, 1024x624) per call, then a batch of 8 mixed-size photos: jaxface's `detect_batch`
(every image letterboxed into one 640x640 program) against (b)'s per-image loop, as images per second.
Until commit 8fb6825 (2026-12-05) the jaxface side ran the mmdet protocol against (b) too, and (b) kept its 0.5:
with random weights (b) then kept no face while jaxface ran NMS over 200-700 per photo.
Each timed call follows `--lead-in` untimed calls of the same contender, and more until `--lead-in-ms`
have passed (see `common.interleaved`).
"""
from __future__ import annotations

import argparse
import os
import tempfile

import common  # noqa: F401  (sets sys.path)
import cv2
import numpy as np
import onnxruntime as ort
import torch

import reference_scrfd as ref
from jaxface import load_detector


def random_scrfd(arch: str):
  return ref.damp_classifier_(ref.randomize_(ref.build_scrfd(arch), seed=3))


def mixed_photos(shared) -> list[np.ndarray]:
  """Eight photos of different sizes: the shared ones and resized crops of crowd.jpg."""
  crowd = cv2.imread(str(shared / 'data' / 'images' / 'crowd.jpg'))
  street = cv2.imread(str(shared / 'data' / 'images' / 'street.jpg'))
  faces = [cv2.imread(str(shared / 'data' / 'images' / n)) for n in ('1face.png', '3faces.png', '4faces.png')]
  return [crowd, street, *faces, cv2.resize(crowd, (800, 487)), crowd[:480, 200:840].copy(),
          cv2.resize(street, (901, 604))]


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--repeats', type=int, default=20)
  p.add_argument('--threads', type=int, default=2, help='torch / ONNX Runtime intra-op threads')
  p.add_argument('--arch', nargs='+', default=['scrfd_500m_bnkps', 'scrfd_10g_bnkps'])
  p.add_argument('--conf', type=float, default=0.05)
  p.add_argument('--lead-in', type=int, default=2,
                 help='untimed calls before each timed one, so no library\'s spinning threads overlap the next')
  p.add_argument('--lead-in-ms', type=float, default=60.0,
                 help='and untimed calls until this long has passed (ONNX Runtime\'s workers spin for 20-40 ms)')
  args = p.parse_args()
  torch.set_num_threads(args.threads)
  shared = common.shared_dir()
  img = cv2.imread(str(shared / 'data' / 'images' / 'crowd.jpg'))
  photos = mixed_photos(shared)
  print(common.machine())
  print(f'crowd.jpg {img.shape[1]}x{img.shape[0]}; torch {torch.__version__}, onnxruntime {ort.__version__} '
        f'({args.threads} threads)')
  for arch in args.arch:
    net = random_scrfd(arch)
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, f'{arch}.onnx')
      ref.export_onnx(net, path, layout='batched')
      options = ort.SessionOptions()
      options.intra_op_num_threads = args.threads
      session = ort.InferenceSession(path, options)
      det = load_detector(path)
      deploy = load_detector(path, protocol='insightface')
    run_torch, run_onnx = ref.torch_runner(net), ref.onnx_runner(session)
    # Random weights score differently per architecture: raise the threshold until at most 300 faces pass.
    first = ref.mmdet_detect(img, run_torch, score_thr=args.conf).scores
    conf = float(first[299] + first[300]) / 2 if len(first) > 300 else args.conf  # between two scores
    insightface = lambda x: ref.insightface_detect(x, run_onnx, thresh=conf)
    det.detect(img, conf), deploy.detect(img, conf)  # compile the one-image programs
    deploy.detect_batch(photos, conf)  # and the batch of 8
    got, want = det.detect(img, conf), ref.mmdet_detect(img, run_torch, score_thr=conf)
    assert len(got) == len(want.scores), (len(got), len(want.scores))
    got_b, want_b = deploy.detect(img, conf), insightface(img)[0]
    assert len(got_b) == len(want_b), (len(got_b), len(want_b))
    counts = [len(d) for d in deploy.detect_batch(photos, conf)]
    assert counts == [len(insightface(x)[0]) for x in photos], counts
    print(f'\n{arch} at conf {conf}: {len(got)} detections under the mmdet protocol, {len(got_b)} under '
          f'insightface\'s (each equal to its reference\'s count); 8 photos: {counts}')
    times = common.interleaved({
        '(a) re-statement, eager torch': lambda: ref.mmdet_detect(img, run_torch, score_thr=conf),
        '(b) insightface: ORT + numpy': lambda: insightface(img),
        'jaxface, mmdet protocol': lambda: det.detect(img, conf),
        'jaxface, insightface protocol': lambda: deploy.detect(img, conf),
    }, args.repeats, lead_in=args.lead_in, lead_in_ms=args.lead_in_ms)
    print(common.report(times, '(a) re-statement, eager torch'))
    med = {k: np.median(v) for k, v in times.items()}
    print(f'jaxface vs (a): {med["(a) re-statement, eager torch"] / med["jaxface, mmdet protocol"]:.2f}x faster; '
          f'vs (b): {med["(b) insightface: ORT + numpy"] / med["jaxface, insightface protocol"]:.2f}x '
          f'(>1: jaxface faster)')
    batch = common.interleaved({
        '(b) insightface, per-image loop': lambda: [insightface(x) for x in photos],
        'jaxface detect_batch': lambda: deploy.detect_batch(photos, conf),
    }, max(3, args.repeats // 4), lead_in=args.lead_in, lead_in_ms=args.lead_in_ms)
    ips = {k: len(photos) / np.median(v) for k, v in batch.items()}
    print(f'8 mixed photos: (b) {ips["(b) insightface, per-image loop"]:.1f} images/s, jaxface '
          f'{ips["jaxface detect_batch"]:.1f} images/s ({ips["jaxface detect_batch"] / ips["(b) insightface, per-image loop"]:.2f}x)')


if __name__ == '__main__':
  main()
