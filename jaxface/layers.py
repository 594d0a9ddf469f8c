"""Layers with PyTorch's semantics, NHWC, named like the reference's `nn.Sequential`s.

Each layer reads as the PyTorch it mirrors: `Conv` is `nn.Conv2d` with explicit padding (PyTorch's
symmetric `k//2` unless told otherwise, so that BlazeFace's `F.pad(x, (1, 2, 1, 2))` before a 5x5
valid conv is `Conv(24, 5, 2, padding=((1, 2), (1, 2)))`), `BatchNorm` is `nn.BatchNorm2d`,
`GroupNorm` is `nn.GroupNorm`, `upsample_nearest` is `F.interpolate(mode='nearest')`.

The reference blocks are `Sequential(conv, bn, act)`, so their checkpoint keys are
`<block>.0.weight`, `<block>.1.running_mean`, ... Naming the Flax submodules `'0'`, `'1'`,
... makes the Flax parameter path joined by dots equal the checkpoint key, and the
converter a mechanical rename (see `jaxface.convert`).

XLA:CPU runs some of these ops slowly as written; `jaxface.cpu_kernels` restates them (same
arithmetic, hand-written backward passes). The static field `cpu_kernels` of `Conv`, `BatchNorm`
and the models picks the path: True the restatements, False the plain code below, None (default)
the restatements iff JAX's default backend is the CPU and the environment does not set
`JAXFACE_CPU_KERNELS=0` (`cpu_kernels.enabled`). GPUs and TPUs run the plain code.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxface import cpu_kernels as kernels
from jaxface.cpu_kernels import depth_to_space  # noqa: F401  (a layout op the models use too)

Dtype = Any
# `((top, bottom), (left, right))`; an int p is PyTorch's `padding=p`, None its `padding=k//2`.
Padding = Union[int, tuple[tuple[int, int], tuple[int, int]], None]


def explicit_padding(padding: Padding, kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """`padding` as `((top, bottom), (left, right))`; None is PyTorch's symmetric `k//2` (for an even
  total, Flax's 'SAME' puts the extra pixel at the end instead)."""
  if padding is None:
    padding = kernel_size // 2
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  (top, bottom), (left, right) = padding
  return ((top, bottom), (left, right))


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: Padding = None, groups: int = 1) -> jax.Array:
  """`F.conv2d(x, w, stride=stride, padding=padding, groups=groups)` in NHWC / HWIO:
  `[N,H,W,I] x [k,k,I/groups,O] -> [N,H',W',O]`."""
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), explicit_padding(padding, kernel.shape[0]),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)


def leaky_relu(x: jax.Array, slope: float | None) -> jax.Array:
  """`nn.LeakyReLU(slope)`; slope 0 is `nn.ReLU`, None no activation (the reference's `conv_bn_no_relu`).

  The gradient is torch's: 1 where `x > 0`, else the slope (0 at 0 for ReLU too).
  """
  if slope is None:
    return x
  if slope == 0:
    return jax.nn.relu(x)
  return jnp.where(x > 0, x, slope * x)


def _per_channel(v: jax.Array, ndim: int) -> jax.Array:
  """A `[C]` vector shaped to broadcast over `[..., C]` (the tests make implicit rank promotion an error)."""
  return v.reshape((1,) * (ndim - 1) + (-1,))


