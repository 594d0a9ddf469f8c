"""RetinaFace prior tables (jaxface.retinaface.anchors) against REFERENCE.md section 1.3 and the torch re-statement.

Priors are `(cx, cy, w, h)` normalised by (W, H), ordered level / row / column / min_size; a padded
input masks the priors its unpadded size would not have with `inference.cells_inside`.
"""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import inference
from jaxface.retinaface import FAMILY, anchors

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)

# Sizes given as (H, W); the non-square ones have H != W and sides that are not multiples of 32,
# so ceil(H/step) != H/step and rows/columns can be swapped by a bug.
SIZES = [(640, 640), (840, 840), (128, 128), (302, 450), (624, 1024), (450, 302), (1, 1), (33, 65)]


@pytest.fixture(scope='module')
def ref():
  pytest.importorskip('torch')
  import reference_torch
  return reference_torch


def _count(h, w):
  return sum(len(s) * math.ceil(h / st) * math.ceil(w / st) for s, st in zip(MIN_SIZES, STEPS))


@pytest.mark.parametrize('h, w, expected', [
    # 2 priors per cell: 2 * (80^2 + 40^2 + 20^2) = 2 * (6400 + 1600 + 400) = 16,800.
    (640, 640, 16_800),
    # maps ceil(840/8)=105, ceil(840/16)=53 (52.5), ceil(840/32)=27 (26.25):
    # 2 * (105^2 + 53^2 + 27^2) = 2 * (11025 + 2809 + 729) = 29,126.
    (840, 840, 29_126),
    # 2 * (16^2 + 8^2 + 4^2) = 2 * (256 + 64 + 16) = 672.
    (128, 128, 672),
    # H=302: rows 38 / 19 / 10; W=450: cols 57 / 29 / 15 -> 2 * (2166 + 551 + 150) = 5,734.
    (302, 450, 5_734),
    # H=624: rows 78 / 39 / 20; W=1024: cols 128 / 64 / 32 -> 2 * (9984 + 2496 + 640) = 26,240.
    (624, 1024, 26_240),
])
def test_prior_counts(h, w, expected):
  priors, cells = anchors.prior_grid(h, w)
  assert priors.shape == (expected, 4) and priors.dtype == np.float32
  assert cells.shape == (expected, 3) and cells.dtype == np.int32
  assert anchors.prior_boxes(h, w).shape == (expected, 4)
  assert _count(h, w) == expected


@pytest.mark.parametrize('h, w', SIZES, ids=[f'{h}x{w}' for h, w in SIZES])
def test_priors_equal_reference(ref, h, w):
  got = anchors.prior_boxes(h, w)
  want = ref.prior_box(h, w)
  assert got.shape == want.shape == (_count(h, w), 4)
  # Same float64 arithmetic ((j + 0.5) * step / W) rounded once to float32: equal to the last bit in
  # practice; 1e-7 absolute leaves room for one float32 ulp near 1.
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)


def test_golden_first_rows_640():
  p = anchors.prior_boxes(640, 640)
  # Level 0 (step 8, sizes 16, 32), cell (0, 0): centre 0.5 * 8 / 640 = 0.00625;
  # sizes 16 / 640 = 0.025 and 32 / 640 = 0.05. The second cell (0, 1): cx = 1.5 * 8 / 640 = 0.01875.
  np.testing.assert_allclose(p[0], [0.00625, 0.00625, 0.025, 0.025], rtol=1e-6)
  np.testing.assert_allclose(p[1], [0.00625, 0.00625, 0.05, 0.05], rtol=1e-6)
  np.testing.assert_allclose(p[2], [0.01875, 0.00625, 0.025, 0.025], rtol=1e-6)
  # Row 1 starts after 80 cells * 2 sizes = index 160: cy = 1.5 * 8 / 640 = 0.01875, cx back to 0.00625.
  np.testing.assert_allclose(p[160], [0.00625, 0.01875, 0.025, 0.025], rtol=1e-6)
  # Level 1 starts at 2 * 80^2 = 12,800 (step 16, sizes 64, 128): centre 8 / 640 = 0.0125;
  # sizes 64 / 640 = 0.1 and 128 / 640 = 0.2.
  np.testing.assert_allclose(p[12_800], [0.0125, 0.0125, 0.1, 0.1], rtol=1e-6)
  np.testing.assert_allclose(p[12_801], [0.0125, 0.0125, 0.2, 0.2], rtol=1e-6)
  # Level 2 starts at 12,800 + 2 * 40^2 = 16,000 (step 32, sizes 256, 512): centre 16 / 640 = 0.025;
  # sizes 256 / 640 = 0.4 and 512 / 640 = 0.8.
  np.testing.assert_allclose(p[16_000], [0.025, 0.025, 0.4, 0.4], rtol=1e-6)
  np.testing.assert_allclose(p[16_001], [0.025, 0.025, 0.8, 0.8], rtol=1e-6)
  # Last prior: level 2 cell (19, 19), size 512: centre 19.5 * 32 / 640 = 0.975.
  np.testing.assert_allclose(p[-1], [0.975, 0.975, 0.8, 0.8], rtol=1e-6)


