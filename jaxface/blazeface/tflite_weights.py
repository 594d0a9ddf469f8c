"""MediaPipe's BlazeFace `.tflite` files (REFERENCE.md §3.6) -> jaxface variables, by graph structure.

The graphs hold the same convolutions as hollance's models in the same order (TFLite names them
`conv2d_N` / `depthwise_conv2d_N`; the back file calls its heads `classificator_16/32`), so the
map walks the graph's convs in execution order against the model's (`_backbone_keys`), checking
each op's kind, kernel shape and stride, then assigns the four heads by their output channels.
The residual structure is checked by counting ADD, MAX_POOL_2D and RESIZE_BILINEAR ops. A graph that does not
fit fails naming the first diverging node. Layouts: CONV_2D kernels `(O, kh, kw, I)`, DEPTHWISE
`(1, kh, kw, C)`; float16 weights are widened exactly (`jaxface.tflite`).
"""
from __future__ import annotations

from typing import Any

import flax
import numpy as np

from jaxface import state_dicts, tflite
from jaxface.blazeface.model import (BACK_BACKBONE, FRONT_BACKBONE1, FRONT_BACKBONE2, FULL_RANGE_BACKBONE,
                                     FULL_RANGE_TOP_DOWN, SPECS, BlazeFace, BlazeSpec)
from jaxface.state_dicts import CheckpointMismatch

# The network input side -> the architecture (MediaPipe's short-range model is the front one).
BY_INPUT = {128: 'blazeface_front', 256: 'blazeface_back', 192: 'blazeface_full_range'}


def _heads(spec: BlazeSpec) -> dict[int, str]:
  """A head's output channels -> its module."""
  if spec.full_range:
    return {1: 'full_range.classifier', 16: 'full_range.regressor'}
  return {2: 'classifier_8', 6: 'classifier_16', 32: 'regressor_8', 96: 'regressor_16'}


def _residual_ops(spec: BlazeSpec) -> dict[str, int]:
  """How many ADD, MAX_POOL_2D and RESIZE_BILINEAR ops the graph has."""
  if spec.full_range:
    blocks = len(FULL_RANGE_BACKBONE) + sum(b for _, _, b in FULL_RANGE_TOP_DOWN)
    return {'ADD': blocks + len(FULL_RANGE_TOP_DOWN), 'MAX_POOL_2D': sum(s == 2 for *_, s in FULL_RANGE_BACKBONE),
            'RESIZE_BILINEAR': len(FULL_RANGE_TOP_DOWN)}
  table = BACK_BACKBONE if spec.back else FRONT_BACKBONE1 + FRONT_BACKBONE2
  return {'ADD': len(table), 'MAX_POOL_2D': sum(s == 2 for *_, s in table), 'RESIZE_BILINEAR': 0}


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


def _backbone_keys(spec: BlazeSpec) -> list[tuple[str, str, int]]:
  """`(module path, op, stride)` of every conv before the heads, in execution order."""
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
  """The architecture of a MediaPipe BlazeFace file, from its input size."""
  model = model or tflite.read(path)
  if len(model.inputs) != 1:
    raise CheckpointMismatch(f'{path}: expected one input tensor, found {len(model.inputs)}')
  shape = model.tensors[model.inputs[0]].shape
  if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3 or shape[1] not in BY_INPUT:
    known = ', '.join(f'{s}x{s}x3 ({a})' for s, a in BY_INPUT.items())
    raise CheckpointMismatch(f'{path}: input {shape} is not a BlazeFace model jaxface reads; known: {known}')
  return BY_INPUT[shape[1]]


def _flax_kernel(value: np.ndarray, op: str) -> np.ndarray:
  if op == 'DEPTHWISE_CONV_2D':   # (1, kh, kw, C) -> (kh, kw, 1, C)
    return value.transpose(1, 2, 0, 3)
  return value.transpose(1, 2, 3, 0)  # (O, kh, kw, I) -> (kh, kw, I, O)


def convert_tflite(path: str, arch: str | None = None) -> tuple[str, dict[str, Any]]:
  """A MediaPipe BlazeFace `.tflite` file -> `(arch, {'params'})`; `arch` None: recognised."""
  model = tflite.read(path)
  densify = sum(op.op == 'DENSIFY' for op in model.operators)
  if densify:
    raise CheckpointMismatch(f'{path}: its weights are stored sparse ({densify} DENSIFY ops, MediaPipe\'s '
                             '`_sparse` full-range variant, whose graph also differs); not supported: load '
                             'face_detection_full_range.tflite, the dense file')
  found = recognise(path, model)
  if arch is not None and arch != found:
    raise CheckpointMismatch(f'{path} holds a {found} model ({model.tensors[model.inputs[0]].shape} input), not {arch}')
  spec = SPECS[found]
  shapes = flax.traverse_util.flatten_dict(state_dicts.template(BlazeFace(spec), spec.input_size)['params'])
  convs = [op for op in model.operators if op.op in ('CONV_2D', 'DEPTHWISE_CONV_2D')]
  expected = _backbone_keys(spec)
  heads = _heads(spec)
  if len(convs) != len(expected) + len(heads):
    raise CheckpointMismatch(f'{path}: {len(convs)} convolutions, expected {len(expected) + len(heads)} for {found}')
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

  for op, (key, kind, stride) in zip(convs, expected):
    if op.op != kind or op.stride != (stride, stride):
      raise CheckpointMismatch(f'{path}: node {op.index} ({op.op} {model.tensors[op.outputs[0]].name!r}, stride '
                               f'{op.stride}) diverges from {found}: expected {kind} at stride {stride} for {key}')
    take(op, key)
  head_ops = convs[len(expected):]
  outs = sorted(model.constant(op.inputs[1]).shape[0] for op in head_ops)
  if outs != sorted(heads):
    raise CheckpointMismatch(f'{path}: head convs with {outs} output channels, expected {sorted(heads)}')
  for op in head_ops:
    take(op, heads[model.constant(op.inputs[1]).shape[0]])
  want = _residual_ops(spec)
  counts = {name: sum(op.op == name for op in model.operators) for name in want}
  if counts != want:
    raise CheckpointMismatch(f'{path}: the graph has {counts} ops, expected {want} for {found}')
  for op in model.operators:
    if op.op == 'RESIZE_BILINEAR' and (not op.half_pixel_centers or op.align_corners):
      raise CheckpointMismatch(f'{path}: node {op.index} (RESIZE_BILINEAR) is not half-pixel-centred, as '
                               f'{found} upsamples (jaxface.blazeface.model.upsample_bilinear_2x)')
  return found, {'params': flax.traverse_util.unflatten_dict(params)}
