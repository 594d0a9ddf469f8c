"""SCRFD (insightface `detection/scrfd`, REFERENCE.md §2.2-2.5): backbone -> PAFPN -> SCRFDHead.

Submodules carry the mmdet checkpoint names (`backbone.stem.0.0`, `backbone.layer2.0.downsample.1`,
`neck.lateral_convs.0.conv`, `bbox_head.cls_stride_convs.(8, 8).0.bn`, `bbox_head.scales.0`), so
`jaxface.scrfd.weights` maps keys by joining the Flax path with dots.

Outputs follow the ONNX export's convention (§2.10), levels stride 8, 16, 32 concatenated: scores
after the sigmoid `[N, A, 1]`, box distances after `Scale` and before `x stride` `[N, A, 4]`,
keypoint distances `[N, A, 10]` (zeros `[N, A, 0]` for the models without keypoints); anchor
`(y*W + x)*2 + a` within a level, as `jaxface.scrfd.anchors`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxface.layers import (Conv, ConvBN, ConvDW, GroupNorm, bn_act, leaky_relu, max_pool_2x2, siblings, torch_bn,
                            upsample_nearest)
from jaxface.scrfd.anchors import ANCHORS_PER_CELL, STRIDES

NUM_KEYPOINTS = 5
# SCRFDHead.init_weights, what training from scratch starts from: every head conv N(0, 0.01), the
# classifier's bias -4.595 (a prior probability of 0.01).
HEAD_INIT = nn.initializers.normal(0.01)
CLS_BIAS = -4.595


@dataclasses.dataclass(frozen=True)
class MobileNetV1Spec:
  """mmdet's MobileNetV1: `stem = [conv_bn(3, c0, 2), conv_dw(c0, c1, 1)]`, then `layer1..4` of
  `stage_blocks[i]` `conv_dw` blocks, the first of each stride 2 (`c[i+1] -> c[i+2]`)."""
  stage_blocks: tuple[int, ...]
  channels: tuple[int, ...]  # c0 .. c5

  @property
  def max_pool_stem(self) -> bool:
    return False


@dataclasses.dataclass(frozen=True)
class ResNetV1eSpec:
  """mmdet's ResNetV1e (deep stem, 2x2 max-pool, avg-down shortcuts), `BasicBlock` or `Bottleneck`."""
  bottleneck: bool
  base_channels: int
  stage_blocks: tuple[int, ...]
  stage_planes: tuple[int, ...]

  @property
  def max_pool_stem(self) -> bool:
    return True


@dataclasses.dataclass(frozen=True)
class ScrfdSpec:
  """What distinguishes the released SCRFD models (typed, never a ConfigDict; §2.2's table)."""
  backbone: MobileNetV1Spec | ResNetV1eSpec
  neck_channels: int
  head_convs: int                # stacked convs in the head tower
  head_channels: int
  gn_groups: int | None          # GroupNorm groups in the head, or None for BatchNorm
  strides_share: bool            # one head for all levels ('0') or one per stride ('(8, 8)', ...)
  depthwise: bool                # depthwise-separable head convs
  use_scale: bool                # a learnt `Scale` on each level's box distances
  use_kps: bool                  # five keypoints (the `_bnkps` models)


_MNET_500M = MobileNetV1Spec((2, 3, 2, 6), (16, 16, 40, 72, 152, 288))
_MNET_1G = MobileNetV1Spec((3, 2, 1, 5), (32, 48, 48, 160, 216, 312))
_R_2_5G = ResNetV1eSpec(False, 24, (3, 5, 3, 2), (24, 48, 48, 80))
_R_10G = ResNetV1eSpec(False, 56, (3, 4, 2, 3), (56, 88, 88, 224))
_R_34G = ResNetV1eSpec(True, 56, (17, 16, 2, 8), (56, 56, 144, 184))

# The released models (insightface's `configs/scrfd/*.py`). `_bnkps`: BN, one head per stride, keypoints.
SPECS: dict[str, ScrfdSpec] = {
    'scrfd_500m': ScrfdSpec(_MNET_500M, 16, 2, 64, 16, True, True, True, False),
    'scrfd_1g': ScrfdSpec(_MNET_1G, 24, 2, 96, 8, True, True, True, False),
    'scrfd_2.5g': ScrfdSpec(_R_2_5G, 24, 2, 64, 16, True, False, True, False),
    'scrfd_10g': ScrfdSpec(_R_10G, 56, 3, 80, 16, True, False, True, False),
    'scrfd_34g': ScrfdSpec(_R_34G, 128, 2, 256, 32, True, False, True, False),
    # scale_mode 0 and per-stride heads: no Scale in 500m_bnkps (use_scale needs strides_share or mode 2).
    'scrfd_500m_bnkps': ScrfdSpec(_MNET_500M, 16, 2, 64, None, False, True, False, True),
    'scrfd_2.5g_bnkps': ScrfdSpec(_R_2_5G, 24, 2, 64, None, False, False, True, True),
    'scrfd_10g_bnkps': ScrfdSpec(_R_10G, 56, 3, 80, None, False, False, True, True),
}


