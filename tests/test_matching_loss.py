"""Prior matching (jaxface.training.matching) and the MultiBox loss (jaxface.training.multibox_loss).

Both are checked against a plain per-image loop re-statement of the reference (REFERENCE.md §1.5)
written below in torch: `jaccard`, `match` with its Python forced-match loop, `encode` /
`encode_landm`, and the MultiBox forward with the sort-based hard-negative mining, all in float32
as the reference runs. The loop applies the same documented decisions as jaxface (see the
`matching` docstring): only usable rows (valid, not ignored, width and height > 0) are matched;
the step-5 loop runs over all of them (the reference's quirk) unless `steal=False`; priors that
overlap an ignore box by >= 0.35 and are not positive are neither positive nor negative.

Compared on seeded random batches and on adversarial ones: no faces, one face, faces larger than
any prior, tiny faces, duplicate boxes, zero-size boxes, a full `max_faces`, stealing by a low-IoU
face. Assignments must be identical (matched row where positive, positive masks); losses agree
within 1e-5. Random logits have no ties, so the mining selects the same priors.
"""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.retinaface import anchors
from jaxface.retinaface import matching
from jaxface.retinaface.loss import loss_from_targets, multibox_loss, top_ranked

torch = pytest.importorskip('torch')

VARIANCES = (0.1, 0.2)
SMALL = 160   # 1,050 priors: most tests
FULL = 640    # 16,800 priors


# ---------------------------------------------------------------------------------------------
# The reference, per image, as plain loops (torch, float32).

def ref_jaccard(a, b):
  """IoU of xyxy `a [G, 4]` with `b [P, 4]` -> `[G, P]`, no +1."""
  lo = torch.max(a[:, None, :2], b[None, :, :2])
  hi = torch.min(a[:, None, 2:], b[None, :, 2:])
  wh = (hi - lo).clamp(min=0)
  inter = wh[..., 0] * wh[..., 1]
  area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
  area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
  return inter / (area_a + area_b - inter)


def ref_point_form(p):
  return torch.cat([p[:, :2] - p[:, 2:] / 2, p[:, :2] + p[:, 2:] / 2], 1)


def ref_encode(matched, priors):
  c = ((matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]) / (VARIANCES[0] * priors[:, 2:])
  wh = torch.log((matched[:, 2:] - matched[:, :2]) / priors[:, 2:]) / VARIANCES[1]
  return torch.cat([c, wh], 1)


def ref_encode_landm(points, priors):
  """`points [P, 5, 2]` -> `[P, 10]`."""
  d = (points - priors[:, None, :2]) / (VARIANCES[0] * priors[:, None, 2:])
  return d.reshape(points.shape[0], 10)


def ref_match(truths, labels, landms, priors, steal=True, pos_thresh=0.35, force_thresh=0.2):
  """The reference's `match()` for one image's faces (only real ones: no padding rows).

  Returns (conf [P] label or 0, matched row [P], loc [P, 4], landm [P, 10]); for an image without
  a face above `force_thresh`, all background and matched row -1.
  """
  num_priors = priors.shape[0]
  if truths.shape[0] == 0:
    return torch.zeros(num_priors), torch.full((num_priors,), -1), None, None
  overlaps = ref_jaccard(truths, ref_point_form(priors))
  best_prior_overlap, best_prior_idx = overlaps.max(1)
  valid = best_prior_overlap >= force_thresh
  if not bool(valid.any()):
    return torch.zeros(num_priors), torch.full((num_priors,), -1), None, None
  best_truth_overlap, best_truth_idx = overlaps.max(0)
  best_truth_overlap[best_prior_idx[valid]] = 2.0
  for j in range(truths.shape[0]):  # the reference's quirk: every face, forced or not
    if steal or bool(valid[j]):
      best_truth_idx[best_prior_idx[j]] = j
  conf = labels[best_truth_idx].clone()
  conf[best_truth_overlap < pos_thresh] = 0
  loc = ref_encode(truths[best_truth_idx], priors)
  landm = ref_encode_landm(landms[best_truth_idx], priors)
  return conf, best_truth_idx, loc, landm


