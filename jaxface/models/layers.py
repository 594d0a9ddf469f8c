"""Building blocks with PyTorch semantics, named like the reference's `nn.Sequential`s.

The reference blocks are `Sequential(conv, bn, act)`, so their checkpoint keys are
`<block>.0.weight`, `<block>.1.running_mean`, ... Naming the Flax submodules `'0'`, `'1'`,
... makes the Flax parameter path joined by dots equal the checkpoint key, and the
converter a mechanical rename (see `jaxface.convert`).

All tensors are NHWC.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def torch_bn(*, train: bool, dtype: Dtype = jnp.float32, axis_name: str | None = None) -> Callable[..., nn.Module]:
  """`nn.BatchNorm2d` defaults: eps 1e-5, torch momentum 0.1 (= Flax momentum 0.9).

  `axis_name` synchronises batch statistics across devices in training (pmap/shard_map).
  """
  return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                           dtype=dtype, axis_name=axis_name)


def pad_same(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Symmetric padding `k // 2` on both sides, as PyTorch's `padding=k//2` (Flax 'SAME' is asymmetric)."""
  p = kernel // 2
  return ((p, p), (p, p))


def leaky_relu(x: jax.Array, slope: float) -> jax.Array:
  """LeakyReLU(slope); slope 0 is exactly ReLU (the reference's `leaky=0`)."""
  return nn.relu(x) if slope == 0 else jnp.where(x >= 0, x, slope * x)


def _on_cpu() -> bool:
  return jax.default_backend() == 'cpu'


def _taps(x: jax.Array, k: int, stride: int):
  """The k*k shifted, strided views of `x` (padded by k//2) that a kxk conv sums over."""
  p = k // 2
  _, h, w, _ = x.shape
  ho, wo = (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1
  # Materialise the padded copy: fused into the tap loop, the pad turns every load into a
  # bounds-checked select and the loop runs ~25% slower on XLA:CPU.
  xp = jax.lax.optimization_barrier(jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))))
  for dy in range(k):
    for dx in range(k):
      yield dy, dx, xp[:, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride, :]


