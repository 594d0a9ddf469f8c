"""SCRFD's anchor tables and distance coding (jaxface.scrfd.anchors / box_coding), REFERENCE.md §2.6, §2.7."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.scrfd import anchors, box_coding


def test_centres_have_no_half_pixel_offset_and_two_anchors_per_location():
  centres, cells = anchors.anchor_grid(64, 96)
  # Levels 8, 16, 32 on 64 x 96: 8x12, 4x6, 2x3 locations, 2 anchors each.
  assert len(centres) == 2 * (8 * 12 + 4 * 6 + 2 * 3) == 252
  # Anchor (y*W + x)*2 + a of level 8: centre (8x, 8y); a is the base size 16 or 32.
  i = (3 * 12 + 5) * 2 + 1
  np.testing.assert_array_equal(centres[i], [40.0, 24.0])
  np.testing.assert_array_equal(cells[i], [3, 5, 8])
  boxes = anchors.anchor_boxes(64, 96)
  np.testing.assert_array_equal(boxes[i], [40 - 16, 24 - 16, 40 + 16, 24 + 16])  # 32 px square
  np.testing.assert_array_equal(boxes[i - 1], [40 - 8, 24 - 8, 40 + 8, 24 + 8])  # 16 px square
  # First anchor of level 16 (after 192 level-8 anchors): centre (0, 0), 64 px.
  np.testing.assert_array_equal(boxes[192], [-32, -32, 32, 32])
  np.testing.assert_array_equal(boxes[-1], [2 * 32 - 256, 32 - 256, 2 * 32 + 256, 32 + 256])


@pytest.mark.parametrize('n, want', [(640, (80, 40, 20)), (100, (13, 7, 4)), (102, (13, 7, 4)), (98, (12, 6, 3))])
def test_feature_sizes(n, want):
  """3x3 stride-2 convs with padding 1 give ceil(n/2); ResNetV1e's 2x2 max-pool floors:
  98 -> 49 (stem) -> 24 (pool) -> 12 -> 6 -> 3 for the ResNet, ceil(98/8) = 13 for the MobileNet."""
  assert tuple(anchors.feature_size(n, s, max_pool_stem=False) for s in (8, 16, 32)) == tuple(
      -(-n // s) for s in (8, 16, 32))
  resnet = tuple(anchors.feature_size(n, s, max_pool_stem=True) for s in (8, 16, 32))
  assert resnet == want


def test_distance_coding_round_trips_and_clips():
  rng = np.random.default_rng(0)
  centres = jnp.asarray(rng.uniform(0, 100, (50, 2)), jnp.float32)
  boxes = jnp.concatenate([centres - rng.uniform(1, 30, (50, 2)), centres + rng.uniform(1, 30, (50, 2))], -1)
  d = box_coding.bbox2distance(centres, boxes)
  np.testing.assert_allclose(box_coding.distance2bbox(centres, d), boxes, atol=1e-5)
  # Hand example: centre (10, 20), ltrb (4, 5, 6, 7) -> [6, 15, 16, 27]; clipped to h=25, w=12.
  c, dist = jnp.asarray([10.0, 20.0]), jnp.asarray([4.0, 5.0, 6.0, 7.0])
  np.testing.assert_array_equal(box_coding.distance2bbox(c, dist), [6, 15, 16, 27])
  np.testing.assert_array_equal(box_coding.distance2bbox(c, dist, jnp.asarray([25, 12])), [6, 15, 12, 25])
  points = jnp.asarray(rng.uniform(0, 100, (50, 5, 2)), jnp.float32)
  np.testing.assert_allclose(box_coding.distance2kps(centres, box_coding.kps2distance(centres, points)), points,
                             atol=1e-5)
  np.testing.assert_array_equal(box_coding.distance2kps(c, jnp.arange(4.0)), [[10, 21], [12, 23]])
