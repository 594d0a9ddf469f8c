"""MediaPipe's BlazeFace `.tflite` files (REFERENCE.md §3.6) -> jaxface variables, by graph structure.

The graphs hold the same convolutions as hollance's models in the same order (TFLite names them
`conv2d_N` / `depthwise_conv2d_N`; the back file calls its heads `classificator_16/32`), so the
map walks the graph's convs in execution order against the model's (`_backbone_keys`), checking
each op's kind, kernel shape and stride (and, in the sparse file, which fuses them, its ReLU),
then assigns the heads by their output channels. The residual structure is checked by counting
ADD, MAX_POOL_2D, RESIZE_BILINEAR and DEPTH_TO_SPACE ops, and the sparse file's explicit PADs.
A graph that does not fit fails naming the first diverging node. Layouts: CONV_2D kernels
`(O, kh, kw, I)`, DEPTHWISE `(1, kh, kw, C)`; float16 weights are widened exactly and sparse ones
densified (`jaxface.tflite`).

The architecture is recognised from the input side, and at 192 px from the heads: the sparse
full-range file reads its heads out through DEPTH_TO_SPACE, the dense one does not.
"""
from __future__ import annotations

from typing import Any

import flax
import numpy as np

from jaxface import state_dicts, tflite
from jaxface.blazeface.model import (BACK_BACKBONE, FRONT_BACKBONE1, FRONT_BACKBONE2, FULL_RANGE_BACKBONE,
                                     FULL_RANGE_SKIPS, FULL_RANGE_TOP_DOWN, SPARSE_BACKBONE, SPARSE_HEAD_MID, SPECS,
                                     BlazeFace, BlazeSpec)
from jaxface.state_dicts import CheckpointMismatch

# The network input side -> the architecture (MediaPipe's short-range model is the front one).
BY_INPUT = {128: 'blazeface_front', 256: 'blazeface_back', 192: 'blazeface_full_range'}


def _heads(spec: BlazeSpec) -> dict[int, str]:
  """A head's output channels -> its module."""
  if spec.sparse:
    return {SPARSE_HEAD_MID: 'full_range_sparse.classifier', SPARSE_HEAD_MID * 16: 'full_range_sparse.regressor'}
  if spec.full_range:
    return {1: 'full_range.classifier', 16: 'full_range.regressor'}
  return {2: 'classifier_8', 6: 'classifier_16', 32: 'regressor_8', 96: 'regressor_16'}


def _residual_ops(spec: BlazeSpec) -> dict[str, int]:
  """How many ADD, MAX_POOL_2D, RESIZE_BILINEAR and DEPTH_TO_SPACE ops the graph has."""
  if spec.sparse:
    blocks = sum(s == 1 for *_, s in SPARSE_BACKBONE) + sum(b for _, _, b in FULL_RANGE_TOP_DOWN)
    return {'ADD': blocks + len(FULL_RANGE_TOP_DOWN), 'MAX_POOL_2D': 0, 'RESIZE_BILINEAR': len(FULL_RANGE_TOP_DOWN),
            'DEPTH_TO_SPACE': 2}
  if spec.full_range:
    blocks = len(FULL_RANGE_BACKBONE) + sum(b for _, _, b in FULL_RANGE_TOP_DOWN)
    return {'ADD': blocks + len(FULL_RANGE_TOP_DOWN), 'MAX_POOL_2D': sum(s == 2 for *_, s in FULL_RANGE_BACKBONE),
            'RESIZE_BILINEAR': len(FULL_RANGE_TOP_DOWN), 'DEPTH_TO_SPACE': 0}
  table = BACK_BACKBONE if spec.back else FRONT_BACKBONE1 + FRONT_BACKBONE2
  return {'ADD': len(table), 'MAX_POOL_2D': sum(s == 2 for *_, s in table), 'RESIZE_BILINEAR': 0, 'DEPTH_TO_SPACE': 0}


def _full_range_keys() -> list[tuple[str, str, int]]:
  def block(prefix, stride):
    return [(f'{prefix}.convs.0', 'DEPTHWISE_CONV_2D', stride), (f'{prefix}.convs.1', 'CONV_2D', 1),
            (f'{prefix}.convs.3', 'DEPTHWISE_CONV_2D', 1), (f'{prefix}.convs.4', 'CONV_2D', 1)]
  keys = [('full_range.backbone.0', 'CONV_2D', 2)]
  for i, (*_, stride) in enumerate(FULL_RANGE_BACKBONE):
    keys += block(f'full_range.backbone.{i + 2}', stride)
  for k, (_, _, blocks) in enumerate(FULL_RANGE_TOP_DOWN):
    keys += [(f'full_range.top_down.{k}.top', 'CONV_2D', 1), (f'full_range.top_down.{k}.lateral', 'CONV_2D', 1)]
    for j in range(blocks):
      keys += block(f'full_range.top_down.{k}.{j}', 1)
  return keys


