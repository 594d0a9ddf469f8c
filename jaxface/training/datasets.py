"""What a training config's `data` block names, turned into a loader source and a val set.

`data.dataset` is 'wider' (under `data.wider_root`: `train/label.txt`, RetinaFace's annotations, or
`train/labelv2.txt`, SCRFD's, as `data.annotations` says) or 'synthetic' (the built-in set, no download). Missing data is reported at start-up with the paths
that were tried and how to point the config at the right place.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import numpy as np

from jaxface.data import pipeline, readers, synthetic


@dataclasses.dataclass
class ValSet:
  """Ground truth plus `(event, name) -> BGR image`, as `evaluation.run.detect_all` takes them."""
  gt: Any
  load: Callable[[str, str], np.ndarray]
  test_scale: str


# `data.annotations` -> (label file under <root>/train, its reader).
ANNOTATIONS = {
    'retinaface': ('label.txt', readers.read_retinaface_labels),   # biubug6's: xywh + 5 points
    'scrfd': ('labelv2.txt', readers.read_scrfd_labels),           # insightface's: xyxy + 5 (x, y, flag)
}


def wider_paths(root: str, annotations: str = 'retinaface') -> dict[str, str]:
  if annotations not in ANNOTATIONS:
    raise ValueError(f'config.data.annotations must be one of {", ".join(ANNOTATIONS)}, got {annotations!r}')
  return dict(label=os.path.join(root, 'train', ANNOTATIONS[annotations][0]),
              images=os.path.join(root, 'train', 'images'),
              val_images=os.path.join(root, 'WIDER_val', 'images'), gt=os.path.join(root, 'ground_truth'))


def train_source(data) -> pipeline.Source:
  """The training examples of `data` (a config block), with a clear error when they are absent."""
  if data.dataset == 'synthetic':
    return synthetic.SyntheticFaces('train', data.synthetic_train_images, seed=data.synthetic_seed,
                                    max_faces=data.synthetic_max_faces)
  if data.dataset != 'wider':
    raise ValueError(f"config.data.dataset must be 'wider' or 'synthetic', got {data.dataset!r}")
  annotations = data.get('annotations', 'retinaface')
  label, reader = ANNOTATIONS[annotations] if annotations in ANNOTATIONS else (None, None)
  if reader is None:
    raise ValueError(f'config.data.annotations must be one of {", ".join(ANNOTATIONS)}, got {annotations!r}')
  if not data.wider_root:
    raise FileNotFoundError('WIDER FACE root not set: pass --config.data.wider_root=/path/to/widerface (or set '
                            f'$WIDER_ROOT); it must hold train/{label} and train/images/. '
                            "To try training without WIDER FACE, use the config's synthetic demo: "
                            '--config configs/<model>.py:demo')
  paths = wider_paths(data.wider_root, annotations)
  if not os.path.isfile(paths['label']):
    raise FileNotFoundError(f'WIDER FACE training annotations not found: expected {paths["label"]} '
                            f'(<root>/train/{label} with images under <root>/train/images/); '
                            f'config.data.wider_root={data.wider_root!r}')
  samples, stats = reader(paths['label'], paths['images'])
  if stats.summary():
    logging.warning('%s: %s', paths['label'], stats.summary())
  return pipeline.FileSource(samples)


def val_set(data, family) -> ValSet | None:
  """The val set the periodic evaluation scores, or None (with a note) when it is not available.

  WIDER val runs with `data.val_test_scale`, or the family's protocol when that is empty."""
  from jaxface.evaluation import run
  if data.dataset == 'synthetic':
    gt, load = run.synthetic_val(data.synthetic_val_images, data.synthetic_val_seed,
                                    tuple(data.synthetic_val_image_size) or None)
    return ValSet(gt, load, 'original')
  paths = wider_paths(data.wider_root)
  if not (os.path.isdir(paths['val_images']) and os.path.isdir(paths['gt'])):
    logging.warning('periodic evaluation off: %s or %s is missing', paths['val_images'], paths['gt'])
    return None
  from jaxface.evaluation.ground_truth import load_wider_mat_ground_truth
  return ValSet(load_wider_mat_ground_truth(paths['gt']), run.wider_image_loader(data.wider_root),
                data.val_test_scale or family.test_scale)


def dataset_meta(data) -> dict[str, Any]:
  """What `evaluate.py --ckpt WORKDIR` needs to score the model on the val set it was trained for."""
  if data.dataset == 'synthetic':
    return dict(name='synthetic', val_images=data.synthetic_val_images, val_seed=data.synthetic_val_seed,
                val_image_size=list(data.synthetic_val_image_size) or None)
  return dict(name='wider')
