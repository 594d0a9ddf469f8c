"""WIDER FACE prediction files: `<event>/<name>.txt` with a name line, a count line N, then N
lines `x y w h score`.

How the two evaluators read them:

- official (MATLAB `read_pred.m`): ignores the name line, reads exactly N detection lines (lines
  after them are ignored), uses the first five numbers of each line (separated by spaces, tabs
  or commas, as `str2num` allows). A missing file, a count that is not a whole number, fewer than
  N lines, or a line without five numbers makes the **whole file** zero detections, with a message.
  Leading whitespace is trimmed; a blank line among the N is malformed (Octave's `textscan`
  keeps it as an empty line).
- python (the port's `read_pred_file`): ignores the name line and the count, and reads every
  following non-blank line's first five whitespace-separated numbers. The port crashes on a
  missing file or a bad line; here both are handled as for the official protocol. (The port
  also keys images by the name line, skips lines that start with a space, and lets the scores
  of extra files into the min-max normalisation; here files are read by path, such lines are
  read, and extra files are left out.)

Both protocols report each problem as a warning naming the file (and line); `strict=True` turns
them into a `PredictionFormatError`. Files and folders that are not images of the ground truth
are ignored with a note.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Mapping

import numpy as np

from jaxface.evaluation.ground_truth import GroundTruth
from jaxface.evaluation.protocol import PROTOCOLS

_SEPARATORS = re.compile(r'[\s,]+')
_MAX_LISTED = 5  # names listed per note


class PredictionFormatError(ValueError):
  """A prediction file is missing or malformed (raised with `strict=True`, or by `read_prediction_file`)."""


@dataclasses.dataclass
class ReadReport:
  """What reading a prediction folder found besides the detections.

  Attributes:
    warnings: problems that change the score: missing or malformed files, each scored as zero
      detections, named with file (and line).
    notes: things ignored without effect on the score (files and folders not in the ground truth).
  """
  warnings: list[str] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)


def _lines(text: str) -> list[str]:
  lines = text.split('\n')
  if lines and lines[-1] == '':
    lines.pop()  # the newline that ends the last line does not start another
  return lines


def _parse_numbers(line: str, separators: re.Pattern | None) -> list[float]:
  tokens = separators.split(line.strip()) if separators else line.split()
  return [float(t) for t in tokens if t]


def _read_official(lines: list[str], path: str) -> np.ndarray:
  if len(lines) < 2:
    raise PredictionFormatError(f'{path}:{len(lines) + 1}: missing the count line')
  try:
    count = float(lines[1].strip())
  except ValueError:
    count = None
  if count is None or not np.isfinite(count) or count != int(count) or count < 0:
    raise PredictionFormatError(f'{path}:2: the count line {lines[1].strip()!r} is not a whole number >= 0')
  count = int(count)
  rows = lines[2:2 + count]
  if len(rows) < count:
    raise PredictionFormatError(f'{path}:{len(lines) + 1}: the count line says {count} detections but only '
                                f'{len(rows)} lines follow')
  tokens = [r.split() for r in rows]
  if all(len(t) == 5 for t in tokens):  # the usual file: one conversion for all of it
    try:
      return np.array(tokens, np.float64).reshape(-1, 5)
    except ValueError:
      pass
  out = np.zeros((count, 5), np.float64)
  for k, row in enumerate(rows):
    try:
      values = _parse_numbers(row, _SEPARATORS)
    except ValueError:
      values = []
    if len(values) < 5:
      raise PredictionFormatError(f'{path}:{k + 3}: expected "x y w h score", got {row.strip()[:80]!r}')
    out[k] = values[:5]
  return out


def _read_python(lines: list[str], path: str) -> np.ndarray:
  if not lines:
    raise PredictionFormatError(f'{path}:1: empty file (no name line)')
  out = []
  for k, row in enumerate(lines[2:]):
    tokens = row.split()
    if not tokens:
      continue
    try:
      values = [float(t) for t in tokens[:5]]
    except ValueError:
      values = []
    if len(values) < 5:
      raise PredictionFormatError(f'{path}:{k + 3}: expected "x y w h score", got {row.strip()[:80]!r}')
    out.append(values)
  return np.array(out, np.float64).reshape(-1, 5)


def read_prediction_file(path: str | os.PathLike, protocol: str = 'official') -> np.ndarray:
  """The detections of one file, `[P, 5]` float64 `x, y, w, h, score` in file order.

  Raises:
    PredictionFormatError: `path:line: reason` for a file the protocol cannot read.
    OSError: the file cannot be opened.
  """
  path = os.fspath(path)
  with open(path, 'rb') as f:
    text = f.read().decode('latin-1')  # numbers are ASCII; the name line is not used
  if protocol not in PROTOCOLS:
    raise ValueError(f'unknown protocol {protocol!r}; valid: {PROTOCOLS}')
  reader = _read_official if protocol == 'official' else _read_python
  return reader(_lines(text), path)


def read_predictions(pred_dir: str | os.PathLike, gt: GroundTruth, protocol: str = 'official',
                     strict: bool = False) -> tuple[dict[tuple[str, str], np.ndarray], ReadReport]:
  """Reads `<pred_dir>/<event>/<name>.txt` for every image of `gt`.

  Args:
    pred_dir: the folder of event folders.
    gt: which images to read.
    protocol: 'official' or 'python' (how a file is read; see the module docstring).
    strict: raise instead of scoring missing or malformed files as zero detections.

  Returns:
    `(preds, report)`: `(event, name) -> [P, 5]` for the files read (images without a usable file
    are absent, i.e. zero detections), and the warnings and notes.

  Raises:
    FileNotFoundError: `pred_dir` is not a folder.
    PredictionFormatError: with `strict=True`, listing every missing or malformed file.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f'unknown protocol {protocol!r}; valid: {PROTOCOLS}')
  pred_dir = os.fspath(pred_dir)
  if not os.path.isdir(pred_dir):
    raise FileNotFoundError(f'prediction folder not found: {pred_dir}')
  report = ReadReport()
  preds = {}
  top_files, top_dirs = _listing(pred_dir)
  events = set(gt.events)
  for event, names in zip(gt.events, gt.files):
    event_dir = os.path.join(pred_dir, event)
    if event not in top_dirs:
      report.warnings.append(f'{event_dir}: missing event folder; its {len(names)} images are scored as '
                             f'zero detections')
      continue
    present, _ = _listing(event_dir)
    for name in names:
      path = os.path.join(event_dir, name + '.txt')
      if name + '.txt' not in present:
        report.warnings.append(f'{path}: missing prediction file; scored as zero detections')
        continue
      try:
        dets = read_prediction_file(path, protocol)
      except PredictionFormatError as e:
        report.warnings.append(f'{e}; the file is scored as zero detections')
        continue
      if len(dets):
        preds[(event, name)] = dets
    extra = sorted(present - {n + '.txt' for n in names})
    if extra:
      report.notes.append(f'{event_dir}: ignored {len(extra)} file(s) that are not images of the ground '
                          f'truth: {_listed(extra)}')
  extra_dirs = sorted(top_dirs - events)
  if extra_dirs:
    report.notes.append(f'{pred_dir}: ignored {len(extra_dirs)} folder(s) that are not events of the ground '
                        f'truth: {_listed(extra_dirs)}')
  if top_files:
    report.notes.append(f'{pred_dir}: ignored {len(top_files)} file(s) outside event folders: '
                        f'{_listed(sorted(top_files))}')
  if strict and report.warnings:
    shown = report.warnings[:20]
    more = f'\n... and {len(report.warnings) - 20} more' if len(report.warnings) > 20 else ''
    raise PredictionFormatError(f'{len(report.warnings)} prediction file problem(s) (strict):\n'
                                + '\n'.join(shown) + more)
  return preds, report


