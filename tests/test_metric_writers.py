"""The metric files (jaxface.training.metric_writers): TensorBoard event files written through
tensorboardX, read back by an independent reader written here (TFRecord framing with its own
CRC-32C, then tensorboardX's `Event` proto), and JSONL round trips."""
from __future__ import annotations

import json
import math
import os
import re
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from jaxface.training import metric_writers as mw


# --- An independent reader: TFRecord framing checked with a CRC-32C written here. ---

def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), bit by bit: slow, short, and not tensorboardX's table or native code."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path) -> list[event_pb2.Event]:
  """Every record of a TFRecord file as an `Event`, both masked CRCs of each record checked:
  uint64 length, uint32 masked CRC of the length, the data, uint32 masked CRC of the data."""
  with open(path, 'rb') as f:
    blob = f.read()
  events, pos = [], 0
  while pos < len(blob):
    header = blob[pos:pos + 8]
    (length,) = struct.unpack('<Q', header)
    (length_crc,) = struct.unpack('<I', blob[pos + 8:pos + 12])
    assert length_crc == masked_crc32c(header), f'{path}: bad length CRC at byte {pos}'
    data = blob[pos + 12:pos + 12 + length]
    (data_crc,) = struct.unpack('<I', blob[pos + 12 + length:pos + 16 + length])
    assert data_crc == masked_crc32c(data), f'{path}: bad data CRC at byte {pos}'
    events.append(event_pb2.Event.FromString(data))
    pos += 16 + length
  assert pos == len(blob), f'{path}: {len(blob) - pos} trailing bytes'
  return events


def scalar_events(path) -> list[tuple[int, float, list[tuple[str, float]]]]:
  """`(step, wall_time, [(tag, value)])` of each summary event, after checking the file starts
  with the file-version event TensorBoard expects."""
  first, *events = read_events(path)
  assert first.file_version == 'brain.Event:2' and not first.HasField('summary')
  return [(e.step, e.wall_time, [(v.tag, v.simple_value) for v in e.summary.value]) for e in events]


def event_files(logdir) -> list[str]:
  return sorted(os.path.join(logdir, n) for n in os.listdir(logdir) if n.startswith('events.out.tfevents.'))


def float32(x: float) -> float:
  return struct.unpack('<f', struct.pack('<f', x))[0]


@pytest.mark.parametrize('data, expected', [
    (b'', 0x00000000),
    (b'123456789', 0xE3069283),  # The standard check value of CRC-32C.
    (bytes(32), 0x8A9136AA),  # RFC 3720 (iSCSI) B.4: 32 bytes of zeros,
    (b'\xff' * 32, 0x62A8AB43),  # 32 bytes of 0xFF,
    (bytes(range(32)), 0x46DD794E),  # and 0, 1, ..., 31.
])
def test_reader_crc32c_known_vectors(data, expected):
  """The reader's own CRC is right, so its checks of tensorboardX's framing mean something."""
  assert crc32c(data) == expected


def test_reader_masked_crc32c():
  # crc = 0xE3069283; rotate right by 15: (crc >> 15) = 0x1C60D, (crc << 17) & 0xFFFFFFFF =
  # 0x25060000, or-ed 0x2507C60D; + 0xA282EAD8 = 0xC78AB0E5 (no carry out of 32 bits).
  assert masked_crc32c(b'123456789') == 0xC78AB0E5
  assert masked_crc32c(b'') == 0xA282EAD8  # crc32c(b'') = 0 masks to the bare constant.


def test_reader_rejects_a_corrupt_record(tmp_path):
  """One flipped byte in an event's payload fails the reader's data CRC."""
  writer = mw.TensorBoardWriter(tmp_path)
  writer.scalars(1, {'loss': 2.0})
  writer.close()
  [path] = event_files(tmp_path)
  blob = bytearray(open(path, 'rb').read())
  blob[-5] ^= 0x01  # the last byte of the last event's data (its CRC is the last 4 bytes)
  open(path, 'wb').write(bytes(blob))
  with pytest.raises(AssertionError, match='bad data CRC'):
    read_events(path)


# --- TensorBoard event files ---

def test_event_file_round_trip(tmp_path):
  writer = mw.TensorBoardWriter(tmp_path)
  written = [
      (0, {'loss': 1.5, 'lr': 1e-3}, 1_700_000_000.125),
      (1, {'loss': 0.1, 'loss/box': np.float32(0.3), 'grad_norm': 12345.678}, 1_700_000_001.5),
      (2**40, {'images_per_s': 3.0e38, 'überlänge': -2.5}, 1_700_000_002.0),
      (-3, {'x': 7}, 1_700_000_003.75),  # int64 steps can be negative.
  ]
  for step, scalars, wall_time in written:
    writer.scalars(step, scalars, wall_time)
  writer.close()

  [path] = event_files(tmp_path)
  # TensorBoard's name (second, host) plus our suffix (pid, writer number).
  name = re.fullmatch(rf'events\.out\.tfevents\.(\d{{10}})\..+\.{os.getpid()}\.\d+\.jaxface', os.path.basename(path))
  assert name is not None, path
  assert abs(read_events(path)[0].wall_time - int(name[1])) < 2
  events = scalar_events(path)
  assert len(events) == len(written)
  for (step, wall_time, values), (step_in, scalars, wall_time_in) in zip(events, written):
    assert step == step_in
    assert wall_time == wall_time_in  # A double: exact.
    assert values == [(tag, float32(float(v))) for tag, v in scalars.items()]


