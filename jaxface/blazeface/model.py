"""BlazeFace (hollance/BlazeFace-PyTorch, MediaPipe's detector; REFERENCE.md §3.1): BlazeBlocks and
two SSD heads, no normalisation (TFLite folded it), a bias on every conv, ReLU throughout.

Submodules carry hollance's checkpoint names (`backbone1.2.convs.0`, `backbone.32.convs.1`,
`final.convs.0`, `classifier_8`, `regressor_16`), so `jaxface.blazeface.weights` maps keys by
joining the Flax path with dots; `backbone1.1` (a ReLU) holds no weights, so blocks start at 2.

Outputs `(regressors [N, A, 16], logits [N, A, 1])`, the 16 x 16 grid's anchors (2 per cell) then
the 8 x 8 grid's (6 per cell), each in row-major (y, x, anchor) order: the order of the shared
`blazeface_anchors.npy` and of MediaPipe's `regressors` / `classificators` tensors.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxface.layers import Conv

# (in, out, stride) of each BlazeBlock; the stem conv 3 -> 24 comes first.
FRONT_BACKBONE1 = ((24, 24, 1), (24, 28, 1), (28, 32, 2), (32, 36, 1), (36, 42, 1), (42, 48, 2),
                   (48, 56, 1), (56, 64, 1), (64, 72, 1), (72, 80, 1), (80, 88, 1))
FRONT_BACKBONE2 = ((88, 96, 2),) + ((96, 96, 1),) * 4
BACK_BACKBONE = (((24, 24, 1),) * 7 + ((24, 24, 2),) + ((24, 24, 1),) * 7 + ((24, 48, 2),) + ((48, 48, 1),) * 7
                 + ((48, 96, 2),) + ((96, 96, 1),) * 7)
REGRESSORS = 16   # box (x, y, w, h) and six keypoints (x, y)


@dataclasses.dataclass(frozen=True)
class BlazeSpec:
  """A released BlazeFace model: its input side and which backbone it has."""
  input_size: int
  back: bool             # the 256 px back-camera model (`backbone` + `final`), else the front model
  anchors_per_cell: tuple[int, int] = (2, 6)   # on the 16 x 16 and the 8 x 8 grid


SPECS: dict[str, BlazeSpec] = {
    'blazeface_front': BlazeSpec(128, back=False),
    'blazeface_back': BlazeSpec(256, back=True),
}


def channel_pad(x: jax.Array, features: int) -> jax.Array:
  """Zero channels appended up to `features` (the shortcut of a widening block)."""
  extra = features - x.shape[-1]
  return x if extra == 0 else jnp.pad(x, ((0, 0),) * (x.ndim - 1) + ((0, extra),))


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """`nn.MaxPool2d(2, 2)` on `[N, H, W, C]` with even H, W."""
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')


class Convs(nn.Module):
  """`convs = Sequential(depthwise 3x3, pointwise 1x1)`, both with a bias. A stride-2 depthwise conv
  pads right and bottom by 2 and none on the left and top (`F.pad(x, (0, 2, 0, 2))`, padding 0)."""
  features: int
  stride: int
  cpu_kernels: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    padding = 1 if self.stride == 1 else ((0, 2), (0, 2))
    x = Conv(c, 3, self.stride, padding, groups=c, use_bias=True, cpu_kernels=self.cpu_kernels, name='0')(x)
    return Conv(self.features, 1, 1, 0, use_bias=True, cpu_kernels=self.cpu_kernels, name='1')(x)


class BlazeBlock(nn.Module):
  """`ReLU(convs(x) + shortcut(x))`; the shortcut is a 2x2 max-pool at stride 2 and zero-padded
  channels when the block widens."""
  features: int
  stride: int
  cpu_kernels: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = Convs(self.features, self.stride, self.cpu_kernels, name='convs')(x)
    shortcut = max_pool_2x2(x) if self.stride == 2 else x
    return jax.nn.relu(h + channel_pad(shortcut, self.features))


class FinalBlazeBlock(nn.Module):
  """The back model's last block: `ReLU(convs(x))` at stride 2, no shortcut."""
  features: int
  cpu_kernels: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(Convs(self.features, 2, self.cpu_kernels, name='convs')(x))


class Backbone(nn.Module):
  """`Sequential(stem conv, ReLU, BlazeBlock, ...)` (named `0`, -, `2`, ...) or, with `stem=False`,
  `Sequential(BlazeBlock, ...)` named from `0`."""
  blocks: tuple[tuple[int, int, int], ...]
  stem: bool
  cpu_kernels: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    first = 0
    if self.stem:  # the input's F.pad(x, (1, 2, 1, 2)), then a valid 5x5 conv at stride 2
      x = Conv(24, 5, 2, ((1, 2), (1, 2)), use_bias=True, cpu_kernels=self.cpu_kernels, name='0')(x)
      x = jax.nn.relu(x)
      first = 2
    for i, (_, features, stride) in enumerate(self.blocks):
      x = BlazeBlock(features, stride, self.cpu_kernels, name=str(first + i))(x)
    return x


class BlazeFace(nn.Module):
  """`[N, S, S, 3]` RGB in [-1, 1] -> `(regressors [N, A, 16], logits [N, A, 1])` (module docstring)."""
  spec: BlazeSpec
  dtype: jnp.dtype = jnp.float32
  cpu_kernels: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    x = x.astype(self.dtype)
    if self.spec.back:
      x = Backbone(BACK_BACKBONE, True, self.cpu_kernels, name='backbone')(x)            # [N, S/16, S/16, 96]
      h = FinalBlazeBlock(96, self.cpu_kernels, name='final')(x)                          # [N, S/32, S/32, 96]
    else:
      x = Backbone(FRONT_BACKBONE1, True, self.cpu_kernels, name='backbone1')(x)          # [N, S/8, S/8, 88]
      h = Backbone(FRONT_BACKBONE2, False, self.cpu_kernels, name='backbone2')(x)         # [N, S/16, S/16, 96]
    a8, a16 = self.spec.anchors_per_cell
    n = x.shape[0]
    head = lambda features, name, y: Conv(features, 1, 1, 0, use_bias=True, cpu_kernels=self.cpu_kernels,
                                          name=name)(y)
    logits = jnp.concatenate([head(a8, 'classifier_8', x).reshape(n, -1, 1),
                              head(a16, 'classifier_16', h).reshape(n, -1, 1)], axis=1)
    regressors = jnp.concatenate([head(a8 * REGRESSORS, 'regressor_8', x).reshape(n, -1, REGRESSORS),
                                  head(a16 * REGRESSORS, 'regressor_16', h).reshape(n, -1, REGRESSORS)], axis=1)
    return regressors.astype(jnp.float32), logits.astype(jnp.float32)