class Conv(nn.Module):
  """`nn.Conv2d(I, features, kernel_size, stride, padding, groups=groups, bias=use_bias)`.

  Kernel `[k, k, I/groups, O]` (Flax's layout; the converter transposes torch's `[O, I/groups, k, k]`).
  `padding`: None is PyTorch's `k//2`, an int p its `padding=p`, `((top, bottom), (left, right))`
  anything else. `groups=I` is a depthwise conv. `shared_output` says that several ops read the
  output (a residual block's input), which the CPU kernels compute once; `cheap_input` that the
  input is cheap to compute again (a bias and ReLU on a matrix product), which lets a narrow
  depthwise conv read it directly (`cpu_kernels.conv2d`).
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: Padding = None
  groups: int = 1
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  cpu_kernels: bool | None = None
  kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()  # training from scratch only
  bias_init: Callable[..., jax.Array] = nn.initializers.zeros
  shared_output: bool = False
  cheap_input: bool = False

  @nn.compact
  def variables_for(self, in_features: int) -> tuple[jax.Array, jax.Array | None]:
    """`(kernel [k,k,I/groups,O], bias [O] or None)` in `dtype`; lets siblings run as one conv."""
    k = self.kernel_size
    shape = (k, k, in_features // self.groups, self.features)
    kernel = self.param('kernel', self.kernel_init, shape, jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32) if self.use_bias else None
    return kernel.astype(self.dtype), None if bias is None else bias.astype(self.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel, bias = self.variables_for(x.shape[-1])
    x = x.astype(self.dtype)
    padding = explicit_padding(self.padding, self.kernel_size)
    if kernels.enabled(self.cpu_kernels) and kernels.lowers(kernel.shape, padding, self.groups):
      y = kernels.conv2d(x, kernel, self.stride, self.groups, padding, shared_output=self.shared_output,
                         cheap_input=self.cheap_input)
    else:
      y = conv2d(x, kernel, self.stride, padding, self.groups)
    return y if bias is None else y + _per_channel(bias, y.ndim)


class BatchNorm(nn.Module):
  """`nn.BatchNorm2d` over the last axis; variables `scale`, `bias` and `batch_stats` `mean`, `var`.

  As torch: in training, normalise with the batch's biased variance but keep the *unbiased* one
  (`var * n / (n - 1)`) in the running average, `momentum` being torch's weight of the new batch.
  Flax's `nn.BatchNorm` keeps the biased variance, a 1/n drift from the reference per update
  (measured in tests/test_grad_parity.py). With `axis_name` (pmap), the statistics are over the
  devices' batches together; under `jit` with a sharded batch they are global already. The
  activation after it is the caller's (`bn_act` lets the CPU kernels run both as one op).
  """
  use_running_average: bool = True
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  axis_name: str | None = None
  cpu_kernels: bool | None = None

  @nn.compact
  def variables_for(self, c: int):
    """`(scale [C], bias [C], running mean, running var)`; lets siblings share one pass."""
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    running_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    running_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    return scale, bias, running_mean, running_var

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., C] -> [..., C]
    if kernels.enabled(self.cpu_kernels):
      return kernels.batch_norm_act(x, [(self, x.shape[-1], None)])
    scale, bias, running_mean, running_var = self.variables_for(x.shape[-1])
    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      # The statistics in >= float32 (bfloat16 sums of a feature map lose too much).
      xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
      axes = tuple(range(x.ndim - 1))
      mean = self._over_devices(jnp.mean(xf, axes))
      var = self._over_devices(jnp.mean(jnp.square(xf - _per_channel(mean, x.ndim)), axes))
      self.track(running_mean, running_var, mean, self.unbiased(var, x.size // x.shape[-1]))
    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    per_channel = lambda v: _per_channel(v.astype(self.dtype), x.ndim)
    return (x.astype(self.dtype) - per_channel(mean)) * per_channel(mul) + per_channel(bias)

  def _over_devices(self, v: jax.Array) -> jax.Array:
    """A per-device statistic averaged over `axis_name`'s devices (equal batches: the global one)."""
    return v if self.axis_name is None else jax.lax.pmean(v, self.axis_name)

  def unbiased(self, var: jax.Array, count: int) -> jax.Array:
    """The batch's biased variance over `count` values per channel (per device) made unbiased,
    `var * n / (n - 1)`, n counting every device's values."""
    n = count if self.axis_name is None else count * jax.lax.psum(1, self.axis_name)
    return var * (n / max(n - 1, 1))

  def track(self, running_mean, running_var, mean: jax.Array, unbiased_var: jax.Array):
    """torch's running averages after a training batch: the batch's statistics weigh `momentum`."""
    if self.is_initializing():
      return
    running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean.astype(jnp.float32)
    running_var.value = (1 - self.momentum) * running_var.value + self.momentum * unbiased_var.astype(jnp.float32)


def bn_act(norm: BatchNorm, x: jax.Array, slope: float | None) -> jax.Array:
  """`leaky_relu(norm(x), slope)`: a BN and the activation after it, which the CPU kernels run as one
  op (`cpu_kernels.batch_norm_act`, the input its only residual)."""
  if kernels.enabled(norm.cpu_kernels):
    return kernels.batch_norm_act(x, [(norm, x.shape[-1], slope)])
  return leaky_relu(norm(x), slope)


def torch_bn(*, train: bool, dtype: Dtype = jnp.float32, axis_name: str | None = None,
             cpu_kernels: bool | None = None) -> Callable[..., nn.Module]:
  """`nn.BatchNorm2d` defaults (eps 1e-5, momentum 0.1), in train or eval mode.

  `axis_name` synchronises batch statistics across devices in training (pmap/shard_map).
  """
  return functools.partial(BatchNorm, use_running_average=not train, dtype=dtype, axis_name=axis_name,
                           cpu_kernels=cpu_kernels)


