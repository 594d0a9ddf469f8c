"""Training checkpoints: orbax, atomic, the last N kept, exact resume.

A workdir holds

    <workdir>/checkpoints/<step>/state     the TrainState (params, BN statistics, optimizer state, step)
    <workdir>/checkpoints/<step>/progress  JSON: step, seed, what the loader has consumed, counters
    <workdir>/jaxface.json                 the arch and dataset, so `load_detector(workdir)` and
                                           `evaluate.py --ckpt workdir` take the latest weights

Orbax writes each step into a temporary folder and renames it when complete, so a save killed
half-way never becomes the latest checkpoint. Nothing random lives outside the checkpoint: every
batch is a pure function of (seed, step) (see `jaxface.data.pipeline`), so restoring the step
restores the data iterator and every random draw.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINTS_DIR = 'checkpoints'


def manager(workdir: str, *, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save),
      item_names=('state', 'progress'))


def save(mgr: ocp.CheckpointManager, step: int, state: Any, progress: dict[str, Any]) -> None:
  """Starts saving (asynchronously: the next steps overlap with the write); `force` so a save on
  preemption or at the end happens whatever the interval."""
  mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                         progress=ocp.args.JsonSave(dict(progress, step=int(step)))), force=True)


def restore(mgr: ocp.CheckpointManager, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]] | None:
  """The latest (or `step`'s) `(state, progress)`, laid out like `target` (its shardings too), or None."""
  step = mgr.latest_step() if step is None else step
  if step is None:
    return None
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
  out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                  progress=ocp.args.JsonRestore()))
  return out['state'], out['progress']


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
