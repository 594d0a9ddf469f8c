"""The network's gradients in training mode equal the torch re-statement's.

The train step differentiates through the layers (`jaxface.layers`), on CPU through their XLA:CPU
restatements with hand-written backward passes (`jaxface.cpu_kernels`), and BatchNorm with batch
statistics; both paths are checked. Here the
whole detector, from the same random weights, takes the gradient of a fixed random projection
of its three outputs on both sides, in float64 (BN over a few pixels per channel amplifies
float32 rounding too much for a tight check). torch's parameter gradients, renamed and
transposed by the converter (a per-tensor linear map), must match jaxface's, as must the BN
running statistics after the training forward.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import reference_torch as ref
from jaxface.convert import convert_state_dict as convert_detector
from jaxface.retinaface import retinaface

SHAPE = (2, 96, 128)  # batch, height, width: small, and not square


def _jax_grads(arch, cpu_kernels, variables, image, probes):
  """(parameter gradients, updated BN statistics) of `sum(outputs * probes)`, float64."""
  model = retinaface(arch, dtype=jnp.float64, cpu_kernels=cpu_kernels)
  f64 = lambda a: jnp.asarray(a, jnp.float64)

  def f(params, batch_stats):
    outs, updates = model.apply({'params': params, 'batch_stats': batch_stats}, f64(image), train=True,
                                mutable=['batch_stats'])
    return sum(jnp.sum(o * f64(p)) for o, p in zip(outs, probes)), updates['batch_stats']

  variables = jax.tree_util.tree_map(f64, variables)
  return jax.jit(jax.grad(f, has_aux=True))(variables['params'], variables['batch_stats'])


def _leaves(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope='module', params=['retinaface_mnet', 'retinaface_r50'])
def reference(request):
  """`(arch, variables, image, probes, torch's gradients and running statistics as variables)`,
  computed once for both paths."""
  arch = request.param
  torch.manual_seed(0)
  net = ref.build_reference(arch)
  ref.randomize_(net, seed=1)
  variables = convert_detector(net.state_dict(), arch)
  rng = np.random.default_rng(0)
  image = rng.standard_normal((SHAPE[0], SHAPE[1], SHAPE[2], 3))

  net.train().double()
  outputs = net(torch.from_numpy(image).permute(0, 3, 1, 2))
  probes = [rng.standard_normal(tuple(o.shape)) for o in outputs]
  sum(torch.sum(o * torch.from_numpy(p)) for o, p in zip(outputs, probes)).backward()
  grads_as_weights = {k: p.grad for k, p in net.named_parameters()}
  expected = convert_detector(dict(net.state_dict(), **grads_as_weights), arch)
  return arch, variables, image, probes, expected


@pytest.mark.parametrize('cpu_kernels', [True, False], ids=['kernels', 'plain'])
def test_parameter_gradients_match_torch(reference, cpu_kernels):
  arch, variables, image, probes, expected = reference
  with jax.enable_x64(True):
    grads, stats = _jax_grads(arch, cpu_kernels, variables, image, probes)
    grads, stats = _leaves(grads), _leaves(stats)
  want_grads, want_stats = _leaves(expected['params']), _leaves(expected['batch_stats'])
  assert grads.keys() == want_grads.keys() and stats.keys() == want_stats.keys()
  errors = sorted(((np.max(np.abs(grads[k] - w)) / np.max(np.abs(w)), k) for k, w in want_grads.items()),
                  reverse=True)
  assert all(np.max(np.abs(w)) > 0 for w in want_grads.values())  # every parameter takes part
  assert errors[0][0] < 1e-6, f'largest relative gradient differences: {errors[:5]}'
  # torch keeps the unbiased variance in the running average; the converter stores float32.
  for k, w in want_stats.items():
    np.testing.assert_allclose(stats[k], w, rtol=1e-6, atol=1e-8, err_msg=k)
