"""The compiled detection program of any family: uint8 images -> boxes, scores, keypoints, on device.

One jitted function per (batch, height, width). Thresholds are traced arguments, so changing
them never recompiles. Post-processing follows the references: the family's scores and decode,
keep scores > conf, sort descending, greedy NMS; with static shapes: the best `pre_nms_top_k`
candidates enter NMS and at most `max_detections` come out, with a mask.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from jaxface import cpu_kernels
from jaxface.family import Family
from jaxface.nms import nms, weighted_nms


@dataclasses.dataclass(frozen=True)
class PostprocessConfig:
  """The NMS caps and IoU convention; None: the family's (`Family.pre_nms_top_k`, `max_detections`,
  `nms_plus_one`), where a cap of None means none (sized by the anchor count)."""
  pre_nms_top_k: int | None = None
  max_detections: int | None = None
  nms_plus_one: bool | None = None

  def resolve(self, family: Family) -> PostprocessConfig:
    """This config with each None replaced by the family's value."""
    pick = lambda mine, theirs: theirs if mine is None else mine
    return PostprocessConfig(pick(self.pre_nms_top_k, family.pre_nms_top_k),
                             pick(self.max_detections, family.max_detections),
                             pick(self.nms_plus_one, family.nms_plus_one))


def select_candidates(scores: jax.Array, ok: jax.Array, k: int, use_top_k: jax.Array | None = None) -> jax.Array:
  """`[K]` indices into one image's `[A]` anchors that hold every `ok` anchor when there are at most
  K of them (in anchor order, padded with non-`ok` rows), else the K best-scoring ones: the
  reference's top_k.

  The usual case is a linear-time compaction; the top-k (a sort, the post-processing's largest
  cost on CPU) runs only when `use_top_k` (default: more than K anchors pass). Pass `use_top_k`
  unbatched under `vmap`, or the `cond` becomes a select that runs both.
  """
  if k >= scores.shape[0]:
    return jnp.arange(scores.shape[0])
  if use_top_k is None:
    use_top_k = jnp.sum(ok) > k
  return jax.lax.cond(use_top_k,
                      lambda: jax.lax.top_k(jnp.where(ok, scores, -jnp.inf), k)[1].astype(jnp.int32),
                      lambda: jnp.nonzero(ok, size=k, fill_value=0)[0].astype(jnp.int32))


