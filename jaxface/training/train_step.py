"""The train step of any family: forward, the family's loss (matching included), backward and the
SGD update in one program.

`train_step(state, batch)` is pure: a jitted call runs it with no host round trip (the metrics stay
on device until the caller reads them). Data parallel, two ways that give the same numbers as one
device on the global batch:

- `make_sharded_train_step`: `jax.jit` over a 1-D device mesh, the batch split along it
  (`NamedSharding`), the state replicated. The program is the global one, so BatchNorm's
  statistics and the loss's normalisers are over the global batch by construction.
- `make_pmap_train_step`: `jax.pmap`; BatchNorm averages its statistics over the device axis
  (`bn_axis_name`), the loss counts positives over it, and gradients are summed over it.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxface import cpu_kernels

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]  # (outputs, batch, *, axis_name) -> (loss, metrics)


@flax.struct.dataclass
class TrainState:
  """Everything a step changes: step count, parameters, BN statistics, optimizer state."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def sgd(learning_rate: optax.Schedule | float, *, momentum: float = 0.9, weight_decay: float = 5e-4,
        clip_norm: float = 0.0) -> optax.GradientTransformation:
  """The reference's `torch.optim.SGD(lr, momentum=0.9, weight_decay=5e-4)`: decay on *all*
  parameters (BN and biases too) added to the gradient before momentum, as torch does.
  `clip_norm` > 0 first scales the gradient down to that global norm (`clip_grad_norm_`), which a
  recipe for a network without normalisation layers may want (the config's `grad_clip_norm`)."""
  steps = [optax.clip_by_global_norm(clip_norm)] if clip_norm > 0 else []
  return optax.chain(*steps, optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum))


def step_decay(base_lr: float, steps_per_epoch: int, decay_epochs: tuple[int, ...], *, gamma: float = 0.1,
               warmup_epochs: float = 0.0, warmup_steps: int = 0, warmup_ratio: float = 0.0) -> optax.Schedule:
  """`base_lr * gamma ** (number of decay epochs passed)`, optionally after a linear warmup from
  `warmup_ratio * base_lr` over `warmup_steps` (or `warmup_epochs`, when no steps are given): mmcv's
  `warmup='linear'` (e.g. 1500 iterations from 0.001; each config says)."""
  boundaries = {int(e * steps_per_epoch): gamma for e in decay_epochs}
  decay = optax.piecewise_constant_schedule(base_lr, boundaries)
  warm = warmup_steps if warmup_steps > 0 else int(warmup_epochs * steps_per_epoch)
  if warm <= 0:
    return decay
  ramp = optax.linear_schedule(warmup_ratio * base_lr, base_lr, warm)
  return optax.join_schedules([ramp, lambda s: decay(s + warm)], [warm])


def init_variables(model: nn.Module, rng: jax.Array) -> dict[str, Any]:
  """Random `params` and initial `batch_stats`, as one compiled program.

  Run eagerly, flax's init compiles every op of a forward pass on its own (31 s for mnet on a
  2-core CPU, bench/bench_startup.py; 7 s this way); jitted, the forward is dead code and the
  program is the initialisers alone. The variables do not depend on the input size (the network
  is all convolutions), so the program traces one fixed size: one compile per architecture,
  whatever the training size.
  """
  x = jnp.zeros((1, 64, 64, 3), jnp.float32)
  if isinstance(rng, jax.core.Tracer):  # inside the caller's jit or eval_shape: that program holds it
    return model.init(rng, x, train=False)
  return _jitted_init(model)(rng, x)


@functools.lru_cache(maxsize=16)
def _jitted_init(model: nn.Module):
  # On CPU without LLVM's optimisations: each kernel's threefry draw is a large unrolled function
  # that takes ~1 s to optimise (24 s for mnet), and runs once (same numbers to 1 ulp).
  options = {'xla_backend_optimization_level': 0} if jax.default_backend() == 'cpu' else None
  return jax.jit(functools.partial(model.init, train=False), compiler_options=options)


def init_state(tx: optax.GradientTransformation, variables: Mapping[str, Any]) -> TrainState:
  """Step 0 around `variables` (from `init_variables`, or with ImageNet backbone weights merged in)."""
  # One program: eagerly, the optimizer's zeros would compile once per parameter shape.
  opt_state = jax.jit(tx.init)(variables['params'])
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                    batch_stats=variables.get('batch_stats', {}), opt_state=opt_state)  # {}: a model without BN


