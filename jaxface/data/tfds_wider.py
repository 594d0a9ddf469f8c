"""WIDER FACE through TensorFlow Datasets (`wider_face`), as `(BGR image, Sample)` pairs.

Optional: it needs `tensorflow-datasets` and `tensorflow`, which jaxface does not install. They are
imported inside `read_tfds_wider_face` only, so importing this module costs nothing.

TFDS gives per image an RGB image, normalised `ymin xmin ymax xmax` boxes (already clipped to the
image by the TFDS builder), per-face attributes and no landmarks. Here boxes become pixel
`x1 y1 x2 y2` (normalised coordinate x image size, not rounded), faces flagged `invalid` become
`ignore=True`, every face has `landmark_valid=False`, and images are BGR like `cv2.imread`'s.

Images are kept encoded (JPEG bytes, about the size of the downloaded archive: ~1.5 GB for train)
and decoded on access, so a split fits in memory and an index reads one image. `TfdsWiderFace` is a
`pipeline.Source`: an image that does not decode raises `pipeline.ImageReadError`, which the loader
skips and counts.
"""
from __future__ import annotations

import warnings
from typing import Iterator, Mapping, Sequence

import cv2
import numpy as np

from jaxface.data.readers import ReaderStats
from jaxface.data.sample import Sample

INSTALL_HINT = 'pip install tensorflow-datasets tensorflow'


def convert_example(example: Mapping, source: str = '') -> tuple[np.ndarray | None, Sample]:
  """One TFDS `wider_face` example (as `tfds.as_numpy` yields it) -> `(image_bgr, Sample)`.

  Args:
    example: `image`: `[H, W, 3]` RGB uint8, or the encoded bytes when decoding was skipped;
      `faces`: a mapping with `bbox` `[N, 4]` normalised `ymin xmin ymax xmax` and `invalid` `[N]`
      bool (other attributes are ignored). Flat keys `faces/bbox`, `faces/invalid` are accepted too.
    source: where the example comes from, for messages (becomes `Sample.source`).

  Returns:
    `[H, W, 3]` BGR uint8 image (None if encoded bytes do not decode; the Sample is then empty), and
    the Sample with pixel `x1 y1 x2 y2` boxes, no landmarks, `ignore = invalid`, `image_path=''`.

  Raises:
    ValueError: the example lacks `faces/bbox` or `faces/invalid`, their shapes disagree, or a
      decoded image is not `[H, W, 3]` uint8.
  """
  image = _image_bgr(example['image'], source)
  if image is None:
    return None, Sample.empty(source=source)
  bbox, invalid = _faces(example, source)
  height, width = image.shape[:2]
  scale = np.array([width, height, width, height], np.float64)
  boxes = bbox[:, [1, 0, 3, 2]] * scale[None, :]  # yxyx -> xyxy, then pixels
  n = len(boxes)
  return image, Sample('', boxes, np.zeros((n, 5, 2)), np.zeros((n,), bool), invalid, source)  # no landmarks in TFDS


class TfdsWiderFace:
  """A split of TFDS `wider_face` for the loader: `len(ds)`, and `ds[i]` -> `(image_bgr, Sample)`.

  `ds[i]` raises `jaxface.data.pipeline.ImageReadError` when the stored bytes do not decode.

  Built by `read_tfds_wider_face`, or directly from examples shaped like `convert_example`'s input
  (images encoded or decoded). `stats` counts what was read, without decoding any image:
  `boxes_outside_image` counts boxes with a normalised coordinate outside [0, 1] (none from the
  TFDS builder, which clips).
  """

  def __init__(self, examples: Sequence[Mapping], name: str = 'wider_face'):
    self.name = name
    self._examples = list(examples)
    self.stats = ReaderStats()
    for index in range(len(self._examples)):
      self._count(index)

  def __len__(self) -> int:
    return len(self._examples)

  def __getitem__(self, index: int) -> tuple[np.ndarray, Sample]:
    image, sample = convert_example(self._examples[index], self.source(index))
    if image is None:
      # Imported here: the loader's error type, without making this module depend on the loader's packages.
      from jaxface.images import ImageReadError
      raise ImageReadError(f'{sample.source}: not a decodable image')
    return image, sample

  def __iter__(self) -> Iterator[tuple[np.ndarray, Sample]]:
    return (self[i] for i in range(len(self)))

  def source(self, index: int) -> str:
    """`<name>[<index>] <file name>`, the TFDS counterpart of `file:line`."""
    filename = self._examples[index].get('image/filename', '')
    if isinstance(filename, (bytes, np.bytes_)):
      filename = filename.decode('utf-8', 'replace')
    return f'{self.name}[{index}] {filename}'.rstrip()

  def _count(self, index: int) -> None:
    where = self.source(index)
    bbox, invalid = _faces(self._examples[index], where)
    self.stats.images += 1
    self.stats.faces += len(bbox)
    if not len(bbox):
      self.stats.note('images_without_faces', where)
    for (ymin, xmin, ymax, xmax), ignore in zip(bbox, invalid):
      self.stats.note('faces_without_landmarks', where)
      if ignore:
        self.stats.note('ignored_faces', where)
      if xmax <= xmin or ymax <= ymin:
        self.stats.note('degenerate_boxes', where)
      if min(ymin, xmin) < 0 or max(ymax, xmax) > 1:
        self.stats.note('boxes_outside_image', where)


