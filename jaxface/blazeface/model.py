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

from jaxface.layers import Conv, depth_to_space, max_pool_2x2

# (in, out, stride) of each BlazeBlock; the stem conv 3 -> 24 comes first.
FRONT_BACKBONE1 = ((24, 24, 1), (24, 28, 1), (28, 32, 2), (32, 36, 1), (36, 42, 1), (42, 48, 2),
                   (48, 56, 1), (56, 64, 1), (64, 72, 1), (72, 80, 1), (80, 88, 1))
FRONT_BACKBONE2 = ((88, 96, 2),) + ((96, 96, 1),) * 4
BACK_BACKBONE = (((24, 24, 1),) * 7 + ((24, 24, 2),) + ((24, 24, 1),) * 7 + ((24, 48, 2),) + ((48, 48, 1),) * 7
                 + ((48, 96, 2),) + ((96, 96, 1),) * 7)
REGRESSORS = 16   # box (x, y, w, h) and six keypoints (x, y)
# Training from scratch: the classifiers start at a face probability of 0.01 (RetinaNet's prior,
# which the focal loss expects); loading weights replaces it.
CLS_PRIOR_BIAS = -4.595


# MediaPipe's full-range model (face_detection_full_range.tflite): (in, mid, out, stride) of each
# bottleneck block after the 3x3 stem (3 -> 32), then a top-down path from the stride-32 map to the
# stride-4 one, each stage (channels) = two blocks (in, mid, out) after the merge.
FULL_RANGE_BACKBONE = ((32, 8, 32, 1), (32, 8, 32, 1), (32, 12, 48, 2), (48, 12, 48, 1), (48, 16, 64, 1),
                       (64, 24, 96, 2), (96, 32, 128, 1), (128, 32, 128, 1), (128, 36, 144, 2), (144, 48, 192, 1),
                       (192, 64, 256, 1), (256, 96, 384, 2), (384, 96, 384, 1), (384, 96, 384, 1),
                       (384, 96, 384, 1))
FULL_RANGE_SKIPS = (10, 7, 4)            # the backbone blocks (0-based) whose outputs the stages merge
FULL_RANGE_TOP_DOWN = ((96, 48, 2), (64, 32, 2), (48, 24, 1))   # (channels, mid, blocks), stride 16, 8, 4

# MediaPipe's sparse full-range model (face_detection_full_range_sparse.tflite), a different network
# of the same plan: (mid, out, stride) of each block after the stem (3 -> 32). Its stride-2 blocks
# have no shortcut. The skips and the top-down stages (with these blocks) are the dense model's.
SPARSE_BACKBONE = ((8, 32, 1), (8, 32, 1), (16, 64, 2), (16, 64, 1), (16, 64, 1), (32, 128, 2), (32, 128, 1),
                   (32, 128, 1), (48, 192, 2), (48, 192, 1), (48, 192, 1), (96, 384, 2), (96, 384, 1),
                   (96, 384, 1), (96, 384, 1))
SPARSE_HEAD_MID = 4   # the heads' 1x1 conv makes 4 x (1 or 16) channels at stride 4, read out at stride 8


@dataclasses.dataclass(frozen=True)
class BlazeSpec:
  """A released BlazeFace model: its input side and which network it has."""
  input_size: int
  back: bool = False     # the 256 px back-camera model (`backbone` + `final`)
  full_range: bool = False  # MediaPipe's 192 px full-range model (`FullRange`); neither: the front model
  sparse: bool = False      # with `full_range`: the `_sparse` file's network (`FullRangeSparse`)
  anchors_per_cell: tuple[int, ...] = (2, 6)   # per output grid (16 x 16 and 8 x 8; full range: 48 x 48)


SPECS: dict[str, BlazeSpec] = {
    'blazeface_front': BlazeSpec(128),
    'blazeface_back': BlazeSpec(256, back=True),
    'blazeface_full_range': BlazeSpec(192, full_range=True, anchors_per_cell=(1,)),
    'blazeface_full_range_sparse': BlazeSpec(192, full_range=True, sparse=True, anchors_per_cell=(1,)),
}