def ref_targets(batch, priors_np, steal=True):
  """Loops over images: the reference's targets plus matched rows in padded indices, and ignored priors."""
  priors = torch.from_numpy(np.array(priors_np, np.float32))
  num_priors = priors.shape[0]
  out = dict(conf=[], matched=[], loc=[], landm=[], ignored=[])
  for b in range(batch['boxes'].shape[0]):
    boxes = np.asarray(batch['boxes'][b], np.float32)
    shaped = batch['box_valid'][b] & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    rows = np.flatnonzero(shaped & ~batch['ignore'][b])
    labels = torch.from_numpy(np.where(batch['landmark_valid'][b][rows], 1.0, -1.0).astype(np.float32))
    conf, matched, loc, landm = ref_match(torch.from_numpy(boxes[rows]), labels,
                                          torch.from_numpy(np.asarray(batch['landmarks'][b][rows], np.float32)),
                                          priors, steal=steal)
    if loc is None:
      loc, landm = torch.zeros(num_priors, 4), torch.zeros(num_priors, 10)
    else:
      matched = torch.from_numpy(rows)[matched]
    ignore_rows = np.flatnonzero(shaped & batch['ignore'][b])
    ignored = torch.zeros(num_priors, dtype=torch.bool)
    if len(ignore_rows):
      ignore_iou = ref_jaccard(torch.from_numpy(boxes[ignore_rows]), ref_point_form(priors)).max(0).values
      ignored = (conf == 0) & (ignore_iou >= 0.35)
    for key, value in zip(out, (conf, matched, loc, landm, ignored)):
      out[key].append(value)
  return {key: torch.stack(value) for key, value in out.items()}


def ref_multibox(loc_data, conf_data, landm_data, t, neg_pos=7, loc_weight=2.0):
  """The reference's MultiBoxLoss.forward on stacked targets, plus ignored priors never negative."""
  conf_t = t['conf'].clone()
  num = conf_data.shape[0]
  pos1 = conf_t > 0
  n1 = max(int(pos1.sum()), 1)
  loss_landm = torch.nn.functional.smooth_l1_loss(landm_data[pos1], t['landm'][pos1], reduction='sum')
  pos = conf_t != 0
  conf_t[pos] = 1
  conf_t = conf_t.long()
  loss_l = torch.nn.functional.smooth_l1_loss(loc_data[pos], t['loc'][pos], reduction='sum')
  flat = conf_data.reshape(-1, 2)
  x_max = flat.max()
  lse = torch.log(torch.sum(torch.exp(flat - x_max), 1, keepdim=True)) + x_max
  loss_c = (lse - flat.gather(1, conf_t.reshape(-1, 1))).reshape(num, -1)
  loss_c[pos] = 0
  loss_c[t['ignored']] = -1.0
  _, loss_idx = loss_c.sort(1, descending=True)
  _, idx_rank = loss_idx.sort(1)
  num_pos = pos.long().sum(1, keepdim=True)
  num_neg = torch.clamp(neg_pos * num_pos, max=pos.shape[1] - 1)
  neg = (idx_rank < num_neg) & ~t['ignored']
  chosen = pos | neg
  loss_c = torch.nn.functional.cross_entropy(conf_data[chosen], conf_t[chosen], reduction='sum')
  n = max(int(num_pos.sum()), 1)
  loss_l, loss_c, loss_landm = loss_l / n, loss_c / n, loss_landm / n1
  return dict(loss=float(loc_weight * loss_l + loss_c + loss_landm), loss_loc=float(loss_l),
              loss_cls=float(loss_c), loss_landm=float(loss_landm), num_pos=int(num_pos.sum()),
              num_neg=int((neg & ~pos).sum()), num_pos_landm=int(pos1.sum()))


# ---------------------------------------------------------------------------------------------
# Inputs.

def _priors(size):
  return anchors.prior_boxes(size, size)


