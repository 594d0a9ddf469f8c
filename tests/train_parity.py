"""Shared by the data-parallel checks (multidevice_check.py, multiprocess_worker.py): a tiny
run of the RetinaFace train step whose result must not depend on how the batch is split.

Why float64. Splitting the batch changes the float32 program, not the math: each device reduces
its 2 images, then the devices add up. At a flax-initialised state (PRNGKey(0), the first batch
of this loader) the first-step gradients of the single-device and split programs differ by
1.4e-3 of their norm in float32 (the split one is 1.4e-3 from the float64 gradient, the single
one 2.1e-4; the same program on the batch in reverse order moves by 6e-6), with the same mined
negatives in every image; in float64 the three agree to 1e-14. The ~5e-6 parameter differences
after that step then meet a sensitive point: the exact (float64) second-step gradients at the
two float32 parameter sets differ by 7.6%, and the parameters end 3.1e-4 apart. So float32 can
not be held to 1e-5 after a step, whatever the split; the comparison runs in float64 (model,
BN, gradients, optimizer). The loss keeps its float32 casts, so mining ranks float32 losses as
in training. Bugs fail by orders of magnitude: without the gradient psum the pmap parameters
end 5.5e-2 off, with the loss psum'd too (double counting) 0.18, with unsynchronised BN 0.18,
with a per-device normaliser 0.45.
"""
from __future__ import annotations

import functools
import os

import jax

S = 64             # image size: 168 priors, the smallest the three levels' strides allow
GLOBAL_BATCH = 8   # 2 images per device on 4 devices
STEPS = 2
LR = 1e-3          # the reference's base learning rate: a bug moves the parameters by ~1e-3
TOL = 1e-5         # |a - b| <= TOL * max(1, |a|) for every parameter, BN statistic and metric
DTYPE = 'float64'  # of the model, the state and the optimizer (`configure`)


def configure(num_cpu_devices: int, dtype: str = 'float64') -> None:
  """Before JAX touches a device: fake CPU devices and, for float64, x64 with float32 matching
  (see `_float32_matching`). `dtype='float32'` runs the training precision, for diagnosis."""
  global DTYPE
  DTYPE = dtype
  # The train step runs twice: LLVM at -O0 with XLA's older fusion emitters compiles it in 15 s
  # instead of 60 s (XLA:CPU, 2 cores). Read when the backend starts.
  os.environ['XLA_FLAGS'] = ' '.join([os.environ.get('XLA_FLAGS', ''), '--xla_backend_optimization_level=0',
                                      '--xla_cpu_use_fusion_emitters=false']).strip()
  jax.config.update('jax_platforms', 'cpu')
  jax.config.update('jax_num_cpu_devices', num_cpu_devices)
  if dtype == 'float64':
    jax.config.update('jax_enable_x64', True)
    _float32_matching()


def _float32_matching() -> None:
  """Trace prior matching with x64 off, as in training: the same float32 IoUs decide the same
  assignments in every program, so the float64 comparison is about the step, not the matching."""
  from jaxface.retinaface import matching
  match_batch = matching.match_batch

  @functools.wraps(match_batch)
  def float32_match_batch(*args, **kwargs):
    with jax.enable_x64(False):
      return match_batch(*args, **kwargs)
  matching.match_batch = float32_match_batch


def model(dtype: str | None = None, **kwargs):
  from jaxface.retinaface import retinaface
  return retinaface('retinaface_mnet', dtype=jax.numpy.dtype(dtype or DTYPE), **kwargs)


def loss_fn():
  from jaxface.retinaface import FAMILY
  from jaxface.training import train_step as ts
  return ts.loss_fn_for(FAMILY, FAMILY.spec('retinaface_mnet'))


def optimizer():
  from jaxface.training import train_step as ts
  return ts.sgd(LR)


def initial_state(seed: int = 0):
  """A `TrainState` in `DTYPE` as numpy leaves, drawn in numpy from the shapes alone: `model.init`
  would compile a second large program (~50 s on 2 cores) for values nobody checks."""
  import jax.numpy as jnp
  import numpy as np
  from jaxface.training import train_step as ts
  m = model()
  shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, S, S, 3)), train=False))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if 'kernel' in name:  # LeCun normal: unit-variance outputs before BN
      return rng.normal(0.0, 1.0 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape).astype(DTYPE)
    return (np.ones if ('scale' in name or 'var' in name) else np.zeros)(leaf.shape, DTYPE)
  variables = jax.tree_util.tree_map_with_path(draw, shapes)
  state = ts.init_state(optimizer(), variables)
  return jax.tree_util.tree_map(np.asarray, state)


