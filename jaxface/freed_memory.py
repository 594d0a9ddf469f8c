"""Keep the memory XLA:CPU frees after each run in the process, as ONNX Runtime's arena and
XNNPACK's workspace keep theirs.

XLA:CPU allocates a run's temporary buffer afresh (`malloc`) and frees it when the run ends. glibc
gives a block over 32 MiB (the most its mmap threshold grows to) back to the kernel at once: a
block of its own `mmap`, or, in a worker thread's arena, a heap that is unmapped as soon as it is
empty. So every run faults its temporaries in again, 4 KiB at a time, and the kernel zeroes each
page. On a 2-core AMD EPYC VM that was ~8.7k faults per SCRFD-10G call at VGA (a 90 ms call, 14 ms
of it system time) and ~7.7k per 64-image batch of the full-range BlazeFace (BENCHMARKS.md, "Freed
memory"). Programs with temporaries under 32 MiB (RetinaFace-mnet, SCRFD-500m at batch 1) did not
fault: glibc's heap already reuses them.

`keep_freed_memory()` sets three `mallopt` parameters: `M_MMAP_MAX` 0 (large blocks come from a
heap, not a mapping of their own), `M_TOP_PAD` 64 MiB (a heap keeps that much spare room, which
also keeps a thread's emptied heap from being unmapped) and `M_TRIM_THRESHOLD` 2 GiB (no heap gives
back less free memory than that). The cost is memory: the process keeps its high-water mark instead
of returning it. The setting is process-wide, so other libraries' large blocks stay too.

`Detector` calls it when JAX runs on the CPU. Training does not: with the launchers' huge pages
(`jaxface.huge_pages`) a train step's faults are few already, and the step measured the same with
and without. Nothing happens off Linux/glibc, when `GLIBC_TUNABLES` sets any of the three (the
user's choice stands), or with `JAXFACE_KEEP_FREED_MEMORY=0`.
"""
from __future__ import annotations

import ctypes
import os
import sys

from jaxface import huge_pages

OPT_OUT = 'JAXFACE_KEEP_FREED_MEMORY'
# mallopt's parameter numbers (glibc's <malloc.h>) and the values set.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
SETTINGS = ((M_MMAP_MAX, 0), (M_TOP_PAD, 64 << 20), (M_TRIM_THRESHOLD, 2**31 - 1))
# The same parameters as glibc tunables: a user who sets one keeps glibc's behaviour.
TUNABLES = ('glibc.malloc.mmap_max', 'glibc.malloc.top_pad', 'glibc.malloc.trim_threshold')

_kept = False


def wanted(environ) -> bool:
  """Whether this process should keep freed memory: Linux, glibc, not opted out, no tunable of the user's."""
  if environ.get(OPT_OUT, '1') == '0' or not sys.platform.startswith('linux') or not huge_pages.on_glibc():
    return False
  tunables = environ.get('GLIBC_TUNABLES', '')
  return not any(name in tunables for name in TUNABLES)


def keep_freed_memory() -> bool:
  """Sets `SETTINGS` once per process if `wanted`; returns whether they are in force."""
  global _kept
  if not _kept and wanted(os.environ):
    libc = ctypes.CDLL(None)
    _kept = all([libc.mallopt(param, value) == 1 for param, value in SETTINGS])
  return _kept
