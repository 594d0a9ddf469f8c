"""insightface's SCRFD checkpoints -> SCRFD variables (REFERENCE.md §2.12), strictly.

The released `.pth` files are mmcv checkpoints (`{'meta', 'state_dict'[, 'optimizer']}`) or plain
state dicts, keys without `module.`. The Flax modules carry the keys' names, including the
per-stride heads' literal `(8, 8)`, so this is the shared by-name map (`jaxface.state_dicts`) with
one more leaf kind: mmcv's `Scale` keeps its scalar as `.scale`, which Flax names `value` (Flax's
`scale` is BatchNorm's and GroupNorm's gamma, torch's `.weight`). The DFL projection buffer
`bbox_head.integral.project` carries nothing at inference (DFL is off in every release); it is
checked to be `linspace(0, 8, 9)` and dropped.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from jaxface import state_dicts
from jaxface.scrfd.model import SCRFD, ScrfdSpec

LEAF_NAMES = {**state_dicts.LEAF_TO_TORCH, ('params', 'value'): 'scale'}
PROJECT_KEY = 'bbox_head.integral.project'


def convert_detector(state_dict: Mapping[str, Any], spec: ScrfdSpec, source: str = 'checkpoint') -> dict[str, Any]:
  """An SCRFD state dict (mmcv checkpoint or plain) -> `{'params', 'batch_stats'}`."""
  weights = state_dicts.normalise_keys(state_dict)
  project = weights.pop(PROJECT_KEY, None)
  if project is not None and not np.array_equal(np.asarray(project, np.float64), np.linspace(0, 8, 9)):
    raise state_dicts.CheckpointMismatch(f'{source}: {PROJECT_KEY} is {np.asarray(project).tolist()}, expected '
                                         'linspace(0, 8, 9) (a model with distribution focal loss is not a '
                                         'released SCRFD)')
  return state_dicts.convert(weights, state_dicts.template(SCRFD(spec)), leaf_names=LEAF_NAMES, source=source)
