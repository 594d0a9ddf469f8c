"""PyTorch checkpoints -> Flax variables, by name, strictly.

The Flax modules carry the reference's checkpoint names, so a Flax leaf path joined by dots
is the PyTorch key up to the leaf name:

  params/<path>/kernel      <- <path>.weight        (O,I,kh,kw) -> (kh,kw,I,O)
  params/<path>/bias        <- <path>.bias
  params/<path>/scale       <- <path>.weight        (BatchNorm gamma)
  batch_stats/<path>/mean   <- <path>.running_mean
  batch_stats/<path>/var    <- <path>.running_var

`num_batches_tracked` carries nothing at inference and is dropped. Everything else must match
exactly: a missing, unexpected or mis-shaped key fails with the full list, and nothing is loaded
in part.

CLI: `python -m jaxface.convert --arch ARCH --src FILE --out DIR`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxface import checkpoint_io
from jaxface.models import SPECS, retinaface
from jaxface.models.layers import torch_bn
from jaxface.models.mobilenet import MobileNetV1
from jaxface.models.resnet import ResNet50
from jaxface.torch_pickle import load_torch_file

# ImageNet backbones that training starts from: (Flax module, keys dropped on purpose).
BACKBONES = {
    'mobilenet0.25': (lambda: MobileNetV1(0.1, norm=torch_bn(train=False)), ('fc.',)),
    'resnet50': (lambda: ResNet50(norm=torch_bn(train=False)), ('fc.',)),
}
ARCHS = tuple(sorted(SPECS)) + tuple(sorted(BACKBONES))

_LEAF_TO_TORCH = {
    ('params', 'kernel'): 'weight',
    ('params', 'bias'): 'bias',
    ('params', 'scale'): 'weight',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}


class CheckpointMismatch(ValueError):
  """The file does not hold the weights of the requested architecture."""


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """Flax (collection, path) -> PyTorch state-dict key."""
  return '.'.join(path[:-1] + (_LEAF_TO_TORCH[(collection, path[-1])],))


def to_flax(value: np.ndarray, flax_shape: tuple[int, ...]) -> np.ndarray:
  """Torch layout -> Flax layout: conv weights (O,I,kh,kw) -> (kh,kw,I,O); the rest as is."""
  if len(flax_shape) == 4:
    value = value.transpose(2, 3, 1, 0)
  return value


def template(module: flax.linen.Module, size: int = 64) -> dict[str, Any]:
  """The variable shapes of `module` (`jax.ShapeDtypeStruct` leaves), without computing anything."""
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), x)


def normalise_keys(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Unwraps `{'state_dict': ...}` and strips the `module.` prefix of DataParallel saves."""
  if 'state_dict' in state_dict and isinstance(state_dict['state_dict'], Mapping):
    state_dict = state_dict['state_dict']
  out = {}
  for k, v in state_dict.items():
    k = k[len('module.'):] if k.startswith('module.') else k
    out[k] = np.asarray(v)
  return out