# Convs this small (input channels, and taps = k*k*input channels) are cheaper on XLA:CPU as
# fused multiply-adds than as a library convolution or matrix product (bench/bench_layers.py).
MAX_FMA_CHANNELS = 8
MAX_FMA_TAPS = 27


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """`F.conv2d(x, w, stride, padding=k//2)` in NHWC/HWIO: `[N,H,W,I] x [k,k,I,O] -> [N,ceil(H/s),ceil(W/s),O]`.

  The arithmetic is the same everywhere; the lowering is chosen per shape for XLA:CPU, where
  the generic convolution is slow for a few shapes (measured in `bench/bench_layers.py`):
  a conv with few taps (k*k*I <= 27 and I <= 8: the 3x3 stem over 3 channels, 1x1 convs over
  <= 8 channels) is a sum of broadcast multiply-adds that XLA fuses with the following BN and
  activation into one loop; other 1x1 convs are a matrix product.
  """
  k, _, cin, _ = kernel.shape
  if _on_cpu() and cin <= MAX_FMA_CHANNELS and k * k * cin <= MAX_FMA_TAPS:
    return sum(t[..., c:c + 1] * kernel[dy, dx, c][None, None, None, :]
               for dy, dx, t in _taps(x, k, stride) for c in range(cin))
  if k == 1 and stride == 1:
    return jnp.dot(x, kernel[0, 0])
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pad_same(k),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class Conv(nn.Module):
  """`nn.Conv2d(padding=k//2)`: symmetric padding, kernel `[k, k, I, O]` (Flax's layout), see `conv2d`."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  use_bias: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def variables_for(self, in_features: int) -> tuple[jax.Array, jax.Array | None]:
    """`(kernel [k,k,I,O], bias [O] or None)` in `dtype`; lets siblings fuse into one conv."""
    k = self.kernel_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (k, k, in_features, self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32) if self.use_bias else None
    return kernel.astype(self.dtype), None if bias is None else bias.astype(self.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel, bias = self.variables_for(x.shape[-1])
    y = conv2d(x.astype(self.dtype), kernel, self.stride)
    return y if bias is None else y + bias[None, None, None, :]


class DepthwiseConv3x3(nn.Module):
  """3x3 depthwise conv, padding 1, no bias; kernel `[3, 3, 1, C]` as `nn.Conv(feature_group_count=C)`.

  On XLA:CPU a grouped convolution is many times slower than nine shifted multiply-adds
  (measured in `bench/bench_layers.py`), so CPU uses the shifted form and other backends the
  native grouped convolution. Both compute the same sums.
  """
  stride: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [N, H, W, C] -> [N, ceil(H/s), ceil(W/s), C]
    c = x.shape[-1]
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (3, 3, 1, c), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if not _on_cpu():
      return jax.lax.conv_general_dilated(x, kernel, (self.stride, self.stride), pad_same(3),
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c)
    return sum(t * kernel[dy, dx, 0][None, None, None, :] for dy, dx, t in _taps(x, 3, self.stride))


class ConvBN(nn.Module):
  """`Sequential(Conv2d(bias=False), BatchNorm2d[, LeakyReLU])`: keys `.0.weight`, `.1.*`.

  `slope=None` means no activation (the reference's `conv_bn_no_relu`).
  """
  features: int
  kernel: int = 3
  stride: int = 1
  slope: float | None = 0.0
  conv: Callable[..., nn.Module] = Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm

  def setup(self):
    self.conv_0 = self.conv(self.features, self.kernel, self.stride, name='0')
    self.norm_1 = self.norm(name='1')

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.finish(self.conv_0(x))

  def finish(self, y: jax.Array) -> jax.Array:
    """BN and activation on this block's conv output."""
    y = self.norm_1(y)
    return y if self.slope is None else leaky_relu(y, self.slope)


def fused_conv(x: jax.Array, convs: Sequence[Conv]) -> list[jax.Array]:
  """Several `Conv`s (same kernel size and stride) that read the same input, as one conv over
  their stacked kernels: same parameters and results, fewer and wider convolutions."""
  variables = [c.variables_for(x.shape[-1]) for c in convs]
  kernel = jnp.concatenate([k for k, _ in variables], axis=-1)
  y = conv2d(x.astype(kernel.dtype), kernel, convs[0].stride)
  parts = jnp.split(y, np.cumsum([k.shape[-1] for k, _ in variables])[:-1], axis=-1)
  return [p if b is None else p + b[None, None, None, :] for p, (_, b) in zip(parts, variables)]


def fused_conv_bn(x: jax.Array, blocks: Sequence[ConvBN]) -> list[jax.Array]:
  """Several `ConvBN`s that read the same input, run as one conv over their stacked kernels.

  Same parameters and results as calling each block; one larger convolution is faster than
  several thin ones (SSH's 64->32 and 64->16 3x3s).
  """
  return [b.finish(y) for b, y in zip(blocks, fused_conv(x, [b.conv_0 for b in blocks]))]


class ConvDW(nn.Module):
  """MobileNet depthwise-separable block: keys `.0` dw conv, `.1` BN, `.3` pw conv, `.4` BN."""
  features: int
  stride: int = 1
  slope: float = 0.1
  conv: Callable[..., nn.Module] = Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = DepthwiseConv3x3(self.stride, dtype=self.dtype, name='0')(x)
    x = leaky_relu(self.norm(name='1')(x), self.slope)
    x = self.conv(self.features, 1, name='3')(x)
    return leaky_relu(self.norm(name='4')(x), self.slope)


def upsample_nearest(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """`F.interpolate(x, size, mode='nearest')`: source index `floor(dst * in / out)`.

  For an exact 2x this is a plain repeat; for odd sizes (53 -> 105) it differs from
  `jax.image.resize`, which samples at half-pixel centres.
  """
  _, h, w, _ = x.shape
  oh, ow = size
  rows = np.minimum((np.arange(oh) * h) // oh, h - 1)
  cols = np.minimum((np.arange(ow) * w) // ow, w - 1)
  if oh == 2 * h and ow == 2 * w:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return x[:, rows][:, :, cols]