def _empty_batch(b, g):
  return dict(boxes=np.zeros((b, g, 4), np.float32), landmarks=np.zeros((b, g, 5, 2), np.float32),
              box_valid=np.zeros((b, g), bool), landmark_valid=np.zeros((b, g), bool),
              ignore=np.zeros((b, g), bool))


def _put(batch, b, g, box, *, landmarks=True, ignore=False, rng=None):
  """Writes one face (normalised xyxy) into slot (b, g), landmarks inside the box."""
  rng = rng or np.random.default_rng(b * 1000 + g)
  box = np.asarray(box, np.float32)
  batch['boxes'][b, g] = box
  batch['landmarks'][b, g] = box[:2] + rng.uniform(0, 1, (5, 2)) * (box[2:] - box[:2])
  batch['box_valid'][b, g] = True
  batch['landmark_valid'][b, g] = landmarks
  batch['ignore'][b, g] = ignore


def random_batch(seed, b=4, g=12, *, ignore_rate=0.0):
  """Faces from 2 px to 1.2x the image (log-uniform), random slot counts; some slots not a prefix."""
  rng = np.random.default_rng(seed)
  batch = _empty_batch(b, g)
  for i in range(b):
    n = int(rng.integers(0, g + 1))
    slots = np.sort(rng.choice(g, n, replace=False)) if i % 2 else np.arange(n)
    for s in slots:
      size = np.exp(rng.uniform(np.log(2 / SMALL), np.log(1.2), 2))
      centre = rng.uniform(0, 1, 2)
      _put(batch, i, s, np.concatenate([centre - size / 2, centre + size / 2]),
           landmarks=rng.random() < 0.7, ignore=rng.random() < ignore_rate, rng=rng)
  return batch


def random_preds(seed, b, p):
  rng = np.random.default_rng(seed)
  return (rng.normal(0, 1, (b, p, 4)).astype(np.float32), rng.normal(0, 2, (b, p, 2)).astype(np.float32),
          rng.normal(0, 1, (b, p, 10)).astype(np.float32))


def _prior_box(priors, k, scale=1.0):
  """Prior k as a normalised xyxy face, its size scaled about its centre."""
  cx, cy, w, h = priors[k]
  return [cx - scale * w / 2, cy - scale * h / 2, cx + scale * w / 2, cy + scale * h / 2]


def adversarial_batch(size=SMALL, g=8):
  """One image per case (see the names in ADVERSARIAL)."""
  priors = _priors(size)
  batch = _empty_batch(len(ADVERSARIAL), g)
  px = 1.0 / size
  for i, case in enumerate(ADVERSARIAL):
    if case == 'no_faces':
      pass
    elif case == 'one_face':
      _put(batch, i, 0, [0.3, 0.3, 0.5, 0.55])
    elif case == 'larger_than_priors':
      _put(batch, i, 0, [-4.0, -4.0, 5.0, 5.0])            # 9x the image, 2.8x the largest prior: never forced
      _put(batch, i, 1, [0.0, 0.0, 1.0, 1.0], landmarks=False)
    elif case == 'tiny_faces':
      for k in range(g):
        _put(batch, i, k, [0.1 * k + 0.05, 0.5, 0.1 * k + 0.05 + 2 * px, 0.5 + 3 * px])
    elif case == 'duplicates':
      for k in range(4):                                   # same box 4 times: ties everywhere
        _put(batch, i, k, [0.2, 0.2, 0.45, 0.5], landmarks=k % 2 == 0)
      _put(batch, i, 4, _prior_box(priors, 100))
      _put(batch, i, 5, _prior_box(priors, 100), landmarks=False)
    elif case == 'zero_size':
      _put(batch, i, 0, _prior_box(priors, 0))              # makes prior 0 positive
      _put(batch, i, 1, [0.5, 0.5, 0.5, 0.6])               # zero width: best prior would be 0
      _put(batch, i, 2, [0.0, 0.0, 0.0, 0.0])
      _put(batch, i, 3, [0.6, 0.6, 0.55, 0.7])              # negative width
      _put(batch, i, 4, [0.2, 0.2, 0.3, 0.3])
    elif case == 'full':
      rng = np.random.default_rng(7)
      for k in range(g):
        c, s = rng.uniform(0.1, 0.9, 2), rng.uniform(0.03, 0.3)
        _put(batch, i, k, [c[0] - s, c[1] - s, c[0] + s, c[1] + s], landmarks=k % 3 != 0, rng=rng)
    elif case == 'steal':
      _put(batch, i, 0, _prior_box(priors, 40))             # IoU 1: forced onto prior 40
      _put(batch, i, 1, _prior_box(priors, 40, scale=0.25))  # IoU 1/16 < 0.2, best prior 40: steals it
  return batch


