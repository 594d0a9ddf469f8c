"""Scoring a full WIDER FACE val prediction set: the Python port vs jaxface, both protocols.

    python bench/bench_widerface_eval.py [--seed 0] [--fp-per-image 25] [--repeats 5] [--skip-port]

Generates a realistic prediction set over the real val ground truth (tests/widerface_port.py:
every face found with a probability growing with its size, jittered, plus duplicates and
Poisson false positives; seeded), writes it as WIDER txt files (sorted by score, as a detector
writes them) into a temporary folder, then times, all reading the same files:
  (a) the port re-stated with its loops (tests/widerface_port.py), once;
  (b) jaxface `evaluate_dir(protocol='official')`;
  (c) jaxface `evaluate_dir(protocol='python')`;
(b) and (c) interleaved, with medians. Loading the ground truth is not timed for jaxface (done
once); the port loads its .mat files inside its run. Prints the APs, and checks that (c)
reproduces (a).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import common  # noqa: F401  (sets sys.path)
import numpy as np

import widerface_port as port
from jaxface.evaluation import SETTINGS, evaluate_dir, load_wider_mat_ground_truth, write_prediction_set


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--fp-per-image', type=float, default=25.0, help='mean false positives per image')
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--skip-port', action='store_true', help='do not run the (slow) port')
  args = p.parse_args()
  print(common.machine())
  gt_dir = common.shared_dir() / 'data' / 'widerface_val_gt'
  t = time.perf_counter()
  gt = load_wider_mat_ground_truth(gt_dir)
  print(f'ground truth: {gt.num_images} images, {gt.num_boxes} faces, loaded in {time.perf_counter() - t:.2f} s')
  preds = port.synthetic_predictions(gt, seed=args.seed, fp_per_image=args.fp_per_image)
  print(f'predictions: {sum(len(v) for v in preds.values())} detections (seed {args.seed})')

  with tempfile.TemporaryDirectory(prefix='widerface_bench_') as pred_dir:
    write_prediction_set(pred_dir, preds)
    results, times = {}, {}
    if not args.skip_port:
      t = time.perf_counter()
      results['port'] = port.evaluation(pred_dir, port.load_gt_lists(gt_dir))
      times['(a) python port (loops)'] = np.array([time.perf_counter() - t])
    fns = {'(b) jaxface official': lambda: evaluate_dir(pred_dir, gt, 'official'),
           '(c) jaxface python': lambda: evaluate_dir(pred_dir, gt, 'python')}
    results['official'], results['python'] = fns['(b) jaxface official'](), fns['(c) jaxface python']()
    times.update(common.interleaved(fns, repeats=args.repeats, warmup=1))

  print(f'\n{"":28s} {"median s":>9s} {"min s":>7s}   Easy     Medium   Hard')
  aps = {'(b) jaxface official': results['official'].ap, '(c) jaxface python': results['python'].ap}
  if 'port' in results:
    aps['(a) python port (loops)'] = {s: results['port'][s][0] for s in SETTINGS}
  for name in sorted(times):
    ap = '  '.join(f'{aps[name][s]:.5f}' for s in SETTINGS)
    print(f'{name:28s} {np.median(times[name]):9.3f} {np.min(times[name]):7.3f}   {ap}')
  if 'port' in results:
    port_s = times['(a) python port (loops)'][0]
    for name in ('(b) jaxface official', '(c) jaxface python'):
      print(f'speed-up of {name} over the port: {port_s / np.median(times[name]):.0f}x')
    worst = max(abs(results['python'].ap[s] - results['port'][s][0]) for s in SETTINGS)
    same_curves = all(np.array_equal(np.stack([results['python'].pr_curves[s].precision,
                                               results['python'].pr_curves[s].recall], 1),
                                     results['port'][s][1], equal_nan=True) for s in SETTINGS)
    print(f'jaxface python protocol vs port: max |AP difference| {worst:.1e}, PR curves identical: {same_curves}')
  gap = '  '.join(f'{results["official"].ap[s] - results["python"].ap[s]:+.5f}' for s in SETTINGS)
  print(f'official - python AP (Easy Medium Hard): {gap}')


if __name__ == '__main__':
  main()
