"""Time to the last result for a folder of mixed-size photos with the detect CLI, compile time included.

    python bench/bench_folder.py [--photos 24] [--runs 2]

The folder: crowd.jpg and street.jpg rescaled to `--photos` distinct sizes between 320 and 1600
px on the long side, landscape and portrait (a folder of web images; a camera's photos share one
size). Each configuration runs `python -m jaxface.detect FOLDER --json OUT` as a fresh process,
as a user would, and the wall time covers everything: interpreter start, imports, loading the
default model, compiling, reading and detecting every photo, writing the records.

Configurations (RetinaFace-mnet, the default model; SCRFD and BlazeFace letterbox every photo into
one input size, so they compile once whatever the folder):
  * `--exact`, no cache: the CLI's default before this benchmark, one compile per distinct size;
  * the default (bucketed sizes), empty cache: a first run;
  * the default again on the same cache: every later run;
  * `--exact` again on its own warm cache.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_folder(shared: Path, folder: Path, n: int) -> list[tuple[int, int]]:
  sources = [cv2.imread(str(shared / 'data' / 'images' / name)) for name in ('crowd.jpg', 'street.jpg')]
  rng = np.random.default_rng(0)
  sizes = []
  for i in range(n):
    img = sources[i % len(sources)]
    if i % 3 == 2:  # a portrait crop
      img = img[:, : img.shape[0] * 3 // 4]
    long_side = int(rng.integers(320, 1601))
    s = long_side / max(img.shape[:2])
    resized = cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))),
                         interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    cv2.imwrite(str(folder / f'{i:03d}.jpg'), resized)
    sizes.append(resized.shape[:2])
  return sizes


def run_cli(folder: Path, out: Path, cache: str, *extra: str) -> tuple[float, int]:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')])))
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  t = time.perf_counter()
  proc = subprocess.run([sys.executable, '-m', 'jaxface.detect', '--json', str(out), '--cache-dir', cache, *extra,
                         str(folder)], capture_output=True, text=True, env=env)
  seconds = time.perf_counter() - t
  if proc.returncode != 0:
    raise SystemExit(f'the CLI failed:\n{proc.stderr}')
  faces = sum(len(json.loads(line)['faces']) for line in out.read_text().splitlines())
  return seconds, faces


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--photos', type=int, default=24)
  p.add_argument('--runs', type=int, default=2, help='repeats of each configuration (fresh caches each time)')
  args = p.parse_args()
  shared = common.shared_dir()
  print(common.machine())
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    folder = tmp / 'photos'
    folder.mkdir()
    sizes = make_folder(shared, folder, args.photos)
    print(f'{len(sizes)} photos, {len(set(sizes))} distinct sizes, long sides '
          f'{min(max(s) for s in sizes)}-{max(max(s) for s in sizes)} px; default model (retinaface_mnet_relu)')
    results: dict[str, list[float]] = {}
    faces = {}
    for r in range(args.runs):
      exact_cache, cache = tmp / f'exact{r}', tmp / f'cache{r}'
      for name, cache_dir, extra in [('--exact, no cache (the old default)', '', ('--exact',)),
                                     ('default, empty cache (first run)', str(cache), ()),
                                     ('default, warm cache (later runs)', str(cache), ()),
                                     ('--exact, empty cache', str(exact_cache), ('--exact',)),
                                     ('--exact, warm cache', str(exact_cache), ('--exact',))]:
        seconds, n = run_cli(folder, tmp / 'out.jsonl', cache_dir, *extra)
        results.setdefault(name, []).append(seconds)
        faces[name] = n
    base = np.median(results['--exact, no cache (the old default)'])
    print(f'{"":40s} {"median s":>9s} {"runs":>16s} {"faces":>6s} {"vs the old default":>19s}')
    for name, times in results.items():
      runs = ' '.join(f'{t:.1f}' for t in times)
      print(f'{name:40s} {np.median(times):9.1f} {runs:>16s} {faces[name]:6d} {base / np.median(times):18.2f}x')


if __name__ == '__main__':
  main()
