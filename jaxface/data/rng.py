"""Randomness that is a pure function of (seed, epoch, sample index).

Any sample can be reproduced alone, in any process, and a resumed run draws exactly what it
would have drawn: no generator state is carried from one sample to the next.
"""
from __future__ import annotations

import numpy as np


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  """A generator for one sample of one epoch."""
  return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, index])))
