"""The layers (`jaxface.layers`) against torch, and the CPU kernels (`jaxface.cpu_kernels`) against the layers.

The plain layers state PyTorch's semantics, checked here against torch on random data: padding
(BlazeFace's asymmetric pads, 5x5 valid convs), groups, BN's running averages, GroupNorm, the
nearest-upsampling rule. The CPU kernels restate the same arithmetic with hand-written backward
passes (`custom_vjp`) that the training step differentiates through on CPU; a wrong transpose
there would train a different network, so each kernel's value, input gradient and parameter
gradients are compared with autodiff of the plain layer, at odd sizes and both strides. Last, the
switch between the two: how `cpu_kernels=None` resolves, and that it is part of what `jit` caches.
"""
import functools
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import cpu_kernels as kernels
from jaxface import layers
from jaxface.retinaface import retinaface


def _normal(shape, seed=0, scale=1.0, shift=0.0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale + shift, jnp.float32)


def _nchw(a):
  """An NHWC array as a torch NCHW tensor."""
  import torch
  return torch.from_numpy(np.array(a).transpose(0, 3, 1, 2))


def _nhwc(t) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _assert_close_scaled(got, want, atol, name):
  """Equal to `atol` relative to `want`'s largest magnitude (gradients sum many products)."""
  scale = float(jnp.max(jnp.abs(want)))
  np.testing.assert_allclose(np.asarray(got) / scale, np.asarray(want) / scale, atol=atol, err_msg=name)


# ---------------------------------------------------------------------------------------------
# The plain layers against torch.

# (kernel, in, out, stride, padding, groups, bias): the layer as PyTorch code writes it.
TORCH_CONVS = [
    (3, 3, 8, 2, None, 1, False),        # RetinaFace's stem: padding=k//2
    (3, 8, 8, 2, None, 8, False),        # conv_dw's depthwise 3x3, stride 2
    (1, 16, 8, 1, None, 1, True),        # a head's 1x1 with bias
    (5, 3, 24, 2, ((1, 2), (1, 2)), 1, True),   # BlazeFace: F.pad(x, (1, 2, 1, 2)), then 5x5 s2 p0
    (3, 6, 6, 2, ((0, 2), (0, 2)), 6, True),    # BlazeBlock s2: F.pad(x, (0, 2, 0, 2)), then dw 3x3 p0
    (5, 4, 4, 1, 0, 4, True),            # a 5x5 depthwise 'valid' conv (BlazeFace's k=5 blocks, padded outside)
    (5, 4, 4, 1, None, 4, True),         # the same with padding=2
]