def test_golden_first_rows_non_square():
  # H=302, W=450: x is normalised by W and y by H.
  p = anchors.prior_boxes(302, 450)
  # Level 0 cell (0, 0): cx = 4 / 450, cy = 4 / 302, w = 16 / 450, h = 16 / 302.
  np.testing.assert_allclose(p[0], [4 / 450, 4 / 302, 16 / 450, 16 / 302], rtol=1e-6)
  # Cell (0, 1): only cx moves: 1.5 * 8 / 450 = 12 / 450.
  np.testing.assert_allclose(p[2], [12 / 450, 4 / 302, 16 / 450, 16 / 302], rtol=1e-6)
  # Row 1 starts after ceil(450 / 8) = 57 columns * 2 = index 114: cy = 1.5 * 8 / 302 = 12 / 302.
  np.testing.assert_allclose(p[114], [4 / 450, 12 / 302, 16 / 450, 16 / 302], rtol=1e-6)
  # Level 1 starts at 2 * 38 * 57 = 4,332: cx = 8 / 450, cy = 8 / 302, size 64.
  np.testing.assert_allclose(p[4332], [8 / 450, 8 / 302, 64 / 450, 64 / 302], rtol=1e-6)
  # Level 2 starts at 4,332 + 2 * 19 * 29 = 5,434: centre 16 / 450, 16 / 302, size 256.
  np.testing.assert_allclose(p[5434], [16 / 450, 16 / 302, 256 / 450, 256 / 302], rtol=1e-6)
  # Last: level 2 cell (9, 14), size 512: cx = 14.5 * 32 / 450 = 464 / 450 (> 1: priors are not
  # clipped), cy = 9.5 * 32 / 302 = 304 / 302.
  np.testing.assert_allclose(p[-1], [464 / 450, 304 / 302, 512 / 450, 512 / 302], rtol=1e-6)


@pytest.mark.parametrize('h, w', [(640, 640), (302, 450), (624, 1024)])
def test_cells_consistent_with_priors(h, w):
  priors, cells = anchors.prior_grid(h, w)
  row, col, step = cells[:, 0].astype(np.float64), cells[:, 1].astype(np.float64), cells[:, 2]
  np.testing.assert_allclose(priors[:, 0], (col + 0.5) * step / w, rtol=0, atol=1e-7)
  np.testing.assert_allclose(priors[:, 1], (row + 0.5) * step / h, rtol=0, atol=1e-7)
  # Level blocks in order 8, 16, 32, each covering its full ceil grid, rows major, then columns.
  start = 0
  for sizes, st in zip(MIN_SIZES, STEPS):
    fh, fw = math.ceil(h / st), math.ceil(w / st)
    n = fh * fw * len(sizes)
    block = cells[start:start + n]
    assert (block[:, 2] == st).all()
    np.testing.assert_array_equal(block[::len(sizes), 0], np.repeat(np.arange(fh), fw))
    np.testing.assert_array_equal(block[::len(sizes), 1], np.tile(np.arange(fw), fh))
    np.testing.assert_allclose(priors[start:start + n, 2], np.tile(np.asarray(sizes) / w, fh * fw), rtol=1e-6)
    np.testing.assert_allclose(priors[start:start + n, 3], np.tile(np.asarray(sizes) / h, fh * fw), rtol=1e-6)
    start += n
  assert start == len(priors)


def test_tables_are_read_only_and_cached():
  priors, cells = anchors.prior_grid(128, 128)
  assert anchors.prior_grid(128, 128)[0] is priors
  with pytest.raises(ValueError):
    priors[0, 0] = 1.0
  with pytest.raises(ValueError):
    cells[0, 0] = 1


# (original (h, w), padded (H, W)): bucket-style paddings, one dimension only, and none.
PADDED = [((302, 450), (384, 512)), ((600, 800), (640, 1024)), ((129, 128), (256, 128)),
          ((97, 33), (128, 64)), ((640, 640), (640, 640))]