def channel_pad(x: jax.Array, features: int) -> jax.Array:
  """Zero channels appended up to `features` (the shortcut of a widening block)."""
  extra = features - x.shape[-1]
  return x if extra == 0 else jnp.pad(x, ((0, 0),) * (x.ndim - 1) + ((0, extra),))


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
    shortcut = max_pool_2x2(x, self.cpu_kernels) if self.stride == 2 else x
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


def upsample_bilinear_2x(x: jax.Array) -> jax.Array:
  """TFLite's RESIZE_BILINEAR to twice the size with `half_pixel_centers` (edges clamped):
  `[N, H, W, C] -> [N, 2H, 2W, C]`. Output 2i samples input i - 1/4, output 2i + 1 input i + 1/4."""
  def along(x, axis):
    n = x.shape[axis]
    prev = jnp.take(x, jnp.maximum(jnp.arange(n) - 1, 0), axis=axis)
    nxt = jnp.take(x, jnp.minimum(jnp.arange(n) + 1, n - 1), axis=axis)
    even, odd = 0.25 * prev + 0.75 * x, 0.75 * x + 0.25 * nxt
    return jnp.stack([even, odd], axis=axis + 1).reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1:])
  return along(along(x, 1), 2)


class BottleneckConvs(nn.Module):
  """`convs = Sequential(dw3x3, 1x1 down, ReLU, dw3x3, 1x1 up)` named `0, 1, 3, 4` (2 is the ReLU).
  A stride-2 depthwise conv pads right and bottom by 1 (TF 'SAME'), or 1 on every side with
  `pad_both` (the sparse model's explicit PAD ops)."""
  mid: int
  features: int
  stride: int
  cpu_kernels: bool | None = None
  pad_both: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    conv = lambda features, kernel, stride, padding, groups, name, cheap_input=False: Conv(
        features, kernel, stride, padding, groups=groups, use_bias=True, cpu_kernels=self.cpu_kernels,
        cheap_input=cheap_input, name=name)
    h = conv(c, 3, self.stride, 1 if self.stride == 1 or self.pad_both else ((0, 1), (0, 1)), c, '0')(x)
    h = jax.nn.relu(conv(self.mid, 1, 1, 0, 1, '1')(h))
    h = conv(self.mid, 3, 1, 1, self.mid, '3', cheap_input=True)(h)  # reads ReLU(1x1 + bias)
    return conv(self.features, 1, 1, 0, 1, '4')(h)


class Bottleneck(nn.Module):
  """The full-range model's block, `ReLU(convs(x) + shortcut(x))`; a stride-2 depthwise conv pads
  right and bottom by 1 (TF 'SAME'), the shortcut is BlazeBlock's."""
  mid: int
  features: int
  stride: int
  cpu_kernels: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = BottleneckConvs(self.mid, self.features, self.stride, self.cpu_kernels, name='convs')(x)
    shortcut = max_pool_2x2(x, self.cpu_kernels) if self.stride == 2 else x
    return jax.nn.relu(h + channel_pad(shortcut, self.features))


class FullRangeBackbone(nn.Module):
  """`Sequential(stem 3x3 s2, ReLU, block x 15)` named `0`, -, `2..16`; returns every block's output.
  Dense: `Bottleneck`s, the stem padded right and bottom (TF 'SAME'); `sparse`: `SparseBlock`s of
  `SPARSE_BACKBONE`, the stem padded 1 on every side."""
  sparse: bool = False
  cpu_kernels: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    stem_padding = 1 if self.sparse else ((0, 1), (0, 1))
    # The stem's output is the first block's input and its shortcut: two readers.
    x = jax.nn.relu(Conv(32, 3, 2, stem_padding, use_bias=True, cpu_kernels=self.cpu_kernels, shared_output=True,
                         name='0')(x))
    table = SPARSE_BACKBONE if self.sparse else tuple((mid, out, s) for _, mid, out, s in FULL_RANGE_BACKBONE)
    block = SparseBlock if self.sparse else Bottleneck
    outs = []
    for i, (mid, features, stride) in enumerate(table):
      x = block(mid, features, stride, self.cpu_kernels, name=str(i + 2))(x)
      outs.append(x)
    return outs


