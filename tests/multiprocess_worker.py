"""One process of tests/test_multiprocess.py: two steps of the sharded train step over the devices
of every process, each process loading only its slice of the global batch.

  JAX_COORDINATOR_ADDRESS=127.0.0.1:port JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i \
    python tests/multiprocess_worker.py --local-devices 2 --out result_{process}.npz

Without those variables it is the one-process reference. Writes the parameters, BN statistics
and metrics (float64, see train_parity.py) to `--out`; exits with `SKIP` when this platform
cannot run collectives between CPU processes.

With `--loop WORKDIR` it runs train.py's loop instead (`loop.train`, the tiny config of
tests/test_train_loop.py): every process joins through `initialize_distributed`, loads its slice
of each batch and takes part in the checkpoint saves to the shared WORKDIR. The loop's model,
state and optimizer run in float64 here, for the reason of train_parity.py: in float32 the same
loop on 1, 2 or 4 devices of one process already ends 1.6e-3 apart in loss after 4 steps (near-tie
negatives flip in the mining), more than between two processes and one.
"""
from __future__ import annotations

import argparse
import sys
import time

import train_parity as tp

SKIP = 77  # the exit status that makes the test skip, not fail
LOOP_LR = tp.LR  # the reference's base learning rate: a wrong batch slice moves weights by ~1e-3


def main() -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument('--local-devices', type=int, default=1)
  parser.add_argument('--out', help='npz path; {process} is replaced by the process index')
  parser.add_argument('--loop', metavar='WORKDIR', help="run loop.train into WORKDIR instead of two bare steps")
  parser.add_argument('--init-timeout', type=int, default=120, help='seconds to wait for the other processes')
  args = parser.parse_args()
  tp.configure(args.local_devices)

  import jax
  import numpy as np
  from jaxface.training import parallel
  from jaxface.training import train_step as ts

  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  parallel.initialize_distributed(timeout_s=args.init_timeout)
  me = f'process {jax.process_index()}/{jax.process_count()}'
  mesh = parallel.data_mesh()
  # The smallest cross-process collective, no jaxface code: a runtime error here is the platform.
  ones = jax.make_array_from_callback((jax.device_count(),), jax.sharding.NamedSharding(mesh, parallel.P('data')),
                                      lambda index: np.ones((jax.device_count(),), np.int32)[index])
  try:
    total = int(jax.jit(lambda x: x.sum(), out_shardings=jax.sharding.NamedSharding(mesh, parallel.P()))(ones))
  except jax.errors.JaxRuntimeError as e:  # e.g. "Multiprocess computations aren't implemented on the CPU backend"
    print(f'{me}: CPU collectives unavailable: {e}', flush=True)
    return SKIP
  assert total == jax.device_count(), (total, jax.device_count())

  if args.loop:
    from jaxface.training import loop
    from test_train_loop import tiny_config
    family = _float64_loop(loop)
    t = time.perf_counter()
    # At most 2 faces per image: the loader drops some, and the logged drop counts are checked.
    loop.train(tiny_config(learning_rate=LOOP_LR, **{'data.max_faces': 2}), args.loop, family=family)
    print(f'{me}: loop.train finished in {time.perf_counter() - t:.1f} s', flush=True)
    return 0

  t = time.perf_counter()
  batches = tp.host_batches(jax.process_index(), jax.process_count())
  step = ts.make_sharded_train_step(tp.model(), tp.loss_fn(), tp.optimizer(), mesh)
  state = parallel.replicate(tp.initial_state(), mesh)
  metrics = []
  for b in batches:
    state, m = step(state, parallel.global_batch(b, mesh))
    metrics.append(m)
  out = tp.snapshot(state, metrics)
  np.savez(args.out.format(process=jax.process_index()), **out)
  print(f'{me}: {len(batches)} steps on {jax.device_count()} devices, host batch '
        f'{len(batches[0]["image"])}, in {time.perf_counter() - t:.1f} s', flush=True)
  return 0


def _float64_loop(loop):
  """The family to pass to `loop.train` for a float64 model, with float64 initial variables (hence
  float64 gradients, optimizer state and checkpoints); the data and the matching stay float32."""
  import dataclasses
  import functools
  import jax
  import numpy as np
  from jaxface.retinaface import FAMILY
  initial_variables = loop.initial_variables
  loop.initial_variables = lambda *args, **kwargs: jax.tree_util.tree_map(
      lambda x: np.asarray(x, np.float64), initial_variables(*args, **kwargs))
  return dataclasses.replace(FAMILY, build=functools.partial(FAMILY.build, dtype=np.float64))


if __name__ == '__main__':
  sys.exit(main())