def cells_inside(cells, height, width):
  """`[A]` bool: the anchors an unpadded `height x width` image has, from `[A, 3]` (row, col, stride)
  cells (numpy or jax). A padded input has every anchor of the original size at the same pixel
  position, plus extra rows/columns; the original has `ceil(h/stride)` rows per level."""
  step = cells[..., 2]
  return (cells[..., 0] < -(-height // step)) & (cells[..., 1] < -(-width // step))


def detections_one(idx, scores, ok, outputs, image_hw, scale, offset, decode, nms_threshold, nms_plus_one: bool,
                   max_detections: int, weighted_nms_score=None):
  """One image: decode the candidate rows `idx [K]`, map them to the image by `(x - offset) / scale`
  (`[2]` each, (x, y); None: 0 and 1) and run NMS -> fixed-size detections in pixels."""
  boxes, points = decode(outputs, idx, image_hw=image_hw)
  if offset is not None:
    boxes, points = boxes - jnp.concatenate([offset, offset])[None], points - offset[None, None]
  if scale is not None:  # to the image's pixels before NMS, as the references do (+1 IoU is not scale-free)
    boxes, points = boxes / jnp.concatenate([scale, scale])[None], points / scale[None, None]
  # NMS keeps at most K of the K candidate rows: the slots beyond them are padding, not gathered.
  m = min(max_detections, idx.shape[0])
  if weighted_nms_score is None:
    keep, valid = nms(boxes, scores[idx], ok[idx], nms_threshold, m, nms_plus_one)
    boxes, points, kept_scores = boxes[keep], points[keep], scores[idx][keep]
  else:
    boxes, points, kept_scores, valid = weighted_nms(boxes, points, scores[idx], ok[idx], nms_threshold, m,
                                                     weighted_nms_score)
  out = dict(boxes=jnp.where(valid[:, None], boxes, 0.0),
             scores=jnp.where(valid, kept_scores, 0.0),
             landmarks=jnp.where(valid[:, None, None], points, 0.0),
             valid=valid)
  return {k: jnp.pad(v, [(0, max_detections - m)] + [(0, 0)] * (v.ndim - 1)) for k, v in out.items()}


# Candidate-count tiers of the post-processing (the last is `pre_nms_top_k`).
NMS_TIERS = (512, 2048, 8192)


def postprocess(outputs, scores, anchor_ok, image_hw, decode, conf_threshold, nms_threshold, *, nms_plus_one: bool,
                cfg: PostprocessConfig, scale=None, offset=None, conf_inclusive: bool = False, weighted_nms_score=None):
  """A batch of head outputs -> fixed-size detections in pixels.

  Args:
    outputs: the family's head outputs, a tuple of `[B, A, ...]`.
    scores `[B,A]`: face probabilities; anchor_ok `[B,A]` bool: anchors that exist.
    image_hw `[B,2]`: each image's unpadded (h, w) in input pixels, for the family's clipping.
    decode: `(one image's outputs, idx [K], *, image_hw) -> (boxes [K,4] px, keypoints [K,P,2] px)`.
    cfg: the caps; here None means no cap.
    scale, offset `[B,2]` (x, y): image pixel = (input pixel - offset) / scale; None: 1 and 0.
    conf_inclusive: candidates are scores `>= conf_threshold` (else `>`).
    weighted_nms_score: None (greedy NMS) or weighted NMS with this cluster-score rule.
  Returns:
    dict of boxes `[B,M,4]` xyxy, scores `[B,M]`, landmarks `[B,M,P,2]`, valid `[B,M]`; rows in
    descending score.

  The candidates' sort and NMS grow with the K candidate rows, so the batch takes the smallest
  tier of K that holds its busiest image's candidates; every tier gives the same result. The tier and
  the top-k fallback are decided once per batch, outside `vmap`, so only one branch runs.
  """
  ok = anchor_ok & ((scores >= conf_threshold) if conf_inclusive else (scores > conf_threshold))
  most = jnp.max(jnp.sum(ok, axis=-1))
  top = min(cfg.pre_nms_top_k or scores.shape[-1], scores.shape[-1])
  max_detections = cfg.max_detections or top
  tiers = sorted({t for t in NMS_TIERS if t < top} | {top})

  def over(k):
    def run():
      idx = jax.vmap(lambda s, o: select_candidates(s, o, k, most > k))(scores, ok)
      one = functools.partial(detections_one, decode=decode, nms_threshold=nms_threshold,
                              nms_plus_one=nms_plus_one, max_detections=max_detections,
                              weighted_nms_score=weighted_nms_score)
      return jax.vmap(one, in_axes=(0, 0, 0, 0, 0, None if scale is None else 0, None if offset is None else 0))(
          idx, scores, ok, outputs, image_hw, scale, offset)
    return run

  branch = jnp.minimum(jnp.searchsorted(jnp.asarray(tiers), most), len(tiers) - 1)
  return jax.lax.switch(branch, [over(k) for k in tiers])


def make_detect_fn(family: Family, model, spec, cfg: PostprocessConfig = PostprocessConfig()) -> Callable[..., Any]:
  """Returns `detect(variables, images [B,H,W,3] uint8, sizes [B,2] int32 (h, w), conf, nms,
  scale=None, offset=None) -> dict`.

  `sizes` are the unpadded image sizes: anchors a padded input has beyond them are masked,
  so exact-size inputs (sizes == H, W) reproduce the reference and padded ones differ only
  through the network's view of the padding. `scale [B,2]` (x, y), a letterboxed image's input
  pixels per original pixel, and `offset [B,2]` (x, y), where a centred image's origin lies in the
  input, map the detections back before NMS; None leaves them in input pixels.
  """
  traces = []  # one entry per compiled (batch, height, width): tests assert no retracing.
  cfg = cfg.resolve(family)

  @functools.partial(jax.jit, compiler_options=cpu_kernels.compiler_options())
  def detect(variables, images, sizes, conf_threshold, nms_threshold, scale=None, offset=None):
    traces.append(images.shape)
    b, h, w, _ = images.shape
    cells = family.anchor_cells(spec, h, w)
    outputs = forward_batch(family, model, variables, images, sizes)
    if family.input_size is None:  # padding up to a batch size: the image's own anchors only
      anchor_ok = jax.vmap(lambda s: cells_inside(cells, s[0], s[1]))(sizes)  # [B, A]
    else:  # a fixed letterboxed input: every anchor, as the reference's protocol
      anchor_ok = jnp.ones((b, len(cells)), bool)
    decode = functools.partial(family.decode, spec, input_hw=(h, w))
    return postprocess(outputs, family.scores(outputs), anchor_ok, sizes, decode, conf_threshold, nms_threshold,
                       nms_plus_one=cfg.nms_plus_one, cfg=cfg, scale=scale, offset=offset,
                       conf_inclusive=family.conf_inclusive, weighted_nms_score=family.weighted_nms_score)

  detect.traces = traces
  return detect


def forward_batch(family: Family, model, variables, images: jax.Array, sizes: jax.Array):
  """The head outputs for uint8 `images [B, H, W, 3]` of unpadded `sizes [B, 2]`: `preprocess`, then
  `model.apply`. On the CPU, a compiled loop over chunks of `cpu_kernels.forward_chunk` images,
  each preprocessed in its step (same outputs, faster per image there: the float input of a whole
  batch of 640 x 640 images is 39 MB that would be written and read back)."""
  b = images.shape[0]
  k = cpu_kernels.forward_chunk(b, images.shape[1], images.shape[2])
  run = lambda x, s: model.apply(variables, preprocess(family, x, s))
  if k >= b:
    return run(images, sizes)
  chunks = images.reshape(b // k, k, *images.shape[1:]), sizes.reshape(b // k, k, 2)
  out = jax.lax.map(lambda chunk: run(*chunk), chunks)
  return jax.tree_util.tree_map(lambda a: a.reshape(b, *a.shape[2:]), out)


def preprocess(family: Family, images: jax.Array, sizes: jax.Array) -> jax.Array:
  """The family's preprocessing; where it has no uint8 padding colour (`pad_bgr` None), pixels
  beyond each image's unpadded `sizes [B,2]` are set to zero after it."""
  x = family.preprocess(images)
  if family.pad_bgr is not None:
    return x
  rows = jnp.arange(images.shape[1])[None, :, None] < sizes[:, 0, None, None]
  cols = jnp.arange(images.shape[2])[None, None, :] < sizes[:, 1, None, None]
  return jnp.where((rows & cols)[..., None], x, 0.0)


def make_forward_fn(family: Family, model) -> Callable[..., Any]:
  """`forward(variables, images uint8 [B,H,W,3], sizes [B,2]) -> head outputs`, jitted; `sizes`
  are the unpadded image sizes (see `preprocess`)."""
  return jax.jit(lambda variables, images, sizes: forward_batch(family, model, variables, images, sizes),
                 compiler_options=cpu_kernels.compiler_options())


def letterbox_size(height: int, width: int, size: int) -> tuple[int, int]:
  """mmcv's `imrescale` to `size x size`: `s = size / long side`, sides `int(x * s + 0.5)`; `(h, w)`."""
  s = min(size / max(height, width), size / min(height, width))
  return int(height * s + 0.5), int(width * s + 0.5)


def mmcv_letterbox(height: int, width: int, size: int) -> tuple[int, int, np.ndarray]:
  """`letterbox_size` with mmdet's per-axis scale `[2]` (x, y), float32 from the integer sizes
  (the default `Family.letterbox`)."""
  nh, nw = letterbox_size(height, width, size)
  return nh, nw, np.array([nw / width, nh / height], np.float32)


def centred_letterbox(image: np.ndarray, size: int, fill_bgr: tuple[int, int, int] | None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """MediaPipe's letterbox into `size x size`: one scale `s = size / long side`, the image centred
  with the padding split evenly (`offset = (size - s * side) / 2`, fractional), bilinear, `fill_bgr`
  (None: black) around it. As MediaPipe's `ImageToTensorCalculator` warps its region of interest,
  input pixel = s * image pixel + offset, with pixel centres at integer coordinates.
  Returns `(input [size, size, 3] uint8, scale [2] float32 (x, y), offset [2] float32 (x, y))`."""
  h, w = image.shape[:2]
  s = size / max(h, w)
  offset = np.array([(size - s * w) / 2, (size - s * h) / 2])
  m = np.array([[s, 0.0, offset[0]], [0.0, s, offset[1]]])
  fill = tuple(int(v) for v in fill_bgr or (0, 0, 0))
  out = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                       borderValue=fill)
  return out, np.array([s, s], np.float32), offset.astype(np.float32)


def largest_central(boxes: np.ndarray, image_hw: tuple[int, int], max_num: int) -> np.ndarray:
  """Indices of the `max_num` boxes `[N,4]` (image pixels) with the largest `area - 2 * offset**2`,
  where offset is the box centre's distance from the image centre `(h // 2, w // 2)`, best first:
  insightface's `max_num` selection. All rows in order when `max_num` <= 0 or N <= max_num."""
  if max_num <= 0 or len(boxes) <= max_num:
    return np.arange(len(boxes))
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  cy, cx = image_hw[0] // 2, image_hw[1] // 2
  offset2 = ((boxes[:, 0] + boxes[:, 2]) / 2 - cx) ** 2 + ((boxes[:, 1] + boxes[:, 3]) / 2 - cy) ** 2
  return np.argsort(area - offset2 * 2.0, kind='stable')[::-1][:max_num]


def bucket_size(n: int, ladder: tuple[int, ...]) -> int:
  """The smallest ladder size >= n; past the ladder, the next multiple of its last step."""
  for s in ladder:
    if s >= n:
      return s
  step = ladder[-1] - ladder[-2] if len(ladder) > 1 else ladder[-1]
  return ladder[-1] + -(-(n - ladder[-1]) // step) * step


# Side lengths of the bucketed mode: from 512 px up each step pads a side by at most ~33%, so a
# folder of mixed photos compiles a handful of programs. All are multiples of 32 (the coarsest
# anchor stride of every family).
BUCKETS = (128, 256, 384, 512, 640, 768, 1024, 1280, 1536, 2048, 2560)


def pad_to(image: np.ndarray, height: int, width: int, fill_bgr: tuple[int, int, int] | None) -> np.ndarray:
  """Bottom/right padding with `fill_bgr` (the family's `pad_bgr`, zero after preprocessing, as the
  references' zero conv padding sees it at the input; None: black, zeroed after preprocessing by
  the detection program)."""
  h, w, _ = image.shape
  fill = tuple(int(v) for v in fill_bgr or (0, 0, 0))
  if fill == (0, 0, 0):  # zeroed pages: no pass over the padding
    out = np.zeros((height, width, 3), np.uint8)
    out[:h, :w] = image
    return out
  return cv2.copyMakeBorder(image, 0, height - h, 0, width - w, cv2.BORDER_CONSTANT, value=fill)
