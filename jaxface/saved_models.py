"""Saved models, as `load_detector` and `evaluate.py` read them: `DIR/jaxface.json` (what it is)
plus the weights, one of
  - `DIR/variables/`: orbax, from the converter;
  - `DIR/variables.msgpack`: the same tree in one flax msgpack file, for models kept under version
    control (the package's default model): orbax names its files at random and stamps the time, so
    two saves of equal arrays differ; this file is byte-for-byte the same each time;
  - `DIR/checkpoints/<step>`: a `train.py` workdir, written by `jaxface.training.checkpointing`
    (the latest finished step is used).
Reading needs nothing from training.

The JSON names the architecture so `load_detector(DIR)` needs no `arch`, and records where the
weights came from (and, for trained models, the dataset they were trained on).
"""
from __future__ import annotations

import json
import os
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

META_FILE = 'jaxface.json'
VARIABLES_DIR = 'variables'
VARIABLES_FILE = 'variables.msgpack'  # the single-file, reproducible twin of VARIABLES_DIR
CHECKPOINTS_DIR = 'checkpoints'  # a train.py workdir's orbax steps


def save_variables(directory: str, variables: Any, meta: dict[str, Any], *, single_file: bool = False) -> None:
  """Writes `variables` (a pytree of arrays) and `meta` (must hold 'arch'); overwrites.

  single_file: write `variables.msgpack` instead of orbax's `variables/`, so that equal arrays
    give equal bytes (a file to commit).
  """
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  variables = jax.tree_util.tree_map(np.asarray, variables)
  if single_file:
    with open(os.path.join(directory, VARIABLES_FILE), 'wb') as f:
      f.write(flax.serialization.msgpack_serialize(variables))  # dict keys sorted: deterministic
  else:
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(directory, VARIABLES_DIR), variables, force=True)
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
  has_dir = os.path.isdir(os.path.join(directory, VARIABLES_DIR))
  has_file = os.path.isfile(os.path.join(directory, VARIABLES_FILE))
  if has_dir and has_file:
    raise ValueError(f'{directory} holds both {VARIABLES_DIR}/ and {VARIABLES_FILE}: which weights are meant?')
  if not (has_dir or has_file):  # a training workdir
    if not os.path.isdir(os.path.join(directory, CHECKPOINTS_DIR)):
      raise FileNotFoundError(f'{directory} has {META_FILE} but no weights: neither {VARIABLES_DIR}/ nor '
                              f'{VARIABLES_FILE} (converted) nor {CHECKPOINTS_DIR}/ (a training run)')
    variables, step = latest_variables(directory, step)
    return jax.tree_util.tree_map(np.asarray, variables), dict(meta, step=step)
  weights = VARIABLES_DIR + '/' if has_dir else VARIABLES_FILE
  if step is not None:
    raise ValueError(f'{directory} holds converted weights ({weights}), not training checkpoints: no step to pick')
  if has_file:
    with open(os.path.join(directory, VARIABLES_FILE), 'rb') as f:
      return flax.serialization.msgpack_restore(f.read()), meta
  variables = ocp.StandardCheckpointer().restore(os.path.join(directory, VARIABLES_DIR))
  return jax.tree_util.tree_map(np.asarray, variables), meta


def _read(workdir: str, step: int | None, *, with_state: bool) -> tuple[dict[str, Any], int]:
  """`({'progress'[, 'state']}, step)` of the latest (or `step`'s) finished checkpoint, read-only.

  The state comes back as numpy arrays, whatever devices saved it (restored without a target,
  orbax insists on the saving run's device layout: a checkpoint from 4 GPUs would not load on
  a laptop)."""
  directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR)
  mgr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                              item_handlers={'state': ocp.StandardCheckpointHandler(),
                                             'progress': ocp.JsonCheckpointHandler()})
  try:
    if step is None:
      step = mgr.latest_step()
      if step is None:
        raise FileNotFoundError(f'{directory} holds no finished checkpoint')
    elif step not in mgr.all_steps():
      raise FileNotFoundError(f'{directory} has no checkpoint for step {step}; it has {sorted(mgr.all_steps())}')
    items = {'progress': ocp.args.JsonRestore()}
    if with_state:
      saved = mgr.item_metadata(step)['state']  # shapes and dtypes
      items['state'] = ocp.args.StandardRestore(jax.tree_util.tree_map(lambda m: np.empty(m.shape, m.dtype), saved))
    return mgr.restore(step, args=ocp.args.Composite(**items)), step
  finally:
    mgr.close()


def latest_variables(workdir: str, step: int | None = None) -> tuple[dict[str, Any], int]:
  """`({'params', 'batch_stats'}, step)` of a workdir's latest (or `step`'s) checkpoint, as
  numpy, without knowing the optimizer (for inference and evaluation), on any devices."""
  out, step = _read(workdir, step, with_state=True)
  return {'params': out['state']['params'], 'batch_stats': out['state']['batch_stats']}, step


def read_progress(workdir: str, step: int | None = None) -> dict[str, Any]:
  """The progress record (step, seed, counters) of the latest (or `step`'s) checkpoint."""
  return _read(workdir, step, with_state=False)[0]['progress']
