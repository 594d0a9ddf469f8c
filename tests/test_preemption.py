"""jaxface.training.preemption in one process: the signal handlers and the flag they set.

The multi-process decision (JAX's preemption service) is tested with two processes in
test_multiprocess.py; the loop's stop, save and exact resume in one process in test_train_loop.py.
"""
import os
import signal

import pytest

from jaxface.training.preemption import Preemption


def test_sigterm_asks_to_stop_and_the_handlers_are_restored():
  before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
  with Preemption() as preempt:
    assert [preempt.should_stop(step) for step in (1, 2)] == [False, False]
    os.kill(os.getpid(), signal.SIGTERM)  # handled in this (the main) thread before kill returns
    assert preempt.requested and preempt.should_stop(3)
    assert signal.getsignal(signal.SIGTERM) == preempt._handle  # pylint: disable=protected-access
  assert {sig: signal.getsignal(sig) for sig in before} == before


def test_first_ctrl_c_asks_to_stop_the_second_interrupts():
  with Preemption() as preempt:
    os.kill(os.getpid(), signal.SIGINT)
    assert preempt.should_stop(1)
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)


def test_handlers_are_restored_when_the_loop_raises():
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(RuntimeError, match='boom'):
    with Preemption():
      raise RuntimeError('boom')
  assert signal.getsignal(signal.SIGTERM) == before
