"""The 3x3 depthwise conv's training parts on XLA:CPU, formulation by formulation, beside torch's.

    python bench/bench_depthwise.py [--batch 8] [--repeats 9]

At each depthwise layer of `retinaface_mnet` training at 640x640, times separately (medians, ms):

  forward         `cpu_kernels.taps` (nine slices of a padded copy) / `zero_filled_taps` below
                  (nine zero-filled shifts of the input, no copy) / the grouped library conv
  input grad      autodiff's transpose of each of the two tap forms / `cpu_kernels.depthwise_input_grad`
                  (the flipped kernel over one padded, dilated copy of the output gradient)
  kernel grad     nine separate sums (autodiff of the tap form) / `cpu_kernels.depthwise_kernel_grad`
                  (one variadic reduce) / the grouped conv's filter gradient

and torch's `conv2d(groups=C)` forward and forward + backward (both gradients) for scale.
`jaxface` is what `cpu_kernels.conv2d` runs for a depthwise conv: forward from the padded copy,
input gradient from the padded dilated copy, kernel gradient the variadic reduce. (Here the output
gradient is a parameter; in the step it is the BN + activation backward's output, which
autodiff's transposes recompute once per tap.) (The zero-filled forward is also slower in the
train step, where XLA fuses the input's producer, the BN + activation before it, into each of
the nine shifts: BENCHMARKS.md.) Every alternative's result is checked against the library
conv's before timing.
"""
from __future__ import annotations

import argparse

import common
import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxface import cpu_kernels, layers

# (input side, channels, stride): every depthwise layer of MobileNet-0.25 at 640 px
LAYERS = [(320, 8, 1), (320, 16, 2), (160, 32, 1), (160, 32, 2), (80, 64, 1), (80, 64, 2), (40, 128, 1),
          (40, 128, 2), (20, 256, 1)]


def grouped(x, k, s):
  return layers.conv2d(x, k, s, groups=x.shape[-1])


def copy_form(x, k, s):
  return cpu_kernels.shifted_depthwise(x, k, s)


def zero_filled_taps(x, k: int, stride: int):
  """`cpu_kernels.taps`'s views without the padded copy: each a shift of `x` filled with zeros
  (`lax.pad` with a negative edge), which XLA:CPU fuses into the consumer's loop."""
  p = k // 2
  _, h, w, _ = x.shape
  ho, wo = (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1
  zero = jnp.zeros((), x.dtype)
  for dy in range(k):
    for dx in range(k):
      # tap[i, j] = x[i + dy - p, j + dx - p], zero outside x, for i < stride*(ho-1)+1.
      t = jax.lax.pad(x, zero, [(0, 0, 0), (p - dy, stride * (ho - 1) + 1 + dy - p - h, 0),
                                (p - dx, stride * (wo - 1) + 1 + dx - p - w, 0), (0, 0, 0)])
      yield dy, dx, t[:, ::stride, ::stride] if stride > 1 else t


def zero_filled_form(x, k, s):
  return sum(t * k[dy, dx, 0][None, None, None, :] for dy, dx, t in zero_filled_taps(x, 3, s))


def candidates(s: int) -> dict[str, callable]:
  def input_grad(form):
    return lambda x, k, g: jax.vjp(lambda x_: form(x_, k, s), x)[1](g)[0]

  def kernel_grad(form):
    return lambda x, k, g: jax.vjp(lambda k_: form(x, k_, s), k)[1](g)[0]
  return {
      'forward: padded copy': lambda x, k, g: copy_form(x, k, s),
      'forward: zero-filled': lambda x, k, g: zero_filled_form(x, k, s),
      'forward: grouped conv': lambda x, k, g: grouped(x, k, s),
      'input grad: copy transpose': input_grad(copy_form),
      'input grad: zero-filled transpose': input_grad(zero_filled_form),
      'input grad: padded dilated copy': lambda x, k, g: cpu_kernels.depthwise_input_grad(g, k, s, x.shape[1:3]),
      'kernel grad: nine sums': kernel_grad(copy_form),
      'kernel grad: variadic reduce': lambda x, k, g: cpu_kernels.depthwise_kernel_grad(x, g, s),
      'kernel grad: grouped conv': kernel_grad(grouped),
  }


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--repeats', type=int, default=9)
  args = p.parse_args()
  print(common.machine(), f'batch {args.batch}; torch {torch.__version__} ({torch.get_num_threads()} threads)')
  rng = np.random.default_rng(0)
  for side, c, s in LAYERS:
    x = jnp.asarray(rng.standard_normal((args.batch, side, side, c)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 1, c)), jnp.float32)
    out = (side - 1) // s + 1
    g = jnp.asarray(rng.standard_normal((args.batch, out, out, c)), jnp.float32)
    expected = {'forward': grouped(x, k, s)}
    expected['input grad'], expected['kernel grad'] = jax.vjp(lambda x_, k_: grouped(x_, k_, s), x, k)[1](g)
    fns = {}
    for name, fn in candidates(s).items():
      fn = jax.jit(fn)
      want = expected[name.split(':')[0]]
      err = float(jnp.max(jnp.abs(fn(x, k, g) - want)) / jnp.max(jnp.abs(want)))
      assert err < 1e-5, (name, side, c, s, err)
      fns[name] = lambda fn=fn: jax.block_until_ready(fn(x, k, g))
    xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    kt = torch.from_numpy(np.array(k)).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
    gt = torch.from_numpy(np.array(g)).permute(0, 3, 1, 2).contiguous()

    def torch_forward():
      with torch.no_grad():
        torch.nn.functional.conv2d(xt, kt, stride=s, padding=1, groups=c)

    def torch_both():
      xt.grad = kt.grad = None
      torch.nn.functional.conv2d(xt, kt, stride=s, padding=1, groups=c).backward(gt)
    fns.update({'torch forward': torch_forward, 'torch forward + backward': torch_both})
    times = common.interleaved(fns, args.repeats)
    ms = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
    ours = ms['forward: padded copy'] + ms['input grad: padded dilated copy'] + ms['kernel grad: variadic reduce']
    # the previous rule: the grouped conv's filter gradient up to 8 channels, else nine sums
    before = ms['forward: padded copy'] + ms['input grad: copy transpose'] + (
        ms['kernel grad: grouped conv'] if c <= 8 else ms['kernel grad: nine sums'])
    print(f'\n{side}x{side}x{c} stride {s}:')
    for name, t in ms.items():
      print(f'  {name:36s} {t:8.1f} ms')
    print(f'  {"jaxface: the three parts":36s} {ours:8.1f} ms  (before this formulation: {before:.1f} ms; '
          f'torch forward + backward {ms["torch forward + backward"]:.1f} ms)', flush=True)


if __name__ == '__main__':
  main()