def _listing(folder: str) -> tuple[set[str], set[str]]:
  """Names of the files and of the folders directly in `folder`."""
  files, dirs = set(), set()
  with os.scandir(folder) as it:
    for entry in it:
      (dirs if entry.is_dir() else files).add(entry.name)
  return files, dirs


def _listed(names: list[str]) -> str:
  shown = ', '.join(names[:_MAX_LISTED])
  return shown + (f', ... ({len(names) - _MAX_LISTED} more)' if len(names) > _MAX_LISTED else '')


def write_predictions(out_dir: str | os.PathLike, event: str, name: str, boxes_xywh, scores) -> str:
  """Writes `<out_dir>/<event>/<name>.txt`: name, count, then `x y w h score` by descending score.

  Numbers are written in Python's shortest round-trip form, so reading the file back gives the
  same float64 values. Equal scores keep their input order.

  Args:
    boxes_xywh: `[N, 4]` boxes `x, y, w, h` in pixels.
    scores: `[N]` scores.

  Returns:
    The path written.
  """
  boxes = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)
  scores = np.asarray(scores, np.float64).reshape(-1)
  if len(boxes) != len(scores):
    raise ValueError(f'{event}/{name}: {len(boxes)} boxes but {len(scores)} scores')
  order = np.argsort(-scores, kind='stable')
  rows = np.concatenate([boxes, scores[:, None]], axis=1)[order].tolist()
  lines = [name, str(len(rows))] + [' '.join(repr(v) for v in row) for row in rows]
  folder = os.path.join(os.fspath(out_dir), event)
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, name + '.txt')
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return path


def write_prediction_set(out_dir: str | os.PathLike, preds: Mapping[tuple[str, str], np.ndarray]) -> None:
  """`write_predictions` for every `(event, name) -> [P, 5]` entry."""
  for (event, name), dets in preds.items():
    dets = np.asarray(dets, np.float64).reshape(-1, 5)
    write_predictions(out_dir, event, name, dets[:, :4], dets[:, 4])
