"""On 4 fake CPU devices, the jit-sharded and the pmap train steps match the single-device step
on the same global batch within 1e-5: parameters and BN statistics after two steps, and every
metric of both steps (float64; why, and what a real bug looks like: train_parity.py).

A subprocess, because the device count is fixed when JAX starts and this session has one device.
"""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO_ROOT

TIMEOUT_S = 600  # three compiles of the train step; ~1 min each on a busy 2-core machine


def test_sharded_and_pmap_steps_match_single_device():
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_')}
  env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / 'tests')])
  proc = subprocess.run([sys.executable, str(REPO_ROOT / 'tests' / 'multidevice_check.py')], env=env,
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
  out = proc.stdout + '\n'.join(l for l in proc.stderr.splitlines() if 'Warning' not in l)
  print(out)
  assert proc.returncode == 0, out


def test_scrfd_sharded_and_pmap_steps_match_single_device():
  """The same for SCRFD (ATSS, QFL/DIoU/keypoint losses, BN heads): tests/scrfd_multidevice_check.py."""
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_')}
  env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / 'tests')])
  proc = subprocess.run([sys.executable, str(REPO_ROOT / 'tests' / 'scrfd_multidevice_check.py')], env=env,
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
  out = proc.stdout + '\n'.join(l for l in proc.stderr.splitlines() if 'Warning' not in l)
  print(out)
  assert proc.returncode == 0, out