@pytest.mark.parametrize('orig, padded', PADDED, ids=[f'{o[0]}x{o[1]}-in-{p[0]}x{p[1]}' for o, p in PADDED])
def test_valid_priors_select_the_unpadded_grid(ref, orig, padded):
  (h, w), (ph, pw) = orig, padded
  priors_p, cells_p = anchors.prior_grid(ph, pw)
  mask = inference.cells_inside(cells_p, h, w)
  assert mask.dtype == bool and mask.shape == (len(priors_p),)
  assert int(mask.sum()) == _count(h, w)
  # Same cells in the same order as the unpadded table.
  np.testing.assert_array_equal(cells_p[mask], anchors.prior_grid(h, w)[1])
  # Same pixel positions: priors normalised by the padded size, rescaled by padded / original.
  scale = np.asarray([pw / w, ph / h, pw / w, ph / h])
  np.testing.assert_allclose(priors_p[mask] * scale, ref.prior_box(h, w), rtol=1e-6, atol=1e-7)


def test_valid_priors_under_jit_with_traced_size():
  _, cells = anchors.prior_grid(384, 512)
  cells_j = jnp.asarray(cells)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def mask_fn(h, w):
    return inference.cells_inside(cells_j, h, w)

  for h, w in [(302, 450), (384, 512), (1, 1), (257, 300)]:
    got = mask_fn(jnp.int32(h), jnp.int32(w))
    want = inference.cells_inside(cells, h, w)
    np.testing.assert_array_equal(np.asarray(got), want)
    assert int(want.sum()) == _count(h, w)

  # vmapped over a batch of sizes, as make_detect_fn does.
  sizes = jnp.asarray([[302, 450], [384, 512]], jnp.int32)
  batch = jax.jit(jax.vmap(lambda s: inference.cells_inside(cells_j, s[0], s[1])))(sizes)
  assert batch.shape == (2, len(cells))
  assert [int(x) for x in batch.sum(axis=1)] == [_count(302, 450), _count(384, 512)]


# ------------------------------------------------------------------------------------------------
# Padding to buckets (jaxface.inference): what makes `cells_inside` necessary.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('n, expected', [
    (1, 128), (128, 128), (129, 256), (500, 512), (640, 640), (641, 768), (1000, 1024), (2048, 2048),
    (2049, 2560), (2560, 2560),
    # Past the ladder: steps of its last gap, 2560 - 2048 = 512: 2561 -> 2560 + ceil(1 / 512) * 512.
    (2561, 3072), (3072, 3072), (3073, 3584), (5000, 5120),  # 5120 = 2560 + ceil(2440 / 512) * 512
])
def test_bucket_size_values(n, expected):
  assert inference.bucket_size(n, inference.BUCKETS) == expected


def test_bucket_size_properties():
  ladder = inference.BUCKETS
  assert list(ladder) == sorted(set(ladder)) and all(s % 32 == 0 for s in ladder)
  got = [inference.bucket_size(n, ladder) for n in range(1, 6001)]
  assert all(b >= n for n, b in zip(range(1, 6001), got))
  assert all(a <= b for a, b in zip(got, got[1:]))  # monotone
  assert all(b in ladder or (b - ladder[-1]) % 512 == 0 for b in got)
  assert all(b % 32 == 0 for b in got)  # every bucket is a whole stride-32 grid
  # A ladder member maps to itself; the smallest bucket is chosen (not merely one that fits).
  assert all(inference.bucket_size(s, ladder) == s for s in ladder)
  assert all(inference.bucket_size(s + 1, ladder) == t for s, t in zip(ladder, ladder[1:]))
  # A one-size ladder steps by its only size.
  assert [inference.bucket_size(n, (32,)) for n in (1, 32, 33, 64, 65)] == [32, 32, 64, 64, 96]


def test_pad_to_fills_with_bgr_mean_top_left():
  image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  out = inference.pad_to(image, 8, 16, FAMILY.pad_bgr)
  assert out.shape == (8, 16, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[:5, :7], image)
  pad = np.concatenate([out[5:].reshape(-1, 3), out[:5, 7:].reshape(-1, 3)])
  assert len(pad) == 8 * 16 - 5 * 7
  np.testing.assert_array_equal(pad, np.broadcast_to(np.asarray([104, 117, 123], np.uint8), pad.shape))
  # Padding is zero after mean subtraction, as the reference's zero conv padding sees it.
  np.testing.assert_array_equal(np.asarray(FAMILY.preprocess(out[None]))[0, 5:], 0.0)
  # No padding: the image itself (a copy).
  same = inference.pad_to(image, 5, 7, FAMILY.pad_bgr)
  np.testing.assert_array_equal(same, image)
  assert same is not image