@pytest.mark.parametrize('cpu_kernels', [False, True], ids=['plain', 'kernels'])
@pytest.mark.parametrize('k,cin,cout,stride,padding,groups,bias', TORCH_CONVS)
def test_conv_matches_torch(k, cin, cout, stride, padding, groups, bias, cpu_kernels):
  """Both paths: the kernels take the shapes they restate and leave the others to the plain conv."""
  torch = pytest.importorskip('torch')
  x = _normal((2, 11, 14, cin))
  conv = layers.Conv(cout, k, stride, padding=padding, groups=groups, use_bias=bias, cpu_kernels=cpu_kernels)
  variables = conv.init(jax.random.key(0), x)
  weight = torch.from_numpy(np.array(variables['params']['kernel']).transpose(3, 2, 0, 1))
  t_bias = torch.from_numpy(np.array(variables['params']['bias'])) if bias else None
  (top, bottom), (left, right) = layers.explicit_padding(padding, k)
  xt = torch.nn.functional.pad(_nchw(x), (left, right, top, bottom))
  want = _nhwc(torch.nn.functional.conv2d(xt, weight, t_bias, stride=stride, groups=groups))
  np.testing.assert_allclose(jax.jit(conv.apply)(variables, x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('cpu_kernels', [False, True], ids=['plain', 'kernels'])
def test_batch_norm_matches_torch(cpu_kernels):
  """Train mode twice (outputs; running mean and the unbiased running variance), then eval mode."""
  torch = pytest.importorskip('torch')
  x1, x2 = _normal((3, 5, 4, 6), 1, 2.0, 0.5), _normal((3, 5, 4, 6), 2, 0.5, -1.0)
  bn = torch.nn.BatchNorm2d(6)
  with torch.no_grad():
    bn.weight.copy_(torch.linspace(0.5, 2.0, 6))
    bn.bias.copy_(torch.linspace(-1.0, 1.0, 6))
  train = layers.torch_bn(train=True, cpu_kernels=cpu_kernels)()
  variables = train.init(jax.random.key(0), x1)
  variables = {'params': {'scale': jnp.linspace(0.5, 2.0, 6), 'bias': jnp.linspace(-1.0, 1.0, 6)},
               'batch_stats': variables['batch_stats']}
  step = jax.jit(lambda v, x: train.apply(v, x, mutable=['batch_stats']))
  for x in (x1, x2):
    y, updates = step(variables, x)
    variables = {**variables, **updates}
    np.testing.assert_allclose(y, _nhwc(bn.train()(_nchw(x))), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(variables['batch_stats']['mean'], bn.running_mean, rtol=1e-6)
  np.testing.assert_allclose(variables['batch_stats']['var'], bn.running_var, rtol=1e-6)
  evaluate = layers.torch_bn(train=False, cpu_kernels=cpu_kernels)()
  np.testing.assert_allclose(jax.jit(evaluate.apply)(variables, x1), _nhwc(bn.eval()(_nchw(x1))), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('cpu_kernels', [False, True], ids=['plain', 'kernels'])
def test_batch_norm_over_devices_equals_one_batch(cpu_kernels):
  """With `axis_name`, BN over 2 devices' batches (vmap stands in for pmap) is BN over their union:
  outputs, running statistics (n counts both devices) and gradients."""
  x = _normal((2, 3, 4, 5, 6), 10, 2.0, 0.5)  # [devices, N, H, W, C]
  probe = _normal(x.shape, 11)
  variables = layers.BatchNorm().init(jax.random.key(0), x[0])
  variables['params'] = {'scale': jnp.linspace(0.5, 2.0, 6), 'bias': jnp.linspace(-1.0, 1.0, 6)}

  def run(axis_name, params, x, probe):
    bn = layers.torch_bn(train=True, axis_name=axis_name, cpu_kernels=cpu_kernels)()
    y, updates = bn.apply({**variables, 'params': params}, x, mutable=['batch_stats'])
    return jnp.sum(jnp.sin(y) * probe), (y, updates['batch_stats'])

  per_device = jax.vmap(jax.grad(functools.partial(run, 'd'), argnums=(0, 1), has_aux=True), (None, 0, 0), axis_name='d')
  (dparams, dx), (y, stats) = jax.jit(per_device)(variables['params'], x, probe)
  union = lambda a: a.reshape((-1,) + a.shape[2:])
  (dparams_ref, dx_ref), (y_ref, stats_ref) = jax.grad(functools.partial(run, None), argnums=(0, 1), has_aux=True)(
      variables['params'], union(x), union(probe))
  np.testing.assert_allclose(union(y), y_ref, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-5), stats, stats_ref)
  _assert_close_scaled(union(dx), dx_ref, 1e-5, 'input gradient')
  # Each device's parameter gradient is its own part; the step sums them over devices.
  jax.tree.map(lambda a, b: _assert_close_scaled(a.sum(0), b, 1e-5, 'parameter gradient'), dparams, dparams_ref)


def test_group_norm_matches_torch():
  """Values and gradients of `nn.GroupNorm(4, 8)`; its `weight` lands on `scale` through the converter."""
  torch = pytest.importorskip('torch')
  from jaxface import state_dicts
  x = _normal((2, 5, 3, 8), 3, 3.0, 1.0)
  gn = torch.nn.GroupNorm(4, 8)
  with torch.no_grad():
    gn.weight.copy_(torch.linspace(0.5, 2.0, 8))
    gn.bias.copy_(torch.linspace(-1.0, 1.0, 8))
  module = layers.GroupNorm(4)
  variables = state_dicts.convert({k: v.detach().numpy() for k, v in gn.state_dict().items()},
                                  jax.eval_shape(module.init, jax.random.key(0), x))
  probe = _normal((2, 5, 3, 8), 4)
  loss = lambda v, x: jnp.sum(module.apply(v, x) * probe)
  xt = _nchw(x).requires_grad_(True)
  yt = gn(xt)
  (yt * _nchw(probe)).sum().backward()
  np.testing.assert_allclose(module.apply(variables, x), _nhwc(yt), rtol=1e-5, atol=1e-5)
  grads, dx = jax.grad(loss, argnums=(0, 1))(variables, x)
  np.testing.assert_allclose(dx, _nhwc(xt.grad), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(grads['params']['scale'], gn.weight.grad, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(grads['params']['bias'], gn.bias.grad, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='groups'):
    layers.GroupNorm(3).init(jax.random.key(0), x)


@pytest.mark.parametrize('src,dst', [((4, 6), (8, 12)), ((53, 27), (105, 54)), ((7, 5), (9, 13))])
def test_upsample_nearest_matches_torch(src, dst):
  """An exact 2x (the repeat), FPN's odd sizes (53 -> 105) and arbitrary ones: `floor(dst * in / out)`."""
  torch = pytest.importorskip('torch')
  x = _normal((1, *src, 2))
  want = torch.nn.functional.interpolate(_nchw(x), size=dst, mode='nearest')
  np.testing.assert_array_equal(layers.upsample_nearest(x, dst), _nhwc(want))


# ---------------------------------------------------------------------------------------------
# Each CPU kernel against the plain layer: values, input gradient, parameter gradients.

# (kernel, in, out, groups, the kernel `cpu_kernels.conv2d` must pick; None: the library conv).
KERNEL_CONVS = [
    (3, 3, 8, 1, '_fma_conv_library_grad'),   # the stem: fused mul-adds, the library conv's gradients
    (1, 8, 16, 1, '_fma_conv_library_grad'),  # a 1x1 over <= 8 channels: mul-adds, 2-D product gradients
    (1, 24, 16, 1, '_pointwise_cpu'),         # a 1x1 over more: a matrix product
    (3, 12, 8, 1, {2: '_library_conv_stride2'}),   # a 3x3: the library conv; at stride 2 with a
    (3, 32, 16, 1, {2: '_library_conv_stride2'}),  # stride-1 input gradient
    (7, 3, 4, 1, None),                       # ResNet's 7x7 stem: the library conv as is
    (3, 8, 8, 8, '_depthwise_cpu'),           # depthwise 3x3: shifted mul-adds
    (3, 16, 16, 16, '_depthwise_cpu'),        # ... whose kernel gradient's rows split into blocks
]


def _loss(conv, x, k, probe):
  return jnp.sum(conv(x, k) * probe)


def _assert_same_conv(fast, plain, x, kernel):
  """`fast(x, kernel)` equals `plain(x, kernel)`: values, and the input and kernel gradients."""
  y, y_ref = jax.jit(fast)(x, kernel), jax.jit(plain)(x, kernel)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  probe = _normal(y_ref.shape, 2)
  grads = jax.jit(jax.grad(_loss, argnums=(1, 2)), static_argnums=0)(fast, x, kernel, probe)
  grads_ref = jax.jit(jax.grad(_loss, argnums=(1, 2)), static_argnums=0)(plain, x, kernel, probe)
  for g, g_ref, name in zip(grads, grads_ref, ('input', 'kernel')):
    _assert_close_scaled(g, g_ref, 2e-6, f'{name} gradient')


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('k,cin,cout,groups,custom', KERNEL_CONVS)
def test_conv_kernels_match_plain_conv(k, cin, cout, groups, custom, stride):
  shape = (4, 17, 9, cin) if groups > 8 else (2, 11, 14, cin)
  x, kernel = _normal(shape), _normal((k, k, cin // groups, cout), 1)
  assert kernels.lowers(kernel.shape, layers.explicit_padding(None, k), groups)
  fast = lambda x, w: kernels.conv2d(x, w, stride, groups)
  plain = lambda x, w: layers.conv2d(x, w, stride, None, groups)
  jaxpr = str(jax.make_jaxpr(fast)(x, kernel))
  custom = custom.get(stride) if isinstance(custom, dict) else custom
  assert set(re.findall(r'custom_vjp_call\[\s*name=(\w+)', jaxpr)) == ({custom} if custom else set())
  _assert_same_conv(fast, plain, x, kernel)


@pytest.mark.parametrize('shape', [(2, 11, 14, 12), (1, 8, 5, 16)])
def test_stride2_input_gradient_is_a_stride1_conv(shape):
  """A stride-2 3x3's input gradient without autodiff's zero-dilated conv (`lhs_dilation` 2), at
  odd and even sizes: the plain layer's gradient."""
  x, kernel = _normal(shape), _normal((3, 3, shape[3], 8), 1)
  probe = _normal(layers.conv2d(x, kernel, 2, None, 1).shape, 2)
  grad_x = lambda conv: jax.grad(lambda x: jnp.sum(conv(x, kernel, 2) * probe))
  fast = grad_x(lambda x, k, s: kernels.conv2d(x, k, s))
  plain = grad_x(lambda x, k, s: layers.conv2d(x, k, s, None, 1))
  assert 'lhs_dilation=(2, 2)' in str(jax.make_jaxpr(plain)(x))
  assert 'lhs_dilation=(2, 2)' not in str(jax.make_jaxpr(fast)(x))
  _assert_close_scaled(fast(x), plain(x), 2e-6, 'input gradient')


@pytest.mark.parametrize('padding', [((0, 2), (0, 2)), ((0, 1), (0, 1)), ((1, 2), (0, 1))])
@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('cin,cout,groups', [(6, 6, 6), (3, 8, 1)])
def test_padded_kernels_match_plain_conv(padding, stride, cin, cout, groups):
  """BlazeFace's right/bottom-padded depthwise convs and the full-range model's 3x3 stem over 3
  channels: values and gradients of the plain layer."""
  x, kernel = _normal((2, 12, 10, cin)), _normal((3, 3, cin // groups, cout), 1)
  assert kernels.lowers(kernel.shape, padding, groups)
  fast = lambda x, w: kernels.conv2d(x, w, stride, groups, padding)
  plain = lambda x, w: layers.conv2d(x, w, stride, padding, groups)
  assert 'conv_general_dilated' not in str(jax.make_jaxpr(fast)(x, kernel))
  _assert_same_conv(fast, plain, x, kernel)


@pytest.mark.parametrize('padding', [None, ((0, 1), (0, 1))])
@pytest.mark.parametrize('stride', [1, 2])
def test_shared_output_is_one_product_of_the_plain_conv(padding, stride):
  """A stem read by several ops (`shared_output`): one matrix product over the stacked taps, with
  the plain layer's values and gradients."""
  x, kernel = _normal((2, 12, 10, 3)), _normal((3, 3, 3, 8), 1)
  fast = lambda x, w: kernels.conv2d(x, w, stride, 1, padding, shared_output=True)
  plain = lambda x, w: layers.conv2d(x, w, stride, padding, 1)
  jaxpr = str(jax.make_jaxpr(fast)(x, kernel))
  assert jaxpr.count('dot_general') == 1 and 'conv_general_dilated' not in jaxpr
  _assert_same_conv(fast, plain, x, kernel)


@pytest.mark.parametrize('channels,direct', [(8, True), (5, True), (12, False)])
def test_cheap_input_depthwise_matches_plain_conv(channels, direct):
  """A stride-1 depthwise conv told its input is cheap (`cheap_input`): at <= 8 channels it reads
  the input itself in the centre tap (no padded row-pitch copy, whose reshape is the other form's
  mark), wider ones keep the row-pitch form; both with the plain layer's values and gradients."""
  x, kernel = _normal((2, 11, 14, channels)), _normal((3, 3, 1, channels), 1)
  fast = lambda x, w: kernels.conv2d(x, w, 1, channels, None, cheap_input=True)
  plain = lambda x, w: layers.conv2d(x, w, 1, None, channels)
  jaxpr = str(jax.make_jaxpr(fast)(x, kernel))
  assert ('reshape' not in jaxpr) == direct
  assert 'reshape' in str(jax.make_jaxpr(lambda x, w: kernels.conv2d(x, w, 1, channels, None))(x, kernel))
  _assert_same_conv(fast, plain, x, kernel)


@pytest.mark.parametrize('shape', [(2, 8, 6, 5), (1, 7, 9, 3)])
def test_max_pool_matches_the_library_pool(shape):
  """The 2x2 max-pool as a maximum of views: the library pool's values (odd sizes floored) and
  its gradients, which send a window's gradient to one maximum even where ReLU's zeros tie."""
  x = jax.nn.relu(_normal(shape))  # about half the values are tied zeros
  plain = lambda x: nn.max_pool(x, (2, 2), (2, 2))
  assert 'reduce_window' not in str(jax.make_jaxpr(kernels.max_pool_2x2)(x))
  np.testing.assert_array_equal(kernels.max_pool_2x2(x), plain(x))
  probe = _normal(plain(x).shape, 1)
  grad_at = lambda pool, x: jax.grad(lambda x: jnp.sum(pool(x) * probe))(x)
  grad = lambda pool: grad_at(pool, x)
  np.testing.assert_array_equal(grad(kernels.max_pool_2x2), grad(plain))
  backward = str(jax.make_jaxpr(functools.partial(grad_at, kernels.max_pool_2x2))(x))
  assert 'select_and_scatter' not in backward and 'reduce_window' not in backward
  assert np.sum(np.asarray(grad(plain)) != 0) == probe.size  # one gradient per window, ties or not


@pytest.mark.parametrize('shape', [(2, 3, 5, 4), (4, 17, 9, 6), (8, 40, 3, 5), (64, 7)])
def test_channel_sums_match_sums(shape):
  """One block of rows, several blocks (68 rows: 17 of 4), many blocks (320 rows: 80 of 4),
  and a non-image shape (plain sums)."""
  values = [_normal(shape, 5), _normal(shape, 6) ** 2]
  want = [jnp.sum(v, tuple(range(v.ndim - 1))) for v in values]
  for got, w in zip(jax.jit(kernels.channel_sums)(values), want):
    np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5)


def _plain_bn_train(x, scale, bias, slope):
  """The plain layer in train mode, then its activation; and the batch mean and variance."""
  bn = layers.BatchNorm(use_running_average=False, cpu_kernels=False)
  stats = {'mean': jnp.zeros(x.shape[-1]), 'var': jnp.ones(x.shape[-1])}
  y, _ = bn.apply({'params': {'scale': scale, 'bias': bias}, 'batch_stats': stats}, x, mutable=['batch_stats'])
  return layers.leaky_relu(y, slope), jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2))


@pytest.mark.parametrize('slope', [None, 0.0, 0.1])
def test_bn_act_train_matches_plain_batch_norm(slope):
  """`_bn_act_train`'s backward, with cotangents on the statistics too (zero in the step, not here)."""
  x = _normal((3, 5, 7, 6), 3, 2.0, 0.5)
  scale, bias = _normal((6,), 4), _normal((6,), 5)
  probes = [_normal(s, 6 + i) for i, s in enumerate((x.shape, (6,), (6,)))]

  def loss(fn, *args):
    return sum(jnp.sum(o * p) for o, p in zip(fn(*args), probes))

  fast = lambda x, s, b: kernels._bn_act_train(x, s, b, slope, 1e-5, None, jnp.float32)
  plain = lambda x, s, b: _plain_bn_train(x, s, b, slope)
  for o, r in zip(jax.jit(fast)(x, scale, bias), plain(x, scale, bias)):
    np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-5)
  grads = jax.jit(jax.grad(lambda *a: loss(fast, *a), argnums=(0, 1, 2)))(x, scale, bias)
  grads_ref = jax.grad(lambda *a: loss(plain, *a), argnums=(0, 1, 2))(x, scale, bias)
  for g, g_ref, name in zip(grads, grads_ref, ('input', 'scale', 'bias')):
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5, err_msg=f'{name} gradient')


def _assert_same_results(got, want):
  """`(outputs, running statistics, gradients)` of two paths: equal to float32 rounding (the
  gradients relative to each one's largest entry)."""
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got[:2], want[:2])
  jax.tree.map(lambda a, b: _assert_close_scaled(a, b, 1e-5, 'gradient'), got[2], want[2])


class _Siblings(nn.Module):
  """SSH-like: three ConvBNs (no activation, ReLU, LeakyReLU) and three head convs with bias on one input."""
  cpu_kernels: bool

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(layers.Conv, cpu_kernels=self.cpu_kernels)
    norm = layers.torch_bn(train=train, cpu_kernels=self.cpu_kernels)
    blocks = [layers.ConvBN(c, 3, 1, s, conv, norm, name=f'b{i}') for i, (c, s) in enumerate([(2, None), (3, 0.0),
                                                                                               (1, 0.1)])]
    heads = [conv(c, 1, use_bias=True, name=f'h{i}') for i, c in enumerate((4, 2, 3))]
    return layers.siblings(x, blocks) + layers.siblings(x, heads)


@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
def test_fused_siblings_match_plain_blocks(train):
  """`fused_conv_bn` (per-channel slopes in one BN pass) and `fused_conv` against each plain block on its
  own: outputs, parameter and input gradients, each module's running statistics."""
  x = _normal((2, 6, 5, 4), 7)
  variables = _Siblings(False).init(jax.random.key(0), x, train=False)
  variables['batch_stats'] = jax.tree.map(lambda v: v + 0.5, variables['batch_stats'])
  results = []
  for on in (True, False):
    model = _Siblings(on)
    if on:
      jaxpr = str(jax.make_jaxpr(lambda v: model.apply(v, x, train, mutable=['batch_stats']))(variables))
      assert jaxpr.count('conv_general_dilated') == 1  # the three 3x3s as one; the 1x1 heads a matrix product
    run = lambda p, x: model.apply({**variables, 'params': p}, x, train, mutable=['batch_stats'])
    ys, updates = jax.jit(run)(variables['params'], x)
    loss = lambda p, x: sum(jnp.sum(jnp.sin(y)) for y in run(p, x)[0])
    results.append((ys, updates['batch_stats'], jax.jit(jax.grad(loss, argnums=(0, 1)))(variables['params'], x)))
  _assert_same_results(*results)
  if train:
    assert not np.allclose(results[0][1]['b1']['1']['var'], variables['batch_stats']['b1']['1']['var'])


# (block, input channels, what its kernels cover)
BLOCKS = [
    (lambda conv, norm: layers.ConvBN(8, 3, 2, 0.1, conv, norm), 3),  # the stem: mul-adds, BN + LeakyReLU
    (lambda conv, norm: layers.ConvDW(16, 1, 0.1, conv, norm), 8),    # depthwise, mul-add 1x1, BN + act
    (lambda conv, norm: layers.ConvDW(24, 2, 0.0, conv, norm), 16),   # depthwise s2, matrix-product 1x1
]


@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('make,cin', BLOCKS, ids=['stem', 'conv_dw', 'conv_dw_s2'])
def test_blocks_with_kernels_match_plain_blocks(make, cin, train):
  """MobileNet's blocks as the models build them, `cpu_kernels` True against False: outputs,
  parameter and input gradients, running statistics."""
  x = _normal((2, 13, 10, cin), 8)
  results = []
  for on in (True, False):
    conv = functools.partial(layers.Conv, cpu_kernels=on)
    block = make(conv, layers.torch_bn(train=train, cpu_kernels=on))
    variables = block.init(jax.random.key(1), x)
    run = lambda p, x: block.apply({**variables, 'params': p}, x, mutable=['batch_stats'])
    y, updates = jax.jit(run)(variables['params'], x)
    grads = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(run(p, x)[0])), argnums=(0, 1)))(variables['params'], x)
    results.append((y, updates['batch_stats'], grads))
  _assert_same_results(*results)


