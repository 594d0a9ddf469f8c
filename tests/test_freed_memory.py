"""Keeping freed memory in the process (`jaxface/freed_memory.py`): the settings stop a large block that a
worker thread frees and allocates again from being faulted in anew, and only apply where wanted."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from jaxface import freed_memory, huge_pages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
glibc_only = pytest.mark.skipif(not (sys.platform.startswith('linux') and huge_pages.on_glibc()),
                                reason='mallopt and its parameters are glibc\'s')

# A 48 MiB block (over glibc's largest mmap threshold) allocated, written and freed by a worker thread, as
# XLA:CPU does with a run's temporaries; prints the minor faults of runs 2-5 (run 1 maps the block).
CHILD = textwrap.dedent('''
  import ctypes, json, resource, sys, threading
  from jaxface import freed_memory
  kept = freed_memory.keep_freed_memory()
  libc = ctypes.CDLL(None)
  libc.malloc.restype = ctypes.c_void_p
  libc.free.argtypes = [ctypes.c_void_p]
  size = 48 << 20
  def runs():
    for i in range(5):
      if i == 1:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      block = libc.malloc(size)
      ctypes.memset(block, i + 1, size)
      libc.free(block)
    out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
  out = []
  worker = threading.Thread(target=runs)
  worker.start()
  worker.join()
  print(json.dumps([kept, out[0]]))
''')


def run_child(**env_overrides):
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', freed_memory.OPT_OUT)}
  env.update(PYTHONPATH=ROOT, **env_overrides)
  out = subprocess.run([sys.executable, '-c', CHILD], env=env, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_a_freed_large_block_is_not_faulted_in_again():
  kept, faults = run_child()
  assert kept
  assert faults < 200, faults  # four runs of 12,288 pages each without the settings
  if huge_pages.thp_mode() != 'always':  # else the kernel maps 2 MiB pages and faults are few either way
    kept, faults = run_child(JAXFACE_KEEP_FREED_MEMORY='0')
    assert not kept
    assert faults > 4 * 12288 // 2, faults  # the control: glibc's own behaviour faults the block each run


def test_only_where_wanted():
  on_glibc = sys.platform.startswith('linux') and huge_pages.on_glibc()
  assert freed_memory.wanted({}) == on_glibc
  assert not freed_memory.wanted({'JAXFACE_KEEP_FREED_MEMORY': '0'})
  for name in freed_memory.TUNABLES:  # the user's own glibc setting stands
    assert not freed_memory.wanted({'GLIBC_TUNABLES': f'glibc.malloc.hugetlb=1:{name}=1'})
  assert freed_memory.wanted({'GLIBC_TUNABLES': huge_pages.TUNABLE}) == on_glibc  # huge pages combine


@glibc_only
def test_a_cpu_detector_keeps_freed_memory(monkeypatch):
  """`Detector` asks for the settings on XLA:CPU (a spy: an earlier test's detector may have set them
  for the whole process already), and they are then in force."""
  import jax
  if jax.default_backend() != 'cpu':
    pytest.skip('the settings are for XLA:CPU')
  if not freed_memory.wanted(os.environ):
    pytest.skip('this environment opts out (JAXFACE_KEEP_FREED_MEMORY=0 or a GLIBC_TUNABLES setting of its own)')
  from jaxface import load_detector
  calls = []
  keep = freed_memory.keep_freed_memory
  monkeypatch.setattr(freed_memory, 'keep_freed_memory', lambda: calls.append(1) or keep())
  load_detector()
  assert calls, 'Detector did not ask to keep freed memory'
  assert freed_memory._kept
