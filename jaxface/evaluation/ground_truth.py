"""WIDER FACE ground truth in memory, and its loader from the official `.mat` files.

`GroundTruth` is a plain structure (events, image names per event, integer boxes per image, and
the Easy/Medium/Hard keep lists) that the `.mat` loader produces and that other code (a synthetic
val set, a subset of events) can build directly.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Mapping, Sequence

import numpy as np

SETTINGS = ('easy', 'medium', 'hard')
# The four files of the official tool's `ground_truth/` folder: boxes, then one keep list per setting.
BOXES_MAT = 'wider_face_val.mat'
SETTING_MATS = {'easy': 'wider_easy_val.mat', 'medium': 'wider_medium_val.mat', 'hard': 'wider_hard_val.mat'}


@dataclasses.dataclass(frozen=True, eq=False)
class GroundTruth:
  """WIDER-style ground truth: events, images, integer `[x, y, w, h]` boxes, and keep lists.

  Attributes:
    events: `E` event folder names, in evaluation order (the `.mat` order is lexicographic).
    files: per event, the image names without extension (`<event>/<name>.txt` holds the predictions).
    boxes: per event, per image, `[G, 4]` int32 `x, y, w, h` (x2 = x + w, as the official tool
      reads them). Zero or negative widths are allowed: they are scored exactly as the official
      tool scores them (such a box can never be matched, yet counts when it is kept).
    keep: for each of `SETTINGS`, per event, per image, the **0-based** indices (int64) of the
      boxes that count in that setting. The other boxes of the image are "non-counting": a
      detection that matches one is dropped (neither true nor false positive). A setting's face
      count is the total length of its keep lists.

  Sequences given as lists are stored as tuples; box and index arrays are converted and checked.
  """
  events: tuple[str, ...]
  files: tuple[tuple[str, ...], ...]
  boxes: tuple[tuple[np.ndarray, ...], ...]
  keep: Mapping[str, tuple[tuple[np.ndarray, ...], ...]]

  def __post_init__(self):
    events = tuple(str(e) for e in self.events)
    files = tuple(tuple(str(n) for n in names) for names in self.files)
    if len(files) != len(events) or len(self.boxes) != len(events):
      raise ValueError(f'GroundTruth: {len(events)} events but {len(files)} file lists and '
                       f'{len(self.boxes)} box lists')
    if len(set(events)) != len(events):
      raise ValueError('GroundTruth: repeated event names')
    if sorted(self.keep) != sorted(SETTINGS):
      raise ValueError(f'GroundTruth: keep lists must be given for exactly {SETTINGS}, got {sorted(self.keep)}')
    boxes = []
    for event, names, event_boxes in zip(events, files, self.boxes):
      if len(event_boxes) != len(names):
        raise ValueError(f'GroundTruth: event {event} has {len(names)} images but {len(event_boxes)} box arrays')
      if len(set(names)) != len(names):
        raise ValueError(f'GroundTruth: repeated image names in event {event}')
      boxes.append(tuple(_as_int_boxes(b, f'{event}/{n}') for n, b in zip(names, event_boxes)))
    keep = {}
    for setting in SETTINGS:
      lists = self.keep[setting]
      if len(lists) != len(events):
        raise ValueError(f'GroundTruth: {setting} keep lists cover {len(lists)} events, not {len(events)}')
      per_event = []
      for event, names, event_boxes, event_keep in zip(events, files, boxes, lists):
        if len(event_keep) != len(names):
          raise ValueError(f'GroundTruth: {setting} keep lists of event {event} cover {len(event_keep)} '
                           f'images, not {len(names)}')
        per_event.append(tuple(_as_keep(k, len(b), f'{setting} {event}/{n}')
                               for n, b, k in zip(names, event_boxes, event_keep)))
      keep[setting] = tuple(per_event)
    object.__setattr__(self, 'events', events)
    object.__setattr__(self, 'files', files)
    object.__setattr__(self, 'boxes', tuple(boxes))
    object.__setattr__(self, 'keep', keep)

  @property
  def num_images(self) -> int:
    return sum(len(names) for names in self.files)

  @property
  def num_boxes(self) -> int:
    return sum(len(b) for event_boxes in self.boxes for b in event_boxes)

  def face_counts(self) -> dict[str, int]:
    """Faces that count per setting (the denominator of recall): the total length of the keep lists."""
    return {s: sum(len(k) for event_keep in self.keep[s] for k in event_keep) for s in SETTINGS}

  def image_keys(self) -> Iterator[tuple[str, str]]:
    """`(event, name)` of every image, in evaluation order."""
    for event, names in zip(self.events, self.files):
      for name in names:
        yield event, name

  def select_events(self, events: Sequence[str]) -> 'GroundTruth':
    """The ground truth restricted to `events` (in the order given)."""
    index = {e: i for i, e in enumerate(self.events)}
    unknown = [e for e in events if e not in index]
    if unknown:
      raise KeyError(f'unknown events {unknown}; known: {list(self.events)}')
    picked = [index[e] for e in events]
    return GroundTruth(events=tuple(events), files=tuple(self.files[i] for i in picked),
                       boxes=tuple(self.boxes[i] for i in picked),
                       keep={s: tuple(self.keep[s][i] for i in picked) for s in SETTINGS})


def _as_int_boxes(b, where: str) -> np.ndarray:
  arr = np.asarray(b)
  if arr.size == 0:
    return np.zeros((0, 4), np.int32)
  if arr.ndim != 2 or arr.shape[1] != 4:
    raise ValueError(f'GroundTruth: boxes of {where} must be [G, 4], got shape {arr.shape}')
  if not np.issubdtype(arr.dtype, np.integer):
    if not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
      raise ValueError(f'GroundTruth: boxes of {where} must be integers (the official tool holds them as int32)')
  if np.any(arr < np.iinfo(np.int32).min) or np.any(arr > np.iinfo(np.int32).max):
    raise ValueError(f'GroundTruth: boxes of {where} do not fit int32')
  return np.ascontiguousarray(arr, dtype=np.int32)


def _as_keep(k, num_boxes: int, where: str) -> np.ndarray:
  arr = np.asarray(k).reshape(-1)
  if arr.size == 0:
    return np.zeros((0,), np.int64)
  if not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f'GroundTruth: keep list of {where} must hold integer indices, got {arr.dtype}')
  arr = arr.astype(np.int64)
  if arr.min() < 0 or arr.max() >= num_boxes:
    raise ValueError(f'GroundTruth: keep list of {where} indexes outside its {num_boxes} boxes '
                     f'(indices are 0-based)')
  return arr


def load_wider_mat_ground_truth(gt_dir: str | os.PathLike) -> GroundTruth:
  """Reads the official `ground_truth/` folder: `wider_face_val.mat` and the three keep lists.

  The `.mat` keep lists (`gt_list`) are 1-based; they become 0-based here.

  Raises:
    FileNotFoundError: naming every one of the four files that is missing.
    ValueError: when the setting files do not describe the same events and images as the boxes.
  """
  gt_dir = os.fspath(gt_dir)
  names = [BOXES_MAT] + [SETTING_MATS[s] for s in SETTINGS]
  missing = [n for n in names if not os.path.isfile(os.path.join(gt_dir, n))]
  if missing:
    raise FileNotFoundError(f'WIDER FACE ground truth folder {gt_dir} lacks {", ".join(missing)} '
                            f'(it needs all of {", ".join(names)})')
  mat = _load_mat(gt_dir, BOXES_MAT, ['event_list', 'file_list', 'face_bbx_list'])
  events = [_mat_str(e) for e in mat['event_list'].reshape(-1)]
  files = [[_mat_str(n) for n in cell.reshape(-1)] for cell in mat['file_list'].reshape(-1)]
  boxes = [[b.reshape(-1, 4) if b.size else np.zeros((0, 4), np.int32) for b in cell.reshape(-1)]
           for cell in mat['face_bbx_list'].reshape(-1)]
  keep = {}
  for setting in SETTINGS:
    smat = _load_mat(gt_dir, SETTING_MATS[setting], ['gt_list'], optional=('event_list',))
    if 'event_list' in smat and [_mat_str(e) for e in smat['event_list'].reshape(-1)] != events:
      raise ValueError(f'{SETTING_MATS[setting]} lists other events than {BOXES_MAT}')
    lists = smat['gt_list'].reshape(-1)
    if len(lists) != len(events) or any(len(c.reshape(-1)) != len(f) for c, f in zip(lists, files)):
      raise ValueError(f'{SETTING_MATS[setting]}: gt_list does not have one entry per image of {BOXES_MAT}')
    keep[setting] = [[k.reshape(-1).astype(np.int64) - 1 for k in cell.reshape(-1)] for cell in lists]
  return GroundTruth(events=events, files=files, boxes=boxes, keep=keep)


def _load_mat(gt_dir: str, name: str, required: list[str], optional: tuple[str, ...] = ()) -> dict:
  import scipy.io  # here, so that importing jaxface.evaluation stays light

  mat = scipy.io.loadmat(os.path.join(gt_dir, name), variable_names=list(required) + list(optional))
  missing = [v for v in required if v not in mat]
  if missing:
    raise ValueError(f'{os.path.join(gt_dir, name)} lacks the variable(s) {", ".join(missing)}')
  return mat


def _mat_str(cell) -> str:
  """A MATLAB char array as loaded by scipy (`array(['name'])`, possibly nested) -> str."""
  arr = np.asarray(cell)
  while arr.dtype == object:
    arr = np.asarray(arr.reshape(-1)[0])
  return str(arr.reshape(-1)[0]) if arr.size else ''
