"""BlazeFace training parts (jaxface's own recipe): matching against a plain-loop re-statement, the
loss against a numpy re-statement, the augmentation's crops and keypoints."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import blazeface
from jaxface.blazeface import anchors, augment, box_coding, loss, matching
from jaxface.data.sample import Sample

TABLE, SIZES, _ = anchors.anchor_table(anchors.FRONT)
BOXES = matching.matching_boxes(TABLE, SIZES)


def restated_match(boxes, gt, valid, pos_iou=0.5):
  """SSD's matching as plain loops: threshold, then each face's best anchor (ties: lower anchor;
  an anchor several faces want goes to the higher IoU, then the lower face)."""
  def iou(a, b):
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(rb - lt, 0, None))
    union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
    return inter / union if union > 0 else 0.0
  rows = [g for g in range(len(gt)) if valid[g]]
  m = np.array([[iou(gt[g], boxes[a]) for a in range(len(boxes))] for g in rows]).reshape(len(rows), len(boxes))
  assigned = np.full(len(boxes), -1)
  for a in range(len(boxes)):
    if len(rows) and m[:, a].max() >= pos_iou:
      assigned[a] = rows[int(np.argmax(m[:, a]))]
  claims = {}
  for i, g in enumerate(rows):
    a = int(np.argmax(m[i]))
    if a not in claims or m[i, a] > claims[a][0]:
      claims[a] = (m[i, a], g)
  for a, (_, g) in claims.items():
    assigned[a] = g
  return assigned


def random_faces(rng, n, rows=16):
  centre = rng.uniform(0.05, 0.95, (n, 2))
  half = np.exp(rng.uniform(np.log(0.01), np.log(0.5), (n, 1))) * rng.uniform(0.8, 1.2, (n, 2))
  gt = np.zeros((rows, 4), np.float32)
  gt[:n] = np.concatenate([centre - half, centre + half], 1)
  valid = np.arange(rows) < n
  return gt, valid


@pytest.mark.parametrize('case', ['random', 'none', 'one tiny', 'duplicates', 'huge'])
def test_matching_equals_the_restatement(case):
  rng = np.random.default_rng(3)
  gt, valid = random_faces(rng, 12)
  if case == 'none':
    valid[:] = False
  elif case == 'one tiny':
    gt[0], valid[:] = [0.50, 0.50, 0.505, 0.506], np.arange(16) < 1
  elif case == 'duplicates':
    gt[3] = gt[2]
  elif case == 'huge':
    gt[0] = [-0.2, -0.1, 1.3, 1.2]
  got = np.asarray(jax.jit(matching.match, static_argnums=())(BOXES, jnp.asarray(gt), jnp.asarray(valid)))
  np.testing.assert_array_equal(got, restated_match(BOXES, gt, valid))
  if case == 'one tiny':  # a face smaller than every anchor still trains its best one
    assert (got == 0).sum() == 1
  if case == 'none':
    assert (got == -1).all()


def restated_loss(regressors, logits, gt, valid, kps, kps_valid, assigned, size=128):
  """The loss of one image in numpy from the recipe's statement (jaxface.blazeface.loss docstring)."""
  pos = assigned >= 0
  p = 1 / (1 + np.exp(-logits))
  t = pos.astype(np.float64)
  ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
  pt = p * t + (1 - p) * (1 - t)
  cls = np.sum(ce * (1 - pt) ** 2 * (0.25 * t + 0.75 * (1 - t)))
  box_sum = kps_sum = 0.0
  n_kps = 0
  for a in np.flatnonzero(pos):
    g = assigned[a]
    b, ax, ay = gt[g], TABLE[a, 0], TABLE[a, 1]
    sw, sh = SIZES[a] * size
    target = [((b[0] + b[2]) / 2 - ax) * size, ((b[1] + b[3]) / 2 - ay) * size, (b[2] - b[0]) * size, (b[3] - b[1]) * size]
    err = np.array([(regressors[a, 0] - target[0]) / (0.1 * sw), (regressors[a, 1] - target[1]) / (0.1 * sh),
                    (regressors[a, 2] - target[2]) / (0.2 * sw), (regressors[a, 3] - target[3]) / (0.2 * sh)])
    sl1 = lambda e: np.where(np.abs(e) < 1, 0.5 * e * e, np.abs(e) - 0.5)
    box_sum += sl1(err).sum()
    if kps_valid[g]:
      n_kps += 1
      for k in range(4):  # the ears are not trained
        ex = (regressors[a, 4 + 2 * k] - (kps[g, k, 0] - ax) * size) / (0.1 * sw)
        ey = (regressors[a, 5 + 2 * k] - (kps[g, k, 1] - ay) * size) / (0.1 * sh)
        kps_sum += sl1(ex) + sl1(ey)
  n = max(pos.sum(), 1)
  return cls / n + 2.0 * box_sum / n + kps_sum / max(n_kps, 1)


