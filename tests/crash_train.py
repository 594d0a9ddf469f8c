"""`loop.train` with test_train_loop's tiny config, SIGKILLed right after step N (no cleanup: the
checkpoint save of that step dies in flight). Used by test_resume_after_kill_continues_exactly.

    python tests/crash_train.py WORKDIR N
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from jaxface.training import loop  # noqa: E402
from test_train_loop import tiny_config  # noqa: E402


def main() -> None:
  workdir, crash_step = sys.argv[1], int(sys.argv[2])

  def after_step(step: int) -> None:
    if step == crash_step:
      os.kill(os.getpid(), signal.SIGKILL)

  loop.train(tiny_config(), workdir, after_step=after_step)


if __name__ == '__main__':
  main()
