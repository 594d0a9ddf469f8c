"""SCRFD's loss (`jaxface.scrfd.loss`) against the torch re-statement of SCRFDHead.loss
(tests/reference_scrfd_train.py): values to 1e-5 and gradients w.r.t. the head outputs, on random
outputs and ground truth with invisible keypoints, an image without faces, and a batch with none."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.scrfd import FAMILY, anchors
from jaxface.scrfd.loss import family_loss

torch = pytest.importorskip('torch')
import reference_scrfd_train as ref  # noqa: E402  (needs torch)

SIZE, G = 128, 8
SPEC = FAMILY.spec('scrfd_500m_bnkps')


def _batch(rng, faces_per_image):
  b = len(faces_per_image)
  boxes = np.zeros((b, G, 4), np.float32)
  points = np.zeros((b, G, 5, 2), np.float32)
  valid = np.zeros((b, G), bool)
  visible = np.zeros((b, G), bool)
  for i, n in enumerate(faces_per_image):
    xy = rng.uniform(0, SIZE - 40, (n, 2))
    wh = rng.uniform(6, 60, (n, 2))
    boxes[i, :n] = np.concatenate([xy, xy + wh], 1)
    points[i, :n] = xy[:, None] + rng.uniform(0, 1, (n, 5, 2)) * wh[:, None]
    valid[i, :n] = True
    visible[i, :n] = rng.uniform(size=n) < 0.6
  points[~visible] = 0
  return dict(image=np.zeros((b, SIZE, SIZE, 3), np.float32), boxes=boxes / SIZE, landmarks=points / SIZE,
              box_valid=valid, landmark_valid=visible, ignore=np.zeros((b, G), bool))


def _outputs(rng, b, a):
  logits = rng.normal(-2.0, 2.0, (b, a, 1)).astype(np.float32)
  distances = np.exp(rng.normal(0.5, 0.7, (b, a, 4))).astype(np.float32)
  kps = rng.normal(0.0, 1.5, (b, a, 10)).astype(np.float32)
  return logits, distances, kps


def _reference(outputs, batch):
  boxes = anchors.anchor_boxes(SIZE, SIZE)
  _, cells = anchors.anchor_grid(SIZE, SIZE)
  counts = tuple(int(np.sum(cells[:, 2] == s)) for s in anchors.STRIDES)
  gt = batch['boxes'] * SIZE
  assigned = np.stack([ref.atss_reference(boxes, counts, gt[i][batch['box_valid'][i]])[0] for i in range(len(gt))])
  ts = [torch.tensor(o, requires_grad=True) for o in outputs]
  out = ref.scrfd_loss_reference(ts[0][..., 0], ts[1], ts[2], torch.from_numpy(boxes),
                                 torch.from_numpy(cells[:, 2].astype(np.float32)), torch.from_numpy(assigned),
                                 torch.from_numpy(gt), torch.from_numpy(batch['landmarks'] * SIZE),
                                 torch.from_numpy(batch['landmark_valid'].astype(np.float32)))
  out['loss'].backward()
  grads = [np.zeros_like(o) if t.grad is None else t.grad.numpy() for o, t in zip(outputs, ts)]  # unused: none
  return {k: float(v.detach()) for k, v in out.items()}, grads, int((assigned >= 0).sum())


def _jax(outputs, batch):
  def loss(outs):
    return family_loss(SPEC, outs, jax.tree_util.tree_map(jnp.asarray, batch))
  (value, metrics), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(tuple(map(jnp.asarray, outputs)))
  return {k: float(v) for k, v in metrics.items()}, [np.asarray(g) for g in grads]


@pytest.mark.parametrize('faces, seed', [((5, 0, 1), 0), ((8, 3), 1), ((0, 0), 2)])
def test_loss_and_gradients_equal_the_reference(faces, seed):
  rng = np.random.default_rng(seed)
  batch = _batch(rng, faces)
  a = len(anchors.anchor_boxes(SIZE, SIZE))
  outputs = _outputs(rng, len(faces), a)
  want, want_grads, num_pos = _reference(outputs, batch)
  got, grads = _jax(outputs, batch)
  assert got['num_pos'] == num_pos and (num_pos > 0) == (sum(faces) > 0)
  for k in ('loss', 'loss_cls', 'loss_bbox', 'loss_kps'):
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
  if sum(faces):
    assert got['loss_bbox'] > 0 and got['loss_kps'] > 0
  else:
    assert got['loss_bbox'] == 0 and got['loss_kps'] == 0
  for g, w, name in zip(grads, want_grads, ('logits', 'distances', 'kps')):
    assert np.isfinite(g).all(), name
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-7, err_msg=name)


def test_finite_with_inverted_predictions_and_huge_faces():
  """Negative distances (inverted boxes), a face larger than the image and a zero-size face: finite
  loss and gradients."""
  rng = np.random.default_rng(5)
  batch = _batch(rng, (2,))
  batch['boxes'][0, 0] = np.asarray([-0.5, -0.4, 1.6, 1.5], np.float32)
  batch['boxes'][0, 1] = np.asarray([0.3, 0.3, 0.3, 0.5], np.float32)
  batch['box_valid'][0, :2] = True
  a = len(anchors.anchor_boxes(SIZE, SIZE))
  logits, distances, kps = _outputs(rng, 1, a)
  distances = -distances
  got, grads = _jax((logits, distances, kps), batch)
  assert all(np.isfinite(v) for v in got.values()) and all(np.isfinite(g).all() for g in grads)
