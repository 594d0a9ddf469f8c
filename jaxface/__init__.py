"""jaxface: face detectors in JAX/Flax that load the released PyTorch checkpoints."""
from __future__ import annotations

import importlib

__all__ = ['Detections', 'Detector', 'load_detector']


def __getattr__(name: str):
  # Lazy, so `python -m jaxface.convert` (or .detect) does not import itself twice.
  if name in __all__:
    return getattr(importlib.import_module('jaxface.detector'), name)
  raise AttributeError(f'module jaxface has no attribute {name!r}')