class MobileNetV1(nn.Module):
  """Returns the stride 8/16/32 maps (`layer2..4`); plain ReLU, BN, bias-free convs."""
  spec: MobileNetV1Spec
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    c = self.spec.channels
    x = _Stem(c[0], c[1], self.conv, self.norm, name='stem')(x)
    outs = []
    for i, n in enumerate(self.spec.stage_blocks):
      x = _MobileNetLayer(c[i + 2], n, self.conv, self.norm, name=f'layer{i + 1}')(x)
      outs.append(x)
    return tuple(outs[1:])


class _MobileNetLayer(nn.Module):
  """`blocks` `conv_dw` blocks named `0, 1, ...`, the first of stride 2."""
  features: int
  blocks: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    for j in range(self.blocks):
      x = ConvDW(self.features, 2 if j == 0 else 1, 0.0, self.conv, self.norm, name=str(j))(x)
    return x


class _Stem(nn.Module):
  """`Sequential(conv_bn(3, c0, 2), conv_dw(c0, c1, 1))`: keys `stem.0.{0,1}`, `stem.1.{0,1,3,4}`."""
  c0: int
  c1: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    x = ConvBN(self.c0, 3, 2, 0.0, self.conv, self.norm, name='0')(x)
    return ConvDW(self.c1, 1, 0.0, self.conv, self.norm, name='1')(x)


class _Keyed(nn.Module):
  """An `nn.ModuleDict` / `nn.ModuleList`: one child per key (`'0'`, `'(8, 8)'`, ...), named by it,
  so the Flax path is the checkpoint key; `make(name=key)` builds each. A key's child is the same
  module (the same parameters) on every call."""
  keys: tuple[str, ...]
  make: Callable[..., nn.Module]

  def setup(self):
    self.children_by_key = [self.make(name=k) for k in self.keys]

  def __call__(self, key: str, *args):
    return self.child(key)(*args)

  def child(self, key: str) -> nn.Module:
    return self.children_by_key[self.keys.index(key)]


def _avg_pool_ceil(x: jax.Array, k: int) -> jax.Array:
  """`AvgPool2d(k, k, ceil_mode=True, count_include_pad=False)`: a window cut by the border
  averages the pixels it has."""
  if k == 1:
    return x
  _, h, w, _ = x.shape
  pad = ((0, 0), (0, -h % k), (0, -w % k), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, k, k, 1), (1, k, k, 1), pad)
  count = jax.lax.reduce_window(jnp.ones((1, h, w, 1), x.dtype), 0.0, jax.lax.add, (1, k, k, 1), (1, k, k, 1), pad)
  return total / count


class _Downsample(nn.Module):
  """The avg-down shortcut: `Sequential(AvgPool2d(stride, ceil_mode), conv1x1, BN)`, keys `.1`, `.2`
  (the pool, `.0`, exists with kernel 1 even at stride 1)."""
  features: int
  stride: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    x = self.conv(self.features, 1, name='1')(_avg_pool_ceil(x, self.stride))
    return self.norm(name='2')(x)


class _ResBlock(nn.Module):
  """`BasicBlock` (two 3x3) or pytorch-style `Bottleneck` (1x1, 3x3 with the stride, 1x1 x4)."""
  planes: int
  stride: int
  bottleneck: bool
  downsample: bool
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    conv, norm = self.conv, self.norm
    if self.bottleneck:
      y = bn_act(norm(name='bn1'), conv(self.planes, 1, name='conv1')(x), 0.0)
      y = bn_act(norm(name='bn2'), conv(self.planes, 3, self.stride, name='conv2')(y), 0.0)
      y = norm(name='bn3')(conv(4 * self.planes, 1, name='conv3')(y))
      out = 4 * self.planes
    else:
      y = bn_act(norm(name='bn1'), conv(self.planes, 3, self.stride, name='conv1')(x), 0.0)
      y = norm(name='bn2')(conv(self.planes, 3, name='conv2')(y))
      out = self.planes
    if self.downsample:
      x = _Downsample(out, self.stride, conv, norm, name='downsample')(x)
    return jax.nn.relu(x + y)


