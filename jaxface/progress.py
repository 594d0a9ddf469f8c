"""Progress-line formatting shared by the train loop and the evaluator."""
from __future__ import annotations


def clock(seconds: float) -> str:
  """`h:mm:ss`, for progress lines and ETAs."""
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f'{h:d}:{m:02d}:{s:02d}'
