"""Shared test fixtures: where `../shared` lives, and fast, strict JAX settings."""
from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

# Broadcasting must be spelled out ([None, :]) in jaxface: an implicit rank promotion is a bug
# waiting for the wrong batch shape.
jax.config.update('jax_numpy_rank_promotion', 'raise')

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
  return Path(os.environ.get('JAXFACE_SHARED', REPO_ROOT.parent / 'shared'))


def shared_file(*parts: str) -> Path:
  """A file under the shared data folder, or a skip naming what is missing."""
  path = shared_dir().joinpath(*parts)
  if not path.exists():
    pytest.skip(f'shared data not available: {path} (set JAXFACE_SHARED to the shared/ folder)')
  return path
