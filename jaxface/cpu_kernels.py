"""XLA:CPU restatements of `jaxface.layers`' convs and BatchNorm, with hand-written backward passes.

The layers say what PyTorch computes. XLA:CPU runs several of those ops slowly as written: a grouped
(depthwise) conv, convs over a few channels, a stride-2 conv's input gradient, autodiff's BatchNorm
backward (BENCHMARKS.md, "Train step"). This module computes the same sums in forms XLA:CPU runs
fast; the arithmetic is PyTorch's in both, and tests/test_layers.py checks every function here
against the plain layer, values and gradients.

  `conv2d`          a conv with PyTorch's `k//2` padding, lowered per shape: fused multiply-adds, a
                    matrix product, the library conv (at stride 2 with a stride-1 input gradient),
                    or nine shifted multiply-adds for a 3x3 depthwise conv
  `batch_norm_act`  BN and the LeakyReLU after it as one op (`_bn_act_train`), for channel groups of
                    several BN modules at once
  `fused_conv`, `fused_conv_bn`  sibling convs (and their BNs) that read the same input, as one
  `max_pool_2x2`    a 2x2 max-pool as the maximum of four views, fused into its reader

Which path runs is a static field of every layer and model, `cpu_kernels: bool | None`, that the
models pass down in their `conv` and `norm` partials. Being a module field, it is part of the module
that `jit` traces and caches: one process can compile both paths, and a compiled program cannot take
the other one. True or False is taken as given; None (the default) asks `enabled`: on iff JAX's
default backend is the CPU, so GPUs and TPUs run the plain layers, and off everywhere when the
environment has `JAXFACE_CPU_KERNELS=0` (read once, at import, so that every program of a process
resolves None alike).

`compiler_options` holds the XLA:CPU options jaxface's inference programs are built with (YNNPACK's
fusions off, measured faster on every family's shapes; BENCHMARKS.md, "XLA:CPU's options, measured"),
`train_compiler_options` the train steps' (YNNPACK for reductions only).
`forward_chunk` is how many images of an inference batch one step of a compiled loop runs on the CPU.
"""
from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:  # the layers call into this module, never the other way round
  from jaxface.layers import BatchNorm, Conv, ConvBN

ENV_VAR = 'JAXFACE_CPU_KERNELS'
_ON, _OFF = ('1', 'true', 'on', ''), ('0', 'false', 'off')


def allowed_by(environ: Mapping[str, str]) -> bool:
  """Whether `environ` lets None resolve on: unset, `1`, `true` or `on` do; `0`, `false` or `off` do not."""
  value = environ.get(ENV_VAR, '').strip().lower()
  if value not in _ON + _OFF:
    raise ValueError(f'{ENV_VAR}={environ[ENV_VAR]!r}: expected one of {", ".join(v for v in _ON + _OFF if v)}')
  return value in _ON


_ALLOWED = allowed_by(os.environ)


def enabled(flag: bool | None) -> bool:
  """A layer's `cpu_kernels` field resolved: as given, or for None whether the CPU is JAX's default
  backend (and `JAXFACE_CPU_KERNELS` is not `0`)."""
  if flag is not None:
    return bool(flag)
  return _ALLOWED and jax.default_backend() == 'cpu'


YNN_ENV_VAR = 'JAXFACE_XLA_YNN'
# XLA:CPU routes convolutions, matrix products and element-wise chains to YNNPACK by default in recent
# jaxlibs. On the AMD EPYC machines these fusions made SCRFD-10G's forward 1.9x slower (175 ms against
# 92 ms) and no family's forward faster. An empty list turns them all off.
_NO_YNN = {'xla_cpu_experimental_ynn_fusion_type': ''}


@functools.lru_cache(maxsize=None)
def _xla_knows(options: tuple[tuple[str, str], ...]) -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(np.float32(0)).compile()
    return True
  except Exception:  # an XLA without the option: it rejects the name at compile time
    return False


# The train steps keep YNNPACK's reductions (BN's statistics and backward sums, the loss's sums) and
# nothing else. Measured on the AMD EPYC VM (ms per step at 640 px, batch 8, huge pages):
# RetinaFace-mnet 456 against 479 with XLA's default and 578 with no YNNPACK fusions; SCRFD-500m
# 484 / 535 / 572; SCRFD-2.5G 925 / 1804 / 1009; SCRFD-10G 2503 against 2765 with none. With XLA's
# default the library conv's kernel gradients ran as YNNPACK fusions, up to 10x slower on SCRFD's
# thin ResNet stem (BENCHMARKS.md, "The train step's convolutions").
_YNN_REDUCTIONS = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_REDUCE'}


def _cpu_options(options: dict[str, str]) -> dict[str, str]:
  if jax.default_backend() != 'cpu' or os.environ.get(YNN_ENV_VAR, '').strip() == '1':
    return {}
  return dict(options) if _xla_knows(tuple(options.items())) else {}


