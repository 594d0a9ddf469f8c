"""The CPU lowerings in `jaxface.models.layers` against the library convolution: values and gradients.

The training step differentiates through `conv2d` and `depthwise_conv3x3`, whose CPU paths
have hand-written backward passes (`custom_vjp`); a wrong transpose there would train a
different network, so each path's value, input gradient and kernel gradient are compared
with autodiff of `lax.conv_general_dilated` on random data, at odd sizes and both strides.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.models import layers

# (kernel, in channels, out channels): the stem (fused mul-adds), a 1x1 over <= 8 channels
# (fused mul-adds), a 1x1 over more (matrix product), 3x3s over more (library conv; kernel
# gradient per tap, and at 32-64 channels and stride 1 per kernel row over the flattened
# padded grid) and ResNet's 7x7 stem (library conv).
CONVS = [(3, 3, 8), (1, 8, 16), (1, 24, 16), (3, 12, 8), (3, 32, 16), (7, 3, 4)]


def _loss(conv, x, k, s, probe):
  return jnp.sum(conv(x, k, s) * probe)


def _check(conv, reference, x, k, s):
  y, y_ref = conv(x, k, s), reference(x, k, s)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  probe = jnp.asarray(np.random.default_rng(1).standard_normal(y_ref.shape), jnp.float32)
  grads = jax.grad(_loss, argnums=(1, 2))(conv, x, k, s, probe)
  grads_ref = jax.grad(_loss, argnums=(1, 2))(reference, x, k, s, probe)
  for g, g_ref, name in zip(grads, grads_ref, ('input', 'kernel')):
    scale = float(jnp.max(jnp.abs(g_ref)))
    np.testing.assert_allclose(g / scale, g_ref / scale, atol=2e-6, err_msg=f'{name} gradient')


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('k,cin,cout', CONVS)
def test_conv2d_matches_library_conv(k, cin, cout, stride):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 11, 14, cin)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout)), jnp.float32)
  _check(jax.jit(layers.conv2d, static_argnums=2), jax.jit(layers.library_conv, static_argnums=2), x, kernel, stride)


@pytest.mark.parametrize('stride', [1, 2])
# The kernel gradient's rows (n * h_out) as one block, and as 2 (stride 2) or 4 (stride 1).
@pytest.mark.parametrize('shape', [(2, 13, 10, 8), (4, 17, 9, 16)])
def test_depthwise_matches_grouped_conv(shape, stride):
  rng = np.random.default_rng(0)
  channels = shape[-1]
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 1, channels)), jnp.float32)
  grouped = lambda x, k, s: layers.library_conv(x, k, s, groups=x.shape[-1])
  _check(jax.jit(layers.depthwise_conv3x3, static_argnums=2), jax.jit(grouped, static_argnums=2), x, kernel, stride)


def test_cpu_paths_are_the_hand_written_ones():
  """Guards the premise of the tests above: on CPU the custom backward passes are in use."""
  x = jnp.zeros((1, 8, 8, 8))
  for fn, kernel in [(layers.conv2d, jnp.zeros((1, 1, 8, 16))), (layers.depthwise_conv3x3, jnp.zeros((3, 3, 1, 8)))]:
    jaxpr = str(jax.make_jaxpr(lambda x, k: fn(x, k, 1))(x, kernel))
    assert 'custom_vjp_call' in jaxpr, jaxpr