class GroupNorm(nn.Module):
  """`nn.GroupNorm(num_groups, C, eps=1e-5, affine)`, mmcv's `GN` in SCRFD's heads.

  Per image, the channels fall into `num_groups` consecutive groups, each normalised over its
  `H x W x C/G` values with their biased variance; then per channel `* weight + bias`. No running
  statistics, so training and inference compute the same. The affine parameters are `scale` and
  `bias`, the names `BatchNorm` uses, so the converter's rule (torch `weight` -> `scale`) maps
  mmcv's keys too.
  """
  num_groups: int = 32
  epsilon: float = 1e-5
  affine: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [N, ..., C] -> [N, ..., C]
    c = x.shape[-1]
    if c % self.num_groups:
      raise ValueError(f'GroupNorm: {c} channels do not split into {self.num_groups} groups')
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    grouped = xf.reshape(x.shape[0], -1, self.num_groups, c // self.num_groups)  # [N, pixels, G, C/G]
    mean = jnp.mean(grouped, (1, 3), keepdims=True)
    var = jnp.mean(jnp.square(grouped - mean), (1, 3), keepdims=True)
    y = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
    if self.affine:
      scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
      bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
      y = y * _per_channel(scale, y.ndim) + _per_channel(bias, y.ndim)
    return y.astype(self.dtype)


class ConvBN(nn.Module):
  """`Sequential(Conv2d(bias=False), BatchNorm2d[, LeakyReLU])`: keys `.0.weight`, `.1.*`.

  `slope=None` means no activation (the reference's `conv_bn_no_relu`).
  """
  features: int
  kernel: int = 3
  stride: int = 1
  slope: float | None = 0.0
  conv: Callable[..., nn.Module] = Conv
  norm: Callable[..., nn.Module] = BatchNorm

  def setup(self):
    self.conv_0 = self.conv(self.features, self.kernel, self.stride, name='0')
    self.norm_1 = self.norm(name='1')

  def __call__(self, x: jax.Array) -> jax.Array:
    return bn_act(self.norm_1, self.conv_0(x), self.slope)


class ConvDW(nn.Module):
  """MobileNet's `conv_dw`: depthwise 3x3, BN, LeakyReLU, 1x1, BN, LeakyReLU.

  Keys `.0` dw conv, `.1` BN, `.3` pw conv, `.4` BN (`.2` and `.5` are the parameterless activations).
  """
  features: int
  stride: int = 1
  slope: float = 0.1
  conv: Callable[..., nn.Module] = Conv
  norm: Callable[..., nn.Module] = BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    depthwise = self.conv(c, 3, self.stride, groups=c, name='0')
    x = bn_act(self.norm(name='1'), depthwise(x), self.slope)
    pointwise = self.conv(self.features, 1, name='3')
    return bn_act(self.norm(name='4'), pointwise(x), self.slope)


def siblings(x: jax.Array, blocks: Sequence[Conv] | Sequence[ConvBN]) -> list[jax.Array]:
  """The outputs of blocks (all `Conv`, or all `ConvBN`) that read the same input `x`.

  As in PyTorch, each block runs on its own. With the CPU kernels, blocks of one kernel size and
  stride run as one conv over their stacked kernels, and their BNs as one op: same parameters and
  results, one wide conv being faster than several thin ones (SSH's 64->32 and 64->16 3x3s, the
  three 1x1 heads of a level; `cpu_kernels.fused_conv_bn`).
  """
  convs = [b if isinstance(b, Conv) else b.conv_0 for b in blocks]
  first = convs[0]
  modules = convs + [b.norm_1 for b in blocks if isinstance(b, ConvBN)]
  if (all(kernels.enabled(m.cpu_kernels) for m in modules)
      and all((c.kernel_size, c.stride, explicit_padding(c.padding, c.kernel_size), c.groups) ==
              (first.kernel_size, first.stride, explicit_padding(None, first.kernel_size), 1) for c in convs)):
    return kernels.fused_conv(x, convs) if isinstance(blocks[0], Conv) else kernels.fused_conv_bn(x, blocks)
  return [b(x) for b in blocks]


def max_pool_2x2(x: jax.Array, cpu_kernels: bool | None = None) -> jax.Array:
  """`nn.MaxPool2d(2, 2)` on `[N, H, W, C]`, odd sizes floored (`cpu_kernels.max_pool_2x2` with the CPU kernels)."""
  if kernels.enabled(cpu_kernels):
    return kernels.max_pool_2x2(x)
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')


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