class ResNetV1e(nn.Module):
  """Returns the stride 8/16/32 maps (`layer2..4`)."""
  spec: ResNetV1eSpec
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]
  cpu_kernels: bool | None = None

  @nn.compact
  def __call__(self, x):
    spec = self.spec
    half = spec.base_channels // 2
    x = _DeepStem((half, half, spec.base_channels), self.conv, self.norm, name='stem')(x)
    x = max_pool_2x2(x, self.cpu_kernels)  # 2x2 stride 2, no padding: floors odd sizes
    outs = []
    for i, (n, planes) in enumerate(zip(spec.stage_blocks, spec.stage_planes)):
      x = _ResLayer(planes, n, 1 if i == 0 else 2, spec.bottleneck, self.conv, self.norm, name=f'layer{i + 1}')(x)
      outs.append(x)
    return tuple(outs[1:])


class _ResLayer(nn.Module):
  """`blocks` residual blocks named `0, 1, ...`; the first takes the stride and, when the stride or
  the channel count changes, the avg-down shortcut."""
  planes: int
  blocks: int
  stride: int
  bottleneck: bool
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    out = self.planes * (4 if self.bottleneck else 1)
    for j in range(self.blocks):
      stride = self.stride if j == 0 else 1
      shortcut = j == 0 and (stride != 1 or x.shape[-1] != out)
      x = _ResBlock(self.planes, stride, self.bottleneck, shortcut, self.conv, self.norm, name=str(j))(x)
    return x


class _DeepStem(nn.Module):
  """Three 3x3 conv + BN + ReLU, the first stride 2: keys `stem.{0,1}`, `stem.{3,4}`, `stem.{6,7}`."""
  channels: tuple[int, int, int]
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    for i, c in enumerate(self.channels):
      x = self.conv(c, 3, 2 if i == 0 else 1, name=str(3 * i))(x)
      x = bn_act(self.norm(name=str(3 * i + 1)), x, 0.0)
    return x


class _ConvModule(nn.Module):
  """mmcv's `ConvModule` with a bias (no norm, no activation): key `.conv`."""
  features: int
  kernel: int
  stride: int
  conv: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    return self.conv(self.features, self.kernel, self.stride, use_bias=True, name='conv')(x)


class PAFPN(nn.Module):
  """mmdet's PAFPN over C3-C5 (§2.4): every conv biased, no norm, no activation.

  Top-down: each lateral adds the nearest-upsampled coarser one; `fpn_convs`; bottom-up: each level
  adds the stride-2 `downsample_convs` of the finer (already updated) one; `pafpn_convs` on the two
  coarser levels.
  """
  features: int
  conv: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, feats):
    n = len(feats)
    convs = lambda name, kernel, stride, count: _Keyed(
        tuple(map(str, range(count))), functools.partial(_ConvModule, self.features, kernel, stride, self.conv),
        name=name)
    lateral, fpn = convs('lateral_convs', 1, 1, n), convs('fpn_convs', 3, 1, n)
    down, pafpn = convs('downsample_convs', 3, 2, n - 1), convs('pafpn_convs', 3, 1, n - 1)
    lat = [lateral(str(i), f) for i, f in enumerate(feats)]
    for i in range(n - 1, 0, -1):
      lat[i - 1] = lat[i - 1] + upsample_nearest(lat[i], lat[i - 1].shape[1:3])
    inter = [fpn(str(i), x) for i, x in enumerate(lat)]
    for i in range(n - 1):
      inter[i + 1] = inter[i + 1] + down(str(i), inter[i])
    return (inter[0], *(pafpn(str(i - 1), inter[i]) for i in range(1, n)))


class _NormConv(nn.Module):
  """mmcv's `ConvModule(bias=False, norm, ReLU)`: keys `.conv`, `.gn` or `.bn`."""
  features: int
  kernel: int
  groups: int
  gn_groups: int | None
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    x = self.conv(self.features, self.kernel, groups=self.groups, name='conv')(x)
    if self.gn_groups is None:
      return bn_act(self.norm(name='bn'), x, 0.0)
    return leaky_relu(GroupNorm(self.gn_groups, dtype=x.dtype, name='gn')(x), 0.0)


class _SeparableConv(nn.Module):
  """mmcv's `DepthwiseSeparableConvModule`: `depthwise_conv` (3x3, groups = C) then `pointwise_conv`
  (1x1), each with the norm and ReLU."""
  features: int
  gn_groups: int | None
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    layer = functools.partial(_NormConv, gn_groups=self.gn_groups, conv=self.conv, norm=self.norm)
    x = layer(x.shape[-1], 3, x.shape[-1], name='depthwise_conv')(x)
    return layer(self.features, 1, 1, name='pointwise_conv')(x)