class SparseBlock(nn.Module):
  """The sparse full-range model's block: `ReLU(convs(x) + x)` at stride 1, `ReLU(convs(x))` with no
  shortcut at stride 2, where the depthwise conv pads 1 on every side."""
  mid: int
  features: int
  stride: int
  cpu_kernels: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = BottleneckConvs(self.mid, self.features, self.stride, self.cpu_kernels, pad_both=True, name='convs')(x)
    return jax.nn.relu(h + x if self.stride == 1 else h)


class TopDown(nn.Module):
  """One top-down stage: `up2x(ReLU(top(coarse))) + ReLU(lateral(skip))`, then blocks `0, 1, ...`
  (`Bottleneck`, or `SparseBlock` with `sparse`)."""
  features: int
  mid: int
  blocks: int
  sparse: bool = False
  cpu_kernels: bool | None = None

  @nn.compact
  def __call__(self, coarse: jax.Array, skip: jax.Array) -> jax.Array:
    conv = lambda name: Conv(self.features, 1, 1, 0, use_bias=True, cpu_kernels=self.cpu_kernels, name=name)
    x = upsample_bilinear_2x(jax.nn.relu(conv('top')(coarse))) + jax.nn.relu(conv('lateral')(skip))
    block = SparseBlock if self.sparse else Bottleneck
    for j in range(self.blocks):
      x = block(self.mid, self.features, 1, self.cpu_kernels, name=str(j))(x)
    return x


class TopDownPath(nn.Module):
  """The stages `0, 1, 2` (stride 16, 8, 4), each merging one backbone output."""
  sparse: bool = False
  cpu_kernels: bool | None = None

  @nn.compact
  def __call__(self, feats: list[jax.Array]) -> jax.Array:
    x = feats[-1]
    for k, ((features, mid, blocks), skip) in enumerate(zip(FULL_RANGE_TOP_DOWN, FULL_RANGE_SKIPS)):
      x = TopDown(features, mid, blocks, self.sparse, self.cpu_kernels, name=str(k))(x, feats[skip])
    return x


class FullRange(nn.Module):
  """MediaPipe's full-range network (read off `face_detection_full_range.tflite`; REFERENCE.md §3.6):
  `[N, 192, 192, 3] -> (regressors [N, 2304, 16], logits [N, 2304, 1])` on a 48 x 48 grid.

  A 3x3 stride-2 stem and fifteen bottleneck blocks down to stride 32 (`backbone`), three top-down
  stages back to stride 4 (`top_down.0..2`), 1x1 heads (`classifier`, `regressor`). The graph has
  no names of its own beyond TFLite's `conv2d_N`; these follow the front model's conventions."""
  cpu_kernels: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    feats = FullRangeBackbone(cpu_kernels=self.cpu_kernels, name='backbone')(x)
    x = TopDownPath(cpu_kernels=self.cpu_kernels, name='top_down')(feats)
    n = x.shape[0]
    head = lambda features, name: Conv(
        features, 1, 1, 0, use_bias=True, cpu_kernels=self.cpu_kernels, name=name,
        bias_init=nn.initializers.constant(CLS_PRIOR_BIAS if name == 'classifier' else 0.0))(x)
    return head(REGRESSORS, 'regressor').reshape(n, -1, REGRESSORS), head(1, 'classifier').reshape(n, -1, 1)


