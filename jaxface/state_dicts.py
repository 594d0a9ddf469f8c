"""PyTorch state dicts -> Flax variables, by name, strictly (the engine under every family's key map).

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
"""
from __future__ import annotations

from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

LEAF_TO_TORCH = {
    ('params', 'kernel'): 'weight',
    ('params', 'bias'): 'bias',
    ('params', 'scale'): 'weight',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}


class CheckpointMismatch(ValueError):
  """The file does not hold the weights of the requested architecture."""


def torch_key(collection: str, path: tuple[str, ...], leaf_names: Mapping[tuple[str, str], str] = LEAF_TO_TORCH
              ) -> str:
  """Flax (collection, path) -> PyTorch state-dict key."""
  return '.'.join(path[:-1] + (leaf_names[(collection, path[-1])],))


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
            leaf_names: Mapping[tuple[str, str], str] = LEAF_TO_TORCH,
            drop: tuple[str, ...] = (), source: str = 'checkpoint') -> dict[str, Any]:
  """Maps a (normalised) state dict onto the variable tree `shapes`; strict.

  Args:
    state_dict: key -> array, keys without `module.`.
    shapes: the target variable tree (e.g. from `template`), leaves with `.shape`.
    prefix: prepended to every source key before matching (`'body.'` for ImageNet backbones).
    leaf_names: (collection, Flax leaf name) -> torch name; a family with more leaf kinds extends
      `LEAF_TO_TORCH` (SCRFD's `Scale`: Flax `value` <- torch `scale`).
    drop: source-key prefixes that are expected and ignored (e.g. the ImageNet classifier `fc.`).
    source: the file name, for error messages.
  """
  src = {prefix + k: v for k, v in state_dict.items()
         if not k.endswith('num_batches_tracked') and not k.startswith(drop)}
  flat = flax.traverse_util.flatten_dict(shapes)
  wanted = dict(sorted((torch_key(path[0], path[1:], leaf_names), (path, leaf.shape)) for path, leaf in flat.items()))
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
