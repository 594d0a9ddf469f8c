"""The compiled detection program: uint8 images -> boxes, scores, landmarks, all on device.

One jitted function per (batch, height, width). Thresholds are traced arguments, so changing
them never recompiles. Post-processing follows the reference: softmax, decode against the
priors, keep scores > conf, sort descending, greedy NMS; with static shapes: the best
`pre_nms_top_k` candidates enter NMS and at most `max_detections` come out, with a mask.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxface import anchors, box_coding
from jaxface.models import RetinaFace
from jaxface.nms import nms

BGR_MEAN = (104.0, 117.0, 123.0)


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 BGR `[B,H,W,3]` -> float32 minus the reference's BGR mean (no std)."""
  return images.astype(jnp.float32) - jnp.asarray(BGR_MEAN, jnp.float32)[None, None, None, :]


@dataclasses.dataclass(frozen=True)
class PostprocessConfig:
  pre_nms_top_k: int = 5000    # the reference detect.py's top_k (test_widerface.py applies none).
  max_detections: int = 750    # the reference's keep_top_k.
  nms_plus_one: bool = True    # py_cpu_nms's +1 pixel IoU; False for plain IoU.


def select_candidates(scores: jax.Array, ok: jax.Array, k: int) -> jax.Array:
  """`[K]` indices holding every `ok` prior when there are at most K of them (in prior order,
  padded with non-`ok` ones), else the K best-scoring: the reference's top_k.

  The usual case is a linear-time compaction; the top-k (a sort of all A priors, the
  post-processing's largest cost on CPU) runs only when more than K priors pass.
  """
  if k >= scores.shape[0]:
    return jnp.arange(scores.shape[0])
  return jax.lax.cond(jnp.sum(ok) <= k,
                      lambda: jnp.nonzero(ok, size=k, fill_value=0)[0].astype(jnp.int32),
                      lambda: jax.lax.top_k(jnp.where(ok, scores, -jnp.inf), k)[1].astype(jnp.int32))


def postprocess_one(bbox, logits, landmarks, priors, prior_ok, conf_threshold, nms_threshold, pixel_wh,
                    cfg: PostprocessConfig):
  """One image's head outputs -> fixed-size detections in pixels.

  Args:
    bbox `[A,4]`, logits `[A,2]`, landmarks `[A,10]`: head outputs.
    priors `[A,4]`: normalised by the network input size; prior_ok `[A]` bool: priors that exist.
    pixel_wh `[2]`: the network input (W, H) in pixels.
  Returns:
    dict of boxes `[M,4]` xyxy, scores `[M]`, landmarks `[M,5,2]`, valid `[M]`; rows in descending score.
  """
  scores = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, 1]
  ok = prior_ok & (scores > conf_threshold)

  def over(k):
    """Decode and NMS over K candidate rows. NMS costs O(K) per kept face, so a small image
    (few candidates) takes a small-K branch; all branches give the same result."""
    def run():
      idx = select_candidates(scores, ok, k)
      p = priors[idx]
      boxes = box_coding.decode_boxes(bbox[idx], p) * jnp.concatenate([pixel_wh, pixel_wh])[None, :]
      points = box_coding.decode_landmarks(landmarks[idx], p) * pixel_wh[None, None, :]
      keep, valid = nms(boxes, scores[idx], ok[idx], nms_threshold, cfg.max_detections, cfg.nms_plus_one)
      return (jnp.where(valid[:, None], boxes[keep], 0.0), jnp.where(valid, scores[idx][keep], 0.0),
              jnp.where(valid[:, None, None], points[keep], 0.0), valid)
    return run

  top = min(cfg.pre_nms_top_k, scores.shape[0])
  tiers = sorted({t for t in NMS_TIERS if t < top} | {top})
  branch = jnp.minimum(jnp.searchsorted(jnp.asarray(tiers), jnp.sum(ok)), len(tiers) - 1)
  boxes, kept_scores, points, valid = jax.lax.switch(branch, [over(k) for k in tiers])
  return dict(boxes=boxes, scores=kept_scores, landmarks=points, valid=valid)


# Candidate-count tiers of the post-processing (the last is `pre_nms_top_k`).
NMS_TIERS = (512, 2048)


def make_detect_fn(model: RetinaFace, cfg: PostprocessConfig = PostprocessConfig()) -> Callable[..., Any]:
  """Returns `detect(variables, images [B,H,W,3] uint8, sizes [B,2] int32 (h, w), conf, nms) -> dict`.

  `sizes` are the unpadded image sizes: priors a padded input has beyond them are masked,
  so exact-size inputs (sizes == H, W) reproduce the reference and padded ones differ only
  through the network's view of the padding.
  """
  spec = model.spec
  traces = []  # one entry per compiled (batch, height, width): tests assert no retracing.

  @jax.jit
  def detect(variables, images, sizes, conf_threshold, nms_threshold):
    traces.append(images.shape)
    _, h, w, _ = images.shape
    priors, cells = anchors.prior_grid(h, w, spec.min_sizes, spec.steps)
    bbox, logits, landmarks = model.apply(variables, preprocess(images))
    prior_ok = jax.vmap(lambda s: anchors.valid_priors(cells, s[0], s[1]))(sizes)  # [B, A]
    pixel_wh = jnp.asarray([w, h], jnp.float32)
    one = functools.partial(postprocess_one, priors=jnp.asarray(priors), conf_threshold=conf_threshold,
                            nms_threshold=nms_threshold, pixel_wh=pixel_wh, cfg=cfg)
    return jax.vmap(lambda b, l, m, ok: one(b, l, m, prior_ok=ok))(bbox, logits, landmarks, prior_ok)

  detect.traces = traces
  return detect


def make_forward_fn(model: RetinaFace) -> Callable[..., Any]:
  """`forward(variables, images uint8 [B,H,W,3]) -> (bbox, logits, landmarks)`, jitted."""
  return jax.jit(lambda variables, images: model.apply(variables, preprocess(images)))


def bucket_size(n: int, ladder: tuple[int, ...]) -> int:
  """The smallest ladder size >= n; past the ladder, the next multiple of its last step."""
  for s in ladder:
    if s >= n:
      return s
  step = ladder[-1] - ladder[-2] if len(ladder) > 1 else ladder[-1]
  return ladder[-1] + -(-(n - ladder[-1]) // step) * step


# Side lengths of the bucketed mode: from 512 px up each step pads a side by at most ~33%, so a
# folder of mixed photos compiles a handful of programs. All are multiples of 32 (the coarsest
# prior step).
BUCKETS = (128, 256, 384, 512, 640, 768, 1024, 1280, 1536, 2048, 2560)


def pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bottom/right padding with the BGR mean, which is zero after mean subtraction (as the
  reference's zero conv padding sees it at the input)."""
  h, w, _ = image.shape
  out = np.empty((height, width, 3), np.uint8)
  out[...] = np.asarray(BGR_MEAN, np.uint8)
  out[:h, :w] = image
  return out
