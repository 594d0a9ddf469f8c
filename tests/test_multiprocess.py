"""Two processes on localhost (jax.distributed, gloo CPU collectives, 2 CPU devices each) train
exactly as one process does on the same global batch.

Each process loads only its half of every global batch (`LoaderConfig(process_index, 2)`) and
`parallel.global_batch` assembles them; two steps of `make_sharded_train_step` must give the
parameters, BN statistics and metrics of one process with one device within 1e-5 (float64, see
train_parity.py). Then train.py's loop (`loop.train`) run by two processes into one work
directory must finish, log once and leave a checkpoint that loads on one device, with the
weights and logged losses of a one-process run over as many devices (4) within 1e-5 (float64
too). The three processes of each test run at once; each one's output is shown on failure.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import train_parity as tp
from conftest import REPO_ROOT
from jaxface import saved_models
from test_train_loop import STEPS

WORKER = REPO_ROOT / 'tests' / 'multiprocess_worker.py'
SKIP = 77           # multiprocess_worker.SKIP: no CPU collectives on this platform
TIMEOUT_S = 900     # three compiles of the train step sharing the machine's cores


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
  """This environment without distributed settings or proxies (gRPC would send the coordinator
  traffic to a proxy and hang), plus `extra`."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith('JAX_') and '_proxy' not in k.lower()}
  env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / 'tests')])
  env.update(extra)
  return env


def _run_workers(tmp_path, reference_devices: int, worker_args) -> None:
  address = f'127.0.0.1:{_free_port()}'
  jobs = {'reference': (reference_devices, _env())}
  for i in range(2):
    jobs[f'process {i}'] = (2, _env(JAX_COORDINATOR_ADDRESS=address, JAX_COORDINATOR_BIND_ADDRESS=address,
                                    JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i)))
  procs, logs = {}, {}
  t = time.perf_counter()
  for name, (devices, env) in jobs.items():
    logs[name] = open(tmp_path / f'{name.replace(" ", "_")}.log', 'w+')
    procs[name] = subprocess.Popen([sys.executable, str(WORKER), '--local-devices', str(devices),
                                    *worker_args(name)],
                                   stdout=logs[name], stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
  try:
    for p in procs.values():
      p.wait(timeout=max(1.0, TIMEOUT_S - (time.perf_counter() - t)))
  except subprocess.TimeoutExpired:
    pass
  finally:
    for p in procs.values():
      if p.poll() is None:
        p.kill()
        p.wait()

  def output(name: str) -> str:
    logs[name].seek(0)
    lines = [l for l in logs[name].read().splitlines() if 'Warning' not in l and 'warnings.warn' not in l]
    logs[name].close()
    return f'--- {name} (exit {procs[name].returncode}) ---\n' + '\n'.join(lines[-40:])
  report = '\n'.join(output(name) for name in procs)
  print(report)
  if any(p.returncode == SKIP for p in procs.values()):
    pytest.skip('this platform cannot run collectives between CPU processes:\n' + report)
  assert all(p.returncode == 0 for p in procs.values()), (
      f'a worker failed or ran past {TIMEOUT_S} s (exit -9 = killed)\n{report}')


def test_two_processes_match_one(tmp_path):
  def args(name):
    return ['--out', str(tmp_path / ('reference.npz' if name == 'reference' else 'result_{process}.npz'))]
  _run_workers(tmp_path, 1, args)
  ref = dict(np.load(tmp_path / 'reference.npz'))
  ok = True
  for i in range(2):
    ok &= tp.compare(f'process {i} vs one process', ref, dict(np.load(tmp_path / f'result_{i}.npz')))
  assert ok, 'two processes differ from one by more than 1e-5 (worst differences printed above)'


def test_two_process_training_loop_matches_one(tmp_path):
  """train.py's loop over two processes (2 devices each, one shared work directory) finishes, logs
  once, and checkpoints the weights of a one-process run over 4 devices (float64, see the worker)."""
  def args(name):
    return ['--loop', str(tmp_path / ('one' if name == 'reference' else 'two'))]
  _run_workers(tmp_path, 4, args)
  one, one_step = saved_models.latest_variables(str(tmp_path / 'one'))
  two, two_step = saved_models.latest_variables(str(tmp_path / 'two'))
  assert one_step == two_step == STEPS
  ref, got = ({f'{group}{jax.tree_util.keystr(path)}': np.asarray(leaf) for group in ('params', 'batch_stats')
               for path, leaf in jax.tree_util.tree_leaves_with_path(tree[group])} for tree in (one, two))
  logs = [[json.loads(line) for line in open(tmp_path / run / 'metrics.jsonl')] for run in ('one', 'two')]
  steps = [m['step'] for m in logs[1]]
  assert sorted(set(steps)) == steps and steps[-1] == STEPS  # one writer: no step logged twice
  assert [m['step'] for m in logs[0]] == steps
  for i, (a, b) in enumerate(zip(*logs)):
    ref.update({f'metrics[{i}].{k}': np.float64(a[k]) for k in a if k.startswith('train/loss')})
    got.update({f'metrics[{i}].{k}': np.float64(b[k]) for k in a if k.startswith('train/loss')})
    # The loader's drop counts cover the global batch, not the writing process's slice.
    assert {k: v for k, v in b.items() if k.startswith('data/')} == {k: v for k, v in a.items() if k.startswith('data/')}
  assert any(v for m in logs[0] for k, v in m.items() if k.startswith('data/')), 'no drops: the check above is vacuous'
  assert tp.compare('two-process loop vs one process', ref, got), (
      'two processes differ from one by more than 1e-5 (worst differences printed above)')
