"""The compiled detection programs compute each conv once.

XLA fuses an elementwise producer into each of its readers. When the producer is a conv written as
multiply-adds (a stem over 3 channels) or a reader reads the producer's input itself (a depthwise
conv's centre tap), the conv is computed again in each reader: the full-range BlazeFace computed
its stem four times, SCRFD-500m and RetinaFace-mnet theirs twice (BENCHMARKS.md, "Work XLA did
twice"). A loop fusion that reads the kernels of two convs and also an activation is such a
recomputation; a fusion of kernels only is the stacking of sibling convs' kernels. CPU only: the
CPU kernels are what write convs as multiply-adds.

The same holds for a train step's depthwise gradients: the output gradient (the BN backward) has the
depthwise forward fused into it, and the kernel gradient's reduction must not compute it again.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import cpu_kernels, families, inference

pytestmark = pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the CPU kernels\' programs')

FUSION = re.compile(r'^  %([\w.\-]+) = \S+ fusion\((.*?)\), kind', re.M)
KERNEL = re.compile(r'variables__params____(.*?)____kernel__')


def convs_computed_twice(hlo: str) -> dict[str, list[str]]:
  """`{fusion: [the conv kernels it reads]}` for the fusions that read two or more conv kernels and an
  activation (an operand that is not a parameter of the program)."""
  out = {}
  for name, operands in FUSION.findall(hlo):
    kernels = sorted(set(KERNEL.findall(operands)))
    activations = [o for o in operands.split(', ') if not o.startswith('%variables__') and not o.startswith('/*')]
    if len(kernels) > 1 and activations:
      out[name] = kernels
  return out


@pytest.mark.parametrize('arch, size', [('retinaface_mnet', 160), ('scrfd_500m_bnkps', 160),
                                        ('blazeface_full_range', 192), ('blazeface_full_range_sparse', 192)])
def test_no_conv_is_computed_twice(arch, size):
  family = families.family_of(arch)
  model = family.build(family.spec(arch), cpu_kernels=True)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
  forward = inference.make_forward_fn(family, model)
  images, sizes = np.zeros((1, size, size, 3), np.uint8), np.full((1, 2), size, np.int32)
  hlo = forward.lower(variables, images, sizes).compile().as_text()
  assert len(set(KERNEL.findall(hlo))) > 5, 'the program\'s parameters are not named as this test expects'
  assert convs_computed_twice(hlo) == {}


TUPLE_FUSION = re.compile(r'^  %[\w.\-]+ = \((.*?)\) fusion\(.*?calls=(%[\w.\-]+)', re.M)


def test_depthwise_kernel_gradient_does_not_recompute_the_forward():
  """The kernel gradient of a stride-1 depthwise conv under BN + ReLU is one nine-output reduction that
  reads the input and the output gradient's padded copy; a depthwise kernel among its operands means
  the forward is computed inside it again (RetinaFace-mnet's step took 1.17x as long that way;
  BENCHMARKS.md, "Depthwise gradients")."""
  c = 16
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, 24, 20, c)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 1, c)) * 0.3, jnp.float32)
  scale, bias = jnp.ones(c), jnp.zeros(c)
  probe = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

  def loss(x, kernel):
    z = cpu_kernels.conv2d(x, kernel, 1, c)
    y, _, _ = cpu_kernels._bn_act_train(z, scale, bias, 0.0, 1e-5, None, jnp.float32)
    return jnp.sum(y * probe)

  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel).compile().as_text()
  reductions = [called for outputs, called in TUPLE_FUSION.findall(hlo) if outputs.count('f32[') == 9]
  assert len(reductions) == 1, 'the kernel gradient is not one nine-output reduction'
  body = re.search(rf'^{re.escape(reductions[0])} .*?^}}', hlo, re.M | re.S).group(0)
  assert f'f32[3,3,1,{c}]' not in body, 'the kernel gradient reads a depthwise kernel: it recomputes the forward'