def test_loss_equals_the_restatement_and_is_finite_without_faces():
  rng = np.random.default_rng(7)
  gt, valid = random_faces(rng, 6)
  kps = rng.uniform(0, 1, (16, 6, 2)).astype(np.float32)
  kps_valid = valid & (np.arange(16) % 2 == 0)
  regressors = rng.normal(0, 10, (1, 896, 16)).astype(np.float32)
  logits = rng.normal(-2, 2, (1, 896)).astype(np.float32)
  batch = dict(image=jnp.zeros((1, 128, 128, 3)), boxes=jnp.asarray(gt[None]), box_valid=jnp.asarray(valid[None]),
               landmarks=jnp.asarray(kps[None]), landmark_valid=jnp.asarray(kps_valid[None]),
               ignore=jnp.zeros((1, 16), bool))
  spec = blazeface.SPECS['blazeface_front']
  value, metrics = loss.family_loss(spec, (jnp.asarray(regressors), jnp.asarray(logits[..., None])), batch)
  assigned = restated_match(BOXES, gt, valid)
  want = restated_loss(regressors[0].astype(np.float64), logits[0].astype(np.float64), gt, valid, kps, kps_valid,
                       assigned)
  assert int(metrics['num_pos']) == (assigned >= 0).sum() > 6
  np.testing.assert_allclose(float(value), want, rtol=1e-5)
  # No faces, zero-size and padded rows: finite values and gradients.
  empty = dict(batch, box_valid=jnp.zeros((1, 16), bool))
  degenerate = dict(batch, boxes=batch['boxes'].at[0, 0].set(jnp.asarray([0.5, 0.5, 0.5, 0.5])))
  for b in (empty, degenerate):
    grad = jax.grad(lambda r: loss.family_loss(spec, (r, jnp.asarray(logits[..., None])), b)[0])(jnp.asarray(regressors))
    assert np.isfinite(np.asarray(grad)).all()
  assert float(loss.family_loss(spec, (jnp.asarray(regressors), jnp.asarray(logits[..., None])), empty)[1]['num_pos']) == 0


def test_encode_targets_decode_back_to_the_face():
  rng = np.random.default_rng(1)
  gt, valid = random_faces(rng, 5)
  assigned = restated_match(BOXES, gt, valid)
  a = np.flatnonzero(assigned >= 0)
  kps = rng.uniform(0, 1, (len(a), 6, 2)).astype(np.float32)
  target = box_coding.encode(jnp.asarray(gt[assigned[a]]), jnp.asarray(kps), jnp.asarray(TABLE[a], jnp.float32), 128)
  boxes, points = box_coding.decode(target, jnp.asarray(TABLE[a], jnp.float32), 128)
  np.testing.assert_allclose(np.asarray(boxes), gt[assigned[a]], atol=1e-5)
  np.testing.assert_allclose(np.asarray(points), kps, atol=1e-5)


def test_augment_crops_to_the_model_range_and_maps_five_landmarks_to_six():
  """The picked face's size lands in the model's range; eyes, nose and mouth centre come from the five
  landmarks with the person's right eye on the image's left, mirrored or not; the ears are zero."""
  rng = np.random.default_rng(0)
  img = np.full((300, 400, 3), 90, np.uint8)
  box = np.array([[150, 100, 210, 170]], np.float32)   # 60 x 70 px
  five = np.array([[[165, 125], [195, 125], [180, 140], [168, 155], [192, 155]]], np.float32)
  sample = Sample('', box, five, [True], [False])
  lo, hi = augment.FACE_RANGE[128]
  sizes = []
  for _ in range(40):
    a = augment.blazeface_augment(img, sample, rng, image_size=128)
    assert a.image.shape == (128, 128, 3) and a.boxes.shape == (1, 4) and a.landmarks.shape == (1, 6, 2)
    b, k = a.boxes[0], a.landmarks[0]
    sizes.append(np.sqrt((b[2] - b[0]) * (b[3] - b[1])))
    assert not k[4:].any()                              # the ears are zero
    assert k[0, 0] < k[3, 0] < k[1, 0]                  # right eye (image left), mouth, left eye
    assert k[0, 1] < k[2, 1] < k[3, 1]                  # eyes above the nose above the mouth
    if 0 < b[0] and b[2] < 1:  # not clipped by the crop: the mouth centre lies on the box's axis
      np.testing.assert_allclose(k[3, 0], (b[0] + b[2]) / 2, atol=1e-5)
  assert hi * 1.001 >= max(sizes) and np.median(sizes) >= lo  # clipped at the crop's edge a face only shrinks
  assert np.ptp(np.log(sizes)) > 0.5 * np.log(hi / lo)       # the range is covered, not one size
  np.testing.assert_allclose(augment.six_keypoints(five)[0, 3], [180, 155])


def test_full_range_loss_trains_small_faces_through_their_best_anchor():
  """One anchor size (86 px at 192): a 10 px face still gets exactly its best anchor; finite gradients."""
  spec = blazeface.SPECS['blazeface_full_range']
  gt = np.zeros((4, 4), np.float32)
  gt[0] = [0.40, 0.40, 0.45, 0.45]       # ~10 px
  gt[1] = [0.1, 0.1, 0.6, 0.6]           # ~96 px
  valid = np.arange(4) < 2
  table, sizes, _ = anchors.anchor_table(anchors.FULL_RANGE)
  assigned = np.asarray(matching.match(matching.matching_boxes(table, sizes), jnp.asarray(gt), jnp.asarray(valid)))
  assert (assigned == 0).sum() == 1 and (assigned == 1).sum() > 10
  batch = dict(image=jnp.zeros((1, 192, 192, 3)), boxes=jnp.asarray(gt[None]), box_valid=jnp.asarray(valid[None]),
               landmarks=jnp.zeros((1, 4, 6, 2)), landmark_valid=jnp.zeros((1, 4), bool), ignore=jnp.zeros((1, 4), bool))
  outs = (jnp.zeros((1, 2304, 16)), jnp.zeros((1, 2304, 1)))
  value, metrics = loss.family_loss(spec, outs, batch)
  assert np.isfinite(float(value)) and int(metrics['num_pos']) == (assigned >= 0).sum()
  with pytest.raises(ValueError, match='trains at its input size 192'):
    loss.family_loss(spec, outs, dict(batch, image=jnp.zeros((1, 128, 128, 3))))
