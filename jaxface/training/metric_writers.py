"""Scalar metrics to a JSONL file and to TensorBoard event files, with no TensorFlow or protobuf.

The event file is written by hand (TFRecord framing, the few protobuf fields of `Event` that
scalars need) so that training depends only on numpy and the standard library. Every write is
flushed to the OS, so a crashed run loses at most the record being written (an OS crash can lose
more: there is no fsync per step).
"""
from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from typing import Mapping

_MASK64 = (1 << 64) - 1


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    table.append(crc)
  return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum of TFRecord framing; a table loop is fast enough here."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC: a CRC of data that itself holds CRCs is then not a fixed point."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  n &= _MASK64  # Negative int64s are their 64-bit two's complement, as protobuf writes them.
  out = bytearray()
  while n > 0x7F:
    out.append((n & 0x7F) | 0x80)
    n >>= 7
  out.append(n)
  return bytes(out)


def _bytes_field(field: int, data: bytes) -> bytes:
  return _varint(field << 3 | 2) + _varint(len(data)) + data


def _float32(value: float) -> bytes:
  try:
    return struct.pack('<f', value)
  except OverflowError:  # Finite but beyond float32: TensorBoard would show it as +-inf anyway.
    return struct.pack('<f', math.copysign(math.inf, value))


def _event(wall_time: float, step: int = 0, file_version: str = '', summary: bytes = b'') -> bytes:
  """An `Event` proto: wall_time (1, double), step (2, int64), file_version (3), summary (5)."""
  out = _varint(1 << 3 | 1) + struct.pack('<d', wall_time)
  if step:
    out += _varint(2 << 3 | 0) + _varint(step)
  if file_version:
    out += _bytes_field(3, file_version.encode())
  if summary:
    out += _bytes_field(5, summary)
  return out


def _summary(scalars: Mapping[str, float]) -> bytes:
  """A `Summary` proto: one Value {tag (1), simple_value (2, float32)} per scalar."""
  return b''.join(
      _bytes_field(1, _bytes_field(1, tag.encode()) + _varint(2 << 3 | 5) + _float32(float(v)))
      for tag, v in scalars.items())


def tfrecord(data: bytes) -> bytes:
  """One TFRecord: length, its masked CRC, the data, the data's masked CRC."""
  length = struct.pack('<Q', len(data))
  return (length + struct.pack('<I', masked_crc32c(length)) + data
          + struct.pack('<I', masked_crc32c(data)))


class TensorBoardWriter:
  """Scalar summaries in a new `events.out.tfevents.*` file under `logdir`.

  A resumed run writes a new file in the same folder; TensorBoard drops the old file's points
  past the step the new one starts at.
  """

  def __init__(self, logdir: str | os.PathLike):
    os.makedirs(logdir, exist_ok=True)
    now = time.time()
    name = f'events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}'
    self.path = os.path.join(logdir, name + '.jaxface')
    suffix = 0
    while os.path.exists(self.path):  # Two writers in one process and second: never overwrite.
      suffix += 1
      self.path = os.path.join(logdir, f'{name}.{suffix}.jaxface')
    self._file = open(self.path, 'xb')
    self._write(_event(now, file_version='brain.Event:2'))

  def _write(self, event: bytes) -> None:
    self._file.write(tfrecord(event))
    self._file.flush()

  def scalars(self, step: int, scalars: Mapping[str, float], wall_time: float | None = None):
    wall_time = time.time() if wall_time is None else wall_time
    self._write(_event(wall_time, int(step), summary=_summary(scalars)))

  def close(self) -> None:
    self._file.close()


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