def convert(state_dict: Mapping[str, Any], shapes: dict[str, Any], *, prefix: str = '',
            drop: tuple[str, ...] = (), source: str = 'checkpoint') -> dict[str, Any]:
  """Maps a (normalised) state dict onto the variable tree `shapes`; strict.

  Args:
    state_dict: key -> array, keys without `module.`.
    shapes: the target variable tree (e.g. from `template`), leaves with `.shape`.
    prefix: prepended to every source key before matching (`'body.'` for ImageNet backbones).
    drop: source-key prefixes that are expected and ignored (e.g. the ImageNet classifier `fc.`).
    source: the file name, for error messages.
  """
  src = {prefix + k: v for k, v in state_dict.items()
         if not k.endswith('num_batches_tracked') and not k.startswith(drop)}
  flat = flax.traverse_util.flatten_dict(shapes)
  wanted = dict(sorted((torch_key(path[0], path[1:]), (path, leaf.shape)) for path, leaf in flat.items()))
  missing = sorted(set(wanted) - set(src))
  unexpected = sorted(set(src) - set(wanted))
  misshaped = []
  out = {}
  for key, (path, shape) in wanted.items():
    if key not in src:
      continue
    value = np.asarray(src[key], np.float32)
    if value.ndim != len(shape) or to_flax(value, shape).shape != tuple(shape):
      misshaped.append(f'{key}: file {tuple(value.shape)}, expected {_torch_shape(shape)}')
      continue
    out[path] = to_flax(value, shape)
  if missing or unexpected or misshaped:
    lines = [f'{source} does not match the architecture:']
    for title, keys in (('missing', missing), ('unexpected', unexpected), ('mis-shaped', misshaped)):
      if keys:
        lines.append(f'  {len(keys)} {title} key(s):')
        lines.extend(f'    {k}' for k in keys[:50])
        if len(keys) > 50:
          lines.append(f'    ... and {len(keys) - 50} more')
    raise CheckpointMismatch('\n'.join(lines))
  return flax.traverse_util.unflatten_dict(out)


def _torch_shape(flax_shape) -> tuple[int, ...]:
  return tuple(flax_shape[i] for i in (3, 2, 0, 1)) if len(flax_shape) == 4 else tuple(flax_shape)


def convert_detector(state_dict: Mapping[str, Any], arch: str, source: str = 'checkpoint') -> dict[str, Any]:
  """A biubug6 RetinaFace state dict (with or without `module.`) -> `{'params', 'batch_stats'}`."""
  return convert(normalise_keys(state_dict), template(retinaface(arch)), source=source)


def convert_backbone(state_dict: Mapping[str, Any], backbone: str, source: str = 'checkpoint') -> dict[str, Any]:
  """An ImageNet backbone (the MobileNet-0.25 `.tar`, a torchvision ResNet-50) -> the detector's `body`.

  Returns `{'params': {'body': ...}, 'batch_stats': {'body': ...}}` to merge into a freshly
  initialised detector; the classifier (`fc`) is dropped.
  """
  if backbone not in BACKBONES:
    raise ValueError(f'unknown backbone {backbone!r}; valid: {", ".join(sorted(BACKBONES))}')
  make, drop = BACKBONES[backbone]
  shapes = template(make())
  shapes = {col: {'body': tree} for col, tree in shapes.items()}
  return convert(normalise_keys(state_dict), shapes, prefix='body.', drop=tuple('body.' + d for d in drop) + drop,
                 source=source)


def convert_file(path: str, arch: str) -> dict[str, Any]:
  """Reads a `.pth`/`.tar` (either torch format, no torch needed) and converts it for `arch`."""
  if arch not in ARCHS:
    raise ValueError(f'unknown arch {arch!r}; valid: {", ".join(ARCHS)}')
  obj = load_torch_file(path)
  if not isinstance(obj, Mapping):
    raise CheckpointMismatch(f'{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}')
  if arch in BACKBONES:
    return convert_backbone(obj, arch, source=path)
  return convert_detector(obj, arch, source=path)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxface.convert', description=__doc__.split('\n')[0])
  parser.add_argument('--arch', required=True, help=f'one of: {", ".join(ARCHS)}')
  parser.add_argument('--src', required=True, help='PyTorch checkpoint (.pth / .tar, zip or legacy format)')
  parser.add_argument('--out', required=True, help='output checkpoint directory')
  args = parser.parse_args(argv)
  if args.arch not in ARCHS:
    parser.error(f'unknown --arch {args.arch!r}; valid: {", ".join(ARCHS)}')
  try:
    variables = convert_file(args.src, args.arch)
  except (CheckpointMismatch, ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  checkpoint_io.save_variables(args.out, variables, {'arch': args.arch, 'source': args.src})
  n = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables))
  print(f'wrote {args.out}: {args.arch}, {n:,} values from {args.src}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
