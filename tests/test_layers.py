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

from jaxface import layers

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


def _plain_bn_act(x, scale, bias, slopes, eps=1e-5):
  """BN with batch statistics and a per-channel LeakyReLU, as formulas for autodiff."""
  mean = jnp.mean(x, (0, 1, 2))
  var = jnp.mean(jnp.square(x - mean.reshape(1, 1, 1, -1)), (0, 1, 2))
  z = (x - mean.reshape(1, 1, 1, -1)) * (scale * jax.lax.rsqrt(var + eps)).reshape(1, 1, 1, -1) + bias.reshape(1, 1, 1, -1)
  return jnp.where(z >= 0, z, slopes.reshape(1, 1, 1, -1) * z), mean, var


@pytest.mark.parametrize('slope', [None, 0.0, 0.1, (1.0, 1.0, 0.0, 0.0, 0.0, 0.1)])
def test_batch_norm_act_matches_autodiff_of_the_formulas(slope):
  """The hand-written BN + activation backward, with cotangents on the statistics too."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((3, 5, 7, 6)) * 2 + 0.5, jnp.float32)
  scale, bias = (jnp.asarray(rng.standard_normal(6), jnp.float32) for _ in range(2))
  slopes = jnp.asarray(np.broadcast_to(np.asarray(1.0 if slope is None else slope, np.float32), (6,)))
  probes = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (x.shape, (6,), (6,))]

  def loss(fn, *args):
    return sum(jnp.sum(o * p) for o, p in zip(fn(*args), probes))

  ours = lambda x, s, b: layers._bn_act_train(x, s, b, slope, 1e-5, None, jnp.float32)
  plain = lambda x, s, b: _plain_bn_act(x, s, b, slopes)
  for o, r in zip(jax.jit(ours)(x, scale, bias), plain(x, scale, bias)):
    np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-5)
  grads = jax.grad(lambda *a: loss(ours, *a), argnums=(0, 1, 2))(x, scale, bias)
  grads_ref = jax.grad(lambda *a: loss(plain, *a), argnums=(0, 1, 2))(x, scale, bias)
  for g, g_ref, name in zip(grads, grads_ref, ('input', 'scale', 'bias')):
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5, err_msg=f'{name} gradient')


class _Siblings(layers.nn.Module):
  """Three BNs over channel groups of one input, run as one pass or one by one."""
  fused: bool

  @layers.nn.compact
  def __call__(self, x):
    norms = [layers.BatchNorm(use_running_average=False, name=str(i)) for i in range(3)]
    groups = [(norms[0], 2, None), (norms[1], 3, 0.0), (norms[2], 1, 0.1)]
    if self.fused:
      return layers.batch_norm_act(x, groups)
    parts = jnp.split(x, [2, 5], axis=-1)
    return jnp.concatenate([m(p, s) for (m, _, s), p in zip(groups, parts)], axis=-1)


def test_fused_batch_norms_equal_separate_ones():
  """Same outputs, gradients and running statistics per module as normalising each part alone."""
  x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 4, 3, 6)), jnp.float32)
  variables = _Siblings(True).init(jax.random.key(0), x)
  results = []
  for fused in (True, False):
    model = _Siblings(fused)
    y, updates = jax.jit(lambda v: model.apply(v, x, mutable=['batch_stats']))(variables)
    grad = jax.jit(jax.grad(
        lambda p: jnp.sum(jnp.sin(model.apply({**variables, 'params': p}, x, mutable=['batch_stats'])[0]))))
    results.append((y, updates['batch_stats'], grad(variables['params'])))
  (y, stats, grads), (y_ref, stats_ref, grads_ref) = results
  np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), (stats, grads), (stats_ref, grads_ref))
  assert not np.allclose(stats['1']['var'], 1.0)  # the running statistics did move
