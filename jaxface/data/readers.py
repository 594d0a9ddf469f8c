"""Readers for the text annotation formats of WIDER FACE training data.

* RetinaFace `label.txt` (retinaface_gt_v1.1, as biubug6/Pytorch_Retinaface reads it):
  `# <relative image path>` lines, each followed by one line per face: `x y w h`, five
  `lx ly flag` landmark triples and a score (20 numbers). The val split's `label.txt` holds
  boxes only (4 numbers per face); both kinds are read.
* SCRFD `labelv2.txt` (insightface detection/scrfd): `# <relative image path> <width> <height>`,
  then one line per face: `x1 y1 x2 y2` (corners, not a size), optionally followed by either one
  ignore flag (0 or 1) or five `x y flag` keypoint triples.
* `wider_val.txt`: one val image path per line, relative to `val/images/`.

Each image becomes one `Sample`; its image path is `<image root>/<relative path>`, where the root
defaults to `images/` beside the annotation file (the reference layout) and a leading `/` of the
relative path is dropped.

What happens to bad input (the readers run once, at start-up, before any training step):

* Annotation syntax raises `ValueError` naming `file:line` and what was expected: a wrong number
  of fields, a field that is not a finite number, a face line before the first `#` line, a
  malformed `#` line, an image listed twice, a file with no image at all. Such a file is wrong as a
  whole; training on the part that parses would hide the fault.
* Well-formed but questionable data is kept exactly as read and counted in `ReaderStats` (with a few
  `file:line` examples) for the loader to log: boxes of zero or negative width or height, boxes
  reaching outside the image, faces whose landmarks are only partly given, images with no faces.
  Dropping unusable boxes is the augmentation's job, which counts what it drops.
* Readers never open images. Decoding pixels is the loader's job; it skips and counts missing or
  corrupt images, so one bad file cannot stop a long run.

Landmarks. A face has landmarks iff all ten landmark coordinates are >= 0; otherwise
`landmark_valid` is False and its `landmarks` are zeros. Missing landmarks are written as -1 in
both formats, so this is the placeholder test. The RetinaFace reference looks at the first
coordinate only (`lx0 < 0` means no landmarks), and SCRFD weighs each keypoint on its own (a
keypoint is missing iff it reads `-1 -1 -1`). On the released files, where a face has all five
points or none, all three rules agree. Where they would not -- some coordinates negative, others
not -- the reference would train the landmark head toward the -1 placeholders (or, for SCRFD, on
the points that are given); here the face loses its landmarks and is counted in
`partial_landmarks`, so the disagreement is visible in the log rather than in the loss. The flags
of the landmark triples and the trailing score of RetinaFace lines are read (they must be numbers)
and otherwise ignored, as the reference ignores them.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterator

import numpy as np

from jaxface.data.sample import Sample

_EXAMPLES_KEPT = 5  # file:line examples kept per counter of ReaderStats
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')

_RETINAFACE_EXPECTED = ('20 numbers (x y w h, then 5 x "lx ly flag", then a score) or 4 numbers (x y w h, '
                        'boxes only)')
_SCRFD_EXPECTED = ('4 numbers (x1 y1 x2 y2), 5 (x1 y1 x2 y2 ignore) or 19 (x1 y1 x2 y2, then 5 x '
                   '"x y flag")')


@dataclasses.dataclass
class ReaderStats:
  """Counts of what a reader read, for the loader to log. Nothing counted here was changed or dropped.

  Attributes:
    images: images read (each one `Sample`).
    faces: face lines read, ignore boxes included.
    images_without_faces: images with a `#` line and no face line (kept, with N=0).
    faces_without_landmarks: faces with `landmark_valid=False` (ignore boxes and box-only lines
      included).
    partial_landmarks: of those, faces where only some of the ten coordinates are negative: the
      rules of the module docstring disagree on them.
    ignored_faces: faces with `ignore=True`.
    degenerate_boxes: boxes with width or height <= 0 (kept as read; the augmentation drops them).
    boxes_outside_image: boxes with a negative coordinate, or, where the annotation gives the image
      size (SCRFD), reaching beyond its width or height.
    examples: for each counter above that flags a problem, up to 5 `file:line` where it happened.
  """
  images: int = 0
  faces: int = 0
  images_without_faces: int = 0
  faces_without_landmarks: int = 0
  partial_landmarks: int = 0
  ignored_faces: int = 0
  degenerate_boxes: int = 0
  boxes_outside_image: int = 0
  examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  def note(self, counter: str, where: str) -> None:
    """Adds one to `counter` and remembers `where` if fewer than 5 examples are kept."""
    setattr(self, counter, getattr(self, counter) + 1)
    places = self.examples.setdefault(counter, [])
    if len(places) < _EXAMPLES_KEPT:
      places.append(where)

  def summary(self) -> str:
    """One line for a log: the totals, then each non-zero problem counter with its first example."""
    parts = [f'{self.images} images, {self.faces} faces']
    for counter in ('images_without_faces', 'faces_without_landmarks', 'partial_landmarks', 'ignored_faces',
                    'degenerate_boxes', 'boxes_outside_image'):
      count = getattr(self, counter)
      if count:
        first = self.examples.get(counter)
        parts.append(f'{count} {counter.replace("_", " ")}' + (f' (e.g. {first[0]})' if first else ''))
    return '; '.join(parts)


def read_retinaface_labels(label_path: str | os.PathLike,
                           image_root: str | os.PathLike | None = None) -> tuple[list[Sample], ReaderStats]:
  """Reads a RetinaFace `label.txt`.

  A `#` line holds exactly one field, the path (WIDER paths have no spaces); more fields are an
  error, which also catches an SCRFD `labelv2.txt` given to this reader.

  Args:
    label_path: the annotation file.
    image_root: folder the `#` paths are relative to; default `images/` beside `label_path`.

  Returns:
    One `Sample` per `#` line, in file order (`source` is the `file:line` of that `#` line), and
    the counts of questionable data. Boxes are `[x, y, x + w, y + h]`; `ignore` is all False.

  Raises:
    FileNotFoundError: `label_path` does not exist.
    ValueError: a syntax error, naming `file:line` (see the module docstring).
  """
  label_path = os.fspath(label_path)
  root = _default_root(label_path, image_root)
  stats = ReaderStats()
  samples = []
  for block in _blocks(label_path):
    if len(block.header) != 1:
      hint = ' (an SCRFD labelv2.txt header? read it with read_scrfd_labels)' if len(block.header) == 3 else ''
      raise ValueError(f'{block.where}: expected "# <relative image path>" (one field after "#"), got '
                       f'{len(block.header)} fields{hint}')
    faces = []
    for where, tokens in block.faces:
      if len(tokens) not in (4, 20):
        raise ValueError(f'{where}: expected {_RETINAFACE_EXPECTED}; got {len(tokens)} fields')
      values = _numbers(tokens, where, _RETINAFACE_EXPECTED)
      x, y, w, h = values[:4]
      points = _points(values[4:19]) if len(values) == 20 else None
      faces.append(_face(stats, where, [x, y, x + w, y + h], points, ignore=False))
    samples.append(_sample(stats, block, root, faces))
  return samples, stats


def read_scrfd_labels(label_path: str | os.PathLike,
                      image_root: str | os.PathLike | None = None) -> tuple[list[Sample], ReaderStats]:
  """Reads an SCRFD `labelv2.txt`.

  Face lines: 4 numbers are a box without keypoints (the reference accepts these in test mode only);
  5 are a box and an ignore flag, which must be 0 or 1 (1: `ignore=True`); 19 are a box and five
  `x y flag` keypoints. Images without faces are kept with N=0 (SCRFD drops them when training;
  here the loader decides). The `# path width height` size is used only to count boxes outside
  the image.

  Args:
    label_path: the annotation file.
    image_root: folder the `#` paths are relative to; default `images/` beside `label_path`.

  Returns:
    One `Sample` per `#` line, in file order, and the counts of questionable data.

  Raises:
    FileNotFoundError: `label_path` does not exist.
    ValueError: a syntax error, naming `file:line` (see the module docstring).
  """
  label_path = os.fspath(label_path)
  root = _default_root(label_path, image_root)
  stats = ReaderStats()
  samples = []
  for block in _blocks(label_path):
    if len(block.header) != 3:
      raise ValueError(f'{block.where}: expected "# <relative image path> <width> <height>", got '
                       f'{len(block.header)} fields after "#"')
    try:
      width, height = int(block.header[1]), int(block.header[2])
    except ValueError:
      width = height = 0
    if width <= 0 or height <= 0:
      raise ValueError(f'{block.where}: expected a positive integer width and height after the image path, got '
                       f'{block.header[1]!r} {block.header[2]!r}')
    faces = []
    for where, tokens in block.faces:
      if len(tokens) not in (4, 5, 19):
        raise ValueError(f'{where}: expected {_SCRFD_EXPECTED}; got {len(tokens)} fields')
      values = _numbers(tokens, where, _SCRFD_EXPECTED)
      ignore = False
      if len(values) == 5:
        if values[4] not in (0.0, 1.0):
          raise ValueError(f'{where}: the 5th field of a 5-field line is the ignore flag, 0 or 1; got {tokens[4]!r}')
        ignore = values[4] == 1.0
      points = _points(values[4:19]) if len(values) == 19 else None
      faces.append(_face(stats, where, values[:4], points, ignore, image_size=(width, height)))
    samples.append(_sample(stats, block, root, faces))
  return samples, stats


def read_wider_val_list(path: str | os.PathLike) -> list[str]:
  """Reads `wider_val.txt`: the val images, one path per line, relative to `val/images/`.

  The reference file writes them with a leading slash (`/0--Parade/0_Parade_marchingband_1_20.jpg`)
  and concatenates them to the image folder; here the slash is dropped, so the result joins
  cleanly: `os.path.join(image_root, p)`. Blank lines are skipped.

  Returns:
    The relative paths in file order, e.g. `'0--Parade/0_Parade_marchingband_1_20.jpg'`.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: naming `file:line`, for a line that is not a single image path (spaces inside,
      no image extension, a `#` line of a label file), an image listed twice, or no image at all.
  """
  path = os.fspath(path)
  names: dict[str, str] = {}
  with open(path, encoding='utf-8-sig') as f:
    for line_no, line in enumerate(f, 1):
      where = f'{path}:{line_no}'
      tokens = line.split()
      if not tokens:
        continue
      if len(tokens) != 1 or tokens[0].startswith('#'):
        raise ValueError(f'{where}: expected one image path per line (e.g. /0--Parade/0_Parade_marchingband_1_20.jpg), '
                         f'got {line.strip()!r}')
      name = tokens[0].lstrip('/')
      if not name.lower().endswith(IMAGE_EXTENSIONS):
        raise ValueError(f'{where}: expected an image path ending in one of {", ".join(IMAGE_EXTENSIONS)}, '
                         f'got {tokens[0]!r}')
      if name in names:
        raise ValueError(f'{where}: {name} is listed twice (first at {names[name]})')
      names[name] = where
  if not names:
    raise ValueError(f'{path}: no image paths (empty file?)')
  return list(names)


@dataclasses.dataclass
class _Block:
  """One image of an annotation file: its `#` line and its face lines, split into fields."""
  where: str                                  # file:line of the `#` line
  header: list[str]                           # the fields after '#'
  faces: list[tuple[str, list[str]]]          # (file:line, fields) per face line


def _blocks(path: str) -> Iterator[_Block]:
  """Splits an annotation file into images; rejects face lines before the first `#` line, empty
  files and images listed twice."""
  block = None
  seen: dict[str, str] = {}
  with open(path, encoding='utf-8-sig') as f:
    for line_no, line in enumerate(f, 1):
      where = f'{path}:{line_no}'
      stripped = line.strip()
      if not stripped:
        continue
      if stripped.startswith('#'):
        if block is not None:
          yield block
        header = stripped[1:].split()
        if not header:
          raise ValueError(f'{where}: "#" line without an image path')
        name = header[0].lstrip('/')
        if name in seen:
          raise ValueError(f'{where}: image {name} is listed twice (first at {seen[name]})')
        seen[name] = where
        block = _Block(where, header, [])
      elif block is None:
        raise ValueError(f'{where}: face line before the first "# <image path>" line')
      else:
        block.faces.append((where, stripped.split()))
  if block is None:
    raise ValueError(f'{path}: no "# <image path>" line (empty file?)')
  yield block


def _numbers(tokens: list[str], where: str, expected: str) -> list[float]:
  """The fields as floats, or a ValueError naming the first field that is not a finite number.

  Plain Python per line (numpy per image): a WIDER train file has ~160k face lines.
  """
  try:
    values = [float(token) for token in tokens]
    if all(map(math.isfinite, values)):
      return values
  except ValueError:
    pass
  for i, token in enumerate(tokens):
    try:
      finite = math.isfinite(float(token))
    except ValueError:
      raise ValueError(f'{where}: field {i + 1} is {token!r}, not a number; expected {expected}') from None
    if not finite:
      raise ValueError(f'{where}: field {i + 1} is {token!r}, not a finite number; expected {expected}')
  raise AssertionError('unreachable')


def _points(triples: list[float]) -> list[float]:
  """`x y flag` x 5 -> `x0 y0 x1 y1 ... x4 y4` (the flags dropped)."""
  return triples[0:2] + triples[3:5] + triples[6:8] + triples[9:11] + triples[12:14]


def _face(stats: ReaderStats, where: str, box: list[float], points: list[float] | None, ignore: bool,
          image_size: tuple[int, int] | None = None) -> tuple[list[float], list[float], bool, bool]:
  """One face as (x1 y1 x2 y2, ten landmark coordinates, landmark_valid, ignore), counted in `stats`."""
  x1, y1, x2, y2 = box
  stats.faces += 1
  if x2 <= x1 or y2 <= y1:
    stats.note('degenerate_boxes', where)
  outside = min(box) < 0 or (image_size is not None and (x2 > image_size[0] or y2 > image_size[1]))
  if outside:
    stats.note('boxes_outside_image', where)
  if ignore:
    stats.note('ignored_faces', where)
  valid = points is not None and min(points) >= 0
  if not valid:
    stats.note('faces_without_landmarks', where)
    if points is not None and max(points) >= 0:
      stats.note('partial_landmarks', where)
  return box, points if valid else [0.0] * 10, valid, ignore


def _sample(stats: ReaderStats, block: _Block, root: str, faces: list) -> Sample:
  stats.images += 1
  image_path = os.path.join(root, block.header[0].lstrip('/'))
  if not faces:
    stats.note('images_without_faces', block.where)
    return Sample.empty(image_path, block.where)
  boxes, landmarks, valid, ignore = zip(*faces)
  landmarks = np.array(landmarks, np.float32).reshape(len(boxes), -1, 2)  # WIDER's five points
  return Sample(image_path, np.array(boxes, np.float32), landmarks, np.array(valid), np.array(ignore), block.where)


def _default_root(label_path: str, image_root: str | os.PathLike | None) -> str:
  if image_root is not None:
    return os.fspath(image_root)
  return os.path.join(os.path.dirname(label_path), 'images')
