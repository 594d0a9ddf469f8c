"""insightface's SCRFD ONNX files -> SCRFD variables, by graph structure (REFERENCE.md §2.10).

The released files (buffalo_l `det_10g.onnx`, antelopev2 `scrfd_10g_bnkps.onnx`, buffalo_s/m
`det_500m.onnx`) are BatchNorm models exported in eval mode: every BN is folded into the conv before it
(a conv with a bias), and tensor names are numbers, so nothing can be matched by name. The exporter
writes the graph in the order the network runs, and so does the Flax model: the i-th `Conv` node is the
i-th conv the model calls (a shared head's conv is called once per level and must read the same
initializer each time), and the i-th `Mul` by a scalar initializer is the i-th `Scale`. A folded conv
`y = W x + b` loads as the Flax conv's kernel `W` and its BatchNorm as the identity plus `b` (scale 1,
mean 0, var 1 - eps). A residual block's shortcut and main branch may come in either order (the conv is
matched to the first of the next `WINDOW` nodes that fits it). Any divergence (node count, kernel shape,
stride, groups) fails naming the node.

`onnx` is an optional extra (`pip install onnx`); nothing else needs it.
"""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxface import layers
from jaxface.state_dicts import CheckpointMismatch, template
from jaxface.scrfd.model import SCRFD, SPECS, ScrfdSpec, _Scale


