"""Single device vs jit over a 4-device mesh vs pmap: the same two train steps, within 1e-5.

Run by tests/test_multidevice.py in a subprocess (the fake device count must be set before JAX
starts); by hand:

  python tests/multidevice_check.py                  # the test
  python tests/multidevice_check.py --dtype float32  # the train steps in float32: diagnosis only

Two checks, exit status 0 when both pass:
1. the train steps in float64 (why: train_parity.py): every parameter and BN statistic after two
   steps, and every metric of both steps, within 1e-5 (relative above 1);
2. float32, the training precision, at the initial state: the forward's metrics within 1e-5 and
   the same mined negatives in every image whose mining cut is not a near tie.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import sys
import time

import train_parity as tp

NEAR_TIE = 1e-5  # a mining cut closer than this may go either way under float32 rounding


def main() -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument('--dtype', default='float64', choices=('float64', 'float32'))
  parser.add_argument('--tol', type=float, default=tp.TOL)
  args = parser.parse_args()
  tp.configure(4, args.dtype)

  import jax
  import numpy as np
  from jaxface.training import parallel
  from jaxface.training import train_step as ts

  assert jax.device_count() == 4, jax.devices()
  t0 = time.perf_counter()
  state0, batches = tp.initial_state(), tp.host_batches()
  tx, mesh = tp.optimizer(), parallel.data_mesh()
  P = jax.sharding.PartitionSpec
  rep, data = jax.sharding.NamedSharding(mesh, P()), jax.sharding.NamedSharding(mesh, P('data'))
  device0 = lambda tree: jax.device_put(tree, jax.devices()[0])
  to_mesh = lambda b: parallel.global_batch(b, mesh)
  # name: (function, initial state, batch placement)
  jobs = {
      'single': (ts.make_train_step(tp.model(), tp.loss_fn(), tx), device0(state0), lambda b: b),
      'sharded': (ts.make_sharded_train_step(tp.model(), tp.loss_fn(), tx, mesh), parallel.replicate(state0, mesh), to_mesh),
      'pmap': (ts.make_pmap_train_step(tp.model(bn_axis_name="batch"), tp.loss_fn(), tx), parallel.pmap_replicate(state0, 'batch'),
               parallel.pmap_batch),
  }
  v32 = jax.tree_util.tree_map(lambda x: x.astype(np.float32), {'params': state0.params,
                                                                'batch_stats': state0.batch_stats})
  m32, pm32 = tp.model('float32'), tp.model('float32', bn_axis_name='batch')
  probes = {
      'single': (jax.jit(tp.mining_probe(m32)), device0(v32), lambda b: b),
      'sharded': (jax.jit(tp.mining_probe(m32), in_shardings=(rep, data)), parallel.replicate(v32, mesh), to_mesh),
      'pmap': (jax.pmap(tp.mining_probe(pm32, 'batch'), axis_name='batch'), parallel.pmap_replicate(v32, 'batch'),
               parallel.pmap_batch),
  }
  print(f'state, batches and placement in {time.perf_counter() - t0:.1f} s', flush=True)

  # Tracing holds the GIL; XLA compiles without it, so the compiles overlap where cores are free.
  t = time.perf_counter()
  lowered = {(kind, name): fn.lower(state, put(batches[0]))
             for kind, table in (('step', jobs), ('probe', probes)) for name, (fn, state, put) in table.items()}
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    compiled = dict(zip(lowered, pool.map(lambda low: low.compile(), lowered.values())))
  print(f'traced and compiled {len(compiled)} programs in {time.perf_counter() - t:.1f} s', flush=True)

  steps = {}
  for name, (_, state, put) in jobs.items():
    metrics = []
    for b in batches:
      state, m = compiled['step', name](state, put(b))
      metrics.append(m)
    steps[name] = tp.snapshot(state, metrics, per_device=name == 'pmap')
  ok = tp.compare(f'{args.dtype} sharded vs single', steps['single'], steps['sharded'], args.tol)
  ok &= tp.compare(f'{args.dtype} pmap vs single', steps['single'], steps['pmap'], args.tol)

  probed = {}
  for name, (_, variables, put) in probes.items():
    neg, gap, metrics = compiled['probe', name](variables, put(batches[0]))
    if name == 'pmap':  # [D, B/D, ...] -> [B, ...]; metrics are the same on every device
      neg, gap, metrics = neg.reshape(-1, neg.shape[-1]), gap.reshape(-1), {k: v[0] for k, v in metrics.items()}
    probed[name] = np.asarray(neg), np.asarray(gap), {k: np.asarray(v, np.float64) for k, v in metrics.items()}
  neg1, gap1, metrics1 = probed['single']
  clear = gap1 > NEAR_TIE
  print(f'float32 mining cut gaps per image: {np.array2string(gap1, precision=3)} '
        f'(negatives per image {neg1.sum(1).tolist()})', flush=True)
  for name in ('sharded', 'pmap'):
    neg, _, metrics = probed[name]
    flips = (neg != neg1).sum(1)
    worst = max(abs(metrics1[k] - metrics[k]) / max(1.0, abs(metrics1[k])) for k in metrics1)
    print(f'float32 {name} vs single at the initial state: mined-negative flips per image {flips.tolist()}, '
          f'worst relative metric difference {worst:.3g}', flush=True)
    ok &= not flips[clear].any() and worst <= args.tol
  print('OK' if ok else f'FAIL: a difference above {args.tol:g}', flush=True)
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
