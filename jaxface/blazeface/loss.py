"""BlazeFace's training loss (the first open recipe; docs/training.md): sigmoid focal loss on every
anchor, smooth-L1 on the box and the keypoints of positives, per image vmapped over the batch.

The network's regressors stay in the released decode's convention (pixels of the input relative to
a unit anchor, `box_coding.decode`), so trained weights run through MediaPipe's post-processing
unchanged. The loss measures their error in units of each anchor's matching size (`sizes`, the
calculator's scale), as SSD does with its variances: a 1-pixel error weighs as much on a 19-pixel
anchor as 6 pixels on a 110-pixel one.

* cls: focal loss (alpha 0.25, gamma 2; RetinaNet's), summed over all anchors, divided by the
  positives;
* box: smooth-L1 (beta 1) of the centre error / (0.1 x size) and the width/height error /
  (0.2 x size) (SSD's variances), times `BOX_WEIGHT`, divided by the positives;
* kps: smooth-L1 of each keypoint's error / (0.1 x size) where the keypoint is annotated, divided by
  the positives that have keypoints. Five-landmark data (WIDER, the synthetic set) gives the eyes,
  the nose and the mouth (the mean of the two corners); the ears are never annotated there, so
  they are never trained (`TRAINED_KEYPOINTS`), and the released models' ear outputs are kept only
  when training starts from them.

Normalisers are summed over devices under `axis_name`, each device returning its share.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.blazeface import box_coding, matching, outputs
from jaxface.losses import bce_with_logits, smooth_l1

FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
VARIANCE_CENTRE, VARIANCE_SIZE = 0.1, 0.2
BOX_WEIGHT = 2.0
TRAINED_KEYPOINTS = np.array([1, 1, 1, 1, 0, 0], bool)  # right eye, left eye, nose, mouth; not the ears


def focal_loss(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Elementwise sigmoid focal loss of logits against 0/1 targets."""
  p = jax.nn.sigmoid(logits)
  ce = bce_with_logits(logits, target)
  p_t = p * target + (1 - p) * (1 - target)
  return ce * (1 - p_t) ** FOCAL_GAMMA * (FOCAL_ALPHA * target + (1 - FOCAL_ALPHA) * (1 - target))


def image_terms(regressors, logits, gt_boxes, gt_valid, gt_kps, kps_valid, *, table: np.ndarray, sizes: np.ndarray,
                input_size: int) -> dict[str, jax.Array]:
  """Unnormalised sums of one image: `regressors [A,16]`, `logits [A]`; `gt_boxes [G,4]` and
  `gt_kps [G,6,2]` normalised, `gt_valid [G]`, `kps_valid [G]`; static `table [A,4]` (unit decode
  anchors) and `sizes [A,2]` (matching sizes)."""
  assigned = matching.match(matching.matching_boxes(table, sizes), gt_boxes, gt_valid)
  pos = assigned >= 0
  g = jnp.maximum(assigned, 0)
  target = box_coding.encode(gt_boxes[g], gt_kps[g], jnp.asarray(table, jnp.float32), input_size)  # [A, 16]
  # Each coordinate's error in units of its anchor's matching size (x: width, y: height).
  scale = jnp.asarray(np.tile(sizes, (1, 8)) * input_size, jnp.float32)                        # [A, 16]
  variance = jnp.asarray([VARIANCE_CENTRE] * 2 + [VARIANCE_SIZE] * 2 + [VARIANCE_CENTRE] * 12, jnp.float32)
  err = (regressors - target) / (scale * variance[None, :])
  box = jnp.sum(jnp.where(pos[:, None], smooth_l1(err[:, :4]), 0.0))
  kp_mask = pos[:, None] & kps_valid[g][:, None] & jnp.asarray(np.repeat(TRAINED_KEYPOINTS, 2))[None, :]
  kps = jnp.sum(jnp.where(kp_mask, smooth_l1(err[:, 4:]), 0.0))
  cls = jnp.sum(focal_loss(logits, pos.astype(jnp.float32)))
  return dict(cls=cls, box=box, kps=kps, num_pos=jnp.sum(pos, dtype=jnp.int32),
              num_kps=jnp.sum(pos & kps_valid[g], dtype=jnp.int32))


def blazeface_loss(regressors, logits, batch: Mapping[str, jax.Array], *, table: np.ndarray, sizes: np.ndarray,
                   input_size: int, axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The batch loss: `regressors [B,A,16]`, `logits [B,A]` against the loader's batch (`boxes [B,G,4]`,
  `landmarks [B,G,6,2]` normalised, `box_valid`, `landmark_valid`, `ignore`: ignore boxes take no part)."""
  gt_valid = batch['box_valid'] & ~batch.get('ignore', jnp.zeros_like(batch['box_valid']))
  terms = jax.vmap(lambda r, l, b, v, k, kv: image_terms(r, l, b, v, k, kv, table=table, sizes=sizes,
                                                        input_size=input_size))(
      regressors.astype(jnp.float32), logits.astype(jnp.float32), batch['boxes'].astype(jnp.float32), gt_valid,
      batch['landmarks'].astype(jnp.float32), batch['landmark_valid'] & gt_valid)
  total = (lambda x: jax.lax.psum(x, axis_name)) if axis_name else (lambda x: x)
  num_pos = total(jnp.sum(terms['num_pos']))
  num_kps = total(jnp.sum(terms['num_kps']))
  pos = jnp.maximum(num_pos, 1).astype(jnp.float32)
  loss_cls = jnp.sum(terms['cls']) / pos
  loss_box = BOX_WEIGHT * jnp.sum(terms['box']) / pos
  loss_kps = jnp.sum(terms['kps']) / jnp.maximum(num_kps, 1).astype(jnp.float32)
  loss = loss_cls + loss_box + loss_kps
  metrics = dict(loss=total(loss), loss_cls=total(loss_cls), loss_box=total(loss_box), loss_kps=total(loss_kps),
                 num_pos=num_pos)
  return loss, metrics


def family_loss(spec, outputs_, batch: Mapping[str, jax.Array], *, axis_name: str | None = None,
                **hyper) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`blazeface_loss` as `Family.training.loss` takes it: the model's `(regressors, logits [B,A,1])`."""
  if hyper:
    raise ValueError(f'BlazeFace\'s loss takes no hyper-parameters; got {sorted(hyper)} (config.loss must be empty)')
  side = batch['image'].shape[1]
  if side != spec.input_size:
    raise ValueError(f'BlazeFace trains at its input size {spec.input_size}, got {side} px images '
                     f'(config.data.image_size)')
  table, sizes, _ = outputs.anchor_table(spec)
  regressors, logits = outputs_
  return blazeface_loss(regressors, logits[..., 0], batch, table=table, sizes=sizes, input_size=side,
                        axis_name=axis_name)
