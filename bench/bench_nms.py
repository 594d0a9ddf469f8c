"""Greedy NMS on device: the tiled form against the one-step-per-kept-box loop, alone and end to end.

    python bench/bench_nms.py [--repeats 15]

`nms.nms` runs `nms_tiled` above `nms.ARGMAX_MAX_ROWS` rows and `nms_argmax` (the only form before
2026-12-05) up to it. Side by side in one process:

* NMS alone, 8 images vmapped, on clustered synthetic boxes (8,192 rows, as SCRFD's largest candidate
  tier): `nms_argmax`, `nms_tiled`, and the reference's `py_cpu_nms` in numpy per image on the sorted
  candidates (tests/reference_torch.py), for context;
* end to end, the same detector traced twice, once with `ARGMAX_MAX_ROWS` raised so that every tier runs
  the loop: RetinaFace-mnet (the embedded model) on crowd.jpg; SCRFD-500m (random weights with the
  released names, as bench_scrfd_detect.py) on crowd.jpg under the mmdet protocol at its score 0.02, where
  thousands of boxes survive; SCRFD-10G under insightface's protocol on bench_scrfd_detect.py's 8 photos at
  its threshold. Each pair's detections are asserted equal.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import common  # noqa: F401  (sets sys.path)
import cv2
import jax
import jax.numpy as jnp
import numpy as np

import bench_scrfd_detect
import reference_scrfd
import reference_torch
from jaxface import load_detector, nms

ROWS, BATCH = 8192, 8


def clustered(rng, candidates: int, faces: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`ROWS` xyxy boxes: `candidates` of them around `faces` centres (a detector's many boxes per face)."""
  centre = rng.uniform(0, 1000, (faces, 2))
  size = rng.uniform(10, 60, (faces, 1))
  which = rng.integers(0, faces, ROWS)
  c = centre[which] + rng.normal(0, 0.2, (ROWS, 2)) * size[which]
  wh = size[which] * rng.uniform(0.8, 1.25, (ROWS, 2))
  boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)
  candidate = np.zeros(ROWS, bool)
  candidate[rng.choice(ROWS, candidates, replace=False)] = True
  return boxes, rng.uniform(size=ROWS).astype(np.float32), candidate


def alone(repeats: int):
  rng = np.random.default_rng(0)
  for candidates, faces in ((500, 50), (3000, 300), (5000, 2000)):
    sets = [clustered(rng, candidates, faces) for _ in range(BATCH)]
    boxes, scores, candidate = (jnp.asarray(np.stack(x)) for x in zip(*sets))
    forms = {name: jax.jit(jax.vmap(lambda b, s, c, f=f: f(b, s, c, 0.4, ROWS, True)))
             for name, f in (('nms_argmax', nms.nms_argmax), ('nms_tiled', nms.nms_tiled))}
    outs = {name: jax.device_get(f(boxes, scores, candidate)) for name, f in forms.items()}
    kept = outs['nms_argmax'][1].sum(1)
    for (ka, va), (kt, vt) in zip(zip(*outs['nms_argmax']), zip(*outs['nms_tiled'])):
      assert va.tolist() == vt.tolist() and ka[va].tolist() == kt[vt].tolist()
    dets = [np.concatenate([b[c], s[c, None]], 1) for b, s, c in sets]
    times = common.interleaved({
        **{name: (lambda f=f: jax.block_until_ready(f(boxes, scores, candidate))) for name, f in forms.items()},
        'py_cpu_nms (numpy), per image': lambda: [reference_torch.py_cpu_nms(d, 0.4) for d in dets],
    }, repeats)
    print(f'\n{BATCH} images x {ROWS} rows, {candidates} candidates around {faces} faces each; kept per image '
          f'{kept.min()}-{kept.max()}')
    print(common.report(times, 'nms_argmax'))


def traced_both(make):
  """`(loop, tiled)`: the detector `make()` returns, traced with and without the argmax-only setting
  (`ARGMAX_MAX_ROWS` is read when the program is traced, so each detector keeps its own)."""
  default = nms.ARGMAX_MAX_ROWS
  nms.ARGMAX_MAX_ROWS = 1 << 30
  try:
    loop = make()
  finally:
    nms.ARGMAX_MAX_ROWS = default
  return loop, make()


def same(a, b):
  a, b = (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])
  assert all(len(x) == len(y) and np.array_equal(x.boxes, y.boxes) for x, y in zip(a, b))
  return [len(x) for x in a]


def end_to_end(repeats: int, shared):
  crowd = cv2.imread(str(shared / 'data' / 'images' / 'crowd.jpg'))
  photos = bench_scrfd_detect.mixed_photos(shared)
  cases = []

  def compiled(det, call):
    call(det)
    return det

  loop, tiled = traced_both(lambda: compiled(load_detector(), lambda d: d.detect(crowd)))
  cases.append(('RetinaFace-mnet, crowd.jpg', lambda d: d.detect(crowd), loop, tiled))
  with tempfile.TemporaryDirectory() as tmp:
    for arch in ('scrfd_500m_bnkps', 'scrfd_10g_bnkps'):
      net = bench_scrfd_detect.random_scrfd(arch)
      path = os.path.join(tmp, f'{arch}.onnx')
      reference_scrfd.export_onnx(net, path, layout='batched')
      if arch == 'scrfd_500m_bnkps':
        run = lambda d: d.detect(crowd, 0.02)
        loop, tiled = traced_both(lambda: compiled(load_detector(path), run))
        cases.append(('SCRFD-500m, crowd.jpg, mmdet protocol, score 0.02', run, loop, tiled))
      else:
        first = reference_scrfd.mmdet_detect(crowd, reference_scrfd.torch_runner(net), score_thr=0.05).scores
        conf = float(first[299] + first[300]) / 2 if len(first) > 300 else 0.05  # as bench_scrfd_detect.py
        run = lambda d, conf=conf: d.detect_batch(photos, conf)
        loop, tiled = traced_both(lambda: compiled(load_detector(path, protocol='insightface'), run))
        cases.append((f'SCRFD-10G, 8 photos, insightface protocol, score {conf:.4f}', run, loop, tiled))
  for name, run, loop, tiled in cases:
    counts = same(run(loop), run(tiled))
    times = common.interleaved({'argmax loop': lambda: run(loop), 'tiled (default)': lambda: run(tiled)}, repeats,
                               lead_in=1)
    print(f'\n{name}: {counts} faces')
    print(common.report(times, 'argmax loop'))


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--repeats', type=int, default=15)
  args = p.parse_args()
  print(common.machine())
  alone(args.repeats)
  end_to_end(args.repeats, common.shared_dir())


if __name__ == '__main__':
  main()