def read_tfds_wider_face(split: str, data_dir: str | None = None, *, download: bool = False) -> TfdsWiderFace:
  """Reads a split (`'train'`, `'validation'`, `'test'`, or any TFDS split string) of `wider_face`.

  TensorFlow is told not to use the GPUs, so that it leaves accelerator memory to JAX; it only
  reads records here.

  Args:
    split: the TFDS split.
    data_dir: where the prepared dataset lives (TFDS default `~/tensorflow_datasets`).
    download: download and prepare the dataset first if needed (several GB). Off by default, so a
      wrong `data_dir` fails at once instead of starting a download.

  Raises:
    ImportError: `tensorflow_datasets` or `tensorflow` is not installed, with the command to install them.
  """
  try:
    import tensorflow as tf
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(f'Reading WIDER FACE through TensorFlow Datasets needs tensorflow-datasets and tensorflow, '
                      f'which jaxface does not install: {INSTALL_HINT}') from e
  if tf.config.get_visible_devices('GPU'):
    try:
      tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:  # TensorFlow set up its devices before this call, elsewhere in the process
      warnings.warn('TensorFlow was initialised before read_tfds_wider_face and may hold GPU memory JAX needs')
  builder = tfds.builder('wider_face', data_dir=data_dir)
  if download:
    builder.download_and_prepare()
  dataset = builder.as_dataset(split=split, shuffle_files=False, decoders={'image': tfds.decode.SkipDecoding()})
  examples = [{'image': ex['image'], 'image/filename': ex['image/filename'],
               'faces': {'bbox': ex['faces']['bbox'], 'invalid': ex['faces']['invalid']}}
              for ex in tfds.as_numpy(dataset)]
  return TfdsWiderFace(examples, f'wider_face/{split}')


def _faces(example: Mapping, source: str) -> tuple[np.ndarray, np.ndarray]:
  """`bbox [N, 4]` float64 normalised yxyx and `invalid [N]` bool of an example."""
  faces = example.get('faces')
  if faces is None:
    faces = {key[len('faces/'):]: value for key, value in example.items() if key.startswith('faces/')}
  if 'bbox' not in faces or 'invalid' not in faces:
    raise ValueError(f'{source}: a wider_face example needs faces/bbox and faces/invalid, got keys {sorted(example)}')
  bbox = np.asarray(faces['bbox'], np.float64)
  invalid = np.asarray(faces['invalid'], bool)
  if bbox.ndim != 2 or bbox.shape[1] != 4 or invalid.shape != (len(bbox),):
    if bbox.size == 0 and invalid.size == 0:  # an image without faces may come as any empty shape
      return np.zeros((0, 4)), np.zeros((0,), bool)
    raise ValueError(f'{source}: faces/bbox must be [N, 4] and faces/invalid [N]; got {bbox.shape} and '
                     f'{invalid.shape}')
  return bbox, invalid


def _image_bgr(image, source: str) -> np.ndarray | None:
  """A BGR uint8 image from TFDS's RGB array or from encoded bytes (None if they do not decode)."""
  if isinstance(image, (bytes, np.bytes_)):
    try:
      return cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # e.g. zero bytes; other undecodable data already gives None
      return None
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f'{source}: expected an [H, W, 3] uint8 RGB image, got {image.shape} {image.dtype}')
  return np.ascontiguousarray(image[:, :, ::-1])