def _sparse_keys() -> list[tuple[str, str, int, str | None]]:
  """The sparse graph's convs with their fused activation; each stage's lateral conv runs right
  after the backbone block it reads."""
  def block(prefix, stride):
    return [(f'{prefix}.convs.0', 'DEPTHWISE_CONV_2D', stride, None), (f'{prefix}.convs.1', 'CONV_2D', 1, 'RELU'),
            (f'{prefix}.convs.3', 'DEPTHWISE_CONV_2D', 1, None),
            (f'{prefix}.convs.4', 'CONV_2D', 1, 'RELU' if stride == 2 else None)]
  root = 'full_range_sparse'
  keys = [(f'{root}.backbone.0', 'CONV_2D', 2, 'RELU')]
  for i, (*_, stride) in enumerate(SPARSE_BACKBONE):
    keys += block(f'{root}.backbone.{i + 2}', stride)
    if i in FULL_RANGE_SKIPS:
      keys.append((f'{root}.top_down.{FULL_RANGE_SKIPS.index(i)}.lateral', 'CONV_2D', 1, 'RELU'))
  for k, (_, _, blocks) in enumerate(FULL_RANGE_TOP_DOWN):
    keys.append((f'{root}.top_down.{k}.top', 'CONV_2D', 1, 'RELU'))
    for j in range(blocks):
      keys += block(f'{root}.top_down.{k}.{j}', 1)
  return keys


def _backbone_keys(spec: BlazeSpec) -> list[tuple[str, str, int] | tuple[str, str, int, str | None]]:
  """`(module path, op, stride[, fused activation])` of every conv before the heads, in execution order."""
  if spec.sparse:
    return _sparse_keys()
  if spec.full_range:
    return _full_range_keys()
  def blocks(prefix, table, first):
    out = []
    for i, (_, _, stride) in enumerate(table):
      out += [(f'{prefix}.{first + i}.convs.0', 'DEPTHWISE_CONV_2D', stride), (f'{prefix}.{first + i}.convs.1', 'CONV_2D', 1)]
    return out
  if spec.back:
    return ([('backbone.0', 'CONV_2D', 2)] + blocks('backbone', BACK_BACKBONE, 2)
            + [('final.convs.0', 'DEPTHWISE_CONV_2D', 2), ('final.convs.1', 'CONV_2D', 1)])
  return [('backbone1.0', 'CONV_2D', 2)] + blocks('backbone1', FRONT_BACKBONE1, 2) + blocks('backbone2', FRONT_BACKBONE2, 0)


def recognise(path: str, model: tflite.Model | None = None) -> str:
  """The architecture of a MediaPipe BlazeFace file, from its input size (and its heads at 192 px)."""
  model = model or tflite.read(path)
  if len(model.inputs) != 1:
    raise CheckpointMismatch(f'{path}: expected one input tensor, found {len(model.inputs)}')
  shape = model.tensors[model.inputs[0]].shape
  if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3 or shape[1] not in BY_INPUT:
    known = ', '.join(f'{s}x{s}x3 ({a})' for s, a in BY_INPUT.items())
    raise CheckpointMismatch(f'{path}: input {shape} is not a BlazeFace model jaxface reads; known: {known}')
  if shape[1] == 192 and any(op.op == 'DEPTH_TO_SPACE' for op in model.operators):
    return 'blazeface_full_range_sparse'
  return BY_INPUT[shape[1]]


def _flax_kernel(value: np.ndarray, op: str) -> np.ndarray:
  if op == 'DEPTHWISE_CONV_2D':   # (1, kh, kw, C) -> (kh, kw, 1, C)
    return value.transpose(1, 2, 0, 3)
  return value.transpose(1, 2, 3, 0)  # (O, kh, kw, I) -> (kh, kw, I, O)