class _Tower(nn.Module):
  """`cls_stride_convs[key]`: `head_convs` tower convs named `0, 1, ...`."""
  spec: ScrfdSpec
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    spec = self.spec
    for j in range(spec.head_convs):
      if spec.depthwise:
        x = _SeparableConv(spec.head_channels, spec.gn_groups, self.conv, self.norm, name=str(j))(x)
      else:
        x = _NormConv(spec.head_channels, 3, 1, spec.gn_groups, self.conv, self.norm, name=str(j))(x)
    return x


class _Scale(nn.Module):
  """mmcv's `Scale`: one learnt scalar (torch key `.scale`; `weights.py` maps its Flax name `value`)."""

  @nn.compact
  def __call__(self, x):
    return x * self.param('value', nn.initializers.ones, (), jnp.float32).astype(x.dtype)


def head_key(stride: int, strides_share: bool) -> str:
  """The ModuleDict key of a level's head: `'0'` when shared, else the stride tuple's `str`."""
  return '0' if strides_share else str((stride, stride))


class SCRFDHead(nn.Module):
  """Per level: the tower (`cls_stride_convs[key]`, shared by the box branch), then 3x3 biased
  `stride_cls` (sigmoid unless `logits`), `stride_reg` (x `scales[i]` if used), `stride_kps`."""
  spec: ScrfdSpec
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, feats, logits: bool = False):
    spec = self.spec
    keys = [head_key(s, spec.strides_share) for s in STRIDES]
    unique = tuple(dict.fromkeys(keys))
    conv = functools.partial(self.conv, kernel_init=HEAD_INIT)
    towers = _Keyed(unique, functools.partial(_Tower, spec, conv, self.norm), name='cls_stride_convs')
    pred = lambda name, c, **kw: _Keyed(unique, functools.partial(conv, ANCHORS_PER_CELL * c, 3, use_bias=True, **kw),
                                        name=name)
    cls = pred('stride_cls', 1, bias_init=nn.initializers.constant(CLS_BIAS))
    reg = pred('stride_reg', 4)
    kps = pred('stride_kps', 2 * NUM_KEYPOINTS) if spec.use_kps else None
    scales = _Keyed(tuple(map(str, range(len(keys)))), _Scale, name='scales') if spec.use_scale else None
    scores, boxes, points = [], [], []
    for i, (k, x) in enumerate(zip(keys, feats)):
      x = towers(k, x)
      n = x.shape[0]
      # The three 3x3 predictors read the same map: `siblings` (one conv with the CPU kernels).
      c, d, *p = siblings(x, [m.child(k) for m in (cls, reg, kps) if m is not None])
      scores.append((c if logits else jax.nn.sigmoid(c)).reshape(n, -1, 1))
      if scales is not None:
        d = scales(str(i), d)
      boxes.append(d.reshape(n, -1, 4))
      points.append(p[0].reshape(n, -1, 2 * NUM_KEYPOINTS) if p else jnp.zeros((n, boxes[-1].shape[1], 0), d.dtype))
    return tuple(jnp.concatenate(o, axis=1) for o in (scores, boxes, points))


class SCRFD(nn.Module):
  """Images `[N,H,W,3]` (RGB, `(x - 127.5) / 128`) -> `(scores [N,A,1], distances [N,A,4], keypoints [N,A,10|0])`.

  With `train=True` (BN batch statistics) the first output is the classification *logits*, which the
  loss needs; the sigmoid belongs to the test path, as in mmdet's head (`get_bboxes`, ONNX export)."""
  spec: ScrfdSpec
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  cpu_kernels: bool | None = None

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False):
    spec = self.spec
    conv = functools.partial(Conv, dtype=self.dtype, cpu_kernels=self.cpu_kernels)
    norm = torch_bn(train=train, dtype=self.dtype, axis_name=self.bn_axis_name, cpu_kernels=self.cpu_kernels)
    if isinstance(spec.backbone, MobileNetV1Spec):
      backbone = MobileNetV1(spec.backbone, conv, norm, name='backbone')
    else:
      backbone = ResNetV1e(spec.backbone, conv, norm, self.cpu_kernels, name='backbone')
    feats = PAFPN(spec.neck_channels, conv, name='neck')(backbone(images.astype(self.dtype)))
    out = jnp.promote_types(self.dtype, jnp.float32)
    return tuple(o.astype(out) for o in SCRFDHead(spec, conv, norm, name='bbox_head')(feats, logits=train))
