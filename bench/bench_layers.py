"""XLA:CPU lowerings of the convolutions in RetinaFace-mnet, side by side at crowd.jpg's sizes.

    python bench/bench_layers.py [--repeats 20]

For each layer shape: the library convolution (`lax.conv_general_dilated`, grouped for the
depthwise ones) against the alternatives `jaxface.cpu_kernels` picks on CPU (shifted
multiply-adds, a matrix product, broadcast multiply-adds), with a BN-style scale/shift and ReLU
after each so fusion is measured too. Also checks each alternative computes the same numbers.
"""
from __future__ import annotations

import argparse

import common
import jax
import jax.numpy as jnp
import numpy as np

from jaxface.cpu_kernels import taps  # the same views the library sums over

NHWC = ('NHWC', 'HWIO', 'NHWC')


def epilogue(y):
  c = y.shape[-1]
  return jax.nn.relu(y * jnp.linspace(0.5, 1.5, c)[None, None, None, :] + 0.1)


def library(x, w, s, groups):
  k = w.shape[0]
  return epilogue(jax.lax.conv_general_dilated(x, w, (s, s), ((k // 2,) * 2,) * 2, dimension_numbers=NHWC,
                                               feature_group_count=groups))


def shifted_depthwise(x, w, s, groups):
  return epilogue(sum(t * w[dy, dx, 0][None, None, None, :] for dy, dx, t in taps(x, 3, s)))


def fma(x, w, s, groups):
  return epilogue(sum(t[..., c:c + 1] * w[dy, dx, c][None, None, None, :]
                      for dy, dx, t in taps(x, w.shape[0], s) for c in range(x.shape[-1])))


def matmul(x, w, s, groups):
  return epilogue(jnp.dot(x, w[0, 0]))


# (name, input [H, W, C], kernel k, out channels, stride, depthwise)
LAYERS = [
    ('stem 3x3 s2 3->8', (624, 1024, 3), 3, 8, 2, False),
    ('dw 3x3 8ch', (312, 512, 8), 3, 8, 1, True),
    ('dw 3x3 s2 16ch', (312, 512, 16), 3, 16, 2, True),
    ('dw 3x3 32ch', (156, 256, 32), 3, 32, 1, True),
    ('dw 3x3 64ch', (78, 128, 64), 3, 64, 1, True),
    ('pw 1x1 8->16', (312, 512, 8), 1, 16, 1, False),
    ('pw 1x1 16->32', (156, 256, 16), 1, 32, 1, False),
    ('pw 1x1 32->32', (156, 256, 32), 1, 32, 1, False),
    ('pw 1x1 128->128', (39, 64, 128), 1, 128, 1, False),
    ('3x3 64->64 (FPN merge1)', (78, 128, 64), 3, 64, 1, False),
]


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--repeats', type=int, default=20)
  args = p.parse_args()
  print(common.machine())
  rng = np.random.default_rng(0)
  print(f'{"layer":26s} {"variant":18s} {"median ms":>10s} {"vs library":>11s}')
  for name, (h, w, c), k, o, s, dw in LAYERS:
    x = jnp.asarray(rng.standard_normal((1, h, w, c), np.float32))
    kern = jnp.asarray(rng.standard_normal((k, k, 1 if dw else c, o), np.float32) * 0.1)
    groups = c if dw else 1
    variants = {'library conv': library}
    if dw:
      variants['shifted mul-adds'] = shifted_depthwise
    else:
      if k * k * c <= 64:
        variants['fused mul-adds'] = fma
      if k == 1:
        variants['matmul'] = matmul
    fns = {n: jax.jit(f, static_argnums=(2, 3)) for n, f in variants.items()}
    want = fns['library conv'](x, kern, s, groups)
    for n, f in fns.items():
      np.testing.assert_allclose(f(x, kern, s, groups), want, atol=1e-3, err_msg=f'{name} {n}')
    times = common.interleaved({n: (lambda f=f: jax.block_until_ready(f(x, kern, s, groups))) for n, f in fns.items()},
                               args.repeats)
    base = np.median(times['library conv'])
    for n, t in times.items():
      print(f'{name:26s} {n:18s} {np.median(t) * 1e3:10.2f} {base / np.median(t):10.2f}x')


if __name__ == '__main__':
  main()
