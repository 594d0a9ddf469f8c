"""Training augmentation throughput on crowd.jpg: jaxface vs a re-statement of the reference, per core and with workers.

    python bench/bench_augment.py [--repeats 300] [--size 640] [--workers 1 2] [--samples 600] [--faces F.jsonl]

Per core: one process, OpenCV limited to one thread, candidates timed round-robin (bench/common.py):
  * the RetinaFace reference `preproc` as tests/reference_augment.py re-states it (Python `random`,
    float `_convert`, numpy mean subtraction, CHW) against `retinaface_augment` (NHWC);
  * the SCRFD reference pipeline (mmdet transforms re-stated: float crop and resize, photometric
    distortion, normalisation) against `scrfd_augment`.
Each call draws new random choices (the reference from `random` / `np.random`, jaxface from
`sample_rng(0, 0, i)`), so the times mix all crops, distortions and interpolations alike; images/s
is 1 / mean time. The two do the same work: tests/test_augment.py shows the RetinaFace outputs are
byte-identical for the same draws.

Workers: a `multiprocessing` pool (spawn) maps `retinaface_augment` over sample indices (each
worker holds the decoded image, as a loader worker would hold its own reads; only a checksum comes
back, so this is augmentation throughput, not transfer). The 16-core projection takes 15 workers
(one core left to the training process) at the measured per-worker rate times the measured 2-worker
scaling efficiency.

The faces are the 27 detections of `python -m jaxface.detect --weights
../shared/data/weights/retinaface_mnet025_relu_2019.pth --arch retinaface_mnet_relu --json F.jsonl
../shared/data/images/crowd.jpg` (default thresholds), rounded to 0.1 px; `--faces F.jsonl` reads them
from such a file instead.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import time

import common  # noqa: F401  (sets sys.path)
import cv2
import numpy as np

import reference_augment as ref
from jaxface.retinaface.augment import retinaface_augment
from jaxface.scrfd.augment import scrfd_augment
from jaxface.data.rng import sample_rng
from jaxface.data.sample import Sample

# (box x1 y1 x2 y2, landmarks x0 y0 ... x4 y4) in pixels of crowd.jpg (1024 x 624); see the docstring.
CROWD_FACES = [
    ([660.2, 499.2, 715.3, 568.0], [675.9, 526.4, 701.2, 525.5, 689.3, 536.6, 678.2, 549.0, 699.6, 548.3]),
    ([652.2, 101.9, 705.6, 171.6], [668.0, 127.5, 692.2, 128.6, 680.2, 141.2, 669.0, 152.8, 689.0, 153.6]),
    ([519.6, 344.2, 576.1, 413.4], [538.6, 364.2, 564.0, 367.3, 552.2, 379.0, 537.9, 391.2, 559.4, 393.8]),
    ([110.2, 252.3, 165.8, 321.1], [126.5, 275.4, 151.6, 273.3, 140.8, 284.4, 130.1, 301.3, 151.1, 299.6]),
    ([100.1, 447.7, 149.3, 511.9], [113.3, 473.3, 136.3, 472.5, 126.1, 485.6, 117.1, 496.1, 135.3, 495.4]),
    ([140.8, 326.0, 201.1, 396.4], [160.8, 347.7, 188.5, 347.7, 178.1, 362.9, 163.8, 374.6, 187.3, 374.6]),
    ([697.4, 394.4, 745.8, 455.4], [710.9, 414.6, 734.2, 414.3, 723.8, 424.7, 713.0, 437.1, 733.0, 436.8]),
    ([595.7, 219.4, 653.4, 293.1], [612.8, 245.8, 638.6, 242.9, 628.1, 257.1, 616.8, 272.4, 639.5, 270.0]),
    ([227.1, 10.1, 276.6, 66.8], [241.7, 26.8, 263.1, 26.6, 252.8, 37.5, 244.8, 50.7, 260.6, 50.5]),
    ([575.6, 541.8, 640.0, 613.6], [601.5, 563.3, 628.2, 564.1, 619.8, 577.9, 603.3, 592.2, 624.2, 593.0]),
    ([377.2, 89.3, 425.3, 148.6], [393.2, 110.9, 413.6, 111.7, 404.7, 122.5, 394.9, 133.8, 410.6, 134.4]),
    ([762.2, 247.5, 812.4, 305.2], [770.3, 270.2, 794.6, 269.3, 780.0, 284.2, 774.8, 291.9, 793.6, 291.0]),
    ([838.7, 151.0, 890.7, 220.2], [851.6, 175.5, 875.9, 176.9, 862.7, 189.2, 853.9, 202.8, 872.1, 203.9]),
    ([744.6, 3.5, 789.0, 53.3], [750.6, 19.6, 772.0, 16.5, 758.8, 28.7, 755.7, 39.7, 772.8, 37.0]),
    ([382.0, 223.5, 444.4, 288.7], [398.2, 239.8, 427.1, 241.1, 410.8, 250.9, 399.6, 267.2, 422.4, 268.3]),
    ([305.1, 385.1, 366.4, 462.0], [325.4, 412.3, 351.5, 415.1, 338.8, 430.3, 326.1, 442.2, 345.8, 444.5]),
    ([992.3, -1.4, 1027.2, 35.1], [1008.2, 3.3, 1025.1, 3.8, 1019.4, 12.6, 1009.4, 22.0, 1022.9, 22.4]),
    ([72.8, 46.4, 117.0, 92.1], [84.8, 56.8, 104.6, 57.3, 93.9, 65.3, 85.8, 76.2, 102.0, 76.5]),
    ([286.1, 104.0, 332.9, 162.3], [301.4, 126.7, 319.1, 126.3, 311.0, 136.9, 304.8, 147.9, 317.9, 147.4]),
    ([792.9, 117.5, 834.8, 173.2], [807.6, 137.7, 825.1, 138.2, 817.7, 148.0, 809.4, 159.3, 822.5, 159.7]),
    ([951.0, 57.4, 980.9, 94.8], [958.5, 70.8, 964.8, 72.3, 957.3, 79.6, 959.1, 85.1, 963.2, 86.0]),
    ([127.7, 97.3, 164.8, 148.2], [138.5, 115.5, 154.7, 116.2, 146.2, 125.8, 139.5, 135.3, 152.3, 135.9]),
    ([417.3, 0.8, 463.0, 44.8], [435.4, 8.4, 454.3, 7.7, 450.9, 14.2, 439.6, 27.9, 455.4, 27.6]),
    ([61.9, 160.4, 109.2, 219.8], [75.1, 178.3, 95.7, 177.8, 85.6, 187.8, 77.6, 201.4, 94.3, 200.9]),
    ([808.2, 54.4, 841.3, 98.0], [814.0, 67.8, 822.4, 68.8, 812.6, 76.9, 814.3, 86.5, 820.0, 87.0]),
    ([920.9, 218.9, 982.0, 292.4], [948.0, 235.1, 968.1, 242.7, 956.7, 252.8, 942.7, 267.2, 958.0, 273.5]),
    ([225.6, 166.9, 256.0, 205.7], [242.9, 181.8, 252.3, 180.6, 253.7, 187.8, 246.3, 195.9, 253.2, 195.3]),
]


def load_faces(path: str | None) -> tuple[np.ndarray, np.ndarray]:
  """(boxes [N, 4], landmarks [N, 5, 2]) from a `jaxface.detect --json` file, or the built-in list."""
  if path is None:
    return (np.array([b for b, _ in CROWD_FACES]), np.array([l for _, l in CROWD_FACES]).reshape(-1, 5, 2))
  with open(path) as f:
    faces = json.loads(f.readline())['faces']
  return np.array([d['box'] for d in faces]), np.array([d['landmarks'] for d in faces])


# --- pool workers (module level so that `spawn` can find them) -------------------------------------------------

_WORKER = {}


def _init_worker(image_path, boxes, landmarks, size):
  cv2.setNumThreads(1)
  _WORKER.update(image=cv2.imread(image_path), size=size,
                 sample=Sample(image_path, boxes, landmarks, np.ones(len(boxes), bool), np.zeros(len(boxes), bool)))


def _augment_one(index):
  """CPU seconds of one augmentation (only a number goes back to the parent)."""
  t = time.process_time()
  retinaface_augment(_WORKER['image'], _WORKER['sample'], sample_rng(0, 1, index), image_size=_WORKER['size'])
  return time.process_time() - t


def pool_throughput(workers, samples, init_args):
  """(images per wall second, images per CPU second of the workers) for a pool over `samples` indices."""
  ctx = multiprocessing.get_context('spawn')
  with ctx.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
    pool.map(_augment_one, range(4 * workers), chunksize=1)  # imports and first calls
    t = time.perf_counter()
    cpu = pool.map(_augment_one, range(samples), chunksize=8)
    return samples / (time.perf_counter() - t), samples / sum(cpu)


def round_robin(fns, repeats, warmup=2):
  """Like common.interleaved, also recording CPU time: (wall seconds, CPU seconds) per call of each function.

  The CPU clock counts only this process's work, so on a shared machine it shows the per-core cost
  when other jobs hold the cores (the wall clock then includes the waiting)."""
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  wall = {name: [] for name in fns}
  cpu = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      w, c = time.perf_counter(), time.process_time()
      fn()
      cpu[name].append(time.process_time() - c)
      wall[name].append(time.perf_counter() - w)
  return ({k: np.asarray(v) for k, v in wall.items()}, {k: np.asarray(v) for k, v in cpu.items()})


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--repeats', type=int, default=300, help='timed calls per candidate, one process')
  p.add_argument('--size', type=int, default=640, help='output side (640: mnet, SCRFD; 840: R50)')
  p.add_argument('--workers', type=int, nargs='*', default=[1, 2], help='pool sizes to measure')
  p.add_argument('--samples', type=int, default=600, help='samples mapped per pool measurement')
  p.add_argument('--faces', default=None,
                 help='a jaxface.detect --json file (first line) instead of the built-in faces')
  args = p.parse_args()
  cv2.setNumThreads(1)

  image_path = str(common.shared_dir() / 'data' / 'images' / 'crowd.jpg')
  img = cv2.imread(image_path)
  boxes, landmarks = load_faces(args.faces)
  n = len(boxes)
  sample = Sample(image_path, boxes, landmarks, np.ones(n, bool), np.zeros(n, bool))
  targets = ref.retinaface_targets(boxes, landmarks, np.ones(n, bool))
  print(common.machine())
  print(f'crowd.jpg {img.shape[1]}x{img.shape[0]}, {n} faces, output {args.size}x{args.size}, '
        f'OpenCV {cv2.__version__} with 1 thread')

  random.seed(0)
  np.random.seed(0)
  counter = iter(range(10**9))
  fns = {
      'reference preproc (RetinaFace)': lambda: ref.retinaface_preproc(img, targets, args.size),
      'jaxface retinaface_augment': lambda: retinaface_augment(img, sample, sample_rng(0, 0, next(counter)),
                                                               image_size=args.size),
      'reference pipeline (SCRFD)': lambda: ref.scrfd_pipeline(img, boxes, np.asarray(landmarks, np.float32),
                                                               np.zeros((0, 4)), args.size),
      'jaxface scrfd_augment': lambda: scrfd_augment(img, sample, sample_rng(0, 0, next(counter)),
                                                     image_size=args.size),
  }
  wall, cpu = round_robin(fns, args.repeats)
  print('wall clock, one process:')
  print(common.report(wall, 'reference preproc (RetinaFace)'))
  print('CPU time, one process:')
  print(common.report(cpu, 'reference preproc (RetinaFace)'))
  for name, t in (('wall', wall), ('CPU', cpu)):
    rate = {k: 1 / np.mean(v) for k, v in t.items()}
    print(f'per core by {name} time, images/s (1 / mean): ' + ', '.join(f'{k} {v:.0f}' for k, v in rate.items()))
    print(f'  RetinaFace: jaxface {rate["jaxface retinaface_augment"] / rate["reference preproc (RetinaFace)"]:.2f}x '
          f'the reference; SCRFD: jaxface {rate["jaxface scrfd_augment"] / rate["reference pipeline (SCRFD)"]:.2f}x')

  init_args = (image_path, boxes, landmarks, args.size)
  pools = {w: pool_throughput(w, args.samples, init_args) for w in args.workers}
  for w, (r, per_cpu) in pools.items():
    print(f'retinaface_augment, {w} worker process{"es" if w > 1 else ""}: {r:.0f} images/s '
          f'({per_cpu:.0f} images per CPU second per worker)')
  print(f'load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores')
  if 1 in pools and 2 in pools:
    eff = pools[2][0] / (2 * pools[1][0])
    per_core = np.mean([pools[w][1] for w in (1, 2)])
    print(f'2-worker scaling (wall): {pools[2][0] / pools[1][0]:.2f}x, efficiency {eff:.2f}')
    print(f'projection, 16-core host, 15 workers at {per_core:.0f} images per CPU second: about '
          f'{15 * per_core:.0f} images/s ({15 * per_core / 32:.0f} batches of 32 per second); times the scaling '
          f'efficiency measured here ({eff:.2f}): {15 * per_core * eff:.0f} images/s')


if __name__ == '__main__':
  main()
