"""Checkpoint directories: `DIR/jaxface.json` (what it is) plus the weights, either
`DIR/variables` (orbax; from the converter) or `DIR/checkpoints/<step>` (a `train.py` workdir:
the latest finished step is used).

The JSON names the architecture so `load_detector(DIR)` needs no `arch`, and records where the
weights came from (and, for trained models, the dataset they were trained on).
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

META_FILE = 'jaxface.json'
VARIABLES_DIR = 'variables'


def save_variables(directory: str, variables: Any, meta: dict[str, Any]) -> None:
  """Writes `variables` (a pytree of arrays) and `meta` (must hold 'arch'); overwrites."""
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(directory, VARIABLES_DIR), jax.tree_util.tree_map(np.asarray, variables), force=True)
  ckptr.wait_until_finished()
  with open(os.path.join(directory, META_FILE), 'w') as f:
    json.dump(meta, f, indent=2, sort_keys=True)


def read_meta(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, META_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{directory} is not a jaxface checkpoint directory: {META_FILE} is missing '
                            '(make one with `python -m jaxface.convert`)')
  with open(path) as f:
    meta = json.load(f)
  if 'arch' not in meta:
    raise ValueError(f'{path}: no "arch" field')
  return meta


def load_variables(directory: str, step: int | None = None) -> tuple[Any, dict[str, Any]]:
  """Returns `(variables as numpy arrays, meta)`; `step` picks a training workdir's checkpoint
  (default: the latest)."""
  directory = os.path.abspath(directory)
  meta = read_meta(directory)
  if not os.path.isdir(os.path.join(directory, VARIABLES_DIR)):
    from jaxface.training import checkpoints  # a training workdir
    if not os.path.isdir(os.path.join(directory, checkpoints.CHECKPOINTS_DIR)):
      raise FileNotFoundError(f'{directory} has {META_FILE} but neither {VARIABLES_DIR}/ (converted weights) '
                              f'nor {checkpoints.CHECKPOINTS_DIR}/ (a training run)')
    variables, step = checkpoints.latest_variables(directory, step)
    return jax.tree_util.tree_map(np.asarray, variables), dict(meta, step=step)
  if step is not None:
    raise ValueError(f'{directory} holds converted weights ({VARIABLES_DIR}/), not training checkpoints: no step to pick')
  variables = ocp.StandardCheckpointer().restore(os.path.join(directory, VARIABLES_DIR))
  return jax.tree_util.tree_map(np.asarray, variables), meta
