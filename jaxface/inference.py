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


def select_candidates(scores: jax.Array, ok: jax.Array, k: int, use_top_k: jax.Array | None = None) -> jax.Array:
  """`[K]` indices into one image's `[A]` priors that hold every `ok` prior when there are at most
  K of them (in prior order, padded with non-`ok` rows), else the K best-scoring ones: the
  reference's top_k.

  The usual case is a linear-time compaction; the top-k (a sort, the post-processing's largest
  cost on CPU) runs only when `use_top_k` (default: more than K priors pass). Pass `use_top_k`
  unbatched under `vmap`, or the `cond` becomes a select that runs both.
  """
  if k >= scores.shape[0]:
    return jnp.arange(scores.shape[0])
  if use_top_k is None:
    use_top_k = jnp.sum(ok) > k
  return jax.lax.cond(use_top_k,
                      lambda: jax.lax.top_k(jnp.where(ok, scores, -jnp.inf), k)[1].astype(jnp.int32),
                      lambda: jnp.nonzero(ok, size=k, fill_value=0)[0].astype(jnp.int32))


def detections_one(idx, scores, ok, bbox, landmarks, priors, nms_threshold, pixel_wh, cfg: PostprocessConfig):
  """One image: decode the candidate rows `idx [K]` and run NMS -> fixed-size detections in pixels."""
  p = priors[idx]
  boxes = box_coding.decode_boxes(bbox[idx], p) * jnp.concatenate([pixel_wh, pixel_wh])[None, :]
  points = box_coding.decode_landmarks(landmarks[idx], p) * pixel_wh[None, None, :]
  keep, valid = nms(boxes, scores[idx], ok[idx], nms_threshold, cfg.max_detections, cfg.nms_plus_one)
  return dict(boxes=jnp.where(valid[:, None], boxes[keep], 0.0),
              scores=jnp.where(valid, scores[idx][keep], 0.0),
              landmarks=jnp.where(valid[:, None, None], points[keep], 0.0),
              valid=valid)


# Candidate-count tiers of the post-processing (the last is `pre_nms_top_k`).
NMS_TIERS = (512, 2048)


def postprocess(bbox, logits, landmarks, priors, prior_ok, conf_threshold, nms_threshold, pixel_wh,
                cfg: PostprocessConfig):
  """A batch of head outputs -> fixed-size detections in pixels.

  Args:
    bbox `[B,A,4]`, logits `[B,A,2]`, landmarks `[B,A,10]`: head outputs.
    priors `[A,4]`: normalised by the network input size; prior_ok `[B,A]` bool: priors that exist.
    pixel_wh `[2]`: the network input (W, H) in pixels.
  Returns:
    dict of boxes `[B,M,4]` xyxy, scores `[B,M]`, landmarks `[B,M,5,2]`, valid `[B,M]`; rows in
    descending score.

  NMS costs O(K) per kept face over K candidate rows, so the batch takes the smallest tier of
  K that holds its busiest image's candidates; every tier gives the same result. The tier and
  the top-k fallback are decided once per batch, outside `vmap`, so only one branch runs.
  """
  scores = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1]  # [B, A]
  ok = prior_ok & (scores > conf_threshold)
  most = jnp.max(jnp.sum(ok, axis=-1))
  top = min(cfg.pre_nms_top_k, scores.shape[-1])
  tiers = sorted({t for t in NMS_TIERS if t < top} | {top})

  def over(k):
    def run():
      idx = jax.vmap(lambda s, o: select_candidates(s, o, k, most > k))(scores, ok)
      one = functools.partial(detections_one, priors=priors, nms_threshold=nms_threshold, pixel_wh=pixel_wh, cfg=cfg)
      return jax.vmap(one)(idx, scores, ok, bbox, landmarks)
    return run

  branch = jnp.minimum(jnp.searchsorted(jnp.asarray(tiers), most), len(tiers) - 1)
  return jax.lax.switch(branch, [over(k) for k in tiers])


def postprocess_one(bbox, logits, landmarks, priors, prior_ok, conf_threshold, nms_threshold, pixel_wh,
                    cfg: PostprocessConfig):
  """`postprocess` for one image's unbatched outputs (`[A,4]`, `[A,2]`, `[A,10]`, prior_ok `[A]`)."""
  out = postprocess(bbox[None], logits[None], landmarks[None], priors, prior_ok[None], conf_threshold,
                    nms_threshold, pixel_wh, cfg)
  return jax.tree_util.tree_map(lambda a: a[0], out)


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
    return postprocess(bbox, logits, landmarks, jnp.asarray(priors), prior_ok, conf_threshold, nms_threshold,
                       jnp.asarray([w, h], jnp.float32), cfg)

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