# ---------------------------------------------------------------------------------------------
# The switch.

def test_none_resolves_by_backend_and_environment(monkeypatch):
  assert kernels.enabled(True) and not kernels.enabled(False)
  assert kernels.enabled(None) == (jax.default_backend() == 'cpu')
  monkeypatch.setattr(kernels, '_ALLOWED', False)  # as after JAXFACE_CPU_KERNELS=0
  assert not kernels.enabled(None) and kernels.enabled(True)
  monkeypatch.setattr(kernels, '_ALLOWED', True)
  monkeypatch.setattr(kernels.jax, 'default_backend', lambda: 'gpu')
  assert not kernels.enabled(None), 'GPUs and TPUs run the plain layers'


@pytest.mark.parametrize('value,allowed', [(None, True), ('1', True), ('on', True), ('0', False), ('False', False),
                                           (' off ', False)])
def test_environment_variable(value, allowed):
  assert kernels.allowed_by({} if value is None else {kernels.ENV_VAR: value}) == allowed


def test_environment_variable_is_read_at_import():
  code = 'from jaxface import cpu_kernels; print(cpu_kernels.enabled(None))'
  run = lambda value: subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                                     env={**os.environ, kernels.ENV_VAR: value, 'JAX_PLATFORMS': 'cpu'})
  assert run('0').stdout.strip() == 'False'
  assert run('1').stdout.strip() == 'True'
  bad = run('maybe')
  assert bad.returncode != 0 and 'JAXFACE_CPU_KERNELS' in bad.stderr and 'expected one of' in bad.stderr


