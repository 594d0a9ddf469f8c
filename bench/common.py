"""Side-by-side timing for the benchmarks: interleaved runs in one process, medians, ratios.

This machine is shared and noisy, so absolute times drift between runs; candidates are timed
round-robin (A, B, C, A, B, C, ...) so that a slow spell hits all of them alike, and the
benchmarks report ratios.
"""
from __future__ import annotations

import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / 'tests')]  # jaxface and the torch re-statement


def shared_dir() -> Path:
  path = Path(os.environ.get('JAXFACE_SHARED', REPO_ROOT.parent / 'shared'))
  if not path.is_dir():
    sys.exit(f'shared data not found at {path}: set JAXFACE_SHARED to the shared/ folder')
  return path


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                lead_in: int = 0, lead_in_ms: float = 0.0) -> dict[str, np.ndarray]:
  """Seconds per call of each function, timed round-robin.

  Each turn first calls the function untimed `lead_in` times and, after those, until `lead_in_ms`
  have passed: the previous library's worker threads stop spinning and the timed
  call sees its own library warm, as back-to-back calls in deployment do. ONNX Runtime's workers
  spin-wait for 20-40 ms after each run on these VMs, which on 2 cores takes them from whichever
  library runs next (jaxface's SCRFD-500m detect: 16.5 ms right after it, 8.6 ms alone), so the
  benches against it lead in for 60 ms.
  """
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start, calls = time.perf_counter(), 0
      while calls < lead_in or time.perf_counter() - start < lead_in_ms / 1e3:
        fn()
        calls += 1
      t = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t)
  return {name: np.asarray(t) for name, t in times.items()}


def report(times: dict[str, np.ndarray], baseline: str) -> str:
  """A table of median / p10 / p90 milliseconds and speed-up over `baseline` (by medians)."""
  base = np.median(times[baseline])
  lines = [f'{"":34s} {"median ms":>10s} {"p10":>8s} {"p90":>8s} {"speed-up vs " + baseline:>24s}']
  for name, t in times.items():
    med = np.median(t)
    lines.append(f'{name:34s} {med * 1e3:10.2f} {np.percentile(t, 10) * 1e3:8.2f} '
                 f'{np.percentile(t, 90) * 1e3:8.2f} {base / med:23.2f}x')
  return '\n'.join(lines)


def cpu() -> str:
  """`lscpu`'s model name and the widest vector extension the CPU lists (both AMD EPYC VMs with and
  without AVX-512 have been seen, under the same model name), from /proc/cpuinfo on Linux."""
  try:
    with open('/proc/cpuinfo') as f:
      info = f.read()
  except OSError:
    return platform.processor() or platform.machine()
  model = re.search(r'^model name\s*:\s*(.*)$', info, re.M)
  flags = re.search(r'^flags\s*:\s*(.*)$', info, re.M)
  flags = set(flags.group(1).split()) if flags else set()
  isa = 'AVX-512' if 'avx512f' in flags else 'AVX2, no AVX-512' if 'avx2' in flags else 'no AVX2'
  return f'{model.group(1).strip() if model else platform.machine()} ({isa})'


def machine() -> str:
  import jax
  from jaxface import freed_memory, huge_pages
  malloc = 'malloc huge pages' if huge_pages.TUNABLE in os.environ.get('GLIBC_TUNABLES', '') else 'default malloc'
  # What a CPU `Detector` does to the whole process (jaxface/freed_memory.py).
  freed = 'freed memory kept' if freed_memory.wanted(os.environ) else 'freed memory returned'
  return (f'{platform.node()} | {os.cpu_count()} cores | {cpu()} | '
          f'python {platform.python_version()} | jax {jax.__version__} ({jax.default_backend()}) | '
          f'{malloc} (THP {huge_pages.thp_mode()}), {freed}')


def onnxruntime_forward(model, x, threads: int):
  """`model` (torch) exported to ONNX and run by ONNX Runtime on `x`, as a no-argument callable; None
  (with a note) when onnxruntime is not installed."""
  try:
    import onnxruntime as ort
  except ImportError:
    print('onnxruntime not installed: skipping the ONNX Runtime forward')
    return None
  import io
  import torch
  buf = io.BytesIO()
  torch.onnx.export(model, (x,), buf, input_names=['input0'], dynamo=False)
  so = ort.SessionOptions()
  so.intra_op_num_threads = threads
  sess = ort.InferenceSession(buf.getvalue(), so, providers=['CPUExecutionProvider'])
  x_np = x.numpy()
  return lambda: sess.run(None, {'input0': x_np})
