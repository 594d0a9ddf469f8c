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

`--sigterm-at-step K` (with `--loop`) sends SIGTERM to the last process only, as its loader hands
over the batch of step K: the preemption test's one signalled host. The worker then prints the
step `loop.train` returned at, which every process must agree on.
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
  parser.add_argument('--sigterm-at-step', type=int, help='with --loop: SIGTERM to the last process before this step')
  parser.add_argument('--checkpoint-every-steps', type=int, help="with --loop: the config's value instead of the tiny one")
  parser.add_argument('--init-timeout', type=int, default=120, help='seconds to wait for the other processes')
  parser.add_argument('--scrfd', action='store_true', help="the two bare steps with SCRFD's model, ATSS and loss")
  args = parser.parse_args()
  tp.configure(args.local_devices)
  if args.scrfd:
    import scrfd_multidevice_check
    scrfd_multidevice_check.use_scrfd()

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
    if args.sigterm_at_step and jax.process_index() == jax.process_count() - 1:
      _sigterm_before_step(loop, args.sigterm_at_step, me)
    overrides = {'data.max_faces': 2}  # the loader drops some faces, and the logged drop counts are checked
    if args.checkpoint_every_steps:
      overrides['checkpoint_every_steps'] = args.checkpoint_every_steps  # host-side: the same compiled step
    t = time.perf_counter()
    state = loop.train(tiny_config(learning_rate=LOOP_LR, **overrides), args.loop, family=family)
    print(f'{me}: loop.train returned at step {int(state.step)} in {time.perf_counter() - t:.1f} s', flush=True)
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


def _sigterm_before_step(loop, signal_step: int, me: str) -> None:
  """This process sends itself SIGTERM as the loader yields the batch of step `signal_step` (the
  first step is 1), before the step runs: what a scheduler preempting this one host does."""
  import os
  import signal
  batches = loop.pipeline.batches

  def signalling(*args, start_step=0, **kwargs):
    for step, batch in enumerate(batches(*args, start_step=start_step, **kwargs), start=start_step + 1):
      if step == signal_step:
        print(f'{me}: sending SIGTERM to myself before step {step}', flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch
  loop.pipeline.batches = signalling


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
