"""MobileNetV1 x0.25, the RetinaFace `body` for `mobilenet0.25` (keys `body.stage{1,2,3}.*`)."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax

from jaxface.layers import BatchNorm, Conv, ConvBN, ConvDW

# (features, stride) of each depthwise block after the stem, per stage.
STAGE1 = ((16, 1), (32, 2), (32, 1), (64, 2), (64, 1))
STAGE2 = ((128, 2),) + ((128, 1),) * 5
STAGE3 = ((256, 2), (256, 1))


class Stage(nn.Module):
  """A run of `conv_dw` blocks named `0, 1, ...` (stage1 starts with the `conv_bn` stem)."""
  blocks: tuple[tuple[int, int], ...]
  stem: bool
  slope: float
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    i = 0
    if self.stem:
      x = ConvBN(8, 3, 2, self.slope, self.conv, self.norm, name='0')(x)
      i = 1
    for features, stride in self.blocks:
      x = ConvDW(features, stride, self.slope, self.conv, self.norm, name=str(i))(x)
      i += 1
    return x


class MobileNetV1(nn.Module):
  """Returns the stride 8/16/32 feature maps `[N,H/8,W/8,64]`, `[.., 128]`, `[.., 256]`.

  `slope` is the LeakyReLU slope: 0.1 in today's reference, 0 (ReLU) in the 2019 release.
  The ImageNet `avg`/`fc` classifier is not part of the detector.
  """
  slope: float = 0.1
  conv: Callable[..., nn.Module] = Conv
  norm: Callable[..., nn.Module] = BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    c3 = Stage(STAGE1, True, self.slope, self.conv, self.norm, name='stage1')(x)
    c4 = Stage(STAGE2, False, self.slope, self.conv, self.norm, name='stage2')(c3)
    c5 = Stage(STAGE3, False, self.slope, self.conv, self.norm, name='stage3')(c4)
    return c3, c4, c5