ADVERSARIAL = ('no_faces', 'one_face', 'larger_than_priors', 'tiny_faces', 'duplicates', 'zero_size', 'full', 'steal')


@functools.lru_cache(maxsize=None)
def _jit_match(size, steal=True):
  return jax.jit(lambda batch: matching.match_batch(batch, _priors(size), low_iou_faces_steal=steal))


@functools.lru_cache(maxsize=None)
def _jit_loss(size):
  return jax.jit(functools.partial(multibox_loss, priors=_priors(size)))


def _check_assignments(batch, size, steal=True, traced_priors=False):
  if traced_priors:
    m, t = jax.device_get(jax.jit(matching.match_batch)(batch, jnp.asarray(_priors(size))))
  else:
    m, t = jax.device_get(_jit_match(size, steal)(batch))
  ref = ref_targets(batch, _priors(size), steal=steal)
  ref_pos = (ref['conf'] != 0).numpy()
  np.testing.assert_array_equal(m.positive, ref_pos)
  np.testing.assert_array_equal(t.landm_positive, (ref['conf'] > 0).numpy())
  np.testing.assert_array_equal(np.where(ref_pos, m.matched_idx, -1), np.where(ref_pos, ref['matched'].numpy(), -1))
  np.testing.assert_array_equal(m.ignored, ref['ignored'].numpy())
  np.testing.assert_allclose(t.loc[ref_pos], ref['loc'].numpy()[ref_pos], rtol=1e-5, atol=1e-5)
  lp = (ref['conf'] > 0).numpy()
  np.testing.assert_allclose(t.landm[lp], ref['landm'].numpy()[lp], rtol=1e-5, atol=1e-5)
  assert np.all(t.loc[~ref_pos] == 0) and np.all(t.landm[~lp] == 0)
  return m, t, ref


def _check_loss(batch, size, seed=0):
  preds = random_preds(seed, batch['boxes'].shape[0], _priors(size).shape[0])
  loss, metrics = jax.device_get(_jit_loss(size)(*preds, batch))
  ref = ref_multibox(*map(torch.from_numpy, preds), ref_targets(batch, _priors(size)))
  for key in ('num_pos', 'num_neg', 'num_pos_landm'):
    assert int(metrics[key]) == ref[key], key
  for key in ('loss', 'loss_loc', 'loss_cls', 'loss_landm'):
    np.testing.assert_allclose(metrics[key], ref[key], rtol=1e-5, atol=1e-5, err_msg=key)
  assert float(loss) == float(metrics['loss'])
  return metrics


# ---------------------------------------------------------------------------------------------
# Matching.

@pytest.mark.parametrize('seed', range(6))
def test_matching_random_equals_reference_loop(seed):
  _check_assignments(random_batch(seed, ignore_rate=0.15 if seed % 2 else 0.0), SMALL)


@pytest.mark.parametrize('traced_priors', [False, True])
def test_matching_full_size_equals_reference_loop(traced_priors):
  """Also with the priors a jit argument instead of a constant: the same bits (see "Numerics")."""
  _check_assignments(random_batch(11, b=2, g=27), FULL, traced_priors=traced_priors)