def test_event_file_non_finite_values(tmp_path):
  writer = mw.TensorBoardWriter(tmp_path)
  writer.scalars(5, {'nan': math.nan, 'inf': math.inf, '-inf': -math.inf, 'huge': 1e300})
  writer.close()
  [(step, _, values)] = scalar_events(event_files(tmp_path)[0])
  values = dict(values)
  assert step == 5 and math.isnan(values['nan'])
  # A finite double beyond float32 range is written as an infinity of the same sign.
  assert values['inf'] == values['huge'] == math.inf and values['-inf'] == -math.inf


def test_event_file_is_on_disk_after_each_write(tmp_path):
  writer = mw.TensorBoardWriter(tmp_path)
  [path] = event_files(tmp_path)
  assert scalar_events(path) == []  # the file-version event alone, already readable
  writer.scalars(1, {'loss': 2.0}, wall_time=5.0)
  # Read while still open, as a crash would leave it.
  assert scalar_events(path) == [(1, 5.0, [('loss', 2.0)])]
  writer.scalars(2, {'loss': 1.0}, wall_time=6.0)
  assert [step for step, _, _ in scalar_events(path)] == [1, 2]
  writer.close()


def test_two_writers_in_one_second_get_separate_files(tmp_path):
  writers = [mw.TensorBoardWriter(tmp_path) for _ in range(3)]
  for i, w in enumerate(writers):
    w.scalars(i, {'i': i})
  for w in writers:
    w.close()
  files = event_files(tmp_path)
  assert len(files) == 3
  # None truncated another: each file holds its own writer's one event.
  assert sorted(scalar_events(f)[0][0] for f in files) == [0, 1, 2]


# --- JSONL ---

def read_jsonl(path) -> list[dict]:
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def test_jsonl_round_trip(tmp_path):
  path = tmp_path / 'sub' / 'metrics.jsonl'
  writer = mw.JsonlWriter(path)
  writer.scalars(0, {'loss': 1.25, 'lr': np.float32(0.5)}, wall_time=10.5)
  writer.scalars(100, {'loss': 0.1}, wall_time=20.0)
  assert len(read_jsonl(path)) == 2  # Flushed while still open.
  writer.close()
  assert read_jsonl(path) == [
      {'step': 0, 'time': 10.5, 'loss': 1.25, 'lr': 0.5},
      {'step': 100, 'time': 20.0, 'loss': 0.1},
  ]


def test_jsonl_non_finite_values_are_strict_json_strings(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  writer = mw.JsonlWriter(path)
  writer.scalars(1, {'nan': float('nan'), 'inf': np.inf, 'ninf': -np.inf, 'ok': 2.0})
  writer.close()
  text = path.read_text()
  # Strict JSON parsers reject bare NaN / Infinity.
  record = json.loads(text, parse_constant=lambda c: pytest.fail(f'non-strict JSON {c}'))
  assert record['nan'] == 'NaN' and record['inf'] == 'Infinity' and record['ninf'] == '-Infinity'
  assert math.isnan(float(record['nan'])) and float(record['ninf']) == -math.inf
  assert record['ok'] == 2.0


def test_jsonl_resume_appends(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  writer = mw.JsonlWriter(path)
  writer.scalars(1, {'loss': 3.0}, wall_time=1.0)
  writer.close()
  writer = mw.JsonlWriter(path)  # The resumed run.
  writer.scalars(2, {'loss': 2.0}, wall_time=2.0)
  writer.close()
  assert [(r['step'], r['loss']) for r in read_jsonl(path)] == [(1, 3.0), (2, 2.0)]


def test_jsonl_reserved_names_raise(tmp_path):
  writer = mw.JsonlWriter(tmp_path / 'metrics.jsonl')
  with pytest.raises(ValueError, match='reserved'):
    writer.scalars(1, {'step': 3.0})
  writer.close()


# --- Both ---

def test_metric_writers_write_both_with_one_time(tmp_path):
  with mw.MetricWriters(tmp_path) as writers:
    writers.write_scalars(7, {'loss': np.float32(0.25), 'lr': 0.01})
  [record] = read_jsonl(tmp_path / 'metrics.jsonl')
  [(step, wall_time, values)] = scalar_events(event_files(tmp_path)[0])
  assert record == {'step': 7, 'time': wall_time, 'loss': 0.25, 'lr': 0.01}
  assert step == 7 and values == [('loss', 0.25), ('lr', float32(0.01))]


def test_metric_writers_read_back_as_the_loop_writes(tmp_path):
  """The loop's pattern (a log line every few steps, an evaluation at the end, then a resumed run
  into the same folder): the event files give back every step and scalar written, in order."""
  rng = np.random.default_rng(0)
  first = {step: {'train/loss': float(rng.uniform(0, 5)), 'train/lr': 1e-3 * step, 'data/dropped': step % 3}
           for step in (2, 4, 6)}
  first[6]['val/ap_easy'] = 0.5
  resumed = {step: {'train/loss': float(rng.uniform(0, 5)), 'train/lr': 1e-3 * step, 'data/dropped': 0}
             for step in (6, 8)}
  for run in (first, resumed):
    with mw.MetricWriters(tmp_path) as writers:
      for step, scalars in run.items():
        writers.write_scalars(step, scalars)

  files = event_files(tmp_path)
  assert len(files) == 2
  for path, run in zip(sorted(files, key=lambda f: int(f.split('.')[-2])), (first, resumed)):
    got = {step: dict(values) for step, _, values in scalar_events(path)}
    assert list(got) == list(run)
    assert got == {step: {tag: float32(v) for tag, v in scalars.items()} for step, scalars in run.items()}
  # The JSONL log keeps both runs in one file, at full precision.
  records = read_jsonl(tmp_path / 'metrics.jsonl')
  assert [{k: v for k, v in r.items() if k != 'time'} for r in records] == [
      {'step': step, **scalars} for run in (first, resumed) for step, scalars in run.items()]
