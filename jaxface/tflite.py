"""A reader for TFLite model files with no dependencies: the tensors, their weights and the operators
of the first subgraph, enough to map a released model onto jaxface modules by graph structure.

A `.tflite` file is a FlatBuffer (schema: tensorflow/lite/schema/schema.fbs). A table starts with a
signed offset back to its vtable, whose 16-bit entries give each field's position in the table (0:
absent, the schema's default); reference fields hold an unsigned offset forward from where they sit.
Only the fields below are read; field numbers are the schema's.

Weights: float32 buffers as they are; float16 buffers (MediaPipe's models) are widened to float32
exactly, and a tensor produced by a DEQUANTIZE or DENSIFY op reads through to its source, as the
interpreter would compute it. Sparse tensors (the `_sparse` full-range file's 1x1 kernels) are
densified when the file is read (`densify`: the schema's SparsityParameters, dense and CSR levels
in any traversal order, with or without blocks; the real file's layout and the tests' cover both).
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
  data: np.ndarray | None   # the constant's values (float16 kept as stored, sparse ones densified), or None
  sparse: bool              # stored sparse in the file (`data` holds it densified)


@dataclasses.dataclass(frozen=True)
class Operator:
  index: int
  op: str                   # OP_NAMES[code], or 'OP_<code>'
  inputs: tuple[int, ...]   # tensor indices (-1: an optional input left out)
  outputs: tuple[int, ...]
  stride: tuple[int, int]   # (h, w), convs and pools
  padding: str              # 'SAME' / 'VALID', convs and pools
  activation: str | None    # the fused activation of convs, pools and ADD
  filter: tuple[int, int]   # (h, w), pools
  half_pixel_centers: bool = False   # RESIZE_BILINEAR
  align_corners: bool = False        # RESIZE_BILINEAR
  block_size: int = 0                # DEPTH_TO_SPACE


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
      if op is not None and op.op in ('DEQUANTIZE', 'DENSIFY'):
        return self.constant(op.inputs[0], where)
      raise TFLiteError(f'{self.path}: {where}tensor {t.name!r} is not a constant')
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
      sparsity = t.table(6)
      sparse = sparsity is not None
      if len(raw):  # a sparse tensor's buffer holds only its stored values
        data = np.frombuffer(raw.tobytes(), dtype)
        where = f'{path}: tensor {t.string(3)!r}'
        data = densify(data, shape, _sparsity(sparsity, where), where) if sparse else data.reshape(shape)
    tensors.append(Tensor(i, t.string(3), shape, dtype, data, sparse))
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
    if options is not None and name == 'ADD':   # AddOptions: fused_activation_function
      activation = ACTIVATION.get(options.scalar(0, 'b', 0), '?')
    resize = (False, False)
    if options is not None and name == 'RESIZE_BILINEAR':
      resize = (bool(options.scalar(3, 'b', 0)), bool(options.scalar(2, 'b', 0)))
    block = options.scalar(0, 'i', 0) if options is not None and name == 'DEPTH_TO_SPACE' else 0
    operators.append(Operator(i, name, tuple(int(v) for v in op.vector(1, '<i4')),
                              tuple(int(v) for v in op.vector(2, '<i4')), stride, padding, activation, filt, *resize,
                              block_size=block))
  return Model(path, tuple(tensors), tuple(operators), tuple(int(v) for v in graph.vector(1, '<i4')),
               tuple(int(v) for v in graph.vector(2, '<i4')))


# SparseIndexVector union types (schema.fbs): Int32Vector, Uint16Vector, Uint8Vector.
_INDEX_FORMATS = {1: '<i4', 2: '<u2', 3: 'u1'}


def _index_vector(dim: _Table, type_field: int, where: str) -> np.ndarray:
  kind = dim.scalar(type_field, 'B', 0)
  table = dim.table(type_field + 1)
  if kind not in _INDEX_FORMATS or table is None:
    raise TFLiteError(f'{where}: a sparse dimension without its index vector (type {kind})')
  return table.vector(0, _INDEX_FORMATS[kind]).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Sparsity:
  """A tensor's SparsityParameters (schema.fbs). `order` lists the storage levels, first the tensor's
  own dims (permuted), then one block dim per entry of `block_map` (the dim it subdivides);
  `levels[k]` is None for a DENSE level (every index below `sizes[k]`) or `(segments, indices)`
  for a SPARSE_CSR one (the indices `indices[segments[p]:segments[p + 1]]` under parent position p)."""
  order: tuple[int, ...]
  block_map: tuple[int, ...]
  sizes: tuple[int, ...]
  levels: tuple[tuple[np.ndarray, np.ndarray] | None, ...]


def _sparsity(table: _Table, where: str) -> Sparsity:
  levels = []
  for level, d in enumerate(table.tables(2)):
    fmt = d.scalar(0, 'b', 0)
    if fmt not in (0, 1):
      raise TFLiteError(f'{where}: sparsity level {level} has format {fmt} (expected DENSE 0 or SPARSE_CSR 1)')
    levels.append(None if fmt == 0 else (_index_vector(d, 2, where), _index_vector(d, 4, where)))
  return Sparsity(tuple(int(v) for v in table.vector(0, '<i4')), tuple(int(v) for v in table.vector(1, '<i4')),
                  tuple(d.scalar(1, 'i', 0) for d in table.tables(2)), tuple(levels))


def densify(values: np.ndarray, shape: tuple[int, ...], sparsity: Sparsity, where: str) -> np.ndarray:
  """A sparse tensor's stored `values` (in traversal order) -> the dense `shape` array, as TFLite's
  DENSIFY computes it: a value's position is its level indices mapped back, `dim * block + inner`
  for a blocked dim."""
  order, block_map, sizes, levels = sparsity.order, sparsity.block_map, sparsity.sizes, sparsity.levels
  rank = len(shape)
  if sorted(order) != list(range(rank + len(block_map))) or len(levels) != len(order):
    raise TFLiteError(f'{where}: sparsity with traversal order {list(order)} and {len(levels)} levels does not '
                      f'fit a rank-{rank} tensor with block map {list(block_map)}')
  block_sizes = [sizes[order.index(rank + j)] for j in range(len(block_map))]  # the level traversing block j
  # Level by level: `coords` [P, L] are the level indices of every stored prefix, `parent` [P] its
  # position within its level (what the next CSR level's segments index).
  coords = np.zeros((1, 0), np.int64)
  parent = np.zeros((1,), np.int64)
  for level, csr in enumerate(levels):
    if csr is None:
      n = sizes[level]
      inner = np.tile(np.arange(n), len(parent))
      coords = np.concatenate([np.repeat(coords, n, axis=0), inner[:, None]], axis=1)
      parent = np.repeat(parent, n) * n + inner
    else:
      segments, indices = csr
      if len(segments) < parent.max(initial=0) + 2:
        raise TFLiteError(f'{where}: sparsity level {level} has {len(segments)} segments for parents up to '
                          f'{parent.max(initial=0)}')
      counts = segments[parent + 1] - segments[parent]
      positions = np.concatenate([np.arange(segments[p], segments[p + 1]) for p in parent] + [np.zeros((0,), np.int64)])
      coords = np.concatenate([np.repeat(coords, counts, axis=0), indices[positions][:, None]], axis=1)
      parent = positions
  if len(coords) != len(values):
    raise TFLiteError(f'{where}: the sparsity describes {len(coords)} values, the buffer holds {len(values)}')
  dense_index = np.zeros((len(coords), rank), np.int64)
  for level, dim in enumerate(order[:rank]):
    dense_index[:, dim] = coords[:, level]
  for level in range(rank, len(order)):
    j = order[level] - rank
    dense_index[:, block_map[j]] = dense_index[:, block_map[j]] * block_sizes[j] + coords[:, level]
  if np.any(dense_index >= np.asarray(shape)) or np.any(dense_index < 0):
    raise TFLiteError(f'{where}: a sparse index falls outside the shape {shape}')
  out = np.zeros(shape, values.dtype)
  out[tuple(dense_index.T)] = values
  return out