def test_first_argmax_is_argmax_with_ties():
  """The chunked first-argmax against `jnp.argmax`, ties planted across and inside pieces."""
  rng = np.random.default_rng(0)
  f = jax.jit(jax.vmap(matching._first_argmax))
  for num in (1050, 16800, 13):
    rows = rng.integers(0, 5, (64, num)).astype(np.float32) / 4  # few values: many ties
    rows[:8] = -1.0                                               # all equal
    rows[8:16, num - 1] = 9.0                                     # the max is the last element
    top, arg = jax.device_get(f(rows))
    np.testing.assert_array_equal(arg, np.argmax(rows, axis=1))
    np.testing.assert_array_equal(top, np.max(rows, axis=1))


@pytest.mark.parametrize('steal', [True, False])
def test_matching_adversarial_equals_reference_loop(steal):
  _check_assignments(adversarial_batch(FULL), FULL, steal=steal)
  batch = adversarial_batch()
  m, t, _ = _check_assignments(batch, SMALL, steal=steal)
  case = {name: i for i, name in enumerate(ADVERSARIAL)}
  assert not m.positive[case['no_faces']].any()
  assert m.positive[case['one_face']].any()
  # The larger-than-image face is never forced; the whole-image face is.
  assert list(m.forced[case['larger_than_priors'], :2]) == [False, True]
  # Duplicates: the last of the four equal rows holds the forced prior, others' IoU ties go to the first.
  dup = case['duplicates']
  forced_priors = set(np.flatnonzero(m.overlap[dup] == 2.0)) - {100}
  assert len(forced_priors) == 1 and m.matched_idx[dup, 100] == 5 and m.positive[dup, 100]
  assert m.matched_idx[dup, forced_priors.pop()] == 3
  assert set(m.matched_idx[dup][m.positive[dup]]) <= {0, 3, 4, 5}
  # Zero-size rows are never matched (0 keeps prior 0), and targets are finite.
  zs = case['zero_size']
  assert m.positive[zs, 0] and m.matched_idx[zs, 0] == 0
  assert not np.isin(m.matched_idx[zs][m.positive[zs]], [1, 2, 3]).any()
  assert np.isfinite(t.loc).all() and np.isfinite(t.landm).all()
  # The quirk: a face below 0.2 takes the prior another face forced, unless turned off.
  st = case['steal']
  assert m.positive[st, 40] and not m.forced[st, 1]
  assert m.matched_idx[st, 40] == (1 if steal else 0)


def test_reference_without_the_fix_gives_inf_for_zero_size():
  """Why degenerate rows are dropped: the reference's loop lets one take a positive prior -> log(0)."""
  batch = adversarial_batch()
  zs = ADVERSARIAL.index('zero_size')
  rows = [0, 1]
  truths = torch.from_numpy(batch['boxes'][zs, rows])
  _, matched, loc, _ = ref_match(truths, torch.ones(2), torch.from_numpy(batch['landmarks'][zs, rows]),
                                 torch.from_numpy(np.array(_priors(SMALL))))
  assert matched[0] == 1 and not torch.isfinite(loc[0]).all()


def test_padded_rows_never_match():
  """Padding with face-like boxes, or NaN, changes nothing: same as the faces alone."""
  batch = random_batch(3, b=4, g=10)
  clean = {k: v.copy() for k, v in batch.items()}
  for i in range(4):
    pad = ~batch['box_valid'][i]
    batch['landmark_valid'][i, pad] = True
    batch['landmarks'][i, pad] = np.nan if i % 2 else 0.5
    batch['boxes'][i, pad] = np.nan if i % 2 else np.asarray(_prior_box(_priors(SMALL), 10 * i + 3), np.float32)
  # Padding with a box exactly on a prior would be forced positive if it were matched.
  assert (~batch['box_valid']).any()
  m, t = jax.device_get(_jit_match(SMALL)(batch))
  m0, t0 = jax.device_get(_jit_match(SMALL)(clean))
  for a, b in zip((*m, *t), (*m0, *t0)):
    np.testing.assert_array_equal(a, b)
  for i in range(4):
    assert batch['box_valid'][i][m.matched_idx[i][m.positive[i]]].all()
  assert np.isfinite(t.loc).all() and np.isfinite(t.landm).all()