def convert_tflite(path: str, arch: str | None = None) -> tuple[str, dict[str, Any]]:
  """A MediaPipe BlazeFace `.tflite` file -> `(arch, {'params'})`; `arch` None: recognised."""
  model = tflite.read(path)
  found = recognise(path, model)
  if arch is not None and arch != found:
    raise CheckpointMismatch(f'{path} holds a {found} model ({model.tensors[model.inputs[0]].shape} input), not {arch}')
  spec = SPECS[found]
  shapes = flax.traverse_util.flatten_dict(state_dicts.template(BlazeFace(spec), spec.input_size)['params'])
  convs = [op for op in model.operators if op.op in ('CONV_2D', 'DEPTHWISE_CONV_2D')]
  expected = _backbone_keys(spec)
  heads = _heads(spec)
  n_heads = len(heads) * (2 if spec.sparse else 1)
  if len(convs) != len(expected) + n_heads:
    raise CheckpointMismatch(f'{path}: {len(convs)} convolutions, expected {len(expected) + n_heads} for {found}')
  params = {}

  def take(op, key):
    where = f'node {op.index} ({op.op} {model.tensors[op.outputs[0]].name!r}): '
    kernel = _flax_kernel(model.constant(op.inputs[1], where), op.op)
    bias = model.constant(op.inputs[2], where) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    want = shapes[tuple(key.split('.')) + ('kernel',)].shape
    if kernel.shape != want or bias is None or bias.shape != (want[-1],):
      raise CheckpointMismatch(f'{path}: {where}kernel {kernel.shape} (Flax layout) and bias '
                               f'{None if bias is None else bias.shape}, expected {want} and ({want[-1]},) for {key}')
    params[tuple(key.split('.')) + ('kernel',)] = np.ascontiguousarray(kernel, np.float32)
    params[tuple(key.split('.')) + ('bias',)] = np.asarray(bias, np.float32)

  for op, (key, kind, stride, *act) in zip(convs, expected):
    if op.op != kind or op.stride != (stride, stride) or (act and op.activation != act[0]):
      also = f', fused {act[0] or "no activation"}' if act else ''
      raise CheckpointMismatch(f'{path}: node {op.index} ({op.op} {model.tensors[op.outputs[0]].name!r}, stride '
                               f'{op.stride}, fused {op.activation}) diverges from {found}: expected {kind} at '
                               f'stride {stride}{also} for {key}')
    take(op, key)
  head_ops = convs[len(expected):]
  if spec.sparse:  # each head: a 1x1 conv, then a depthwise one of the same width
    def channels(op):
      return model.constant(op.inputs[1]).shape[0 if op.op == 'CONV_2D' else 3]
    outs = sorted(channels(op) for op in head_ops if op.op == 'CONV_2D')
    if outs != sorted(heads) or sorted(channels(op) for op in head_ops if op.op != 'CONV_2D') != outs:
      raise CheckpointMismatch(f'{path}: head convs {[(op.op, channels(op)) for op in head_ops]}, expected a 1x1 '
                               f'and a depthwise conv of each of {sorted(heads)} channels')
    for op in head_ops:
      take(op, heads[channels(op)] + ('.0' if op.op == 'CONV_2D' else '.1'))
  else:
    outs = sorted(model.constant(op.inputs[1]).shape[0] for op in head_ops)
    if outs != sorted(heads):
      raise CheckpointMismatch(f'{path}: head convs with {outs} output channels, expected {sorted(heads)}')
    for op in head_ops:
      take(op, heads[model.constant(op.inputs[1]).shape[0]])
  want = _residual_ops(spec)
  counts = {name: sum(op.op == name for op in model.operators) for name in want}
  if spec.sparse:  # the blocks' ADDs fuse their ReLU, the top-down merges' do not
    want['ADD with ReLU'] = want['ADD'] - len(FULL_RANGE_TOP_DOWN)
    counts['ADD with ReLU'] = sum(op.op == 'ADD' and op.activation == 'RELU' for op in model.operators)
  if counts != want:
    raise CheckpointMismatch(f'{path}: the graph has {counts} ops, expected {want} for {found}')
  for op in model.operators:
    if op.op == 'RESIZE_BILINEAR' and (not op.half_pixel_centers or op.align_corners):
      raise CheckpointMismatch(f'{path}: node {op.index} (RESIZE_BILINEAR) is not half-pixel-centred, as '
                               f'{found} upsamples (jaxface.blazeface.model.upsample_bilinear_2x)')
    if op.op == 'DEPTH_TO_SPACE' and op.block_size != 2:
      raise CheckpointMismatch(f'{path}: node {op.index} (DEPTH_TO_SPACE) has block size {op.block_size}, expected 2')
    if op.op == 'PAD' and spec.sparse:
      pads = model.constant(op.inputs[1], f'node {op.index} (PAD): ').tolist()
      if pads != [[0, 0], [1, 1], [1, 1], [0, 0]]:
        raise CheckpointMismatch(f'{path}: node {op.index} (PAD) pads {pads}, expected 1 on each side of H and W')
  return found, {'params': flax.traverse_util.unflatten_dict(params)}
