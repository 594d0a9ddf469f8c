"""Where the train step's gap to torch is: each MobileNet-0.25 block's forward + backward, side by side.

    python bench/bench_train_blocks.py [--batch 8] [--repeats 8] [--neck-only]

Each block at its shape in `retinaface_mnet`'s training at 640x640 (stem, then the `conv_dw`
blocks of stages 1 and 2), BN in train mode, LeakyReLU(0.1):

  * reference: the torch block (`Conv2d(groups=C)`, `BatchNorm2d`, `LeakyReLU`, 1x1 `Conv2d`,
    ...), eager, `forward` then `backward` of a fixed random cotangent;
  * jaxface: the Flax block from `jaxface.layers` (on CPU with the `jaxface.cpu_kernels` lowerings
    the train step uses), `jax.vjp` of the same cotangent for parameters and input, jitted.

Then the network after the backbone, FPN + SSH x3 + heads on C3-C5 at 80/40/20 px (64/128/256 channels):
the torch modules of `tests/reference_torch.py` against `retinaface.neck_and_heads`, forward alone and
forward + backward (random cotangents on the three outputs, gradients for parameters and inputs).

Reports the median time of each and jaxface / reference (> 1: jaxface slower).
"""
from __future__ import annotations

import argparse

import common
from jaxface import huge_pages

if __name__ == '__main__':
  huge_pages.restart_with_huge_pages()  # as train.py does; JAXFACE_HUGE_PAGES=0 to time without

import jax
import jax.numpy as jnp
import numpy as np
import torch

import flax.linen as nn
import reference_torch as ref
from jaxface.retinaface import SPECS, neck_and_heads
from jaxface.layers import Conv, ConvBN, ConvDW, torch_bn

SLOPE = 0.1


def torch_conv_dw(cin: int, cout: int, stride: int) -> torch.nn.Module:
  return torch.nn.Sequential(
      torch.nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), torch.nn.BatchNorm2d(cin),
      torch.nn.LeakyReLU(SLOPE), torch.nn.Conv2d(cin, cout, 1, 1, 0, bias=False), torch.nn.BatchNorm2d(cout),
      torch.nn.LeakyReLU(SLOPE))


def torch_stem() -> torch.nn.Module:
  return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1, bias=False), torch.nn.BatchNorm2d(8),
                             torch.nn.LeakyReLU(SLOPE))


NORM = torch_bn(train=True)
# (name, input side, input channels, jaxface block, torch block)
BLOCKS = [
    ('stem 3x3 s2 3->8 @640', 640, 3, lambda: ConvBN(8, 3, 2, SLOPE, norm=NORM), torch_stem),
    ('dw 8->16 @320', 320, 8, lambda: ConvDW(16, 1, SLOPE, norm=NORM), lambda: torch_conv_dw(8, 16, 1)),
    ('dw s2 16->32 @320', 320, 16, lambda: ConvDW(32, 2, SLOPE, norm=NORM), lambda: torch_conv_dw(16, 32, 2)),
    ('dw 32->32 @160', 160, 32, lambda: ConvDW(32, 1, SLOPE, norm=NORM), lambda: torch_conv_dw(32, 32, 1)),
    ('dw s2 32->64 @160', 160, 32, lambda: ConvDW(64, 2, SLOPE, norm=NORM), lambda: torch_conv_dw(32, 64, 2)),
    ('dw 64->64 @80', 80, 64, lambda: ConvDW(64, 1, SLOPE, norm=NORM), lambda: torch_conv_dw(64, 64, 1)),
    ('dw s2 64->128 @80', 80, 64, lambda: ConvDW(128, 2, SLOPE, norm=NORM), lambda: torch_conv_dw(64, 128, 2)),
    ('dw 128->128 @40 (x5)', 40, 128, lambda: ConvDW(128, 1, SLOPE, norm=NORM), lambda: torch_conv_dw(128, 128, 1)),
]


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--repeats', type=int, default=8)
  p.add_argument('--neck-only', action='store_true', help='skip the backbone blocks')
  args = p.parse_args()
  print(common.machine(), f'batch {args.batch}; torch {torch.__version__} ({torch.get_num_threads()} threads)')
  rng = np.random.default_rng(0)
  total = {'reference': 0.0, 'jaxface': 0.0}
  for name, side, cin, jax_block, torch_block in [] if args.neck_only else BLOCKS:
    x = rng.standard_normal((args.batch, side, side, cin)).astype(np.float32)
    block = jax_block()
    variables = block.init(jax.random.PRNGKey(0), jnp.asarray(x))
    apply = lambda p, x: block.apply({'params': p, 'batch_stats': variables['batch_stats']}, x,
                                     mutable=['batch_stats'])[0]
    g = rng.standard_normal(jax.eval_shape(apply, variables['params'], jnp.asarray(x)).shape).astype(np.float32)
    grads = jax.jit(lambda p, x, g: jax.vjp(apply, p, x)[1](g))
    xj, gj = jnp.asarray(x), jnp.asarray(g)
    net = torch_block().train()
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    gt = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous()

    def reference():
      net.zero_grad()
      xt.grad = None
      net(xt).backward(gt)

    times = common.interleaved({'reference': reference,
                                'jaxface': lambda: jax.block_until_ready(grads(variables['params'], xj, gj))},
                               args.repeats)
    ref_ms, jax_ms = (float(np.median(times[k])) * 1e3 for k in ('reference', 'jaxface'))
    total['reference'] += ref_ms
    total['jaxface'] += jax_ms
    print(f'{name:24s} reference {ref_ms:8.1f} ms   jaxface {jax_ms:8.1f} ms   jaxface / reference {jax_ms / ref_ms:5.2f}',
          flush=True)
  if not args.neck_only:
    print(f'{"sum of the rows":24s} reference {total["reference"]:8.1f} ms   jaxface {total["jaxface"]:8.1f} ms   '
          f'jaxface / reference {total["jaxface"] / total["reference"]:5.2f}')
  neck(args.batch, args.repeats, rng)