def test_ignore_boxes_are_neither_positive_nor_negative():
  priors = _priors(SMALL)
  batch = _empty_batch(1, 3)
  _put(batch, 0, 0, _prior_box(priors, 0))
  _put(batch, 0, 1, _prior_box(priors, 500), ignore=True)
  m, t = jax.device_get(_jit_match(SMALL)(batch))
  assert m.positive[0, 0] and not m.positive[0, 500] and m.ignored[0, 500]
  assert not m.usable[0, 1]
  # The ignored prior has the largest class loss of all, yet is not mined.
  preds = [np.zeros((1, len(priors), k), np.float32) for k in (4, 2, 10)]
  preds[1][0, 500] = [-10.0, 10.0]
  with_ignore = _jit_loss(SMALL)(*preds, batch)[1]
  # (A new dict, not an edit: on CPU, jax may still be reading the numpy buffers of `batch`.)
  without = _jit_loss(SMALL)(*preds, dict(batch, box_valid=np.asarray([[True, False, False]])))[1]
  assert int(with_ignore['num_ignored_priors']) == int(m.ignored.sum()) > 0
  assert int(without['num_ignored_priors']) == 0
  assert float(without['loss_cls']) > float(with_ignore['loss_cls']) + 1.0
  _check_loss(batch, SMALL)


# ---------------------------------------------------------------------------------------------
# Loss.

@pytest.mark.parametrize('seed', range(4))
def test_loss_random_equals_reference_loop(seed):
  _check_loss(random_batch(100 + seed, ignore_rate=0.15 if seed % 2 else 0.0), SMALL, seed)


def test_loss_adversarial_equals_reference_loop():
  _check_loss(adversarial_batch(), SMALL, 5)
  _check_loss(adversarial_batch(FULL), FULL, 6)


@pytest.mark.parametrize('case', ADVERSARIAL)
def test_loss_each_adversarial_image_alone(case):
  """One image per batch, so that each case sets the normalisers on its own."""
  i = ADVERSARIAL.index(case)
  metrics = _check_loss({k: v[i:i + 1].copy() for k, v in adversarial_batch().items()}, SMALL, seed=i)
  assert (int(metrics['num_pos']) == 0) == (case in ('no_faces', 'tiny_faces'))  # tiny: best IoU < 0.2


def test_loss_full_size_equals_reference_loop():
  _check_loss(random_batch(12, b=2, g=27), FULL, 1)


@functools.lru_cache(maxsize=None)
def _jit_value_and_grad(size):
  loss = lambda l, c, m, batch: multibox_loss(l, c, m, batch, _priors(size))[0]
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


@pytest.mark.parametrize('case', ['adversarial', 'empty_batch', 'only_degenerate'])
def test_loss_and_gradient_finite(case):
  batch = adversarial_batch()
  if case != 'adversarial':  # same shapes: one compiled program for the three cases
    batch = _empty_batch(*batch['box_valid'].shape)
    if case == 'only_degenerate':
      _put(batch, 0, 0, [0.2, 0.2, 0.2, 0.4])
      _put(batch, 1, 0, [0.0, 0.0, 0.0, 0.0])
      _put(batch, 1, 1, [0.5, 0.5, 0.4, 0.6])
  preds = random_preds(3, batch['boxes'].shape[0], _priors(SMALL).shape[0])
  loss, grads = _jit_value_and_grad(SMALL)(*preds, batch)
  assert np.isfinite(float(loss))
  for g in grads:
    assert np.isfinite(np.asarray(g)).all()
  metrics = _jit_loss(SMALL)(*preds, batch)[1]
  assert int(metrics['num_degenerate']) == {'adversarial': 3, 'empty_batch': 0, 'only_degenerate': 3}[case]
  if case != 'adversarial':  # no positives anywhere: no loss at all
    assert float(loss) == 0.0
    assert int(metrics['num_pos']) == 0 and int(metrics['num_neg']) == 0