def mining_probe(model, axis_name: str | None = None):
  """`f(variables, batch) -> (negatives [B, P], cut gap [B], metrics)`: the train step's forward
  and loss at `variables` in the model's dtype, and the priors hard-negative mining takes.

  The mining rule restated from `multibox_loss.image_loss_terms` (rank of the per-prior
  cross-entropy, positives at 0, ignored at -1, the first `min(7 * positives, P - 1)` taken);
  the cut gap is the score of the last prior taken minus that of the first one left out (a
  near tie, which float32 rounding may order either way, when small).
  """
  import jax.numpy as jnp
  from jaxface.retinaface import anchors
  from jaxface.retinaface import matching
  from jaxface.retinaface.loss import loss_from_targets
  priors = anchors.prior_boxes(S, S, min_sizes=model.spec.min_sizes, steps=model.spec.steps)

  def one_image(logits, pos, ignored):  # [P, 2], [P], [P]
    log_p = jax.nn.log_softmax(logits)
    ce = -jnp.where(pos, log_p[:, 1], log_p[:, 0])
    score = jnp.where(ignored, -1.0, jnp.where(pos, 0.0, ce))
    order = jnp.argsort(score, descending=True, stable=True)
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
    k = jnp.minimum(7 * jnp.sum(pos), score.shape[0] - 1)
    ranked = score[order]
    cut_among_candidates = (k > 0) & (k < jnp.sum(~pos & ~ignored))  # else all or none are taken
    gap = jnp.where(cut_among_candidates, ranked[jnp.maximum(k - 1, 0)] - ranked[k], jnp.inf)
    return (rank < k) & ~pos & ~ignored, gap

  def probe(variables, batch):
    (loc, logits, landm), _ = model.apply(variables, batch['image'], train=True, mutable=['batch_stats'])
    _, targets = matching.match_batch(batch, priors, variances=model.spec.variances)
    _, metrics = loss_from_targets(loc, logits, landm, targets, axis_name=axis_name)
    neg, gap = jax.vmap(one_image)(logits, targets.positive, targets.ignored)
    return neg, gap, metrics
  return probe


def host_batches(process_index: int = 0, process_count: int = 1) -> list[dict]:
  """This host's slice of the first `STEPS` global batches, through the real loader."""
  from jaxface.data import pipeline, synthetic
  from jaxface.retinaface import augment as augment_retinaface
  source = synthetic.SyntheticFaces('train', 2 * GLOBAL_BATCH, seed=0)
  cfg = pipeline.LoaderConfig(global_batch_size=GLOBAL_BATCH, image_size=S, max_faces=16, seed=0,
                              process_index=process_index, process_count=process_count)
  return list(pipeline.batches(source, augment_retinaface.retinaface_augment, cfg, num_steps=STEPS))


def snapshot(state, metrics: list[dict], *, per_device: bool = False) -> dict:
  """Flat `{name: float64 numpy}` of the parameters, BN statistics and each step's metrics, read
  from the first device's copy (`per_device`: pmap's `[D, ...]` leaves)."""
  import numpy as np

  def first(x):
    x = np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x, np.float64)
    return x[0] if per_device else x
  out = {}
  for group in ('params', 'batch_stats'):
    for path, leaf in jax.tree_util.tree_leaves_with_path(getattr(state, group)):
      out[group + jax.tree_util.keystr(path)] = first(leaf)
  for i, m in enumerate(metrics):
    out.update({f'metrics[{i}].{k}': first(v) for k, v in m.items()})
  return out


def compare(name: str, ref: dict, got: dict, tol: float = TOL) -> bool:
  """Prints the worst difference per group (parameters, BN statistics, metrics); True if all <= tol."""
  import numpy as np
  assert ref.keys() == got.keys(), set(ref) ^ set(got)
  assert all(ref[k].shape == got[k].shape for k in ref), [k for k in ref if ref[k].shape != got[k].shape]
  ok = True
  for group in ('params', 'batch_stats', 'metrics'):
    keys = [k for k in ref if k.startswith(group)]
    errs = {k: float((np.abs(ref[k] - got[k]) / np.maximum(1.0, np.abs(ref[k]))).max()) for k in keys}
    worst = max(errs, key=errs.get)
    print(f'{name}: {group}: worst relative difference {errs[worst]:.3g} at {worst}', flush=True)
    ok &= errs[worst] <= tol
  return ok

