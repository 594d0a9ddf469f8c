"""torchvision ResNet-50 v1.5, the RetinaFace `body` for `Resnet50` (keys `body.conv1`, `body.layer1.0.conv1`, ...)."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax

from jaxface.layers import BatchNorm, Conv, bn_act

LAYERS = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (planes, blocks, stride)


class Downsample(nn.Module):
  """`Sequential(conv1x1(stride), BN)`: keys `downsample.0`, `downsample.1`."""
  features: int
  stride: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    x = self.conv(self.features, 1, self.stride, name='0')(x)
    return self.norm(name='1')(x)


class Bottleneck(nn.Module):
  """v1.5 bottleneck: the stride sits on the 3x3 `conv2`; expansion 4."""
  planes: int
  stride: int
  downsample: bool
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    y = bn_act(self.norm(name='bn1'), self.conv(self.planes, 1, name='conv1')(x), 0.0)  # BN + ReLU
    y = bn_act(self.norm(name='bn2'), self.conv(self.planes, 3, self.stride, name='conv2')(y), 0.0)
    y = self.norm(name='bn3')(self.conv(4 * self.planes, 1, name='conv3')(y))
    if self.downsample:
      x = Downsample(4 * self.planes, self.stride, self.conv, self.norm, name='downsample')(x)
    return nn.relu(x + y)


class ResLayer(nn.Module):
  planes: int
  blocks: int
  stride: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    for i in range(self.blocks):
      x = Bottleneck(self.planes, self.stride if i == 0 else 1, i == 0, self.conv, self.norm, name=str(i))(x)
    return x


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """`nn.MaxPool2d(3, 2, padding=1)`: padding never wins the max (-inf)."""
  return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))


class ResNet50(nn.Module):
  """Returns C3, C4, C5 (`layer2..4`): `[N,H/8,W/8,512]`, `[.., 1024]`, `[.., 2048]`."""
  conv: Callable[..., nn.Module] = Conv
  norm: Callable[..., nn.Module] = BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    x = self.conv(64, 7, 2, name='conv1')(x)
    x = max_pool_3x3_s2(bn_act(self.norm(name='bn1'), x, 0.0))  # BN + ReLU
    feats = []
    for i, (planes, blocks, stride) in enumerate(LAYERS):
      x = ResLayer(planes, blocks, stride, self.conv, self.norm, name=f'layer{i + 1}')(x)
      feats.append(x)
    return feats[1], feats[2], feats[3]
