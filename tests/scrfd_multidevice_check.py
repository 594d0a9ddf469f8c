"""SCRFD's train step: single device vs jit over a 4-device mesh vs pmap, two steps, float64, within
1e-5 (every parameter, BN statistic and metric). The RetinaFace check's machinery
(train_parity.py) with SCRFD's model (scrfd_500m_bnkps: BN heads, synchronised over the batch),
ATSS and loss. ATSS runs in float32 as in training, so every program assigns the same anchors.

Run by tests/test_multidevice.py in a subprocess; by hand: python tests/scrfd_multidevice_check.py
"""
from __future__ import annotations

import functools
import sys
import time

import train_parity as tp

ARCH = 'scrfd_500m_bnkps'


def use_scrfd() -> None:
  """Points train_parity's model, loss and batches at SCRFD (after `tp.configure`): ATSS traced in
  float32 as in training, the batches through SCRFD's augmentation."""
  import jax
  import jax.numpy as jnp
  from jaxface.data import pipeline, synthetic
  from jaxface.scrfd import FAMILY, augment, loss
  from jaxface.training import train_step as ts

  assign = loss.atss_assign

  @functools.wraps(assign)
  def float32_assign(*args, **kwargs):
    with jax.enable_x64(False):
      return assign(*args, **kwargs)
  loss.atss_assign = float32_assign

  def host_batches(process_index: int = 0, process_count: int = 1) -> list[dict]:
    source = synthetic.SyntheticFaces('train', 2 * tp.GLOBAL_BATCH, seed=0)
    cfg = pipeline.LoaderConfig(global_batch_size=tp.GLOBAL_BATCH, image_size=tp.S, max_faces=16, seed=0,
                                process_index=process_index, process_count=process_count)
    return list(pipeline.batches(source, augment.scrfd_augment, cfg, num_steps=tp.STEPS))

  tp.model = lambda dtype=None, **kw: FAMILY.build(FAMILY.spec(ARCH), dtype=jnp.dtype(dtype or tp.DTYPE), **kw)
  tp.loss_fn = lambda: ts.loss_fn_for(FAMILY, FAMILY.spec(ARCH))
  tp.host_batches = host_batches


def main() -> int:
  tp.configure(4, 'float64')
  use_scrfd()
  import jax
  from jaxface.training import parallel
  from jaxface.training import train_step as ts

  assert jax.device_count() == 4, jax.devices()
  batches = tp.host_batches()
  state0, tx, mesh = tp.initial_state(), tp.optimizer(), parallel.data_mesh()
  device0 = lambda tree: jax.device_put(tree, jax.devices()[0])
  jobs = {
      'single': (ts.make_train_step(tp.model(), tp.loss_fn(), tx), device0(state0), lambda b: b),
      'sharded': (ts.make_sharded_train_step(tp.model(), tp.loss_fn(), tx, mesh), parallel.replicate(state0, mesh),
                  lambda b: parallel.global_batch(b, mesh)),
      'pmap': (ts.make_pmap_train_step(tp.model(bn_axis_name='batch'), tp.loss_fn(), tx),
               parallel.pmap_replicate(state0, 'batch'), parallel.pmap_batch),
  }
  t = time.perf_counter()
  steps = {}
  for name, (fn, state, put) in jobs.items():
    metrics = []
    for b in batches:
      state, m = fn(state, put(b))
      metrics.append(m)
    steps[name] = tp.snapshot(state, metrics, per_device=name == 'pmap')
  print(f'three programs, two steps each, in {time.perf_counter() - t:.1f} s; positives per step: '
        f'{[float(steps["single"][f"metrics[{i}].num_pos"]) for i in range(tp.STEPS)]}', flush=True)
  ok = tp.compare('float64 sharded vs single', steps['single'], steps['sharded'])
  ok &= tp.compare('float64 pmap vs single', steps['single'], steps['pmap'])
  ok &= all(steps['single'][f'metrics[{i}].num_pos'] > 0 for i in range(tp.STEPS))
  print('OK' if ok else 'FAIL', flush=True)
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