def compiler_options() -> dict[str, str]:
  """`jax.jit(..., compiler_options=)` for jaxface's inference programs: on the CPU backend,
  YNNPACK's fusions off; nothing on other backends, on an XLA that lacks the option, or with
  `JAXFACE_XLA_YNN=1` (XLA's own default)."""
  return _cpu_options(_NO_YNN)


def train_compiler_options() -> dict[str, str]:
  """`compiler_options()` for the train steps: YNNPACK for reductions only (same conditions; an XLA
  that has the option but not that value gets YNNPACK off, the next best measured)."""
  return _cpu_options(_YNN_REDUCTIONS) or compiler_options()


# Inference on the CPU runs a batch through the network in a compiled loop over chunks of about this
# many input pixels: per image, XLA:CPU's batched forward gets slower as the batch grows (a layer's
# maps for the whole batch outgrow the caches). Measured on the AMD EPYC VM, ms per image at batch 64
# (8 for SCRFD), one program over the whole batch against chunks of k: BlazeFace front 1.17 against
# 0.46 (k=4), full range 4.34 against 2.55-2.98 (k=4), SCRFD 10g 103 against 91 and 500m 15.4
# against 11.0 (k=1) (BENCHMARKS.md, "Batches on the CPU").
CHUNK_PIXELS = 1 << 17


def forward_chunk(batch: int, height: int, width: int) -> int:
  """Images per loop step for an inference batch `[batch, height, width, 3]`: the power of two
  nearest `CHUNK_PIXELS / (height * width)` that divides `batch` (the whole batch off the CPU)."""
  if jax.default_backend() != 'cpu':
    return batch
  k = 2 ** max(0, round(np.log2(CHUNK_PIXELS / (height * width))))
  k = min(k, batch)
  while batch % k:
    k //= 2
  return k