def test_loss_gradient_matches_reference():
  """The gradient, not only the value: autograd through the torch loop vs jax.grad."""
  batch = random_batch(21, b=2, g=6)
  preds = random_preds(4, 2, _priors(SMALL).shape[0])
  grads = jax.jit(jax.grad(lambda *p: multibox_loss(*p, batch, _priors(SMALL))[0], argnums=(0, 1, 2)))(*preds)
  tp = [torch.from_numpy(p).requires_grad_() for p in preds]
  t = ref_targets(batch, _priors(SMALL))
  conf_t = t['conf']
  # Re-run the reference with autograd on (ref_multibox returns floats).
  pos1, pos = conf_t > 0, conf_t != 0
  n, n1 = max(int(pos.sum()), 1), max(int(pos1.sum()), 1)
  loss_l = torch.nn.functional.smooth_l1_loss(tp[0][pos], t['loc'][pos], reduction='sum') / n
  loss_landm = torch.nn.functional.smooth_l1_loss(tp[2][pos1], t['landm'][pos1], reduction='sum') / n1
  target = pos.long()
  ce = torch.nn.functional.cross_entropy(tp[1].reshape(-1, 2), target.reshape(-1), reduction='none').reshape(2, -1)
  mining = torch.where(pos, 0.0, ce.detach())
  rank = mining.sort(1, descending=True)[1].sort(1)[1]
  neg = rank < torch.clamp(7 * pos.sum(1, keepdim=True), max=pos.shape[1] - 1)
  loss_c = ce[pos | neg].sum() / n
  (2.0 * loss_l + loss_c + loss_landm).backward()
  for g, p in zip(grads, tp):
    np.testing.assert_allclose(np.asarray(g), p.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_mining_cut_is_a_stable_descending_sort():
  """`top_ranked` (the sort-free rank cut) takes the same priors as the first k of a stable
  descending argsort: planted ties, +-0, subnormals (equal to 0 in XLA's sort), inf, every k."""
  rng = np.random.default_rng(5)
  values = np.array([np.inf, 1e30, 2.5, 1.2e-38, 1e-40, 0.0, -0.0, -1e-40, -1.0], np.float32)
  cut = jax.jit(jax.vmap(top_ranked, in_axes=(None, 0)))  # every k at once
  sort = jax.jit(functools.partial(jnp.argsort, descending=True, stable=True))
  for trial in range(60):
    size = (1, 2, 7, 16, 39)[trial % 5]  # a few sizes: a few compiles
    x = rng.choice(values, size) if trial % 2 else rng.integers(-2, 3, size).astype(np.float32) / 2
    order = np.asarray(sort(jnp.asarray(x)))
    want = np.zeros((size + 1, size), bool)
    for k in range(size + 1):
      want[k, order[:k]] = True
    np.testing.assert_array_equal(np.asarray(cut(jnp.asarray(x), jnp.arange(size + 1))), want, err_msg=f'{x}')


def test_loss_compiles_once_for_many_batches():
  priors = _priors(SMALL)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def loss_fn(l, c, m, batch):
    return multibox_loss(l, c, m, batch, priors)

  for seed in range(4):
    batch = random_batch(200 + seed, ignore_rate=0.1)
    loss, _ = loss_fn(*random_preds(seed, 4, priors.shape[0]), batch)
    assert np.isfinite(float(loss))


def test_targets_are_reusable_by_loss_from_targets():
  """`loss_from_targets` on precomputed targets equals `multibox_loss` (one-step-early matching)."""
  batch = random_batch(31)
  preds = random_preds(2, 4, _priors(SMALL).shape[0])
  _, targets = _jit_match(SMALL)(batch)
  a = jax.jit(loss_from_targets)(*preds, targets)[0]
  b = _jit_loss(SMALL)(*preds, batch)[0]
  np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