class Neck(nn.Module):
  """RetinaFace-mnet without its backbone."""

  @nn.compact
  def __call__(self, c3, c4, c5):
    return neck_and_heads(SPECS['retinaface_mnet'], Conv, NORM, c3, c4, c5)


def neck(batch: int, repeats: int, rng: np.random.Generator):
  """FPN + SSH + heads, forward and forward + backward, beside the torch modules."""
  xs = [rng.standard_normal((batch, side, side, c)).astype(np.float32) for side, c in ((80, 64), (40, 128), (20, 256))]
  xj = [jnp.asarray(x) for x in xs]
  model = Neck()
  variables = model.init(jax.random.PRNGKey(0), *xj)
  apply = lambda p, xs: model.apply({'params': p, 'batch_stats': variables['batch_stats']}, *xs,
                                    mutable=['batch_stats'])[0]
  cots = tuple(jnp.asarray(rng.standard_normal(o.shape).astype(np.float32))
          for o in jax.eval_shape(apply, variables['params'], xj))
  forward = jax.jit(apply)
  grads = jax.jit(lambda p, xs, cots: jax.vjp(apply, p, xs)[1](cots))
  net = ref.build_reference('retinaface_mnet').train()
  xt = [torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True) for x in xs]
  ct = [torch.from_numpy(np.array(c)) for c in cots]

  def torch_outputs():
    p = net.fpn(xt)
    feats = [net.ssh1(p[0]), net.ssh2(p[1]), net.ssh3(p[2])]
    return [torch.cat([h(f) for h, f in zip(heads, feats)], dim=1)
            for heads in (net.BboxHead, net.ClassHead, net.LandmarkHead)]

  def torch_forward():
    with torch.no_grad():
      torch_outputs()

  def torch_backward():
    net.zero_grad()
    for x in xt:
      x.grad = None
    torch.autograd.backward(torch_outputs(), ct)

  times = common.interleaved({
      'reference forward': torch_forward,
      'jaxface forward': lambda: jax.block_until_ready(forward(variables['params'], xj)),
      'reference forward + backward': torch_backward,
      'jaxface forward + backward': lambda: jax.block_until_ready(grads(variables['params'], xj, cots)),
  }, repeats)
  ms = {k: float(np.median(t)) * 1e3 for k, t in times.items()}
  for part in ('forward', 'forward + backward'):
    ref_ms, jax_ms = ms[f'reference {part}'], ms[f'jaxface {part}']
    print(f'{"neck " + part:24s} reference {ref_ms:8.1f} ms   jaxface {jax_ms:8.1f} ms   '
          f'jaxface / reference {jax_ms / ref_ms:5.2f}')


if __name__ == '__main__':
  main()
