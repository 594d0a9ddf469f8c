"""The user-facing detector: `load_detector(path, arch=...)` -> `Detector.detect(img)`;
`load_detector()` runs the default model shipped with the package."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from jaxface import families, freed_memory, inference, saved_models
from jaxface.family import Family
from jaxface.images import as_bgr_uint8


@dataclasses.dataclass
class Detections:
  """One image's faces, in input pixels, sorted by descending score (after weighted NMS, by each
  cluster's best member, so a cluster's mean score can be out of order: BlazeFace's hollance rule)."""
  boxes: np.ndarray      # [N, 4] x1 y1 x2 y2
  scores: np.ndarray     # [N]
  landmarks: np.ndarray  # [N, K, 2] the family's keypoints (`Detector.family.keypoints.names`)

  def __len__(self) -> int:
    return len(self.scores)


class Detector:
  """A detector of any family with its weights and compiled programs.

  Args:
    family: the architecture's family (`jaxface.families.family_of(arch)`).
    arch: one of `family.specs`.
    variables: `{'params', 'batch_stats'}`.
    bucketed: False (default) runs each image at its exact size, compiling once per size
      (results equal the reference); True pads each side up to `inference.BUCKETS` so mixed
      sizes share a handful of programs (docs/inference.md: the measured effect on detections).
    batch_size: images per compiled call in `detect_batch` (the last batch is padded).
    cpu_kernels: the layers' path (`jaxface.cpu_kernels`): None (default) the XLA:CPU restatements
      iff JAX's default backend is the CPU, False the plain layers, True the restatements.
  """

  def __init__(self, family: Family, arch: str, variables: Any, *, bucketed: bool = False, batch_size: int = 8,
               postprocess: inference.PostprocessConfig = inference.PostprocessConfig(),
               cpu_kernels: bool | None = None):
    if jax.default_backend() == 'cpu':  # XLA:CPU's temporaries stay mapped between calls (jaxface/freed_memory.py)
      freed_memory.keep_freed_memory()
    self.family = family
    self.arch = arch
    self.spec = family.spec(arch)
    self.model = family.build(self.spec, cpu_kernels=cpu_kernels)
    self.variables = jax.tree_util.tree_map(jnp.asarray, variables)
    # The fixed network input side of a letterboxing family, else None (any size).
    self.input_size = None if family.input_size is None else family.input_size(self.spec)
    self.bucketed = bucketed
    self.batch_size = batch_size
    self._detect = inference.make_detect_fn(family, self.model, self.spec, postprocess)
    self._forward = inference.make_forward_fn(family, self.model)

  @property
  def compiled_shapes(self) -> list[tuple[int, int, int, int]]:
    """The `[B, H, W, 3]` input shapes compiled so far, one entry per trace."""
    return list(self._detect.traces)

  def _input_size(self, h: int, w: int) -> tuple[int, int]:
    if self.input_size is not None:
      return self.input_size, self.input_size
    if not self.bucketed:
      return h, w
    return inference.bucket_size(h, inference.BUCKETS), inference.bucket_size(w, inference.BUCKETS)

  def detect(self, image: np.ndarray, conf_threshold: float | None = None, nms_threshold: float | None = None,
             max_num: int = 0) -> Detections:
    """Faces in one `[H,W,3]` uint8 BGR image (as `cv2.imread` returns); see `detect_batch`."""
    return self.detect_batch([image], conf_threshold, nms_threshold, max_num)[0]

  def detect_batch(self, images: Sequence[np.ndarray], conf_threshold: float | None = None,
                   nms_threshold: float | None = None, max_num: int = 0) -> list[Detections]:
    """`detect` for many images: same-size (or same-bucket) images share compiled batches.

    Thresholds default to the family's protocol (`Family.default_conf`, `nms_threshold`).
    `max_num` > 0 keeps each image's `max_num` faces with the largest area minus twice the squared
    offset from the image centre, in that order (insightface's `detect(max_num=...)`).
    """
    conf_threshold = self.family.default_conf(self.spec) if conf_threshold is None else conf_threshold
    nms_threshold = self.family.nms_threshold if nms_threshold is None else nms_threshold
    images = [as_bgr_uint8(im, f'image {i}') for i, im in enumerate(images)]
    original_hw = [im.shape[:2] for im in images]
    factors = [None] * len(images)  # per-axis (x, y) input / image scale of a letterboxed image
    offsets = [None] * len(images)  # and where the image's origin lies in the input (centred letterbox)
    if self.input_size is not None:
      images, factors, offsets = zip(*(self._letterbox(im) for im in images))
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
      groups.setdefault(self._input_size(*im.shape[:2]), []).append(i)
    results: list[Detections | None] = [None] * len(images)
    conf = np.float32(conf_threshold)
    nms = np.float32(nms_threshold)
    for (h, w), idx in groups.items():
      for start in range(0, len(idx), self.batch_size):
        chunk = idx[start:start + self.batch_size]
        # Pad the batch to a power of two: few programs per size, little wasted compute.
        b = min(self.batch_size, 1 << (len(chunk) - 1).bit_length())
        sizes = np.zeros((b, 2), np.int32)
        sizes[:len(chunk)] = [images[i].shape[:2] for i in chunk]
        scale = offset = None  # letterboxed: detections come back in the image's pixels, mapped before NMS
        if factors[chunk[0]] is not None:
          scale = np.ones((b, 2), np.float32)
          scale[:len(chunk)] = [factors[i] for i in chunk]
        if offsets[chunk[0]] is not None:
          offset = np.zeros((b, 2), np.float32)
          offset[:len(chunk)] = [offsets[i] for i in chunk]
        if b == 1 and images[chunk[0]].shape[:2] == (h, w):
          batch = images[chunk[0]][None]  # a view: no copy of the one exact-size image
        else:
          batch = np.zeros((b, h, w, 3), np.uint8)
          for j, i in enumerate(chunk):
            batch[j] = (images[i] if images[i].shape[:2] == (h, w)
                        else inference.pad_to(images[i], h, w, self.family.pad_bgr))
        out = jax.device_get(self._detect(self.variables, batch, sizes, conf, nms, scale, offset))
        for j, i in enumerate(chunk):
          v = out['valid'][j]
          pick = inference.largest_central(out['boxes'][j][v], original_hw[i], max_num)
          results[i] = Detections(out['boxes'][j][v][pick], out['scores'][j][v][pick], out['landmarks'][j][v][pick])
    return results

  def _letterbox(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The image fitted into the family's fixed input (`Family.input_size`): `(input, scale [2] (x, y)
    float32 input pixels per image pixel, offset [2] (x, y) or None)`. Top-left (`Family.letterbox`)
    the input is the resized image, padded later; centred it is the whole canvas."""
    if self.family.letterbox_centred:
      return inference.centred_letterbox(image, self.input_size, self.family.pad_bgr)
    h, w = image.shape[:2]
    nh, nw, scale = (self.family.letterbox or inference.mmcv_letterbox)(h, w, self.input_size)
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return resized, scale, None

  def raw_outputs(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
    """The heads for the whole image at its exact size, in the reference's anchor order (RetinaFace:
    `(bbox deltas [A,4], class logits [A,2], landmark deltas [A,10])`)."""
    image = as_bgr_uint8(image)
    if self.input_size is not None and image.shape[:2] == (self.input_size, self.input_size):
      sizes = np.asarray([image.shape[:2]], np.int32)  # already the network's input: as it is
    elif self.input_size is not None:  # the family's protocol: letterboxed into its fixed input
      image, _, _ = self._letterbox(image)
      s = self.input_size
      sizes = np.asarray([image.shape[:2]], np.int32)
      image = inference.pad_to(image, s, s, self.family.pad_bgr)
    else:
      sizes = np.asarray([image.shape[:2]], np.int32)
    return tuple(o[0] for o in jax.device_get(self._forward(self.variables, image[None], sizes)))


def load_detector(path: str | None = None, arch: str | None = None, *, step: int | None = None,
                  protocol: str | None = None, **kwargs) -> Detector:
  """A `Detector` from a PyTorch checkpoint (`.pth`/`.tar`, needs `arch`), a released `.onnx` file
  (SCRFD) or `.tflite` file (BlazeFace; both with the architecture recognised from the graph), a
  converted directory,
  or a `train.py` workdir (its latest checkpoint, or `step`'s); with no `path`, the default model
  (`families.DEFAULT_MODEL`, package data: nothing to download).

  `protocol` picks a test protocol other than the default (`families.protocols`; SCRFD: 'mmdet' by
  default, 'insightface' for scrfd.py's deployment path; BlazeFace: 'hollance' for `.pth` files,
  'mediapipe' for `.tflite` files, `Family.file_protocols`). Other keyword arguments go to
  `Detector` (`bucketed`, `batch_size`, `postprocess`, `cpu_kernels`).
  """
  if path is None:
    path = families.DEFAULT_MODEL
  if arch is not None:
    families.family_of(arch, protocol)  # an unknown name lists the valid ones
  if os.path.isdir(path):
    variables, meta = saved_models.load_variables(path, step)
    if arch is not None and arch != meta['arch']:
      raise ValueError(f'{path} holds a {meta["arch"]} checkpoint, not {arch}')
    if meta['arch'] not in families.ARCHS:
      raise ValueError(f'{path} holds a {meta["arch"]} checkpoint, which is not a detector; '
                       f'valid: {", ".join(families.ARCHS)}')
    return Detector(families.family_of(meta['arch'], protocol), meta['arch'], variables, **kwargs)
  if not os.path.exists(path):
    raise FileNotFoundError(f'no such checkpoint file or directory: {path}')
  from jaxface import convert
  suffix = os.path.splitext(str(path))[1].lower()
  if suffix in ('.onnx', '.tflite'):  # the architecture is recognised from the graph
    read = convert.convert_onnx_file if suffix == '.onnx' else convert.convert_tflite_file
    arch, variables = read(path, arch)
    family = families.family_of(arch)
    return Detector(families.family_of(arch, protocol or family.file_protocols.get(suffix)), arch, variables, **kwargs)
  if arch is None:
    raise ValueError(f'{path} is a PyTorch file: pass arch= (one of {", ".join(families.ARCHS)})')
  return Detector(families.family_of(arch, protocol), arch, convert.convert_file(path, arch), **kwargs)