def test_one_process_compiles_both_paths():
  """The switch is a field of the model, so part of its hash: one jitted function traces once per
  path, and each cached program keeps its own (the kernels' custom VJPs, or none)."""
  x = jnp.asarray(np.random.default_rng(9).uniform(-100, 100, (1, 32, 48, 3)), jnp.float32)
  models = {on: retinaface('retinaface_mnet', cpu_kernels=on) for on in (True, False, None)}
  assert models[True] != models[False] and hash(models[True]) != hash(models[False])
  variables = jax.jit(models[False].init)(jax.random.key(0), x)
  traced = []

  @functools.partial(jax.jit, static_argnums=0)
  def forward(model, variables):
    traced.append(model.cpu_kernels)
    return model.apply(variables, x, train=True, mutable=['batch_stats'])

  jaxprs = {on: str(forward.trace(models[on], variables).jaxpr) for on in models}
  assert 'custom_vjp_call' in jaxprs[True] and 'custom_vjp_call' not in jaxprs[False]
  assert jaxprs[None] == jaxprs[jax.default_backend() == 'cpu']
  on, off, on_again = (forward(models[k], variables) for k in (True, False, True))
  assert traced == [True, False, None], 'one trace per model; the calls are served from the cache'
  jax.tree.map(np.testing.assert_array_equal, on, on_again)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3), on[0], off[0])


