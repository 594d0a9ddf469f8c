"""Two processes on localhost (jax.distributed, gloo CPU collectives, 2 CPU devices each) train
exactly as one process does on the same global batch.

Each process loads only its half of every global batch (`LoaderConfig(process_index, 2)`) and
`parallel.global_batch` assembles them; two steps of `make_sharded_train_step` must give the
parameters, BN statistics and metrics of one process with one device within 1e-5 (float64, see
train_parity.py). Then train.py's loop (`loop.train`) run by two processes into one work
directory must finish, log once and leave a checkpoint that loads on one device, with the
weights and logged losses of a one-process run over as many devices (4) within 1e-5 (float64
too). The three processes of each test run at once; each one's output is shown on failure.
Last, SIGTERM to one of two processes must stop both at one step, with one collective save, and
the resumed run must end with the straight two-process run's weights.
"""
from __future__ import annotations

import json
import os
import re
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
from jaxface.training import checkpointing
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
  traffic to a proxy and hang), plus `extra`. Without conftest's compilation cache too: a two-process
  step loaded from it aborts in gloo ("collective mismatch", jax 0.10.2), so each run compiles."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith('JAX_') and '_proxy' not in k.lower()}
  env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / 'tests')])
  env.update(extra)
  return env


def _run_workers(tmp_path, reference_devices: int | None, worker_args, timeout_s: float = TIMEOUT_S
                 ) -> dict[str, str]:
  """Runs the two processes (2 devices each) and, unless `reference_devices` is None, the
  one-process reference over that many devices, all at once; returns each one's output."""
  address = f'127.0.0.1:{_free_port()}'
  jobs = {'reference': (reference_devices, _env())} if reference_devices else {}
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
      p.wait(timeout=max(1.0, timeout_s - (time.perf_counter() - t)))
  except subprocess.TimeoutExpired:
    pass
  finally:
    for p in procs.values():
      if p.poll() is None:
        p.kill()
        p.wait()

  outputs = {}
  for name, log in logs.items():
    log.seek(0)
    outputs[name] = '\n'.join(l for l in log.read().splitlines() if 'Warning' not in l and 'warnings.warn' not in l)
    log.close()
  report = '\n'.join(f'--- {name} (exit {procs[name].returncode}) ---\n' + '\n'.join(out.splitlines()[-40:])
                     for name, out in outputs.items())
  print(report)
  if any(p.returncode == SKIP for p in procs.values()):
    pytest.skip('this platform cannot run collectives between CPU processes:\n' + report)
  assert all(p.returncode == 0 for p in procs.values()), (
      f'a worker failed or ran past {timeout_s} s (exit -9 = killed)\n{report}')
  return outputs


def test_two_processes_match_one(tmp_path):
  def args(name):
    return ['--out', str(tmp_path / ('reference.npz' if name == 'reference' else 'result_{process}.npz'))]
  _run_workers(tmp_path, 1, args)
  ref = dict(np.load(tmp_path / 'reference.npz'))
  ok = True
  for i in range(2):
    ok &= tp.compare(f'process {i} vs one process', ref, dict(np.load(tmp_path / f'result_{i}.npz')))
  assert ok, 'two processes differ from one by more than 1e-5 (worst differences printed above)'


def test_scrfd_two_processes_match_one(tmp_path):
  """The same for SCRFD's step (ATSS, its losses with global normalisers, BN heads)."""
  def args(name):
    return ['--scrfd', '--out', str(tmp_path / ('reference.npz' if name == 'reference' else 'result_{process}.npz'))]
  _run_workers(tmp_path, 1, args)
  ref = dict(np.load(tmp_path / 'reference.npz'))
  ok = True
  for i in range(2):
    ok &= tp.compare(f'process {i} vs one process', ref, dict(np.load(tmp_path / f'result_{i}.npz')))
  assert ok, 'two processes differ from one by more than 1e-5 (worst differences printed above)'


@pytest.fixture(scope='module')
def loop_runs(tmp_path_factory):
  """The tiny loop straight through, by one process over 4 devices (`one/`) and by two processes
  over 2 devices each (`two/`), in the returned folder."""
  tmp_path = tmp_path_factory.mktemp('loop_runs')

  def args(name):
    return ['--loop', str(tmp_path / ('one' if name == 'reference' else 'two'))]
  _run_workers(tmp_path, 4, args)
  return tmp_path


def test_two_process_training_loop_matches_one(loop_runs):
  """train.py's loop over two processes (2 devices each, one shared work directory) finishes, logs
  once, and checkpoints the weights of a one-process run over 4 devices (float64, see the worker)."""
  tmp_path = loop_runs
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


def _variables(workdir) -> tuple[dict[str, np.ndarray], int]:
  tree, step = saved_models.latest_variables(str(workdir))
  return {f'{group}{jax.tree_util.keystr(path)}': np.asarray(leaf) for group in ('params', 'batch_stats')
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree[group])}, step


def test_sigterm_to_one_process_stops_both_at_one_step(loop_runs, tmp_path):
  """A scheduler preempting one host: process 1 alone gets SIGTERM. Both processes must stop at the
  same step and save it together (the run's only save: periodic saves are off), then exit 0; run
  again, they resume there and end with the straight two-process run's weights. Were the stop
  decided per process, process 1 would leave the collective step or save while process 0 stepped
  on: an error or a hang, here a failure within the timeout.

  The signal comes before step 1, while the step compiles: JAX's notifier polls for SIGTERM every
  second, and the stop is the step after the last one any process had reached when the processes
  exchanged their steps (here 1). Sent later, fast steps could carry the stop past the run's end."""
  workdir = tmp_path / 'preempted'
  (tmp_path / 'first').mkdir()
  outputs = _run_workers(tmp_path / 'first', None, lambda name: [
      '--loop', str(workdir), '--sigterm-at-step', '1', '--checkpoint-every-steps', '1000'], timeout_s=300)
  assert 'sending SIGTERM' in outputs['process 1'] and 'sending SIGTERM' not in outputs['process 0']
  returned = [re.findall(r'loop.train returned at step (\d+)', outputs[f'process {i}']) for i in range(2)]
  assert returned[0] == returned[1] and len(returned[0]) == 1, returned
  stopped = int(returned[0][0])
  assert 1 <= stopped < STEPS
  # Process 0 was never signalled: the notice reached it, and it stopped on request too.
  assert f'stopped at step {stopped} on request' in outputs['process 0']
  mgr = checkpointing.manager(str(workdir), keep=3)
  saved = sorted(mgr.all_steps())
  mgr.close()
  assert saved == [stopped]

  (tmp_path / 'resumed').mkdir()
  outputs = _run_workers(tmp_path / 'resumed', None, lambda name: ['--loop', str(workdir)])
  assert f'resumed from {workdir} at step {stopped}' in outputs['process 0']
  resumed, resumed_step = _variables(workdir)
  straight, straight_step = _variables(loop_runs / 'two')
  assert resumed_step == straight_step == STEPS
  assert resumed.keys() == straight.keys()
  for key in straight:  # the same programs on the same batches: equal, not close
    np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)
