"""The SCRFD train step: jaxface's one compiled program against the torch re-statement's eager step.

    python bench/bench_scrfd_train_step.py [--arch scrfd_500m_bnkps scrfd_2.5g_bnkps] [--size 640]
                                           [--batch 8] [--repeats 8]

One step = forward (BN in train mode), ATSS, QFL + DIoU + keypoint losses, backward, SGD (lr 0.01,
momentum 0.9, weight decay 5e-4).

* torch: `tests/reference_scrfd.py`'s model (default torch init, train mode), eager; the logits from
  its head's `forward_raw`; ATSS per image with mmdet's vectorised algorithm (`bench_atss.vectorised_torch`);
  `tests/reference_scrfd_train.scrfd_loss_reference`; `torch.optim.SGD`;
* jaxface: `train_step.make_train_step(model, loss_fn, sgd)`, compiled ahead of time (trace and compile
  times printed), the state donated from call to call.

Both start from the same weights (the torch init through the converter) and take the same batches
(`pipeline.batches` over the synthetic set with SCRFD's augmentation, built before timing). Before
timing, the first step's loss is checked equal on both sides with the torch side's assignments
from the stable per-face re-statement (torch.topk's tie order would move a few of them). The
process restarts with glibc's huge-page tunable, as `train.py` does (`jaxface.huge_pages`); since
2026-12-05 11:20 UTC, before that it ran without.
"""
from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (sets sys.path)
from jaxface import huge_pages

if __name__ == '__main__':
  huge_pages.restart_with_huge_pages()  # as train.py does; JAXFACE_HUGE_PAGES=0 to time without

import jax
import numpy as np
import torch

import reference_scrfd as ref
import reference_scrfd_train as ref_train
from bench_atss import vectorised_torch
from jaxface.data import pipeline, synthetic
from jaxface.scrfd import FAMILY, anchors, augment, weights
from jaxface.training import train_step as ts

LR = 0.01


def make_batches(n: int, batch: int, size: int, max_faces: int) -> list[dict]:
  source = synthetic.SyntheticFaces('train', n * batch, seed=0)
  cfg = pipeline.LoaderConfig(global_batch_size=batch, image_size=size, max_faces=max_faces, seed=0)
  return list(pipeline.batches(source, augment.scrfd_augment, cfg, num_steps=n))


