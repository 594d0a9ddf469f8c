"""Saving and resuming the train state: orbax, atomic, the last N kept, exact resume.

A workdir holds

    <workdir>/checkpoints/<step>/state     the TrainState (params, BN statistics, optimizer state, step)
    <workdir>/checkpoints/<step>/progress  JSON: step, seed, what the loader has consumed, counters
    <workdir>/jaxface.json                 the arch and dataset, so `load_detector(workdir)` and
                                           `evaluate.py --ckpt workdir` take the latest weights
                                           (read for inference by `jaxface.saved_models`)

Orbax writes each step into a temporary folder and renames it when complete, so a save killed
half-way never becomes the latest checkpoint. Nothing random lives outside the checkpoint: every
batch is a pure function of (seed, step) (see `jaxface.data.pipeline`), so restoring the step
restores the data iterator and every random draw.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxface.saved_models import CHECKPOINTS_DIR


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
