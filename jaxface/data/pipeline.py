"""The training loader: fixed-shape batches from (seed, epoch, index), on host worker processes.

Every element is a pure function of its global position k in the stream of training examples:
epoch = k // N, the epoch's permutation (from (seed, epoch)) gives the sample, and the sample's
augmentation draws from `sample_rng(seed, epoch, index)`. So any batch can be rebuilt alone,
worker count never changes the data, and resuming at step s is starting the stream at s.

Bad data, decided per case:
- an unreadable, missing or undecodable image: skipped during training and counted; the slot
  takes the next sample of the same epoch's permutation (`skipped_images` in every batch);
- more faces than `max_faces` in the augmented image: the largest `max_faces` are kept and the
  rest counted (`dropped_faces`);
- degenerate boxes (zero width or height) and, if enabled, faces below `min_face`: dropped by the
  augmentation and counted (`dropped_degenerate`, `dropped_small`);
- annotation syntax errors never reach this point: readers raise at start-up, naming file:line.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Iterator, Protocol, Sequence

import cv2
import grain
import numpy as np

from jaxface.data.rng import sample_rng
from jaxface.images import ImageReadError, read_image  # noqa: F401  (re-exported for loader users)
from jaxface.data.sample import Sample

MAX_CONSECUTIVE_SKIPS = 64  # this many unreadable images in a row is a broken dataset, not bad luck


class Source(Protocol):
  """Random access to (BGR uint8 image, Sample); raises `ImageReadError` for unreadable pixels."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> tuple[np.ndarray, Sample]: ...


@dataclasses.dataclass
class FileSource:
  """Samples from an annotation reader; pixels read from `sample.image_path` on demand."""
  samples: Sequence[Sample]

  def __len__(self) -> int:
    return len(self.samples)

  def __getitem__(self, index: int) -> tuple[np.ndarray, Sample]:
    sample = self.samples[index]
    return read_image(sample.image_path), sample


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
  global_batch_size: int          # images per step over all hosts
  image_size: int                 # square training size S
  max_faces: int                  # G, ground-truth slots per image
  num_keypoints: int = 5          # K, the family's keypoints per face (`Family.keypoints`)
  seed: int = 0
  num_workers: int = 0            # host worker processes (0: build batches in this process)
  process_index: int = 0          # this host, of `process_count` (jax.process_index())
  process_count: int = 1

  @property
  def host_batch_size(self) -> int:
    if self.global_batch_size % self.process_count:
      raise ValueError(f'global_batch_size {self.global_batch_size} is not divisible by the '
                       f'{self.process_count} processes')
    return self.global_batch_size // self.process_count


Augment = Callable[..., Any]  # (image, sample, rng, *, image_size) -> `transforms.Augmented` (a family's augment)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order of the N samples in `epoch` (a pure function of (seed, epoch))."""
  return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, 2**31 - 1]))).permutation(n)


def pad_faces(boxes, landmarks, landmark_valid, ignore, max_faces: int) -> tuple[dict[str, np.ndarray], int]:
  """Faces -> fixed `[G, ...]` arrays with masks (landmarks `[G, K, 2]`, K from `landmarks [N, K, 2]`);
  keeps the `max_faces` largest, returns how many it dropped."""
  n = len(boxes)
  order = np.arange(n)
  if n > max_faces:
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.sort(np.argsort(-area, kind='stable')[:max_faces])
  k = len(order)
  out = dict(boxes=np.zeros((max_faces, 4), np.float32), landmarks=np.zeros((max_faces, landmarks.shape[1], 2), np.float32),
             box_valid=np.zeros((max_faces,), bool), landmark_valid=np.zeros((max_faces,), bool),
             ignore=np.zeros((max_faces,), bool))
  out['boxes'][:k] = boxes[order]
  out['landmarks'][:k] = landmarks[order]
  out['box_valid'][:k] = True
  out['landmark_valid'][:k] = landmark_valid[order]
  out['ignore'][:k] = ignore[order]
  return out, n - k