def torch_outputs(net, x):
  """(logits [B,A], distances [B,A,4], kps [B,A,10]) in the head's anchor order."""
  logits, dist, kps = [], [], []
  for cls, reg, k in net.bbox_head.forward_raw(net.features(x)):
    b = cls.shape[0]
    logits.append(cls.permute(0, 2, 3, 1).reshape(b, -1))
    dist.append(reg.permute(0, 2, 3, 1).reshape(b, -1, 4))
    kps.append(k.permute(0, 2, 3, 1).reshape(b, -1, 10))
  return torch.cat(logits, 1), torch.cat(dist, 1), torch.cat(kps, 1)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--arch', nargs='+', default=['scrfd_500m_bnkps', 'scrfd_2.5g_bnkps'])
  p.add_argument('--size', type=int, default=640)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--max-faces', type=int, default=64)
  p.add_argument('--num-batches', type=int, default=3)
  p.add_argument('--repeats', type=int, default=8)
  args = p.parse_args()
  print(common.machine())
  print(f'{args.size} px, batch {args.batch}, max_faces {args.max_faces}; torch {torch.__version__} '
        f'({torch.get_num_threads()} threads)')
  batches_np = make_batches(args.num_batches, args.batch, args.size, args.max_faces)
  boxes = anchors.anchor_boxes(args.size, args.size)
  _, cells = anchors.anchor_grid(args.size, args.size)
  counts = tuple(int(np.sum(cells[:, 2] == s)) for s in anchors.STRIDES)
  anchors_t, strides_t = torch.from_numpy(boxes), torch.from_numpy(cells[:, 2].astype(np.float32))

  def torch_batch(b):
    """Images NCHW, each image's faces (ignore boxes out, as ATSS sees them) and the same faces packed
    first in `[B, G, ...]` arrays, so the assigned indices address them."""
    s = args.size
    x = torch.from_numpy(np.ascontiguousarray(b['image'].transpose(0, 3, 1, 2)))
    valid = b['box_valid'] & ~b['ignore']
    packed = {k: np.zeros_like(b[k]) for k in ('boxes', 'landmarks', 'landmark_valid')}
    for i, v in enumerate(valid):
      for k in packed:
        packed[k][i, :v.sum()] = b[k][i][v]
    return x, [torch.from_numpy(b['boxes'][i][valid[i]] * s) for i in range(len(valid))], dict(
        boxes=torch.from_numpy(packed['boxes'] * s), kps=torch.from_numpy(packed['landmarks'] * s),
        visible=torch.from_numpy(packed['landmark_valid'].astype(np.float32)))

  for arch in args.arch:
    torch.manual_seed(0)
    net = ref.build_scrfd(arch).train()
    variables = weights.convert_detector({k: v.detach().numpy() for k, v in net.state_dict().items()},
                                         FAMILY.spec(arch))
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    torch_batches = [torch_batch(b) for b in batches_np]

    def torch_loss(batch, assign):
      x, faces, gt = batch
      logits, dist, kps = torch_outputs(net, x)
      assigned = torch.stack([assign(f) for f in faces])
      out = ref_train.scrfd_loss_reference(logits, dist, kps, anchors_t, strides_t, assigned, gt['boxes'],
                                           gt['kps'], gt['visible'])
      return out['loss'], int((assigned >= 0).sum())

    vectorised = lambda f: vectorised_torch(anchors_t, counts, f)
    stable = lambda f: torch.from_numpy(ref_train.atss_reference(boxes, counts, f.numpy())[0])

    model = FAMILY.build(FAMILY.spec(arch))
    tx = ts.sgd(LR, momentum=0.9, weight_decay=5e-4)
    state = ts.init_state(tx, variables)
    batches = [jax.device_put(b) for b in batches_np]
    step = ts.make_train_step(model, ts.loss_fn_for(FAMILY, model.spec), tx)
    t0 = time.perf_counter()
    lowered = step.lower(state, batches[0])
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()

    # First step on batch 0, before either side updates: the same loss.
    with torch.no_grad():
      want, want_pos = torch_loss(torch_batches[0], stable)
    net.load_state_dict(net.state_dict())  # BN running stats moved; irrelevant to the timing
    counter = {'torch': 0, 'jax': 0}

    def torch_step():
      batch = torch_batches[counter['torch'] % len(torch_batches)]
      counter['torch'] += 1
      optimizer.zero_grad()
      loss, _ = torch_loss(batch, vectorised)
      loss.backward()
      optimizer.step()

    def jaxface_step():
      nonlocal state
      state, metrics = compiled(state, batches[counter['jax'] % len(batches)])
      counter['jax'] += 1
      return jax.block_until_ready(metrics)

    metrics = jax.device_get(jaxface_step())
    print(f'\n{arch}: jaxface trace + lower {t1 - t0:.1f} s, XLA compile {t2 - t1:.1f} s; first step: jaxface loss '
          f'{float(metrics["loss"]):.5f} ({int(metrics["num_pos"])} positives), torch {float(want):.5f} '
          f'({want_pos} positives)')
    assert int(metrics['num_pos']) == want_pos and abs(float(metrics['loss']) - float(want)) <= 1e-3 * float(want)
    times = common.interleaved({'torch eager train step': torch_step, 'jaxface train step': jaxface_step},
                               args.repeats, warmup=1, lead_in=1)
    print(common.report(times, 'torch eager train step'))
    med = {k: np.median(v) for k, v in times.items()}
    print(f'images/s: torch {args.batch / med["torch eager train step"]:.2f}, '
          f'jaxface {args.batch / med["jaxface train step"]:.2f} '
          f'({med["torch eager train step"] / med["jaxface train step"]:.2f}x)')


if __name__ == '__main__':
  main()
