"""The hand-written metric files (jaxface.training.metric_writers): CRC32C golden values, event
files decoded by an independent reader written here, and JSONL round trips."""
from __future__ import annotations

import json
import math
import os
import struct

import numpy as np
import pytest

from jaxface.training import metric_writers as mw


# --- An independent reader: TFRecord framing and the protobuf wire format, decoded by hand. ---

def read_varint(data: bytes, pos: int) -> tuple[int, int]:
  value, shift = 0, 0
  while True:
    byte = data[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    shift += 7
    if not byte & 0x80:
      return value, pos


def read_fields(data: bytes) -> list[tuple[int, int, object]]:
  """(field number, wire type, raw value) for every field of one message, in order."""
  fields, pos = [], 0
  while pos < len(data):
    key, pos = read_varint(data, pos)
    field, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = read_varint(data, pos)
    elif wire == 1:
      value, pos = data[pos:pos + 8], pos + 8
    elif wire == 2:
      length, pos = read_varint(data, pos)
      value, pos = data[pos:pos + length], pos + length
    elif wire == 5:
      value, pos = data[pos:pos + 4], pos + 4
    else:
      raise AssertionError(f'unexpected wire type {wire}')
    fields.append((field, wire, value))
  assert pos == len(data)
  return fields


def read_records(path) -> list[bytes]:
  """Every TFRecord's data, both masked CRCs checked."""
  with open(path, 'rb') as f:
    blob = f.read()
  records, pos = [], 0
  while pos < len(blob):
    header = blob[pos:pos + 8]
    (length,) = struct.unpack('<Q', header)
    (length_crc,) = struct.unpack('<I', blob[pos + 8:pos + 12])
    assert length_crc == mw.masked_crc32c(header)
    data = blob[pos + 12:pos + 12 + length]
    (data_crc,) = struct.unpack('<I', blob[pos + 12 + length:pos + 16 + length])
    assert data_crc == mw.masked_crc32c(data)
    records.append(data)
    pos += 16 + length
  assert pos == len(blob)
  return records


def decode_event(data: bytes) -> dict:
  """wall_time, step, file_version and the summary's [(tag, float32 value)] of one Event."""
  event = {'step': 0, 'values': []}
  for field, wire, value in read_fields(data):
    if (field, wire) == (1, 1):
      (event['wall_time'],) = struct.unpack('<d', value)
    elif (field, wire) == (2, 0):
      event['step'] = value - (1 << 64) if value >= 1 << 63 else value  # int64
    elif (field, wire) == (3, 2):
      event['file_version'] = value.decode()
    elif (field, wire) == (5, 2):
      for v_field, v_wire, summary_value in read_fields(value):
        assert (v_field, v_wire) == (1, 2)
        parts = {(f, w): x for f, w, x in read_fields(summary_value)}
        assert set(parts) == {(1, 2), (2, 5)}
        event['values'].append(
            (parts[1, 2].decode(), struct.unpack('<f', parts[2, 5])[0]))
    else:
      raise AssertionError(f'unexpected Event field {field} (wire type {wire})')
  return event


def event_files(logdir) -> list[str]:
  return sorted(os.path.join(logdir, n) for n in os.listdir(logdir) if 'tfevents' in n)


def float32(x: float) -> float:
  return struct.unpack('<f', struct.pack('<f', x))[0]


# --- CRC32C ---

@pytest.mark.parametrize('data, expected', [
    (b'', 0x00000000),
    (b'123456789', 0xE3069283),  # The standard check value of CRC-32C.
    (bytes(32), 0x8A9136AA),  # RFC 3720 (iSCSI) B.4: 32 bytes of zeros,
    (b'\xff' * 32, 0x62A8AB43),  # 32 bytes of 0xFF,
    (bytes(range(32)), 0x46DD794E),  # and 0, 1, ..., 31.
])
def test_crc32c_known_vectors(data, expected):
  assert mw.crc32c(data) == expected


def test_masked_crc32c():
  # crc = 0xE3069283; rotate right by 15: (crc >> 15) = 0x1C60D, (crc << 17) & 0xFFFFFFFF =
  # 0x25060000, or-ed 0x2507C60D; + 0xA282EAD8 = 0xC78AB0E5 (no carry out of 32 bits).
  assert mw.masked_crc32c(b'123456789') == 0xC78AB0E5
  # Wrap-around: crc32c(b'') = 0 masks to the bare constant.
  assert mw.masked_crc32c(b'') == 0xA282EAD8


# --- TensorBoard event files ---

def test_event_file_round_trip(tmp_path):
  writer = mw.TensorBoardWriter(tmp_path)
  written = [
      (0, {'loss': 1.5, 'lr': 1e-3}, 1_700_000_000.125),
      (1, {'loss': 0.1, 'loss/box': np.float32(0.3), 'grad_norm': 12345.678}, 1_700_000_001.5),
      (2**40, {'images_per_s': 3.0e38, 'überlänge': -2.5}, 1_700_000_002.0),
      (-3, {'x': 7}, 1_700_000_003.75),  # int64 steps can be negative: 10-byte varint.
  ]
  for step, scalars, wall_time in written:
    writer.scalars(step, scalars, wall_time)
  writer.close()

  [path] = event_files(tmp_path)
  name = os.path.basename(path)
  assert name.startswith('events.out.tfevents.') and name.endswith(f'.{os.getpid()}.jaxface')
  first, *events = [decode_event(r) for r in read_records(path)]
  assert first['file_version'] == 'brain.Event:2' and first['values'] == []
  assert abs(first['wall_time'] - int(name.split('.')[3])) < 2
  assert len(events) == len(written)
  for event, (step, scalars, wall_time) in zip(events, written):
    assert event['step'] == step
    assert event['wall_time'] == wall_time  # A double: exact.
    assert event['values'] == [(tag, float32(float(v))) for tag, v in scalars.items()]


def test_event_file_non_finite_values(tmp_path):
  writer = mw.TensorBoardWriter(tmp_path)
  writer.scalars(5, {'nan': math.nan, 'inf': math.inf, '-inf': -math.inf, 'huge': 1e300})
  writer.close()
  [_, event] = [decode_event(r) for r in read_records(event_files(tmp_path)[0])]
  values = dict(event['values'])
  assert math.isnan(values['nan'])
  # A finite double beyond float32 range is written as an infinity of the same sign.
  assert values['inf'] == values['huge'] == math.inf and values['-inf'] == -math.inf


def test_event_file_is_flushed_after_each_write(tmp_path):
  writer = mw.TensorBoardWriter(tmp_path)
  writer.scalars(1, {'loss': 2.0})
  # Read while still open, as a crash would leave it.
  events = [decode_event(r) for r in read_records(writer.path)]
  assert events[-1]['values'] == [('loss', 2.0)]
  writer.close()


def test_two_writers_in_one_second_get_separate_files(tmp_path):
  writers = [mw.TensorBoardWriter(tmp_path) for _ in range(3)]
  for w in writers:
    w.close()
  assert len(set(w.path for w in writers)) == len(event_files(tmp_path)) == 3


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
  [_, event] = [decode_event(r) for r in read_records(event_files(tmp_path)[0])]
  assert record == {'step': 7, 'time': event['wall_time'], 'loss': 0.25, 'lr': 0.01}
  assert event['step'] == 7 and event['values'] == [('loss', 0.25), ('lr', float32(0.01))]
