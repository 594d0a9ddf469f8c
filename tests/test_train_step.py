"""The single-device train step: the loss falls on a fixed batch, one compile, reference optimizer."""
from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxface.data import pipeline, synthetic
from jaxface.retinaface import augment as augment_retinaface
from jaxface.retinaface import FAMILY, retinaface
from jaxface.training import train_step as ts

S = 128


@pytest.fixture(scope='module')
def batch():
  source = synthetic.SyntheticFaces('train', 8, seed=0)
  cfg = pipeline.LoaderConfig(global_batch_size=4, image_size=S, max_faces=16, seed=0)
  b = next(pipeline.batches(source, augment_retinaface.retinaface_augment, cfg, num_steps=1))
  assert b['box_valid'].sum() > 0
  return jax.tree_util.tree_map(jnp.asarray, b)


def test_sgd_matches_torch_semantics():
  """torch SGD: g += wd * w; buf = momentum * buf + g; w -= lr * buf (decay on every parameter)."""
  tx = ts.sgd(0.1, momentum=0.9, weight_decay=0.5)
  w = {'w': jnp.asarray([1.0, -2.0])}
  g = {'w': jnp.asarray([0.5, 0.5])}
  state = tx.init(w)
  buf = np.zeros(2)
  wt = np.array([1.0, -2.0])
  for _ in range(3):
    upd, state = tx.update(g, state, w)
    w = optax.apply_updates(w, upd)
    buf = 0.9 * buf + (0.5 + 0.5 * wt)
    wt = wt - 0.1 * buf
    np.testing.assert_allclose(w['w'], wt, rtol=1e-6)


def test_step_decay_schedule():
  sched = ts.step_decay(1e-3, steps_per_epoch=10, decay_epochs=(190, 220))
  assert float(sched(0)) == pytest.approx(1e-3)
  assert float(sched(1899)) == pytest.approx(1e-3)
  assert float(sched(1900)) == pytest.approx(1e-4)
  assert float(sched(2200)) == pytest.approx(1e-5)
  warm = ts.step_decay(1e-3, 10, (190,), warmup_epochs=1)
  assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(5e-4) and float(warm(10)) == pytest.approx(1e-3)


def test_init_variables_fit_any_input_size():
  """The init traces one fixed size; the variables are those of the model at any size (here 96 px,
  and under the caller's own trace)."""
  model = retinaface('retinaface_mnet')
  rng = jax.random.PRNGKey(3)
  want = jax.eval_shape(lambda r: model.init(r, jnp.zeros((2, 96, 96, 3)), train=False), rng)
  spec = lambda tree: jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), tree)
  assert spec(jax.eval_shape(lambda r: ts.init_variables(model, r), rng)) == spec(want)
  assert spec(ts.init_variables(model, rng)) == spec(want)  # compiled here, reused by the next test


def test_loss_falls_on_a_fixed_batch_with_one_compile(batch):
  model = retinaface('retinaface_mnet')
  tx = ts.sgd(1e-2)
  variables = ts.init_variables(model, jax.random.PRNGKey(0))
  state = ts.init_state(tx, variables)
  step = jax.jit(chex.assert_max_traces(n=1)(lambda st, b: ts.train_step(st, b, model=model, loss_fn=ts.loss_fn_for(FAMILY, model.spec), tx=tx)))
  losses = []
  for _ in range(8):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert all(np.isfinite(losses))
  assert losses[-1] < 0.7 * losses[0], losses
  assert int(state.step) == 8 and int(metrics['num_pos']) > 0
  # BN running statistics moved (train-mode BN updates them).
  moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), state.batch_stats, variables['batch_stats'])
  assert max(jax.tree_util.tree_leaves(moved)) > 1e-3


def _ynn_fusions(hlo: str) -> list[set[str]]:
  """The opcodes inside each of the compiled program's YNNPACK fusions."""
  bodies = dict(re.findall(r'^(%[\w.\-]+) \(.*?\) -> .*? \{\n(.*?)\n\}', hlo, re.M | re.S))
  called = re.findall(r'calls=(%[\w.\-]+), [^\n]*"kind":"__ynn_fusion"', hlo)
  return [set(re.findall(r' = \S+ ([a-z][\w-]*)\(', bodies[c])) for c in called]


def test_train_steps_compile_with_jaxfaces_cpu_options(batch):
  """The jit and jit-sharded steps are built with `cpu_kernels.train_compiler_options()`: on the CPU
  YNNPACK runs reductions only (BENCHMARKS.md: as XLA's default puts convolutions there, their
  kernel gradients ran up to 10x slower on SCRFD's shapes)."""
  from jaxface import cpu_kernels
  from jaxface.training import parallel
  if not cpu_kernels.train_compiler_options():
    pytest.skip('not the CPU backend, or an XLA without the YNNPACK fusion option')
  model = retinaface('retinaface_mnet')
  tx = ts.sgd(1e-2)
  state = ts.init_state(tx, ts.init_variables(model, jax.random.PRNGKey(0)))
  loss_fn = ts.loss_fn_for(FAMILY, model.spec)
  plain = jax.jit(lambda st, b: ts.guarded_step(st, b, model=model, loss_fn=loss_fn, tx=tx))
  if all('reduce' in ops for ops in _ynn_fusions(plain.lower(state, batch).compile().as_text())):
    pytest.skip('this XLA puts nothing but reductions into YNNPACK by default: nothing to turn off')
  for step in (ts.make_train_step(model, loss_fn, tx), ts.make_sharded_train_step(model, loss_fn, tx, parallel.data_mesh())):
    fusions = _ynn_fusions(step.lower(state, batch).compile().as_text())
    assert fusions and all('reduce' in ops for ops in fusions), fusions
