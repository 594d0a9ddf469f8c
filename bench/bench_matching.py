"""Training-target matching at 640 px: the reference's per-image loop vs jaxface's jitted, vmapped kernel.

    python bench/bench_matching.py [--repeats 200] [--batch 8] [--max-faces 64]

Work timed, for a batch of B images with 27 faces each at 640x640 (16,800 priors): prior matching
(IoU, best prior / best face, forced matches, the step-5 loop) plus box and landmark target
encoding, i.e. what the reference's `MultiBoxLoss.forward` does in its `for idx in range(num):
match(...)` loop before any loss is computed.

  * reference loop: tests/test_matching_loss.py's torch re-statement of `match` (the reference's
    code path: `jaccard`, `max`, `index_fill`, the Python forced-match loop, `encode`,
    `encode_landm`), one image at a time, on per-image tensors of exactly its faces;
  * jaxface G=27: `matching.match_batch` jitted over the whole batch, every slot a face;
  * jaxface G=max_faces: the same with the faces padded to `--max-faces` slots, as the loader
    delivers them.
The faces are the 27 crowd.jpg detections of bench_augment.py, resized to 640 px wide (the
1024x624 image letterboxed into 640x640) and, per image, scaled by a random 0.7-1.0 and shifted,
so the images differ. Before timing, the kernel's positives and matched faces are checked equal to
the loop's. Candidates run round-robin (bench/common.py); outputs are waited on (block_until_ready).
"""
from __future__ import annotations

import argparse

import common  # noqa: F401  (sets sys.path)
import jax
import numpy as np
import torch

import test_matching_loss as ref
from bench_augment import CROWD_FACES
from jaxface.retinaface import anchors
from jaxface.retinaface import matching

SIZE = 640


def crowd_batch(batch: int, max_faces: int, seed: int = 0) -> dict[str, np.ndarray]:
  """B letterboxed copies of the crowd faces, each scaled and shifted; normalised, padded to max_faces."""
  rng = np.random.default_rng(seed)
  boxes = np.array([b for b, _ in CROWD_FACES], np.float64)
  points = np.array([p for _, p in CROWD_FACES], np.float64).reshape(-1, 5, 2)
  n = len(boxes)
  out = dict(boxes=np.zeros((batch, max_faces, 4), np.float32),
             landmarks=np.zeros((batch, max_faces, 5, 2), np.float32),
             box_valid=np.zeros((batch, max_faces), bool), landmark_valid=np.zeros((batch, max_faces), bool),
             ignore=np.zeros((batch, max_faces), bool))
  for i in range(batch):
    scale = SIZE / 1024 * rng.uniform(0.7, 1.0)
    shift = rng.uniform(0, [SIZE - 1024 * scale, SIZE - 624 * scale])
    out['boxes'][i, :n] = (boxes * scale + np.tile(shift, 2)) / SIZE
    out['landmarks'][i, :n] = (points * scale + shift) / SIZE
    out['box_valid'][i, :n] = True
    out['landmark_valid'][i, :n] = True
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--repeats', type=int, default=200)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--max-faces', type=int, default=64)
  args = p.parse_args()

  priors_np = anchors.prior_boxes(SIZE, SIZE)
  faces = len(CROWD_FACES)
  print(common.machine())
  print(f'batch {args.batch} x {faces} faces at {SIZE}x{SIZE}, {len(priors_np)} priors; '
        f'torch {torch.__version__} ({torch.get_num_threads()} threads)')

  full = crowd_batch(args.batch, faces)
  padded = crowd_batch(args.batch, args.max_faces)

  # The reference loop's inputs, per image, prepared outside the timing (as the data loader would).
  priors_t = torch.from_numpy(np.array(priors_np))
  per_image = [(torch.from_numpy(full['boxes'][i]), torch.ones(faces), torch.from_numpy(full['landmarks'][i]))
               for i in range(args.batch)]

  def reference_loop():
    return [ref.ref_match(boxes, labels, points, priors_t) for boxes, labels, points in per_image]

  kernel = jax.jit(lambda batch: matching.match_batch(batch, priors_np))
  on_device = {name: jax.device_put(b) for name, b in (('full', full), ('padded', padded))}

  # Same assignments before timing anything.
  expected = reference_loop()
  for name, batch in on_device.items():
    m, t = jax.device_get(kernel(batch))
    for i, (conf, matched, loc, _) in enumerate(expected):
      pos = (conf != 0).numpy()
      assert np.array_equal(m.positive[i], pos), (name, i)
      assert np.array_equal(m.matched_idx[i][pos], matched.numpy()[pos]), (name, i)
      np.testing.assert_allclose(t.loc[i][pos], loc.numpy()[pos], rtol=1e-5, atol=1e-5)
  num_pos = sum(int((conf != 0).sum()) for conf, *_ in expected)
  print(f'assignments identical ({num_pos} positive priors in the batch)')

  times = common.interleaved({
      'reference loop (torch, per image)': reference_loop,
      f'jaxface G={faces}': lambda: jax.block_until_ready(kernel(on_device['full'])),
      f'jaxface G={args.max_faces} (padded)': lambda: jax.block_until_ready(kernel(on_device['padded'])),
  }, repeats=args.repeats, warmup=3)
  print(common.report(times, 'reference loop (torch, per image)'))


if __name__ == '__main__':
  main()
