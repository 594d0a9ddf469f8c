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


@pytest.fixture(scope='session', autouse=True)
def absl_flags_parsed():
  """Grain's loader workers read absl flags; train.py parses them, tests have none to parse."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope='session', autouse=True)
def compile_cache(tmp_path_factory):
  """One persistent compilation cache for the whole session, subprocesses included (through the
  environment): a program that several tests build (a model's init, a detector at one size, the
  train loop's step in a killed run and its resume) compiles once. Programs under half a second
  are not worth the disk round trip."""
  path = str(tmp_path_factory.mktemp('xla_cache'))
  settings = {'jax_compilation_cache_dir': path, 'jax_persistent_cache_min_compile_time_secs': 0.5}
  old_config = {k: getattr(jax.config, k) for k in settings}
  old_env = {k.upper(): os.environ.get(k.upper()) for k in settings}
  for key, value in settings.items():
    jax.config.update(key, value)
    os.environ[key.upper()] = str(value)
  yield path
  for key, value in old_config.items():
    jax.config.update(key, value)
  for key, value in old_env.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value
