"""Preemption: on SIGTERM (or a first Ctrl-C), checkpoint and stop, at the same step on every process.

    with Preemption() as preempt:
      for batch in batches:
        ...                                  # the step, step += 1
        stop = preempt.should_stop(step)     # every process, every step
        if stop or ...: save(step)
        if stop: break

A multi-process run saves collectively (orbax): if each process stopped at the step where its own
signal arrived, a scheduler that signals one host first would leave the others stepping, or
saving, alone, and the run hangs in a collective. So the decision must agree across processes.

How. One process: the signal handlers set a flag, and `should_stop` returns it. Several processes:
JAX's preemption service decides (`multihost_utils.reached_preemption_sync_point`, which orbax's
`CheckpointManager.reached_preemption` calls). `jax.distributed.initialize` starts it with a
SIGTERM handler of its own (XLA's preemption notifier, which polls for the signal every second);
the notice reaches the other processes through the coordination service, they exchange the steps
they are at, and the call returns True on every process at the same step (the largest + 1).
Measured on CPU/gloo with jax 0.10.2, two processes, only one sent SIGTERM: both returned True at
the same step. So in a multi-process run this class leaves SIGTERM to XLA (a Python handler
installed after `initialize` would replace XLA's and no notice would be sent; one installed
before is replaced by it), and its Ctrl-C handler sends this process a SIGTERM, so that an
interrupt on one host is a preemption notice for all.

Cost, measured (2 CPU cores). One process: reading a bool, 54 ns a call. Several: the sync call
takes a mutex and reads a flag that a background thread sets, 0.2 us a call (median of 2,000, two
processes, no notice pending); only after a notice does it wait, once, for the exchange. It never
touches the devices, so the loop still reads metrics a step behind and the device never waits.
The alternative, an all-reduce of each process's flag (`multihost_utils.process_allgather` of an
int), took 0.9 ms a call with the devices idle, and as a device computation queued behind the
step it waited for the step to finish (it took as long as a 0.3 s matmul in flight): the stall
the loop is built to avoid, unless done every k steps, which delays the stop by up to k steps.

If the preemption service is turned off (`jax_enable_preemption_service=False`) in a
multi-process run, signals are left alone (SIGTERM kills as by default, and the run resumes from
its last periodic checkpoint): an unsynchronised save could hang, a kill cannot corrupt a checkpoint.
"""
from __future__ import annotations

import logging
import os
import signal

import jax
from jax.experimental import multihost_utils


class Preemption:
  """SIGTERM and a first Ctrl-C ask the loop to checkpoint and stop; a second Ctrl-C stops at once.

  `should_stop(step)` is the decision: in a multi-process run it is collective (every process
  must call it at every step, with the same steps) and returns True at the same step everywhere.
  Handlers are installed by `__enter__` and the previous ones restored by `__exit__`.
  """

  def __init__(self):
    self.requested = False  # this process was signalled (in a multi-process run: by Ctrl-C)
    self._synced = False  # the decision is JAX's preemption service's
    self._old = {}

  def __enter__(self) -> Preemption:
    signals = (signal.SIGTERM, signal.SIGINT)
    if jax.process_count() > 1:
      if not jax.config.jax_enable_preemption_service:
        logging.warning('jax_enable_preemption_service is off: SIGTERM and Ctrl-C stop this %d-process run '
                        'without a checkpoint (resume from the last periodic one)', jax.process_count())
        return self
      self._synced = True
      signals = (signal.SIGINT,)  # SIGTERM is XLA's preemption notifier's
    for sig in signals:
      self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now
    self.requested = True
    logging.warning('signal %d: checkpointing and stopping at the next step%s', signum,
                    ' all processes agree on' if self._synced else '')
    if self._synced:
      os.kill(os.getpid(), signal.SIGTERM)  # to XLA's handler: the notice reaches every process

  def should_stop(self, step: int) -> bool:
    """Whether to checkpoint `step` and stop. Collective in a multi-process run: call it once per
    step on every process, `step` increasing by one from the same start."""
    if self._synced:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def __exit__(self, *exc) -> None:
    for sig, old in self._old.items():
      signal.signal(sig, old)
    self._old.clear()