def _call_order(spec: ScrfdSpec) -> list[tuple[str, tuple[str, ...], Any]]:
  """`(kind, module path, module)` of every conv, BatchNorm and Scale call, in the order the model runs
  (plain layers: every conv and BN runs as its own module)."""
  calls = []

  def record(next_fun, args, kwargs, context):
    m = context.module
    if context.method_name == '__call__' and isinstance(m, (layers.Conv, layers.BatchNorm, _Scale)):
      kind = {layers.Conv: 'conv', layers.BatchNorm: 'bn', _Scale: 'scale'}[type(m)]
      calls.append((kind, m.path, m))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(SCRFD(spec, cpu_kernels=False).init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  return calls


def _onnx_graph(path: str):
  try:
    import onnx
    from onnx import numpy_helper
  except ImportError as e:
    raise ImportError(f'{path}: reading ONNX files needs the optional `onnx` package (pip install onnx)') from e
  try:
    model = onnx.load(path)
  except Exception as e:  # noqa: BLE001  protobuf's DecodeError and friends: not an ONNX model at all
    raise CheckpointMismatch(f'{path}: not a readable ONNX model ({type(e).__name__}: {e})') from e
  inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
  for node in model.graph.node:  # constants stored as nodes, and shared initializers behind Identity nodes
    if node.op_type == 'Constant' and node.attribute and node.attribute[0].HasField('t'):
      inits.setdefault(node.output[0], numpy_helper.to_array(node.attribute[0].t))
    elif node.op_type == 'Identity' and node.input[0] in inits:
      inits.setdefault(node.output[0], inits[node.input[0]])
  return model.graph, inits


def _attr(node, name, default):
  for a in node.attribute:
    if a.name == name:
      return list(a.ints) if a.ints else a.i
  return default


WINDOW = 4  # how far ahead in the graph a conv may sit (a residual block's shortcut and main branch)


def _fits(node, conv, inits) -> bool:
  w = inits.get(node.input[1])
  k = conv.kernel_size
  return (w is not None and w.ndim == 4 and w.shape[0] == conv.features and w.shape[2:] == (k, k)
          and list(_attr(node, 'strides', [1, 1])) == [conv.stride] * 2 and _attr(node, 'group', 1) == conv.groups)


def _describe(node, inits) -> str:
  w = inits.get(node.input[1])
  return (f'weight {None if w is None else list(w.shape)}, strides {_attr(node, "strides", [1, 1])}, '
          f'groups {_attr(node, "group", 1)}')


def _expected(conv) -> str:
  return f'weight [{conv.features}, I, {conv.kernel_size}, {conv.kernel_size}], stride {conv.stride}, groups {conv.groups}'


def convert_onnx(path: str, spec: ScrfdSpec, *, eps: float = 1e-5) -> dict[str, Any]:
  """An SCRFD ONNX file with BatchNorm folded -> `{'params', 'batch_stats'}` for `spec`; strict."""
  if spec.gn_groups is not None:
    raise CheckpointMismatch(f'{path}: ONNX files load for the BatchNorm SCRFD models (the *_bnkps releases); '
                             f'this spec has GroupNorm heads')
  graph, inits = _onnx_graph(path)
  convs = [n for n in graph.node if n.op_type == 'Conv']
  scales = [n for n in graph.node if n.op_type == 'Mul' and any(
      i in inits and inits[i].size == 1 for i in n.input)]
  calls = _call_order(spec)
  conv_calls = [c for c in calls if c[0] == 'conv']
  scale_calls = [c for c in calls if c[0] == 'scale']
  bn_after = {}  # conv path -> the BN called right after it
  for (kind, p, _), (next_kind, q, _) in zip(calls, calls[1:]):
    if kind == 'conv' and next_kind == 'bn':
      bn_after[p] = q
  params, stats, source = {}, {}, {}
  pending = list(enumerate(convs))  # ONNX convs not matched yet, in graph order
  for _, p, conv in conv_calls:
    if not pending:
      raise CheckpointMismatch(f'{path}: the graph has {len(convs)} Conv nodes; the architecture runs '
                               f'{len(conv_calls)} convs (the next is {"/".join(p)})')
    # The graph order is the run order up to the two branches of a residual block, which an exporter
    # may emit either way: take the first of the next few nodes that fits this conv.
    fits = [j for j, (_, node) in enumerate(pending[:WINDOW]) if _fits(node, conv, inits)]
    if not fits:
      i, node = pending[0]
      raise CheckpointMismatch(f'{path}: Conv node {i} ({node.name or node.output[0]}): {_describe(node, inits)}, '
                               f'expected {_expected(conv)} for {"/".join(p)}')
    i, node = pending.pop(fits[0])
    w = inits[node.input[1]]
    b = None
    if len(node.input) > 2 and node.input[2]:
      if node.input[2] not in inits:
        raise CheckpointMismatch(f'{path}: Conv node {i} ({node.name or node.output[0]}): its bias '
                                 f'{node.input[2]!r} is not a constant of the graph')
      b = inits[node.input[2]]
    if p in source:  # a shared head's conv, called again for the next level
      if source[p] != tuple(node.input[1:]):
        raise CheckpointMismatch(f'{path}: Conv node {i} ({node.name or node.output[0]}): {"/".join(p)} is shared '
                                 'across levels, but this node reads other weights')
      continue
    source[p] = tuple(node.input[1:])
    params[p + ('kernel',)] = w.astype(np.float32).transpose(2, 3, 1, 0)
    bias = np.zeros(conv.features, np.float32) if b is None else b.astype(np.float32)
    if conv.use_bias:
      params[p + ('bias',)] = bias
    elif p in bn_after:
      q = bn_after[p]
      params[q + ('scale',)], params[q + ('bias',)] = np.ones_like(bias), bias
      stats[q + ('mean',)], stats[q + ('var',)] = np.zeros_like(bias), np.full_like(bias, 1.0 - eps)
  if pending:
    i, node = pending[0]
    raise CheckpointMismatch(f'{path}: Conv node {i} ({node.name or node.output[0]}) and {len(pending) - 1} more are '
                             f'left over: the architecture runs {len(conv_calls)} convs')
  if len(scales) != len(scale_calls):
    raise CheckpointMismatch(f'{path}: {len(scales)} Scale (Mul by a scalar) nodes; the architecture has '
                             f'{len(scale_calls)}')
  for node, (_, p, _) in zip(scales, scale_calls):
    value = next(inits[i] for i in node.input if i in inits and inits[i].size == 1)
    params[p + ('value',)] = np.asarray(value, np.float32).reshape(())
  variables = {'params': flax.traverse_util.unflatten_dict(params),
               'batch_stats': flax.traverse_util.unflatten_dict(stats)}
  want_shapes = jax.tree_util.tree_map(lambda a: a.shape, template(SCRFD(spec)))
  got_shapes = jax.tree_util.tree_map(lambda a: a.shape, variables)
  if want_shapes != got_shapes:
    raise CheckpointMismatch(f'{path}: the graph does not fill the architecture\'s variables exactly')
  return variables


def recognise(path: str) -> str:
  """The released BatchNorm SCRFD architecture whose convs the file's graph fits, tried smallest first."""
  _onnx_graph(path)  # a file that is no ONNX model fails here, once
  errors = []
  for arch, spec in sorted(SPECS.items(), key=lambda kv: kv[0]):
    if spec.gn_groups is not None:
      continue
    try:
      convert_onnx(path, spec)
      return arch
    except CheckpointMismatch as e:
      errors.append(f'  {arch}: {str(e).split(": ", 1)[-1]}')
  raise CheckpointMismatch(f'{path} is not a released SCRFD BatchNorm model:\n' + '\n'.join(errors))
