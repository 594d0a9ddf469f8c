"""The RetinaFace encode/decode pair (jaxface.box_coding), REFERENCE.md section 1.4.

Round trips on random boxes, decode against the torch re-statement, a hand-computed encode, and
batch dimensions under jit / vmap.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.retinaface import anchors, box_coding

# Jitted once per shape: far fewer compilations than op-by-op dispatch (the suite runs on 2 cores).
center_form = jax.jit(box_coding.center_form)
point_form = jax.jit(box_coding.point_form)
encode_boxes = jax.jit(box_coding.encode_boxes)
decode_boxes = jax.jit(box_coding.decode_boxes)
encode_landmarks = jax.jit(box_coding.encode_landmarks)
decode_landmarks = jax.jit(box_coding.decode_landmarks)


@pytest.fixture(scope='module')
def ref():
  pytest.importorskip('torch')
  import reference_torch
  return reference_torch


def _random_boxes(rng, n):
  """`[n, 4]` xyxy float32 in [0, 1] with widths/heights in [0.01, 0.5]."""
  c = rng.uniform(0.1, 0.9, (n, 2))
  wh = rng.uniform(0.01, 0.5, (n, 2))
  return np.concatenate([c - wh / 2, c + wh / 2], axis=-1).astype(np.float32)


def _random_priors(rng, n):
  """`[n, 4]` cxcywh float32, the prior sizes RetinaFace has at 640 (16/640 .. 512/640)."""
  c = rng.uniform(0.0, 1.0, (n, 2))
  wh = rng.uniform(0.025, 0.8, (n, 2))
  return np.concatenate([c, wh], axis=-1).astype(np.float32)


def test_golden_encode():
  # Prior (cx, cy, w, h) = (0.5, 0.5, 0.1, 0.2); box xyxy (0.45, 0.42, 0.57, 0.62):
  #   centre ((0.45 + 0.57) / 2, (0.42 + 0.62) / 2) = (0.51, 0.52), size (0.12, 0.20);
  #   d_cx = (0.51 - 0.5) / (0.1 * 0.1) = 1.0,   d_cy = (0.52 - 0.5) / (0.1 * 0.2) = 1.0;
  #   d_w = log(0.12 / 0.1) / 0.2 = log(1.2) / 0.2 = 0.911608,   d_h = log(0.2 / 0.2) / 0.2 = 0.
  prior = jnp.asarray([0.5, 0.5, 0.1, 0.2], jnp.float32)
  box = jnp.asarray([0.45, 0.42, 0.57, 0.62], jnp.float32)
  got = encode_boxes(box, prior)
  np.testing.assert_allclose(got, [1.0, 1.0, math.log(1.2) / 0.2, 0.0], atol=1e-5)
  assert abs(math.log(1.2) / 0.2 - 0.9116078) < 1e-6
  # Landmarks: point (0.53, 0.46) -> ((0.53 - 0.5) / (0.1 * 0.1), (0.46 - 0.5) / (0.1 * 0.2)) = (3, -2);
  # point (0.5, 0.5) -> (0, 0). Output order x0, y0, x1, y1, ...
  points = jnp.asarray([[0.53, 0.46], [0.5, 0.5], [0.49, 0.52], [0.5, 0.5], [0.5, 0.5]], jnp.float32)
  got = encode_landmarks(points, prior)
  assert got.shape == (10,)
  np.testing.assert_allclose(got, [3, -2, 0, 0, -1, 1, 0, 0, 0, 0], atol=1e-5)
  # And back.
  np.testing.assert_allclose(decode_boxes(encode_boxes(box, prior), prior), box, atol=1e-6)
  np.testing.assert_allclose(decode_landmarks(got, prior), points, atol=1e-6)


def test_golden_decode_with_custom_variances():
  # Prior (0.5, 0.5, 0.2, 0.4), offsets (1, -1, log 2, 0), variances (0.5, 1.0):
  #   centre (0.5 + 1 * 0.5 * 0.2, 0.5 - 1 * 0.5 * 0.4) = (0.6, 0.3);
  #   size (0.2 * exp(log 2 * 1.0), 0.4 * exp(0)) = (0.4, 0.4) -> xyxy (0.4, 0.1, 0.8, 0.5).
  prior = jnp.asarray([0.5, 0.5, 0.2, 0.4], jnp.float32)
  got = decode_boxes(jnp.asarray([1.0, -1.0, math.log(2.0), 0.0]), prior, (0.5, 1.0))
  np.testing.assert_allclose(got, [0.4, 0.1, 0.8, 0.5], atol=1e-6)


def test_center_point_form_inverse():
  rng = np.random.default_rng(0)
  boxes = _random_boxes(rng, 500)
  c = center_form(boxes)
  # xyxy (0.1, 0.2, 0.5, 0.8) -> centre (0.3, 0.5), size (0.4, 0.6).
  np.testing.assert_allclose(center_form(jnp.asarray([0.1, 0.2, 0.5, 0.8])), [0.3, 0.5, 0.4, 0.6],
                             atol=1e-7)
  np.testing.assert_allclose(point_form(jnp.asarray([0.3, 0.5, 0.4, 0.6])), [0.1, 0.2, 0.5, 0.8],
                             atol=1e-7)
  np.testing.assert_allclose(point_form(c), boxes, atol=1e-6)
  np.testing.assert_allclose(center_form(point_form(c)), c, atol=1e-6)


@pytest.mark.parametrize('seed', range(3))
def test_encode_decode_round_trip(seed):
  rng = np.random.default_rng(seed)
  n = 2000
  boxes, priors = _random_boxes(rng, n), _random_priors(rng, n)
  offsets = encode_boxes(boxes, priors)
  assert offsets.shape == (n, 4) and offsets.dtype == jnp.float32
  assert np.isfinite(np.asarray(offsets)).all()
  np.testing.assert_allclose(decode_boxes(offsets, priors), boxes, rtol=0, atol=1e-5)

  points = rng.uniform(-0.2, 1.2, (n, 5, 2)).astype(np.float32)
  loffsets = encode_landmarks(points, priors)
  assert loffsets.shape == (n, 10)
  np.testing.assert_allclose(decode_landmarks(loffsets, priors), points, rtol=0, atol=1e-5)
  # Ordering x0, y0, x1, y1, ...: offset 2k is point k's x, against the prior's x centre and width.
  np.testing.assert_allclose(loffsets[:, 0::2], (points[..., 0] - priors[:, None, 0]) / (0.1 * priors[:, None, 2]),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('h, w', [(640, 640), (302, 450)])
def test_decode_matches_reference(ref, h, w):
  priors = anchors.prior_boxes(h, w)
  rng = np.random.default_rng(h + w)
  loc = rng.normal(0.0, 2.0, (len(priors), 4)).astype(np.float32)
  landm = rng.normal(0.0, 2.0, (len(priors), 10)).astype(np.float32)
  # The reference builds x2 as wh + x1 where jaxface computes c + wh / 2: the same up to float32
  # rounding of values <= ~4 (offsets up to ~8 sigma with exp(0.2 * 8) ~ 5 times a prior of 0.8).
  np.testing.assert_allclose(decode_boxes(loc, priors), ref.decode(loc, priors.copy()), rtol=0, atol=2e-6)
  got = decode_landmarks(landm, priors)
  assert got.shape == (len(priors), 5, 2)
  np.testing.assert_allclose(got.reshape(len(priors), 10), ref.decode_landm(landm, priors.copy()), rtol=0, atol=2e-6)


def test_decode_casts_to_float32():
  priors = jnp.asarray(_random_priors(np.random.default_rng(5), 8))
  loc = jnp.ones((8, 4), jnp.bfloat16)
  assert decode_boxes(loc, priors).dtype == jnp.float32
  assert decode_landmarks(jnp.ones((8, 10), jnp.bfloat16), priors).dtype == jnp.float32


def test_batch_dims_jit_and_vmap():
  rng = np.random.default_rng(7)
  b, a = 3, 50
  priors = _random_priors(rng, a)  # [A, 4], shared by the batch
  boxes = _random_boxes(rng, b * a).reshape(b, a, 4)
  points = rng.uniform(0, 1, (b, a, 5, 2)).astype(np.float32)

  # Per-row reference: the unbatched functions, one image at a time.
  enc_rows = np.stack([encode_boxes(boxes[i], priors) for i in range(b)])
  lenc_rows = np.stack([encode_landmarks(points[i], priors) for i in range(b)])

  # Broadcasting of leading dims, under jit (priors [1, A, 4]: same rank, so this also holds under
  # jax_numpy_rank_promotion='raise').
  enc = encode_boxes(boxes, priors[None])
  lenc = encode_landmarks(points, priors[None])
  assert enc.shape == (b, a, 4) and lenc.shape == (b, a, 10)
  np.testing.assert_allclose(enc, enc_rows, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(lenc, lenc_rows, rtol=1e-6, atol=1e-6)

  # vmap over the batch, priors not mapped, under jit.
  dec = jax.jit(jax.vmap(box_coding.decode_boxes, in_axes=(0, None)))(enc, priors)
  ldec = jax.jit(jax.vmap(box_coding.decode_landmarks, in_axes=(0, None)))(lenc, priors)
  assert dec.shape == (b, a, 4) and ldec.shape == (b, a, 5, 2)
  np.testing.assert_allclose(dec, boxes, atol=1e-5)
  np.testing.assert_allclose(ldec, points, atol=1e-5)

  # Two extra leading dims with per-element priors [2, B, A, 4].
  priors4 = np.broadcast_to(priors, (2, b, a, 4))
  boxes4 = np.stack([boxes, boxes])
  dec4 = decode_boxes(encode_boxes(boxes4, priors4), priors4)
  assert dec4.shape == (2, b, a, 4)
  np.testing.assert_allclose(dec4, boxes4, atol=1e-5)
  ldec4 = decode_landmarks(encode_landmarks(np.stack([points, points]), priors4), priors4)
  assert ldec4.shape == (2, b, a, 5, 2)
  np.testing.assert_allclose(ldec4, np.stack([points, points]), atol=1e-5)


def test_zero_size_box_encodes_to_minus_inf():
  # Documented contract: no guard against zero width (log 0 = -inf); callers mask such boxes.
  prior = jnp.asarray([0.5, 0.5, 0.1, 0.1])
  got = encode_boxes(jnp.asarray([0.5, 0.4, 0.5, 0.6]), prior)
  got = np.asarray(got)
  assert np.isneginf(got[2]) and np.isfinite(got[[0, 1, 3]]).all()
