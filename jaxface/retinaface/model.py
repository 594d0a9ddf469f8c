"""RetinaFace (biubug6/Pytorch_Retinaface): backbone -> FPN -> SSH x3 -> per-level 1x1 heads.

Submodules carry the reference checkpoint names (`body`, `fpn.output1`, `ssh1.conv7X7_2`,
`ClassHead.0.conv1x1`, ...), so `jaxface.convert` maps keys by joining the Flax path with dots.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxface import cpu_kernels as kernels
from jaxface.layers import Conv, ConvBN, siblings, torch_bn, upsample_nearest
from jaxface.retinaface import box_coding
from jaxface.retinaface.mobilenet import MobileNetV1
from jaxface.retinaface.resnet import ResNet50


class FPN(nn.Module):
  """Lateral 1x1s (`output1..3`), top-down nearest upsampling, 3x3 `merge2` then `merge1`."""
  features: int
  slope: float
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, c3, c4, c5):
    block = functools.partial(ConvBN, self.features, slope=self.slope, conv=self.conv, norm=self.norm)
    o1 = block(kernel=1, name='output1')(c3)
    o2 = block(kernel=1, name='output2')(c4)
    o3 = block(kernel=1, name='output3')(c5)
    o2 = block(kernel=3, name='merge2')(o2 + upsample_nearest(o3, o2.shape[1:3]))
    o1 = block(kernel=3, name='merge1')(o1 + upsample_nearest(o2, o1.shape[1:3]))
    return o1, o2, o3


class SSH(nn.Module):
  """Context module: 3x3 (C/2) || 5x5 as two 3x3 (C/4) || 7x7 as three 3x3 (C/4), then ReLU.

  The 7x7 branch starts from `conv5X5_1`'s output. The final activation is a plain ReLU
  even when the inner ones are leaky. Note the reference's `conv7x7_3` (lower-case x).
  """
  features: int
  slope: float
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    block = functools.partial(ConvBN, conv=self.conv, norm=self.norm)
    q = self.features // 4
    # conv3X3 and conv5X5_1 read x; conv5X5_2 and conv7X7_2 read conv5X5_1's output: each pair
    # are `siblings` (one convolution with the CPU kernels, same parameters and results). The
    # reference's `conv_bn_no_relu` branches get their ReLU after the concatenation; per channel
    # that is the same as a ReLU on each branch (slope 0), which runs inside the BN's pass.
    b3, t = siblings(x, [block(self.features // 2, slope=0.0, name='conv3X3'),
                         block(q, slope=self.slope, name='conv5X5_1')])
    b5, t = siblings(t, [block(q, slope=0.0, name='conv5X5_2'),
                         block(q, slope=self.slope, name='conv7X7_2')])
    b7 = block(q, slope=0.0, name='conv7x7_3')(t)
    return jnp.concatenate([b3, b5, b7], axis=-1)


class Head(nn.Module):
  """One 1x1 conv with bias (`conv1x1`)."""
  features: int
  conv: Callable[..., nn.Module]

  def setup(self):
    self.conv1x1 = self.conv(self.features, 1, use_bias=True)


class Heads(nn.Module):
  """`ClassHead` / `BboxHead` / `LandmarkHead`: one `Head` per level, named `0, 1, 2`.

  Holds the parameters only: `RetinaFace` runs the three heads of a level as one conv.
  """
  features: int
  levels: int
  conv: Callable[..., nn.Module]

  def setup(self):
    self.level = [Head(self.features, self.conv, name=str(i)) for i in range(self.levels)]


def neck_and_heads(spec: 'RetinaFaceSpec', conv, norm, c3, c4, c5):
  """FPN, SSH per level and the heads on the backbone's C3-C5: `(bbox, logits, landmarks)`.

  Called inside a compact `__call__` (RetinaFace's, or a benchmark's without the backbone), so the
  submodules get the parent's checkpoint names (`fpn`, `ssh1`, `BboxHead`, ...).
  """
  feats = FPN(spec.out_channels, spec.neck_slope, conv, norm, name='fpn')(c3, c4, c5)
  feats = [SSH(spec.out_channels, spec.neck_slope, conv, norm, name=f'ssh{i + 1}')(f) for i, f in enumerate(feats)]
  anchors, n = len(spec.min_sizes[0]), c3.shape[0]
  ks = (4, 2, 10)  # box offsets, class logits, landmark offsets per anchor
  heads = [Heads(anchors * k, len(feats), conv, name=name)
           for k, name in zip(ks, ('BboxHead', 'ClassHead', 'LandmarkHead'))]
  # Per level the three 1x1 heads read the same map (`siblings`). Each output goes
  # [N,H,W,anchors*k] -> [N, H*W*anchors, k], the reference's (y, x, anchor) order.
  per_level = [siblings(f, [h.level[i].conv1x1 for h in heads]) for i, f in enumerate(feats)]
  return tuple(jnp.concatenate([ys[j].reshape(n, -1, k) for ys in per_level], axis=1) for j, k in enumerate(ks))


@dataclasses.dataclass(frozen=True)
class RetinaFaceSpec:
  """What distinguishes the released RetinaFace models (typed, never a ConfigDict)."""
  backbone: str           # 'mobilenet0.25' or 'resnet50': the `body` and its checkpoint layout.
  out_channels: int       # FPN/SSH width: 64 (mnet), 256 (R50).
  body_slope: float       # LeakyReLU slope inside the backbone (ResNet ignores it: always ReLU).
  neck_slope: float       # LeakyReLU slope inside FPN and SSH.
  min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
  steps: tuple[int, ...] = (8, 16, 32)
  variances: tuple[float, float] = box_coding.VARIANCES


class RetinaFace(nn.Module):
  """Images `[N,H,W,3]` (BGR minus (104,117,123)) -> `(bbox [N,A,4], logits [N,A,2], landmarks [N,A,10])`.

  A is the prior count for (H, W) (`jaxface.retinaface.anchors.prior_boxes`); the order is stride 8, 16, 32
  and `(y*W + x)*2 + a` within a level, as the reference. Logits are pre-softmax; the face score
  is `softmax(logits)[..., 1]`.

  `cpu_kernels`: whether the layers run `jaxface.cpu_kernels`' XLA:CPU restatements (True), the
  plain layers (False), or, None, the restatements iff JAX's default backend is the CPU
  (`cpu_kernels.enabled`; `JAXFACE_CPU_KERNELS=0` turns them off). Same arithmetic either way; a
  module field, so a jitted program is traced for one path and cached under it.
  """
  spec: RetinaFaceSpec
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  cpu_kernels: bool | None = None

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False):
    spec = self.spec
    on = kernels.enabled(self.cpu_kernels)  # resolved once, so every layer takes the same path
    conv = functools.partial(Conv, dtype=self.dtype, cpu_kernels=on)
    norm = torch_bn(train=train, dtype=self.dtype, axis_name=self.bn_axis_name, cpu_kernels=on)
    if spec.backbone == 'mobilenet0.25':
      body = MobileNetV1(spec.body_slope, conv, norm, name='body')
    elif spec.backbone == 'resnet50':
      body = ResNet50(conv, norm, name='body')
    else:
      raise ValueError(f'unknown backbone {spec.backbone!r}; expected mobilenet0.25 or resnet50')
    bbox, logits, landmarks = neck_and_heads(spec, conv, norm, *body(images.astype(self.dtype)))
    out = jnp.promote_types(self.dtype, jnp.float32)  # bf16 compute still returns float32 outputs.
    return bbox.astype(out), logits.astype(out), landmarks.astype(out)


# The released models. FPN/SSH slope is 0.1 when out_channels <= 64, as in the reference.
SPECS: dict[str, RetinaFaceSpec] = {
    'retinaface_mnet': RetinaFaceSpec('mobilenet0.25', 64, body_slope=0.1, neck_slope=0.1),
    # The first release (2019) used plain ReLU everywhere; its checkpoint needs it.
    'retinaface_mnet_relu': RetinaFaceSpec('mobilenet0.25', 64, body_slope=0.0, neck_slope=0.0),
    'retinaface_r50': RetinaFaceSpec('resnet50', 256, body_slope=0.0, neck_slope=0.0),
}