def lowers(kernel_shape: Sequence[int], padding, groups: int) -> bool:
  """Whether `conv2d` restates this conv: a dense one with PyTorch's `k//2` padding, or a 3x3
  depthwise one with any padding (BlazeFace's stride-2 blocks pad right and bottom only)."""
  k, _, in_per_group, out = kernel_shape
  if groups > 1:
    return k == 3 and in_per_group == 1 and out == groups
  return (padding == ((k // 2, k // 2), (k // 2, k // 2))
          or (in_per_group <= MAX_FMA_CHANNELS and k * k * in_per_group <= MAX_FMA_TAPS))


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, groups: int = 1, padding=None, *,
           shared_output: bool = False, cheap_input: bool = False) -> jax.Array:
  """`layers.conv2d(x, kernel, stride, padding, groups)` for the shapes `lowers` accepts (`padding`
  None: `k//2`; other paddings take the `padded_*` forms, differentiated by autodiff), per shape:

  * few taps (k*k*I <= 27 and I <= 8: the 3x3 stem over 3 channels, 1x1s over <= 8 channels): a sum
    of broadcast multiply-adds that XLA fuses with the BN and activation after it into one loop,
    with the library conv's gradients (`_fma_conv_library_grad`; undifferentiated, a 1x1 is a
    matrix product). With `shared_output` (several ops read the output), a k x k conv is instead
    one matrix product over its stacked taps (`tap_product`): XLA would fuse the multiply-adds into
    every reader and compute them once per reader;
  * other 1x1s: a matrix product over every `stride`-th pixel (a 1x1 has no padding, so this is
    exact), gradients as 2-D products (`_pointwise_cpu`);
  * other convs: the library conv with its own gradients, except a stride-2 3x3's input gradient,
    which is a stride-1 conv (`_library_conv_stride2`);
  * a 3x3 depthwise conv (`groups` = channels): nine shifted multiply-adds (`_depthwise_cpu`; with
    `cheap_input`, a narrow one reads `x` itself in its centre tap, see `shifted_depthwise`); with
    padding other than 1 all round, the same sum over an explicitly padded copy, differentiated by
    autodiff (`padded_depthwise`).

  Measured per shape in bench/bench_layers.py, bench/bench_depthwise.py and bench/bench_train_step.py.
  """
  k, _, cin, _ = kernel.shape
  padded = padding is not None and tuple(map(tuple, padding)) != ((k // 2, k // 2), (k // 2, k // 2))
  if groups > 1:
    return padded_depthwise(x, kernel, stride, padding) if padded else _depthwise_cpu(x, kernel, stride, cheap_input)
  if cin <= MAX_FMA_CHANNELS and k * k * cin <= MAX_FMA_TAPS:
    if shared_output and k > 1:
      return tap_product(x, kernel, stride, padding if padded else ((k // 2, k // 2), (k // 2, k // 2)))
    return padded_fma_conv(x, kernel, stride, padding) if padded else _fma_conv_library_grad(x, kernel, stride)
  if k == 1:
    return _pointwise_cpu(x, kernel, stride)
  if k == 3 and stride == 2:
    return _library_conv_stride2(x, kernel)
  return _library_conv(x, kernel, stride)


def padded_taps(x: jax.Array, k: int, stride: int, padding):
  """`taps` with explicit `((top, bottom), (left, right))` padding."""
  (top, bottom), (left, right) = padding
  xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  ho, wo = (xp.shape[1] - k) // stride + 1, (xp.shape[2] - k) // stride + 1
  for dy in range(k):
    for dx in range(k):
      yield dy, dx, xp[:, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride, :]


def padded_depthwise(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
  """A 3x3 depthwise conv with explicit padding as nine multiply-adds of strided views of one padded
  copy (BlazeFace's stride-2 blocks pad right and bottom only; XLA:CPU's grouped conv is several
  times slower, bench/bench_blazeface.py). Gradients by autodiff: inference is what uses it."""
  return sum(t * kernel[dy, dx, 0][None, None, None, :] for dy, dx, t in padded_taps(x, 3, stride, padding))


def padded_fma_conv(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
  """`_fma_conv` with explicit padding (the full-range model's 3x3 stem pads right and bottom only)."""
  k, _, cin, _ = kernel.shape
  return sum(t[..., c:c + 1] * kernel[dy, dx, c][None, None, None, :]
             for dy, dx, t in padded_taps(x, k, stride, padding) for c in range(cin))


def tap_product(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
  """A small dense conv as one matrix product `[N, Ho, Wo, k*k*I] x [k*k*I, O]` over its stacked
  `padded_taps`: XLA computes a product once, where it fuses multiply-adds into each of their
  readers (the full-range BlazeFace's stem feeds a residual block: its forward 2.5 -> 1.9 ms on an
  AMD EPYC; BENCHMARKS.md). Gradients by autodiff."""
  k, _, cin, cout = kernel.shape
  cols = jnp.concatenate([t for _, _, t in padded_taps(x, k, stride, padding)], axis=-1)
  return jnp.dot(cols, kernel.reshape(k * k * cin, cout))


def _library_conv(x: jax.Array, kernel: jax.Array, stride: int, groups: int = 1) -> jax.Array:
  """`lax.conv_general_dilated` with PyTorch's `padding=k//2`: the plain layer's conv, whose VJP
  several backward passes below reuse."""
  p = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((p, p), (p, p)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)


def taps(x: jax.Array, k: int, stride: int):
  """The k*k shifted, strided views `(dy, dx, [N, Ho, Wo, C])` of `x` (padded by k//2) that a kxk conv sums over."""
  p = k // 2
  _, h, w, _ = x.shape
  ho, wo = (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1
  # XLA:CPU writes the padded copy in its own loop (with `x`'s producer fused in once) and the
  # consumers read its slices; zero-filled shifts instead would be fused into each tap, producer
  # and all (BENCHMARKS.md, "Train step"). An optimization_barrier here changed nothing in the
  # compiled programs (XLA:CPU removes it before fusion), so there is none.
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  for dy in range(k):
    for dx in range(k):
      yield dy, dx, xp[:, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride, :]


# Convs this small (input channels, and taps = k*k*input channels) are cheaper on XLA:CPU as
# fused multiply-adds than as a library convolution or matrix product (bench/bench_layers.py).
MAX_FMA_CHANNELS = 8
MAX_FMA_TAPS = 27


def _fma_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  k, _, cin, _ = kernel.shape
  return sum(t[..., c:c + 1] * kernel[dy, dx, c][None, None, None, :]
             for dy, dx, t in taps(x, k, stride) for c in range(cin))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fma_conv_library_grad(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """Forward as fused multiply-adds, gradients from the library conv's VJP (a 1x1's as 2-D products).

  Autodiff of the multiply-adds would keep every broadcast tap (27 x the stem's output) as a
  residual; saving `(x, kernel)` instead makes the training step ~12% faster
  (BENCHMARKS.md, "Train step").

  A 1x1 runs as multiply-adds only under differentiation (the forward rule). Undifferentiated
  (inference) it is a matrix product: there its input's producer, a depthwise conv with no batch
  statistics to materialise it, is fused into the multiply-adds once per output channel
  (MobileNet-0.25's forward at 1024x624 on an AMD EPYC: 19.3 ms with multiply-adds, 12.4 ms with
  the product; in the train step the multiply-adds stay ~6% faster; BENCHMARKS.md).
  """
  if kernel.shape[0] == 1:
    return _pointwise(x, kernel, stride)
  return _fma_conv(x, kernel, stride)


def _saving_inputs(forward):
  """A custom_vjp forward rule: `forward`'s output, with only its inputs `(x, kernel)` as residuals
  (the static arguments after them, such as the stride, go to the backward rule on their own)."""
  return lambda x, kernel, *static: (forward(x, kernel, *static), (x, kernel))


def _fma_bwd(stride, residuals, g):
  if residuals[1].shape[0] == 1:  # a 1x1: its gradients as 2-D products, see `_pointwise_cpu`
    return _pointwise_bwd(stride, residuals, g)
  return jax.vjp(lambda x, k: _library_conv(x, k, stride), *residuals)[1](g)


_fma_conv_library_grad.defvjp(_saving_inputs(_fma_conv), _fma_bwd)


def depth_to_space(x: jax.Array, block: int) -> jax.Array:
  """TFLite's DEPTH_TO_SPACE: `[N, H, W, b*b*C] -> [N, bH, bW, C]`, output `(b*h + i, b*w + j, c)` =
  input `(h, w, (i*b + j)*C + c)`. (Here for the backward passes below; `layers` re-exports it.)"""
  n, h, w, d = x.shape
  c = d // (block * block)
  x = x.reshape(n, h, w, block, block, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h * block, w * block, c)


@jax.custom_vjp
def _library_conv_stride2(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The library conv at stride 2 (3x3, padding 1), its input gradient as a stride-1 conv
  (`_stride2_input_grad`), its kernel gradient the library conv's own."""
  return _library_conv(x, kernel, 2)


def _stride2_input_grad(g: jax.Array, kernel: jax.Array, size: tuple[int, int]) -> jax.Array:
  """The input gradient `[N, H, W, I]` of a 3x3 stride-2 conv (padding 1) from its output gradient
  `g [N, Ho, Wo, O]`, as one stride-1 2x2 conv to `4*I` channels and a depth-to-space.

  Input pixel `2i + a` (`a` = 0, 1) takes the gradient of outputs `i + s` through kernel row
  `a + 1 - 2s` (`s` = 0, 1 where that row exists; likewise for columns), so each of the four
  pixel phases is a stride-1 conv of `g`; stacked, they are one conv over `g` padded by one at the
  bottom and right. Autodiff's form is a conv over `g` dilated with zeros (`lhs_dilation` 2), which
  XLA:CPU runs 2-3x slower (SCRFD-2.5G's 24 -> 48 conv at 160 px, batch 8: 42 against 14 ms).
  """
  _, _, cin, cout = kernel.shape
  zero = jnp.zeros((cout, cin), kernel.dtype)
  def phase_block(sy: int, sx: int) -> jax.Array:  # [O, 4*I]: phases (a, b) in order 00, 01, 10, 11
    rows = [(a + 1 - 2 * sy, b + 1 - 2 * sx) for a in (0, 1) for b in (0, 1)]
    return jnp.concatenate([kernel[r, c].T if 0 <= r < 3 and 0 <= c < 3 else zero for r, c in rows], axis=1)
  phase_kernel = jnp.stack([jnp.stack([phase_block(sy, sx) for sx in (0, 1)]) for sy in (0, 1)])  # [2, 2, O, 4*I]
  gp = jnp.pad(g, ((0, 0), (0, 1), (0, 1), (0, 0)))
  y = jax.lax.conv_general_dilated(gp, phase_kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return depth_to_space(y, 2)[:, :size[0], :size[1]]


def _stride2_bwd(residuals, g):
  x, kernel = residuals
  dk = jax.vjp(lambda k: _library_conv(x, k, 2), kernel)[1](g)[0]
  return _stride2_input_grad(g, kernel, x.shape[1:3]), dk


_library_conv_stride2.defvjp(lambda x, kernel: (_library_conv(x, kernel, 2), (x, kernel)), _stride2_bwd)


def _pointwise(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  return jnp.dot(x[:, ::stride, ::stride] if stride > 1 else x, kernel[0, 0])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pointwise_cpu(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """The 1x1 conv as a matrix product, with its gradients as 2-D products `[N*H*W, C]`.

  Autodiff's kernel gradient contracts the 4-D input and output gradient over three axes; XLA:CPU
  then writes the output gradient a second time, transposed, from inside its producer's loop (the
  BN + activation backward), 5-10x slower than that loop (BENCHMARKS.md, "Train step").
  """
  return _pointwise(x, kernel, stride)


def _pointwise_bwd(stride, residuals, g):
  x, kernel = residuals
  xs = x[:, ::stride, ::stride] if stride > 1 else x
  m = g.shape[0] * g.shape[1] * g.shape[2]
  g2 = g.reshape(m, g.shape[3])
  dk = jnp.dot(xs.reshape(m, xs.shape[3]).T, g2)
  dx = jnp.dot(g2, kernel[0, 0].T).reshape(xs.shape)
  if stride > 1:
    dx = jnp.zeros_like(x).at[:, ::stride, ::stride].set(dx)
  return dx, dk.reshape(kernel.shape)


_pointwise_cpu.defvjp(_saving_inputs(_pointwise), _pointwise_bwd)


# A stride-1 depthwise conv over this few channels whose input is cheap to recompute runs as `taps`:
# XLA:CPU's loop over `_row_pitch_depthwise`'s 8-wide rows ran at half the speed (the full-range
# BlazeFace's 96 x 96 x 8 maps: 282 -> 187 us for 4 images alone, the 64-photo batch 0.92x the time;
# BENCHMARKS.md, "Narrow depthwise convs"). At 16 and 32 channels the two forms measured the same.
MAX_DIRECT_TAP_CHANNELS = 8


def shifted_depthwise(x: jax.Array, kernel: jax.Array, stride: int, cheap_input: bool = False) -> jax.Array:
  """The 3x3 depthwise conv `[N,H,W,C] x [3,3,1,C]` as nine multiply-adds of shifted views (on
  XLA:CPU many times faster than the grouped library conv, bench/bench_layers.py): `taps` at
  stride 2, `_row_pitch_depthwise` at stride 1 unless `cheap_input` and at most
  `MAX_DIRECT_TAP_CHANNELS` channels (`taps` too: its centre tap is `x`, whose producer XLA then
  computes again inside this conv, which costs little only when the caller says so)."""
  if stride == 1 and not (cheap_input and x.shape[-1] <= MAX_DIRECT_TAP_CHANNELS):
    return _row_pitch_depthwise(x, kernel)
  return sum(t * kernel[dy, dx, 0][None, None, None, :] for dy, dx, t in taps(x, 3, stride))


def _row_pitch_depthwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A stride-1 3x3 depthwise conv over the padded map flattened to rows of pitch `W + 2`: tap
  `(dy, dx)` is the 1-D slice at `dy * pitch + dx`, and each output row carries two wrapped
  columns that are cut off at the end.

  With `taps`, the centre tap is a slice of the padded copy that covers exactly `x`, which XLA
  reads from `x` itself, fusing `x`'s producer into the conv: a stem conv's multiply-adds were
  computed twice (SCRFD-500m's stem + depthwise conv 1.9 -> 1.2 ms at 640 px on an AMD EPYC;
  BENCHMARKS.md). Here no tap is `x`.
  """
  n, h, w, c = x.shape
  y = sum(t * kernel[dy, dx, 0][None, None, :] for dy, dx, t in _pitch_taps(_pitch_padded(x), h, w + 2))
  return y.reshape(n, h, w + 2, c)[:, :, :w]


def _pitch_padded(x: jax.Array) -> jax.Array:
  """`[N, (H + 3) * (W + 2), C]`: `x [N, H, W, C]` zero-padded by one (two at the bottom, so that
  every tap's slice fits) and flattened to rows of pitch `W + 2`."""
  n, h, w, c = x.shape
  return jnp.pad(x, ((0, 0), (1, 2), (1, 1), (0, 0))).reshape(n, (h + 3) * (w + 2), c)


def _pitch_taps(flat: jax.Array, h: int, pitch: int):
  """The nine taps `(dy, dx, [N, H * pitch, C])` of a `_pitch_padded` map, in row-major order: tap
  `(dy, dx)` is the 1-D slice at `dy * pitch + dx`."""
  for dy in range(3):
    for dx in range(3):
      yield dy, dx, flat[:, dy * pitch + dx:dy * pitch + dx + h * pitch]


def channel_sums(values: Sequence[jax.Array]) -> list[jax.Array]:
  """Per-channel sums `[C]` of several same-shape `[..., C]` arrays, in one pass.

  XLA:CPU runs separate sums as separate loops over memory; one variadic reduce is one loop
  that reads each input once. For `[N, H, W, C]` the rows `N*H` are split into up to 128 blocks
  of at least 4 rows, kept in the output (the loop's parallel axis), and each row's `W*C` values
  are kept too, so the loop vectorises along contiguous memory; the partial sums `[blocks, W*C]`
  are added after. (Short blocks ran faster than up to 32 blocks of 16 rows or more at every
  depthwise layer of MobileNet-0.25 at 640 px, batch 8: 1.5-2.5x for the 160 to 20 px maps on
  an AMD EPYC; BENCHMARKS.md.) XLA fuses the inputs' producers into this loop: keep them cheap
  elementwise ops of materialised arrays (BENCHMARKS.md, "Train step").
  """
  if values[0].ndim != 4:
    return [jnp.sum(v, tuple(range(v.ndim - 1))) for v in values]
  n, h, w, c = values[0].shape
  rows = n * h
  blocks = max(d for d in range(1, 129) if rows % d == 0 and (rows // d >= 4 or d == 1))
  parts = tuple(v.reshape(blocks, rows // blocks, w * c) for v in values)
  zeros = tuple(jnp.zeros((), v.dtype) for v in parts)
  sums = jax.lax.reduce(parts, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), (1,))
  return [s.reshape(blocks * w, c).sum(0) for s in sums]


def depthwise_kernel_grad(x: jax.Array, g: jax.Array, stride: int) -> jax.Array:
  """`[3, 3, 1, C]`: each tap's `sum over n, h, w of x_tap * g`, the nine in one pass.

  One variadic reduce (`channel_sums`), so XLA:CPU emits a single loop that reads `x` and `g`
  once (nine separate sums each copy a shifted slice first: 2-5x slower, as is the grouped conv's
  filter gradient; bench/bench_depthwise.py).

  At stride 1 the shifts fall on `g` instead (`x` times shifted views of `g` padded by one; the
  sum is the same), read in the row-pitch layout from the padded copy that the input gradient
  builds (`_pitch_padded`). `g` is the BN + activation backward, into which XLA fuses the
  depthwise forward again; read plain, or through a slice that XLA resolves to `g` itself (the
  centre tap of a 2-D padded copy), this loop computed both a second time (BENCHMARKS.md,
  "Depthwise gradients"; tests/test_fusion.py).
  """
  c = g.shape[-1]
  if stride != 1:
    return jnp.stack(channel_sums([t * g for _, _, t in taps(x, 3, stride)])).reshape(3, 3, 1, c)
  n, h, w, _ = x.shape
  # sum over pixels q of x[q] * g[q + (1 - dy, 1 - dx)]: tap (2 - dy, 2 - dx) of g's padded copy,
  # against x with two zero columns per row (no wrapped terms). Reversed, the taps run in that order.
  xp = jnp.pad(x, ((0, 0), (0, 0), (0, 2), (0, 0))).reshape(n, h * (w + 2), c)
  taps_of_g = list(_pitch_taps(_pitch_padded(g), h, w + 2))[::-1]
  return jnp.stack(channel_sums([(xp * t).reshape(n, h, w + 2, c) for _, _, t in taps_of_g])).reshape(3, 3, 1, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_cpu(x: jax.Array, kernel: jax.Array, stride: int, cheap_input: bool = False) -> jax.Array:
  """`shifted_depthwise`, whose backward keeps only `x`, not its nine shifted copies.

  Input gradient: `depthwise_input_grad` (the grouped conv's takes 10-100x longer on CPU);
  kernel gradient: `depthwise_kernel_grad`.
  """
  return shifted_depthwise(x, kernel, stride, cheap_input)


def depthwise_input_grad(g: jax.Array, kernel: jax.Array, stride: int, size: tuple[int, int]) -> jax.Array:
  """`[N, H, W, C]`: the stride-1 correlation of `g` (dilated by `stride`, zero-padded) with the
  flipped kernel, read from one materialised padded copy.

  Autodiff's transpose sums nine zero-filled shifts of `g`, and XLA:CPU fuses `g`'s producer (the
  BN + activation backward) into each of them: nine evaluations per element (56 ms for the first
  depthwise layer's in the step's profile, where a loop of that size takes ~10 ms). A padded copy
  is a separate loop that XLA:CPU does not duplicate, as `taps` relies on for the forward. At
  stride 1 this is the row-pitch depthwise conv of `g` with the flipped kernel, whose padded
  copy `depthwise_kernel_grad` reads too.
  """
  if stride == 1:
    return _row_pitch_depthwise(g, kernel[::-1, ::-1])
  h, w = size
  lh, lw = stride * (g.shape[1] - 1) + 1, stride * (g.shape[2] - 1) + 1
  # p[:, r + dy, c + dx] = dilated g at (r + dy - 1, c + dx - 1); dx[r, c] sums p's taps times kernel[2 - dy, 2 - dx].
  p = jax.lax.pad(g, jnp.zeros((), g.dtype), [(0, 0, 0), (1, h + 1 - lh, stride - 1), (1, w + 1 - lw, stride - 1),
                                               (0, 0, 0)])
  return sum(p[:, dy:dy + h, dx:dx + w] * kernel[2 - dy, 2 - dx, 0][None, None, None, :]
             for dy in range(3) for dx in range(3))


def _dw_bwd(stride, cheap_input, residuals, g):
  del cheap_input  # the forward's form only
  x, kernel = residuals
  dx = depthwise_input_grad(g, kernel, stride, x.shape[1:3])
  return dx, depthwise_kernel_grad(x, g, stride).astype(kernel.dtype)


_depthwise_cpu.defvjp(_saving_inputs(shifted_depthwise), _dw_bwd)


def _activate(z: jax.Array, slope) -> jax.Array:
  """`layers.leaky_relu`, the slope also per channel `[C]` (siblings' BNs run as one op)."""
  if slope is None:
    return z
  if isinstance(slope, float) and slope == 0:
    return jax.nn.relu(z)
  return jnp.where(z > 0, z, _channels(slope, z.ndim) * z)


def _channels(v, ndim: int):
  """A per-channel `[C]` vector (or a scalar) shaped to broadcast over `[..., C]`."""
  return v if np.ndim(v) == 0 else v.reshape((1,) * (ndim - 1) + (-1,))


def _batch_stats(x: jax.Array, axis_name: str | None):
  """Per-channel `(mean, biased var)` in >= float32 (means of x and x^2), over the devices of
  `axis_name` too.

  Two plain means, as in the backward: the train steps give each to YNNPACK's reductions
  (`train_compiler_options`), which read `x` as written. One variadic reduce (`channel_sums`) is
  an XLA loop that fuses `x`'s producer, often a depthwise conv's nine taps, into the reduction:
  1.9-3.4x slower at RetinaFace-mnet's shapes (BENCHMARKS.md, "The train step's convolutions")."""
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  axes = tuple(range(x.ndim - 1))
  mean, mean_sq = jnp.mean(xf, axes), jnp.mean(jax.lax.square(xf), axes)
  if axis_name is not None:
    mean, mean_sq = jax.lax.pmean((mean, mean_sq), axis_name)
  return mean, jnp.maximum(mean_sq - mean * mean, 0.0)


def _normalize(x, mean, var, scale, bias, epsilon, dtype):
  mul = scale * jax.lax.rsqrt(var + epsilon)
  per_channel = lambda v: _channels(v.astype(dtype), x.ndim)
  return (x.astype(dtype) - per_channel(mean)) * per_channel(mul) + per_channel(bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _bn_act_train(x, scale, bias, slope, epsilon, axis_name, dtype):
  """`(act(BN(x)), batch mean, batch var)` with batch statistics, and a backward in four loops.

  Autodiff of the BN and activation formulas keeps the normalised values and the activation's
  input as residuals and spreads the backward over more loops (BN's backward was the largest
  item of the CPU step's profile, BENCHMARKS.md "Train step"). Here the only residual is `x`.
  The backward writes `g`, the output gradient through the activation's derivative (its mask
  recomputed from `x`), takes `sum(g)` and `sum(g * x)`, and forms the input gradient in one
  elementwise pass.
  """
  return _bn_act_train_fwd(x, scale, bias, slope, epsilon, axis_name, dtype)[0]


def _bn_act_train_fwd(x, scale, bias, slope, epsilon, axis_name, dtype):
  mean, var = _batch_stats(x, axis_name)
  y = _activate(_normalize(x, mean, var, scale, bias, epsilon, dtype), _slope_array(slope))
  return (y, mean, var), (x, scale, bias, mean, var)


def _bn_act_train_bwd(slope, epsilon, axis_name, dtype, residuals, cotangents):
  x, scale, bias, mean, var = residuals
  dy, dmean, dvar = cotangents
  f = jnp.promote_types(x.dtype, jnp.float32)
  rstd = jax.lax.rsqrt(var + epsilon)
  mul = scale * rstd
  per_channel = lambda v: _channels(v, x.ndim)
  g = dy.astype(f)
  xc = x.astype(f) - per_channel(mean)
  s = _slope_array(slope)
  if s is not None:
    # The activation's derivative: 1 where z = xc * mul + bias > 0, else the slope. Written as a
    # comparison, not the forward's formula for z: XLA would merge the two and keep z alive from
    # the forward to here, written out in a loop of its own (measured in the step's profile).
    g = jnp.where(xc * per_channel(mul) > per_channel(-bias), g, g * per_channel(s))
  # Two plain sums: XLA:CPU gives them to its reduction library, which cannot take the select
  # above, so `g` is written once. One variadic reduce (`channel_sums`) would fuse `g` and
  # its producer (often a depthwise input gradient, nine taps) into the reduction and again
  # into `dx`'s loop: twice BN's backward time in the step. `sum(g * x)` rather than `sum(g * xc)`: the
  # library cannot take the subtraction either, and `xc` would be written out too.
  axes = tuple(range(x.ndim - 1))
  sum_g = jnp.sum(g, axes)
  sum_gxc = jnp.sum(g * x.astype(f), axes) - mean * sum_g
  n = x.size // x.shape[-1]
  # d mean / dx = 1/n and d var / dx = 2 (x - mean) / n, n over all devices; under pmap each
  # device's cotangents of the shared statistics are summed (the transpose of pmean).
  c1, c2 = dmean - mul * sum_g, 2 * dvar - mul * rstd * rstd * sum_gxc
  if axis_name is not None:
    c1, c2 = jax.lax.psum((c1, c2), axis_name)
    n = n * jax.lax.psum(1, axis_name)
  dx = g * per_channel(mul) + per_channel(c1 / n) + per_channel(c2 / n) * xc
  return dx.astype(x.dtype), (sum_gxc * rstd).astype(scale.dtype), sum_g.astype(bias.dtype)


_bn_act_train.defvjp(_bn_act_train_fwd, _bn_act_train_bwd)


def _slope_array(slope):
  """`slope` as `_activate` takes it: None, a float, or per channel (a static tuple) as an array."""
  return np.asarray(slope, np.float32) if isinstance(slope, tuple) else slope


def batch_norm_act(x: jax.Array, groups: Sequence[tuple[BatchNorm, int, float | None]]) -> jax.Array:
  """`layers.leaky_relu(bn(part), slope)` over consecutive channel groups of `x` `[..., C]`, as one op.

  `groups`: `(layers.BatchNorm module, channels, slope or None)`, channels summing to C. Siblings
  whose convs run as one (`fused_conv_bn`) normalise in one pass; BN is per channel, so this is
  the same as normalising each part. Each module keeps its own variables and running statistics
  (torch's update: its `unbiased` and `track`).
  """
  bn = groups[0][0]
  variables = [m.variables_for(c) for m, c, _ in groups]
  scale, bias = (jnp.concatenate([v[i] for v in variables]) for i in (0, 1))
  slopes = {s for *_, s in groups}
  if len(slopes) == 1:
    slope = slopes.pop()
    slope = None if slope is None else float(slope)
  else:
    slope = tuple(float(1.0 if s is None else s) for _, c, s in groups for _ in range(c))
  if bn.use_running_average:
    mean, var = (jnp.concatenate([v[i].value for v in variables]) for i in (2, 3))
    return _activate(_normalize(x, mean, var, scale, bias, bn.epsilon, bn.dtype), _slope_array(slope))
  y, mean, var = _bn_act_train(x, scale, bias, slope, bn.epsilon, bn.axis_name, bn.dtype)
  if not bn.is_initializing():
    unbiased = bn.unbiased(var, x.size // x.shape[-1])
    offsets = np.cumsum([0] + [c for _, c, _ in groups])
    for (m, *_), (*_, running_mean, running_var), a, b in zip(groups, variables, offsets[:-1], offsets[1:]):
      m.track(running_mean, running_var, mean[a:b], unbiased[a:b])
  return y


def fused_conv(x: jax.Array, convs: Sequence[Conv]) -> list[jax.Array]:
  """Several `layers.Conv`s (same kernel size and stride, PyTorch's padding, no groups) that read the
  same input, as one conv over their stacked kernels: same parameters and results, fewer and wider
  convolutions."""
  y, sizes, biases = _stacked_conv(x, convs)
  parts = jnp.split(y, np.cumsum(sizes)[:-1], axis=-1)
  return [p if b is None else p + b[None, None, None, :] for p, b in zip(parts, biases)]


def _stacked_conv(x: jax.Array, convs: Sequence[Conv]):
  """`(y [N,H',W',sum O], the convs' O, their biases)`: one conv over the stacked kernels, no bias."""
  variables = [c.variables_for(x.shape[-1]) for c in convs]
  kernel = jnp.concatenate([k for k, _ in variables], axis=-1)
  y = conv2d(x.astype(kernel.dtype), kernel, convs[0].stride)
  return y, [k.shape[-1] for k, _ in variables], [b for _, b in variables]


def fused_conv_bn(x: jax.Array, blocks: Sequence[ConvBN]) -> list[jax.Array]:
  """Several `layers.ConvBN`s that read the same input, run as one conv over their stacked kernels.

  Same parameters and results as calling each block; one larger convolution is faster than
  several thin ones (SSH's 64->32 and 64->16 3x3s), and their BNs run as one (`batch_norm_act`).
  """
  y, sizes, _ = _stacked_conv(x, [b.conv_0 for b in blocks])  # ConvBN's convs have no bias
  y = batch_norm_act(y, [(b.norm_1, c, b.slope) for b, c in zip(blocks, sizes)])
  return jnp.split(y, np.cumsum(sizes)[:-1], axis=-1)


def _window_views(x: jax.Array) -> list[jax.Array]:
  """The four `[N, H//2, W//2, C]` views of the 2x2 windows' pixels, in PyTorch's scan order."""
  h, w = x.shape[1] - x.shape[1] % 2, x.shape[2] - x.shape[2] % 2
  return [x[:, a:h:2, b:w:2] for a in (0, 1) for b in (0, 1)]


def _max_of_views(x: jax.Array) -> jax.Array:
  v = _window_views(x)
  return jnp.maximum(jnp.maximum(v[0], v[1]), jnp.maximum(v[2], v[3]))


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """`nn.MaxPool2d(2, 2)` on `[N, H, W, C]` (odd sizes floored) as the maximum of four strided views.

  XLA:CPU runs a reduce-window as a loop of its own that writes the pooled map; the maximum of
  views is fused into its reader (a block's shortcut add). The gradient goes to one maximum per
  window, the first in scan order, as in PyTorch (a maximum of views would split it between ties,
  as ReLU's zeros often are), and is written as element-wise selects: XLA:CPU expands the
  reduce-window's own gradient (a select-and-scatter) into a variadic reduce-window over four
  int32 index maps, ~200 ms of SCRFD-2.5G's train step at 640 px, batch 8 (BENCHMARKS.md).
  """
  return _max_of_views(x)


def _max_pool_bwd(x, g):
  peak = _max_of_views(x)
  taken = jnp.zeros(peak.shape, bool)
  parts = []
  for v in _window_views(x):  # the window's pixels in scan order: phases (0, 0), (0, 1), (1, 0), (1, 1)
    hit = (v == peak) & ~taken
    parts.append(jnp.where(hit, g, jnp.zeros_like(g)))
    taken = taken | hit
  dx = depth_to_space(jnp.concatenate(parts, axis=-1), 2)
  return (jnp.pad(dx, ((0, 0), (0, x.shape[1] - dx.shape[1]), (0, x.shape[2] - dx.shape[2]), (0, 0))),)


max_pool_2x2.defvjp(lambda x: (_max_of_views(x), x), _max_pool_bwd)
