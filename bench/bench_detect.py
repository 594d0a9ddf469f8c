"""End-to-end face detection on crowd.jpg: jaxface vs the reference pipeline, side by side.

    python bench/bench_detect.py [--repeats 30] [--image crowd.jpg] [--threads 2]

Reference pipeline (tests/reference_torch.py, a re-statement of biubug6's detect.py): eager
PyTorch forward, priors generated in Python loops, decode, the Python `py_cpu_nms` loop
(conf 0.02, top_k 5000, NMS 0.4, keep_top_k 750). jaxface: one compiled program from the uint8
image to the fixed-size detections. Also times the forwards alone, and ONNX Runtime running the
same network when `onnxruntime` is installed (the issue's 21 ms yardstick). Each timed call follows
`--lead-in` untimed calls of the same contender, and more until `--lead-in-ms` have passed
(`common.interleaved`). `bench_biubug6.py` times biubug6's own code instead of this re-statement.
"""
from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (sets sys.path)
import cv2
import jax
import jax.numpy as jnp
import numpy as np
import torch

import reference_torch as ref
from jaxface import inference, load_detector

ARCH = 'retinaface_mnet_relu'


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--repeats', type=int, default=30)
  p.add_argument('--image', default='crowd.jpg')
  p.add_argument('--threads', type=int, default=2, help='torch / ONNX Runtime intra-op threads')
  p.add_argument('--lead-in', type=int, default=2,
                 help='untimed calls of a contender before each timed one (common.interleaved)')
  p.add_argument('--lead-in-ms', type=float, default=60.0,
                 help='and untimed calls until this long has passed (ONNX Runtime\'s workers spin for 20-40 ms)')
  args = p.parse_args()
  torch.set_num_threads(args.threads)
  shared = common.shared_dir()
  weights = shared / 'data' / 'weights' / 'retinaface_mnet025_relu_2019.pth'
  img = cv2.imread(str(shared / 'data' / 'images' / args.image))
  h, w = img.shape[:2]
  print(common.machine())
  print(f'image {args.image} {w}x{h}, {ARCH}, torch {torch.__version__} ({args.threads} threads)')

  model = ref.load_state_dict_file(ref.build_reference(ARCH), weights).eval()
  det = load_detector(str(weights), arch=ARCH)
  t = time.perf_counter()
  det.detect(img)
  compile_s = time.perf_counter() - t

  ref_kw = dict(conf_threshold=0.02, nms_threshold=0.4, top_k=5000, keep_top_k=750)
  x_torch = ref.reference_preprocess(img)
  x_dev = jax.device_put(img[None])
  sizes_dev = jax.device_put(np.asarray([img.shape[:2]], np.int32))
  forward = inference.make_forward_fn(det.family, det.model)

  def torch_forward():
    with torch.no_grad():
      model(x_torch)

  fns = {
      'reference end to end': lambda: ref.reference_detect(model, img, **ref_kw),
      'jaxface end to end': lambda: det.detect(img),
      'reference forward (eager torch)': torch_forward,
      'jaxface forward': lambda: jax.block_until_ready(forward(det.variables, x_dev, sizes_dev)),
  }
  ort_forward = common.onnxruntime_forward(model, x_torch, args.threads)
  if ort_forward is not None:
    fns['onnxruntime forward'] = ort_forward

  # Same detections, or the timing means nothing.
  boxes, scores, _ = ref.reference_detect(model, img, **ref_kw)
  got = det.detect(img)
  assert len(got) == len(scores) and np.allclose(got.scores, scores, atol=1e-5), 'detections differ'

  times = common.interleaved(fns, args.repeats, lead_in=args.lead_in, lead_in_ms=args.lead_in_ms)
  print(f'{len(scores)} detections; jaxface first call (compile + run) {compile_s:.2f} s')
  print(common.report(times, 'reference end to end'))
  med = {k: np.median(v) for k, v in times.items()}
  print(f'end to end: jaxface {med["reference end to end"] / med["jaxface end to end"]:.2f}x faster than the reference')
  print(f'forward: jaxface {med["reference forward (eager torch)"] / med["jaxface forward"]:.2f}x faster than eager torch')
  if 'onnxruntime forward' in med:
    print(f'forward: jaxface / onnxruntime = {med["jaxface forward"] / med["onnxruntime forward"]:.2f}')


if __name__ == '__main__':
  main()
