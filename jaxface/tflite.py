"""A reader for TFLite model files with no dependencies: the tensors, their weights and the operators
of the first subgraph, enough to map a released model onto jaxface modules by graph structure.

A `.tflite` file is a FlatBuffer (schema: tensorflow/lite/schema/schema.fbs). A table starts with a
signed offset back to its vtable, whose 16-bit entries give each field's position in the table (0:
absent, the schema's default); reference fields hold an unsigned offset forward from where they sit.
Only the fields below are read; field numbers are the schema's.

Weights: float32 buffers as they are; float16 buffers (MediaPipe's models) are widened to float32
exactly, and a tensor produced by a DEQUANTIZE op reads through to its source, as the interpreter
would compute it. Sparse tensors (DENSIFY, the `_sparse` full-range file) are refused by name.
"""
from __future__ import annotations

import dataclasses
import struct
from typing import Any

import numpy as np

# BuiltinOperator codes (schema.fbs) of the ops jaxface's TFLite models use.
OP_NAMES = {0: 'ADD', 2: 'CONCATENATION', 3: 'CONV_2D', 4: 'DEPTHWISE_CONV_2D', 5: 'DEPTH_TO_SPACE', 6: 'DEQUANTIZE',
            17: 'MAX_POOL_2D', 19: 'RELU', 22: 'RESHAPE', 23: 'RESIZE_BILINEAR', 34: 'PAD', 124: 'DENSIFY'}
# TensorType -> numpy dtype.
DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16, 9: np.int8}
PADDING = {0: 'SAME', 1: 'VALID'}
ACTIVATION = {0: None, 1: 'RELU', 2: 'RELU_N1_TO_1', 3: 'RELU6'}


class TFLiteError(ValueError):
  """The file is not a TFLite model jaxface can read, or not the model it was asked for."""


class _Table:
  """One FlatBuffer table: typed access to its fields by number."""

  def __init__(self, buf: bytes, pos: int, path: str):
    self.buf, self.pos, self.path = buf, pos, path
    vtable = pos - struct.unpack_from('<i', buf, pos)[0]
    vsize = struct.unpack_from('<H', buf, vtable)[0]
    self.fields = struct.unpack_from(f'<{(vsize - 4) // 2}H', buf, vtable + 4)

  def _at(self, field: int) -> int | None:
    off = self.fields[field] if field < len(self.fields) else 0
    return None if off == 0 else self.pos + off

  def scalar(self, field: int, fmt: str, default: Any = 0) -> Any:
    at = self._at(field)
    return default if at is None else struct.unpack_from('<' + fmt, self.buf, at)[0]

  def _target(self, field: int) -> int | None:
    at = self._at(field)
    return None if at is None else at + struct.unpack_from('<I', self.buf, at)[0]

  def table(self, field: int) -> _Table | None:
    at = self._target(field)
    return None if at is None else _Table(self.buf, at, self.path)

  def string(self, field: int) -> str:
    at = self._target(field)
    if at is None:
      return ''
    n = struct.unpack_from('<I', self.buf, at)[0]
    return self.buf[at + 4:at + 4 + n].decode('utf-8', 'replace')

  def vector(self, field: int, fmt: str) -> np.ndarray:
    """A vector of scalars (numpy format `fmt`, e.g. '<i4')."""
    at = self._target(field)
    if at is None:
      return np.zeros((0,), fmt)
    n = struct.unpack_from('<I', self.buf, at)[0]
    return np.frombuffer(self.buf, fmt, n, at + 4)

  def tables(self, field: int) -> list[_Table]:
    at = self._target(field)
    if at is None:
      return []
    n = struct.unpack_from('<I', self.buf, at)[0]
    out = []
    for i in range(n):
      p = at + 4 + 4 * i
      out.append(_Table(self.buf, p + struct.unpack_from('<I', self.buf, p)[0], self.path))
    return out


@dataclasses.dataclass(frozen=True)
class Tensor:
  index: int
  name: str
  shape: tuple[int, ...]
  dtype: Any
  data: np.ndarray | None   # the constant's values (float16 kept as stored), or None for activations
  sparse: bool              # stored sparse: `data` is the flat list of stored values


@dataclasses.dataclass(frozen=True)
class Operator:
  index: int
  op: str                   # OP_NAMES[code], or 'OP_<code>'
  inputs: tuple[int, ...]   # tensor indices (-1: an optional input left out)
  outputs: tuple[int, ...]
  stride: tuple[int, int]   # (h, w), convs and pools
  padding: str              # 'SAME' / 'VALID', convs and pools
  activation: str | None    # the fused activation of convs and pools
  filter: tuple[int, int]   # (h, w), pools
  half_pixel_centers: bool = False   # RESIZE_BILINEAR
  align_corners: bool = False        # RESIZE_BILINEAR


