"""Released checkpoints -> a jaxface checkpoint directory, through the family's strict key map.

CLI: `python -m jaxface.convert --arch ARCH --src FILE --out DIR`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Mapping

import jax
import numpy as np

from jaxface import families, saved_models
from jaxface.family import Family
from jaxface.state_dicts import CheckpointMismatch
from jaxface.torch_pickle import load_torch_file

__all__ = ['CheckpointMismatch', 'convert_file', 'convert_onnx_file', 'convert_state_dict', 'convert_tflite_file', 'main']


def convert_state_dict(state_dict: Mapping[str, Any], arch: str, source: str = 'checkpoint') -> dict[str, Any]:
  """A state dict (numpy or torch values) -> variables for `arch` (a detector or an ImageNet
  backbone of `families.WEIGHT_NAMES`), through its family's strict key map."""
  return families.weights_family(arch).convert_torch(state_dict, arch, source)


def _convert_graph_file(path: str, arch: str | None, kind: str,
                        reader: Callable[[Family], Callable[[str, str | None], Any] | None]) -> tuple[str, dict[str, Any]]:
  """A graph file (ONNX, TFLite) -> `(arch, variables)` through `reader(family)`; with no `arch`, each
  family that reads the kind tries to recognise the architecture, and all their reasons are reported."""
  candidates = [families.family_of(arch)] if arch is not None else [f for f in families.FAMILIES if reader(f)]
  if arch is not None and reader(candidates[0]) is None:
    raise ValueError(f'{path}: the {candidates[0].name} family does not read {kind} files')
  errors = []
  for family in candidates:
    try:
      return reader(family)(path, arch)
    except CheckpointMismatch as e:
      errors.append(str(e))
  raise CheckpointMismatch('\n'.join(errors))


def convert_onnx_file(path: str, arch: str | None = None) -> tuple[str, dict[str, Any]]:
  """Reads a released ONNX file (the optional `onnx` package) -> `(arch, variables)`; with no `arch`,
  the families that read ONNX recognise the architecture from the graph."""
  return _convert_graph_file(path, arch, 'ONNX', lambda family: family.convert_onnx)


def convert_tflite_file(path: str, arch: str | None = None) -> tuple[str, dict[str, Any]]:
  """Reads a `.tflite` file (no TensorFlow: `jaxface.tflite`) -> `(arch, variables)`; with no `arch`,
  the families that read TFLite recognise the architecture from the graph."""
  return _convert_graph_file(path, arch, 'TFLite', lambda family: family.convert_tflite)


def convert_file(path: str, arch: str | None) -> dict[str, Any]:
  """Reads a `.pth`/`.tar` (either torch format, no torch needed) or a released `.onnx` file and
  converts it for `arch` (a detector or an ImageNet backbone of `families.WEIGHT_NAMES`)."""
  if str(path).lower().endswith('.onnx'):
    return convert_onnx_file(path, arch)[1]
  if str(path).lower().endswith('.tflite'):
    return convert_tflite_file(path, arch)[1]
  families.weights_family(arch)  # an unknown name fails before the file is read
  obj = load_torch_file(path)
  if not isinstance(obj, Mapping):
    raise CheckpointMismatch(f'{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}')
  return convert_state_dict(obj, arch, path)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxface.convert', description=__doc__.split('\n')[0])
  parser.add_argument('--arch', required=True, help=f'one of: {", ".join(families.WEIGHT_NAMES)}')
  parser.add_argument('--src', required=True,
                      help='PyTorch checkpoint (.pth / .tar, zip or legacy format), a released .onnx file (SCRFD) '
                           "or a MediaPipe .tflite file (BlazeFace)")
  parser.add_argument('--out', required=True, help='output checkpoint directory')
  args = parser.parse_args(argv)
  if args.arch not in families.WEIGHT_NAMES:
    parser.error(f'unknown --arch {args.arch!r}; valid: {", ".join(families.WEIGHT_NAMES)}')
  try:
    variables = convert_file(args.src, args.arch)
  except (CheckpointMismatch, ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  saved_models.save_variables(args.out, variables, {'arch': args.arch, 'source': args.src})
  n = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables))
  print(f'wrote {args.out}: {args.arch}, {n:,} values from {args.src}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
