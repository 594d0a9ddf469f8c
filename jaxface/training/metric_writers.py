"""Scalar metrics to a JSONL file and to TensorBoard event files (through tensorboardX).

The event file is written by tensorboardX (TFRecord framing, CRC32C, the `Event` and `Summary`
protos) rather than by hand: that encoding is TensorBoard's format to keep up with, not ours. We
use its synchronous `EventsWriter`, not `SummaryWriter`: the latter queues events for a background
thread and flushes every `flush_secs`, so a killed run would lose its last minutes of metrics and
`flush()` would not even drain the queue. Here each `write_scalars` is one `Event` holding every
scalar of the step, on disk (flushed and fsynced by tensorboardX) before the call returns, as the
JSONL line is (flushed to the OS). Logging happens every `log_every_steps`, so the fsync is cheap.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import time
from typing import Mapping

from tensorboardX import summary as tbx_summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2, summary_pb2

# tensorboardX names a file by the second, the host and a suffix and opens it with 'wb': the pid
# and a per-process counter in the suffix keep two writers in one second (a quick resume into the
# same workdir, tests) from truncating each other's file.
_writer_ids = itertools.count()


class TensorBoardWriter:
  """Scalar summaries in a new `events.out.tfevents.*` file under `logdir`.

  A resumed run writes a new file in the same folder; TensorBoard drops the old file's points
  past the step the new one starts at.
  """

  def __init__(self, logdir: str | os.PathLike):
    os.makedirs(logdir, exist_ok=True)
    self._writer = EventsWriter(os.path.join(os.fspath(logdir), 'events'),
                                filename_suffix=f'.{os.getpid()}.{next(_writer_ids)}.jaxface')
    self._writer.flush()  # the file-version event: TensorBoard sees the run as soon as it starts

  def scalars(self, step: int, scalars: Mapping[str, float], wall_time: float | None = None) -> None:
    """One event at `step` with every scalar: a float32 `simple_value` each, as TensorBoard keeps
    them, under the tag tensorboardX makes of the name (characters outside `[-/\\w.]` become `_`)."""
    values = [v for tag, x in scalars.items() for v in tbx_summary.scalar(tag, float(x)).value]
    event = event_pb2.Event(wall_time=time.time() if wall_time is None else wall_time, step=int(step),
                            summary=summary_pb2.Summary(value=values))
    self._writer.write_event(event)
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def _json_number(value: float) -> float | str:
  """Strict JSON has no NaN or Infinity: they are written as the strings "NaN", "Infinity" and
  "-Infinity", which `float()` reads back, rather than null, which would lose which one it was."""
  value = float(value)
  if math.isfinite(value):
    return value
  return 'NaN' if math.isnan(value) else ('Infinity' if value > 0 else '-Infinity')


class JsonlWriter:
  """Appends `{"step": int, "time": unix seconds, **scalars}` lines, so a resumed run keeps the
  earlier ones."""

  def __init__(self, path: str | os.PathLike):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.path = path
    self._file = open(path, 'a', encoding='utf-8')

  def scalars(self, step: int, scalars: Mapping[str, float], wall_time: float | None = None):
    clash = {'step', 'time'} & set(scalars)
    if clash:
      raise ValueError(f'metric names {sorted(clash)} are reserved in the JSONL record')
    record = {'step': int(step), 'time': time.time() if wall_time is None else wall_time}
    record.update((tag, _json_number(v)) for tag, v in scalars.items())
    self._file.write(json.dumps(record, allow_nan=False) + '\n')
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class MetricWriters:
  """Both writers on one folder (`metrics.jsonl` beside the event file), same step and time."""

  def __init__(self, logdir: str | os.PathLike, jsonl_name: str = 'metrics.jsonl'):
    self.jsonl = JsonlWriter(os.path.join(logdir, jsonl_name))
    self.tensorboard = TensorBoardWriter(logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    scalars = {tag: float(v) for tag, v in scalars.items()}  # Device arrays read once.
    wall_time = time.time()
    self.jsonl.scalars(step, scalars, wall_time)
    self.tensorboard.scalars(step, scalars, wall_time)

  def close(self) -> None:
    self.jsonl.close()
    self.tensorboard.close()

  def __enter__(self) -> MetricWriters:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