@dataclasses.dataclass(frozen=True)
class Model:
  """The first subgraph of a TFLite file."""
  path: str
  tensors: tuple[Tensor, ...]
  operators: tuple[Operator, ...]
  inputs: tuple[int, ...]
  outputs: tuple[int, ...]

  def producer(self, tensor: int) -> Operator | None:
    for op in self.operators:
      if tensor in op.outputs:
        return op
    return None

  def consumers(self, tensor: int) -> list[Operator]:
    return [op for op in self.operators if tensor in op.inputs]

  def constant(self, tensor: int, where: str = '') -> np.ndarray:
    """A constant tensor's values as float32 (int types as stored), reading through DEQUANTIZE."""
    t = self.tensors[tensor]
    if t.data is None:
      op = self.producer(tensor)
      if op is not None and op.op == 'DEQUANTIZE':
        return self.constant(op.inputs[0], where)
      if op is not None and op.op == 'DENSIFY':
        raise TFLiteError(f'{self.path}: {where}tensor {t.name!r} is stored sparse (DENSIFY); '
                          'sparse weights are not supported: use the dense file')
      raise TFLiteError(f'{self.path}: {where}tensor {t.name!r} is not a constant')
    if t.sparse:
      raise TFLiteError(f'{self.path}: {where}tensor {t.name!r} is stored sparse; sparse weights are not supported')
    return t.data.astype(np.float32) if t.data.dtype == np.float16 else t.data


def read(path: str) -> Model:
  """Parses a `.tflite` file; a file that is not one fails naming it."""
  with open(path, 'rb') as f:
    buf = f.read()
  if len(buf) < 8 or buf[4:8] != b'TFL3':
    raise TFLiteError(f'{path}: not a TFLite model (no TFL3 identifier)')
  try:
    return _parse(buf, path)
  except (struct.error, IndexError, ValueError) as e:
    if isinstance(e, TFLiteError):
      raise
    raise TFLiteError(f'{path}: a malformed TFLite file ({e})') from e


def _parse(buf: bytes, path: str) -> Model:
  model = _Table(buf, struct.unpack_from('<I', buf, 0)[0], path)
  codes = []
  for oc in model.tables(1):
    deprecated = oc.scalar(0, 'b', 0)
    codes.append(oc.scalar(3, 'i', 0) if deprecated == 127 else deprecated)
  buffers = model.tables(4)
  subgraphs = model.tables(2)
  if not subgraphs:
    raise TFLiteError(f'{path}: the model has no subgraph')
  graph = subgraphs[0]
  tensors = []
  for i, t in enumerate(graph.tables(0)):
    shape = tuple(int(v) for v in t.vector(0, '<i4'))
    type_code = t.scalar(1, 'b', 0)
    dtype = DTYPES.get(type_code)
    data = None
    sparse = False
    b = t.scalar(2, 'I', 0)
    if b and dtype is not None and b < len(buffers):
      raw = buffers[b].vector(0, 'u1')
      offset, size = buffers[b].scalar(1, 'Q', 0), buffers[b].scalar(2, 'Q', 0)
      if not len(raw) and offset > 1:  # large models keep their buffers after the FlatBuffer
        raw = np.frombuffer(buf, np.uint8, size, offset)
      sparse = t.table(6) is not None
      if len(raw):  # a sparse tensor's buffer holds only its stored values: not reshaped
        data = np.frombuffer(raw.tobytes(), dtype)
        data = data if sparse else data.reshape(shape)
    tensors.append(Tensor(i, t.string(3), shape, dtype, data, t.table(6) is not None))
  operators = []
  for i, op in enumerate(graph.tables(3)):
    code = codes[op.scalar(0, 'I', 0)]
    name = OP_NAMES.get(code, f'OP_{code}')
    options = op.table(4)
    stride, padding, activation, filt = (1, 1), '', None, (0, 0)
    if options is not None and name in ('CONV_2D', 'DEPTHWISE_CONV_2D', 'MAX_POOL_2D'):
      padding = PADDING.get(options.scalar(0, 'b', 0), '?')
      stride = (options.scalar(2, 'i', 0), options.scalar(1, 'i', 0))
      act_field = {'CONV_2D': 3, 'DEPTHWISE_CONV_2D': 4, 'MAX_POOL_2D': 5}[name]
      activation = ACTIVATION.get(options.scalar(act_field, 'b', 0), '?')
      if name == 'MAX_POOL_2D':
        filt = (options.scalar(4, 'i', 0), options.scalar(3, 'i', 0))
    resize = (False, False)
    if options is not None and name == 'RESIZE_BILINEAR':
      resize = (bool(options.scalar(3, 'b', 0)), bool(options.scalar(2, 'b', 0)))
    operators.append(Operator(i, name, tuple(int(v) for v in op.vector(1, '<i4')),
                              tuple(int(v) for v in op.vector(2, '<i4')), stride, padding, activation, filt, *resize))
  return Model(path, tuple(tensors), tuple(operators), tuple(int(v) for v in graph.vector(1, '<i4')),
               tuple(int(v) for v in graph.vector(2, '<i4')))