class SparseHead(nn.Module):
  """A sparse full-range head: 1x1 conv to 4 x `features` channels (`0`), 3x3 depthwise at stride 2
  (`1`, padded 1), depth-to-space 2: `[N, 48, 48, 48] -> [N, 48, 48, features]`."""
  features: int
  bias_init: float = 0.0
  cpu_kernels: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = SPARSE_HEAD_MID * self.features
    h = Conv(d, 1, 1, 0, use_bias=True, cpu_kernels=self.cpu_kernels, name='0')(x)
    h = Conv(d, 3, 2, 1, groups=d, use_bias=True, cpu_kernels=self.cpu_kernels, name='1',
             bias_init=nn.initializers.constant(self.bias_init))(h)
    return depth_to_space(h, 2)


class FullRangeSparse(nn.Module):
  """MediaPipe's sparse full-range network (read off `face_detection_full_range_sparse.tflite`):
  `[N, 192, 192, 3] -> (regressors [N, 2304, 16], logits [N, 2304, 1])`, the dense model's anchors.

  A 3x3 stride-2 stem (padded 1), fifteen `SparseBlock`s (`backbone.2..16`), the dense model's
  top-down plan with `SparseBlock`s (`top_down.0..2`), and `SparseHead`s (`classifier`, `regressor`).
  Its 1x1 kernels are stored sparse in the file; here they are dense."""
  cpu_kernels: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    feats = FullRangeBackbone(sparse=True, cpu_kernels=self.cpu_kernels, name='backbone')(x)
    x = TopDownPath(sparse=True, cpu_kernels=self.cpu_kernels, name='top_down')(feats)
    n = x.shape[0]
    regressors = SparseHead(REGRESSORS, 0.0, self.cpu_kernels, name='regressor')(x)
    logits = SparseHead(1, CLS_PRIOR_BIAS, self.cpu_kernels, name='classifier')(x)
    return regressors.reshape(n, -1, REGRESSORS), logits.reshape(n, -1, 1)


class BlazeFace(nn.Module):
  """`[N, S, S, 3]` RGB in [-1, 1] -> `(regressors [N, A, 16], logits [N, A, 1])` (module docstring)."""
  spec: BlazeSpec
  dtype: jnp.dtype = jnp.float32
  cpu_kernels: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    x = x.astype(self.dtype)
    if self.spec.full_range:
      net = (FullRangeSparse(self.cpu_kernels, name='full_range_sparse') if self.spec.sparse
             else FullRange(self.cpu_kernels, name='full_range'))
      regressors, logits = net(x)
      return regressors.astype(jnp.float32), logits.astype(jnp.float32)
    if self.spec.back:
      x = Backbone(BACK_BACKBONE, True, self.cpu_kernels, name='backbone')(x)            # [N, S/16, S/16, 96]
      h = FinalBlazeBlock(96, self.cpu_kernels, name='final')(x)                          # [N, S/32, S/32, 96]
    else:
      x = Backbone(FRONT_BACKBONE1, True, self.cpu_kernels, name='backbone1')(x)          # [N, S/8, S/8, 88]
      h = Backbone(FRONT_BACKBONE2, False, self.cpu_kernels, name='backbone2')(x)         # [N, S/16, S/16, 96]
    a8, a16 = self.spec.anchors_per_cell
    n = x.shape[0]
    head = lambda features, name, y: Conv(
        features, 1, 1, 0, use_bias=True, cpu_kernels=self.cpu_kernels, name=name,
        bias_init=nn.initializers.constant(CLS_PRIOR_BIAS if name.startswith('classifier') else 0.0))(y)
    logits = jnp.concatenate([head(a8, 'classifier_8', x).reshape(n, -1, 1),
                              head(a16, 'classifier_16', h).reshape(n, -1, 1)], axis=1)
    regressors = jnp.concatenate([head(a8 * REGRESSORS, 'regressor_8', x).reshape(n, -1, REGRESSORS),
                                  head(a16 * REGRESSORS, 'regressor_16', h).reshape(n, -1, REGRESSORS)], axis=1)
    return regressors.astype(jnp.float32), logits.astype(jnp.float32)