def make_example(source: Source, augment: Augment, cfg: LoaderConfig, k: int) -> dict[str, np.ndarray]:
  """The k-th training example of the stream (fixed shapes; see the module docstring)."""
  cv2.setNumThreads(1)  # parallelism comes from worker processes; OpenCV's own threads would oversubscribe
  n = len(source)
  epoch, position = divmod(k, n)
  order = epoch_permutation(cfg.seed, epoch, n)
  skipped = 0
  while True:
    index = int(order[(position + skipped) % n])
    try:
      image, sample = source[index]
      break
    except ImageReadError:
      skipped += 1
      if skipped >= min(MAX_CONSECUTIVE_SKIPS, n):
        raise
  aug = augment(image, sample, sample_rng(cfg.seed, epoch, index), image_size=cfg.image_size)
  if aug.landmarks.shape[1] != cfg.num_keypoints:
    raise ValueError(f'{sample.source or sample.image_path or f"sample {index}"}: the annotation has '
                     f'{aug.landmarks.shape[1]} keypoints per face, the model predicts {cfg.num_keypoints}')
  faces, overflow = pad_faces(aug.boxes, aug.landmarks, aug.landmark_valid, aug.ignore, cfg.max_faces)
  return dict(image=aug.image.astype(np.float32), **faces,
              skipped_images=np.int32(skipped), dropped_faces=np.int32(overflow),
              dropped_degenerate=np.int32(aug.dropped.get('degenerate', 0)),
              dropped_small=np.int32(aug.dropped.get('too_small', 0)))


def host_position(cfg: LoaderConfig, j: int) -> int:
  """This host's j-th example -> its global position k: step s's global batch is
  k in [s*GB, (s+1)*GB), and host h takes the h-th slice of it."""
  pb = cfg.host_batch_size
  step, r = divmod(j, pb)
  return step * cfg.global_batch_size + cfg.process_index * pb + r


def batches(source: Source, augment: Augment, cfg: LoaderConfig, *, start_step: int = 0,
            num_steps: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """This host's batches for steps `start_step, start_step + 1, ...` (`[B_host, ...]` numpy dicts).

  Runs on `cfg.num_workers` processes through Grain (`mp_prefetch`); the order and contents do
  not depend on the worker count. `num_steps=None` runs forever (epochs follow each other).
  """
  pb = cfg.host_batch_size
  total = (start_step + num_steps) * pb if num_steps is not None else np.iinfo(np.int64).max // 2
  ds = grain.MapDataset.range(start_step * pb, total)
  ds = ds.map(lambda j: make_example(source, augment, cfg, host_position(cfg, int(j))))
  ds = ds.batch(pb, drop_remainder=True)
  # Each element is a whole batch: one thread and a two-batch buffer per process. (Grain's defaults,
  # 16 threads and 500 elements, are sized for small records: here they would hold gigabytes of
  # batches and take the cores the train step needs.)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
  if cfg.num_workers > 0:  # Grain's workers read absl flags: the program must have parsed them (train.py does)
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers))
  return _log_losses(iter(it), cfg, start_step)


COUNTERS = {
    'skipped_images': 'unreadable images skipped',
    'dropped_faces': 'faces dropped beyond max_faces={max_faces}',
    'dropped_degenerate': 'zero-size boxes dropped',
    'dropped_small': 'faces below min_face dropped',
}


def _log_losses(it: Iterator[dict[str, np.ndarray]], cfg: LoaderConfig, start_step: int):
  """Passes batches through and logs (never silently) any data the loader had to drop.

  The first batch with a loss of each kind is logged with its step; after that a running total
  every 1000 steps, so a long run's log stays readable.
  """
  totals = dict.fromkeys(COUNTERS, 0)
  seen = set()
  try:
    for step, batch in enumerate(it, start=start_step):
      for key in COUNTERS:
        n = int(batch[key].sum())
        totals[key] += n
        if n and key not in seen:
          seen.add(key)
          logging.warning('loader: step %d: %d %s (further counts every 1000 steps)', step, n,
                          COUNTERS[key].format(max_faces=cfg.max_faces))
      if step % 1000 == 999 and any(totals.values()):
        logging.warning('loader: by step %d: %s', step, ', '.join(
            f'{v} {COUNTERS[k].format(max_faces=cfg.max_faces)}' for k, v in totals.items() if v))
      yield batch
  finally:  # exhausted or closed by the consumer: stop Grain's threads and worker processes now
    if hasattr(it, 'close'):
      it.close()