def loss_fn_for(family, spec, **hyper) -> LossFn:
  """The family's training loss for `spec` with its hyper-parameters (`loc_weight`, ...) bound."""
  if family.training is None:
    raise ValueError(f'the {family.name} family has no training parts')
  return functools.partial(family.training.loss, spec, **hyper)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, model: nn.Module, loss_fn: LossFn,
               tx: optax.GradientTransformation, axis_name: str | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a batch from `jaxface.data.pipeline` (`image [B,S,S,3]` normalised, GT padded).

  BN runs in train mode (batch statistics, running averages updated), as in the references.
  Returns the new state and scalar metrics (the loss terms, positives, grad norm).
  """

  def objective(params):
    outputs, updates = model.apply({'params': params, 'batch_stats': state.batch_stats},
                                   batch['image'], train=True, mutable=['batch_stats'])
    loss, metrics = loss_fn(outputs, batch, axis_name=axis_name)
    return loss, (metrics, updates.get('batch_stats', {}))

  (loss, (metrics, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  if axis_name is not None:  # each device's loss is its share of the global loss: gradients add up
    grads = jax.lax.psum(grads, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
  return TrainState(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state), metrics


def guarded_step(state: TrainState, batch, *, axis_name: str | None = None, **kwargs):
  """`train_step` that never applies a non-finite update: the old state is kept instead, and
  `metrics['nonfinite']` says so. The host decides whether to stop or go on (config)."""
  new, metrics = train_step(state, batch, axis_name=axis_name, **kwargs)
  ok = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
  if axis_name is not None:
    ok = jax.lax.pmin(ok.astype(jnp.int32), axis_name).astype(bool)
  kept = jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, state)
  # The batch was consumed either way: the step (the data stream's position) advances.
  return kept.replace(step=new.step), dict(metrics, nonfinite=~ok)


def make_train_step(model: nn.Module, loss_fn: LossFn, tx: optax.GradientTransformation):
  """`guarded_step` jitted for one device, the state donated (updated in place). On the CPU it is
  compiled with `cpu_kernels.train_compiler_options()`: with all of XLA's YNNPACK fusions, the
  library conv's kernel gradients ran up to 10x slower on SCRFD's ResNet shapes (BENCHMARKS.md)."""
  return jax.jit(functools.partial(guarded_step, model=model, loss_fn=loss_fn, tx=tx), donate_argnums=0,
                 compiler_options=cpu_kernels.train_compiler_options())


def make_sharded_train_step(model: nn.Module, loss_fn: LossFn, tx: optax.GradientTransformation,
                            mesh: jax.sharding.Mesh):
  """`guarded_step` jitted over `mesh` (1-D, axis 'data'): batch leaves split on their leading axis,
  the state replicated and donated. The global batch must divide by the mesh size. This is what
  `train.py` runs (`parallel='jit'`).

  The mesh axis must be `Auto` (`jaxface.training.parallel.data_mesh`). On an `Explicit` axis,
  `jax.make_mesh`'s default in JAX 0.10, a state placed on the mesh makes every intermediate
  computed from a numpy batch replicated (each device runs the whole batch), and a sharded batch
  fails to trace.
  """
  if any(t != jax.sharding.AxisType.Auto for t in mesh.axis_types):
    raise ValueError(f'make_sharded_train_step needs Auto mesh axes, got {mesh.axis_types}: build the mesh with '
                     'parallel.data_mesh() or jax.make_mesh(..., axis_types=(jax.sharding.AxisType.Auto,))')
  P = jax.sharding.PartitionSpec
  replicated = jax.sharding.NamedSharding(mesh, P())
  data = jax.sharding.NamedSharding(mesh, P('data'))
  return jax.jit(functools.partial(guarded_step, model=model, loss_fn=loss_fn, tx=tx),
                 in_shardings=(replicated, data), out_shardings=(replicated, replicated), donate_argnums=0,
                 compiler_options=cpu_kernels.train_compiler_options())


PMAP_AXIS = 'batch'  # the device axis of `make_pmap_train_step` (BN statistics and loss normalisers)


def make_pmap_train_step(model: nn.Module, loss_fn: LossFn, tx: optax.GradientTransformation):
  """`guarded_step` under `jax.pmap` (axis 'batch'): the state replicated per device (`[D, ...]`,
  placed by `parallel.pmap_replicate(state, PMAP_AXIS)`), the batch reshaped to `[D, B/D, ...]`.
  `model` must have `bn_axis_name='batch'`. This is what `train.py` runs with `parallel='pmap'`.
  `jax.pmap` takes no compiler options: on the CPU it compiles with XLA's defaults."""
  if getattr(model, 'bn_axis_name', None) != PMAP_AXIS:
    raise ValueError("make_pmap_train_step needs a model built with bn_axis_name='batch' (synchronised BN)")
  return jax.pmap(functools.partial(guarded_step, model=model, loss_fn=loss_fn, tx=tx, axis_name=PMAP_AXIS),
                  axis_name=PMAP_AXIS, donate_argnums=0)