def test_detection_programs_compile_without_ynnpack_fusions(monkeypatch):
  """`cpu_kernels.compiler_options()`: YNNPACK's fusions off for the detection programs on the CPU
  (none of their ops lands in a `__ynn_fusion`), XLA's default with `JAXFACE_XLA_YNN=1`."""
  import jax.numpy as jnp
  from jaxface import cpu_kernels, inference
  from jaxface.retinaface import FAMILY
  options = cpu_kernels.compiler_options()
  if not options:
    pytest.skip("this XLA has no xla_cpu_experimental_ynn_fusion_type option")
  assert options == {'xla_cpu_experimental_ynn_fusion_type': ''}
  model = FAMILY.model('retinaface_mnet')
  x = jnp.zeros((1, 64, 64, 3), jnp.uint8)
  variables = model.init(jax.random.PRNGKey(0), FAMILY.preprocess(x))
  sizes = jnp.asarray([[64, 64]], jnp.int32)
  plain = jax.jit(lambda v, x: model.apply(v, FAMILY.preprocess(x)))
  if '__ynn_fusion' not in plain.lower(variables, x).compile().as_text():
    pytest.skip("this XLA makes no YNNPACK fusions by default: nothing to turn off")
  forward = inference.make_forward_fn(FAMILY, model)
  assert '__ynn_fusion' not in forward.lower(variables, x, sizes).compile().as_text()
  monkeypatch.setenv(cpu_kernels.YNN_ENV_VAR, '1')
  assert cpu_kernels.compiler_options() == {}
