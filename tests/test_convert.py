"""Tests for jaxface.convert: PyTorch state dicts -> Flax variables, strictly, plus its CLI and
the `load_detector` paths that go through it.

The expected Flax location of every PyTorch key is re-derived here from the naming rule (not
taken from `jaxface.convert`), and every converted leaf is compared with the tensor it came from.
torch is test-only: it writes the files (both `torch.save` formats) and runs the reference
MobileNet for the feature check.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

import reference_torch as ref  # noqa: E402
from conftest import REPO_ROOT, shared_file  # noqa: E402

from jaxface import saved_models, convert, load_detector  # noqa: E402
from jaxface.convert import CheckpointMismatch, convert_file  # noqa: E402
from jaxface.retinaface import SPECS, retinaface  # noqa: E402
from jaxface.layers import torch_bn  # noqa: E402
from jaxface.retinaface.mobilenet import MobileNetV1  # noqa: E402

torch.set_num_threads(2)

FORMATS = ['zip', 'legacy']
DETECTORS = ('retinaface_mnet', 'retinaface_mnet_relu', 'retinaface_r50')
BACKBONES = ('mobilenet0.25', 'resnet50')
KEY_LISTS = {'retinaface_mnet': 'retinaface_mnet_keys.txt', 'retinaface_r50': 'retinaface_r50_keys.txt'}
RELU_2019 = ('data', 'weights', 'retinaface_mnet025_relu_2019.pth')
PRETRAIN_TAR = ('data', 'weights', 'mobilenetV1X0.25_pretrain.tar')


# --------------------------------------------------------------------------------------------------
# Helpers, written from the naming rule in the module docstring / REFERENCE.md, not from the code.
# --------------------------------------------------------------------------------------------------


def read_key_list(name: str) -> dict[str, tuple[int, ...]]:
  """`key (d0, d1, ...)` lines -> {key: shape}, in file order."""
  out = {}
  for line in shared_file('data', 'checkpoint_keys', name).read_text().splitlines():
    if not line.strip():
      continue
    m = re.fullmatch(r'(\S+) \(([\d, ]*)\)', line.strip())
    assert m, f'unparsable key-list line {line!r}'
    out[m[1]] = tuple(int(d) for d in m[2].split(',') if d.strip())
  return out


def flax_location(key: str, ndim: int) -> tuple[str, ...]:
  """PyTorch key -> (collection, *module path, leaf)."""
  *path, leaf = key.split('.')
  if leaf == 'weight':
    return ('params', *path, 'kernel' if ndim == 4 else 'scale')
  if leaf == 'bias':
    return ('params', *path, 'bias')
  if leaf == 'running_mean':
    return ('batch_stats', *path, 'mean')
  if leaf == 'running_var':
    return ('batch_stats', *path, 'var')
  raise AssertionError(f'no Flax location for {key}')


def flax_value(t) -> np.ndarray:
  """Torch layout -> Flax layout, written out: conv (O, I, kh, kw) -> (kh, kw, I, O)."""
  a = t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
  return np.transpose(a, (2, 3, 1, 0)) if a.ndim == 4 else a


def strip_module(key: str) -> str:
  return key[len('module.'):] if key.startswith('module.') else key


def expected_leaves(state: dict, prefix: str = '', drop: tuple[str, ...] = ()) -> dict[tuple[str, ...], np.ndarray]:
  """What the converter must produce for `state`: {flat Flax path: value}."""
  out = {}
  for k, t in state.items():
    k = strip_module(k)
    if k.endswith('num_batches_tracked') or k.startswith(drop):
      continue
    out[flax_location(prefix + k, t.ndim)] = flax_value(t)
  return out


def assert_leaves_equal(variables, want: dict[tuple[str, ...], np.ndarray]):
  """The converted tree holds exactly the expected leaves, each float32 and bit-equal."""
  got = flax.traverse_util.flatten_dict(variables)
  assert set(got) == set(want), (sorted(set(want) - set(got))[:5], sorted(set(got) - set(want))[:5])
  for path, w in want.items():
    g = np.asarray(got[path])
    assert g.dtype == np.float32, (path, g.dtype)
    assert g.shape == w.shape, (path, g.shape, w.shape)
    np.testing.assert_array_equal(g, w, err_msg='/'.join(path))


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict:
  """Distinct N(0, 1) float32 tensors (int64 scalars for num_batches_tracked) with these names."""
  rng = np.random.default_rng(seed)
  state = {}
  for k, shape in shapes.items():
    if k.endswith('num_batches_tracked'):
      state[k] = torch.tensor(int(rng.integers(1, 1_000_000)), dtype=torch.int64)
    else:
      state[k] = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
  return state


def save(obj, path: Path, fmt: str) -> str:
  torch.save(obj, path, _use_new_zipfile_serialization=(fmt == 'zip'))
  return str(path)


def detector_shapes(arch: str):
  """Variable shapes of a freshly initialised detector (nothing computed)."""
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return jax.eval_shape(retinaface(arch).init, jax.random.PRNGKey(0), x)


def assert_same_structure(got, want_shapes):
  """Same tree (keys, nesting) and, leaf by leaf, the same shape and float32."""
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want_shapes)
  flat_got = flax.traverse_util.flatten_dict(got)
  for path, leaf in flax.traverse_util.flatten_dict(want_shapes).items():
    assert np.shape(flat_got[path]) == tuple(leaf.shape), path
    assert np.asarray(flat_got[path]).dtype == leaf.dtype, path


def mismatch_sections(message: str) -> dict[str, tuple[int, list[str]]]:
  """A CheckpointMismatch message -> {'missing' | 'unexpected' | 'mis-shaped': (count, listed lines)}."""
  lines = message.splitlines()
  assert lines[0].endswith('does not match the architecture:'), lines[0]
  sections: dict[str, tuple[int, list[str]]] = {}
  current = None
  for line in lines[1:]:
    m = re.fullmatch(r'  (\d+) (missing|unexpected|mis-shaped) key\(s\):', line)
    if m:
      current = sections[m[2]] = (int(m[1]), [])
      continue
    assert current is not None and line.startswith('    '), f'unexpected line {line!r} in\n{message}'
    current[1].append(line.strip())
  return sections


def mismatch_of(fn, *args) -> tuple[str, dict]:
  with pytest.raises(CheckpointMismatch) as info:
    fn(*args)
  message = str(info.value)
  return message, mismatch_sections(message)


# --------------------------------------------------------------------------------------------------
# 1. The released detector layouts, from the shared key lists, in both torch file formats.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def key_lists():
  return {arch: read_key_list(name) for arch, name in KEY_LISTS.items()}


@pytest.fixture(scope='module')
def keyed_files(key_lists, tmp_path_factory):
  """arch -> (the state dict as saved, {format: path}); R50 keys get the `module.` prefix (§1.10)."""
  out = {}
  for seed, (arch, shapes) in enumerate(key_lists.items()):
    if arch == 'retinaface_r50' and not all(k.startswith('module.') for k in shapes):
      shapes = {'module.' + k: s for k, s in shapes.items()}
    state = random_state_dict(shapes, seed)
    d = tmp_path_factory.mktemp(arch)
    out[arch] = (state, {fmt: save(state, d / f'{arch}_{fmt}.pth', fmt) for fmt in FORMATS})
  return out


@pytest.fixture(scope='module')
def converted(keyed_files):
  """(arch, format) -> convert_file of that key-list file, converted once per module."""
  cache = {}

  def get(arch, fmt):
    if (arch, fmt) not in cache:
      cache[(arch, fmt)] = convert_file(keyed_files[arch][1][fmt], arch)
    return cache[(arch, fmt)]
  return get


def test_key_lists_are_the_documented_ones(key_lists):
  """§1.10: mnet 300 tensors (253 without num_batches_tracked), R50 456 (383), no prefix in the lists."""
  for arch, (total, real) in {'retinaface_mnet': (300, 253), 'retinaface_r50': (456, 383)}.items():
    keys = key_lists[arch]
    assert len(keys) == total
    assert sum(not k.endswith('num_batches_tracked') for k in keys) == real
  assert key_lists['retinaface_mnet']['body.stage1.1.0.weight'] == (8, 1, 3, 3)
  assert key_lists['retinaface_r50']['body.conv1.weight'] == (64, 3, 7, 7)


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('arch', list(KEY_LISTS))
def test_key_list_converts_completely(keyed_files, converted, arch, fmt):
  state, _ = keyed_files[arch]
  if arch == 'retinaface_r50':
    assert all(k.startswith('module.') for k in state)
  variables = converted(arch, fmt)
  assert set(variables) == {'params', 'batch_stats'}
  # Every leaf is the corresponding tensor, in Flax layout; nothing more, nothing less.
  assert_leaves_equal(variables, expected_leaves(state))
  # ... and the tree is exactly the detector's.
  assert_same_structure(variables, detector_shapes(arch))


def test_values_land_transposed_r50(keyed_files, converted):
  """Spot checks of single elements, indices chosen so any wrong axis order picks another value."""
  state, _ = keyed_files['retinaface_r50']
  v = converted('retinaface_r50', 'legacy')
  p, bs = v['params'], v['batch_stats']
  w = state['module.body.conv1.weight'].numpy()  # (O=64, I=3, kh=7, kw=7)
  assert p['body']['conv1']['kernel'].shape == (7, 7, 3, 64)
  for o, i, y, x in [(5, 2, 1, 6), (63, 0, 6, 0), (17, 1, 3, 4)]:
    assert p['body']['conv1']['kernel'][y, x, i, o] == w[o, i, y, x]
  w = state['module.body.layer2.0.conv2.weight'].numpy()  # (128, 128, 3, 3)
  assert p['body']['layer2']['0']['conv2']['kernel'][2, 0, 7, 100] == w[100, 7, 2, 0]
  w = state['module.fpn.output3.0.weight'].numpy()  # (256, 2048, 1, 1)
  assert p['fpn']['output3']['0']['kernel'].shape == (1, 1, 2048, 256)
  assert p['fpn']['output3']['0']['kernel'][0, 0, 2000, 3] == w[3, 2000, 0, 0]
  # BN: weight -> params scale, bias -> params bias, running stats -> batch_stats.
  np.testing.assert_array_equal(p['body']['bn1']['scale'], state['module.body.bn1.weight'].numpy())
  np.testing.assert_array_equal(p['body']['bn1']['bias'], state['module.body.bn1.bias'].numpy())
  np.testing.assert_array_equal(bs['body']['bn1']['mean'], state['module.body.bn1.running_mean'].numpy())
  np.testing.assert_array_equal(bs['body']['bn1']['var'], state['module.body.bn1.running_var'].numpy())
  np.testing.assert_array_equal(bs['body']['layer3']['5']['bn3']['var'],
                                state['module.body.layer3.5.bn3.running_var'].numpy())
  np.testing.assert_array_equal(bs['body']['layer1']['0']['downsample']['1']['mean'],
                                state['module.body.layer1.0.downsample.1.running_mean'].numpy())
  np.testing.assert_array_equal(p['ClassHead']['1']['conv1x1']['bias'], state['module.ClassHead.1.conv1x1.bias'].numpy())
  assert not any('num_batches_tracked' in part for path in flax.traverse_util.flatten_dict(v) for part in path)


def test_values_land_transposed_mnet(keyed_files, converted):
  state, _ = keyed_files['retinaface_mnet']
  v = converted('retinaface_mnet', 'zip')
  p, bs = v['params'], v['batch_stats']
  w = state['body.stage1.1.0.weight'].numpy()  # depthwise (8, 1, 3, 3) -> (3, 3, 1, 8)
  assert p['body']['stage1']['1']['0']['kernel'].shape == (3, 3, 1, 8)
  assert p['body']['stage1']['1']['0']['kernel'][0, 2, 0, 6] == w[6, 0, 0, 2]
  w = state['ssh3.conv7x7_3.0.weight'].numpy()  # (16, 16, 3, 3), note the lower-case x
  assert p['ssh3']['conv7x7_3']['0']['kernel'][1, 2, 4, 9] == w[9, 4, 1, 2]
  w = state['LandmarkHead.2.conv1x1.weight'].numpy()  # (20, 64, 1, 1)
  assert p['LandmarkHead']['2']['conv1x1']['kernel'].shape == (1, 1, 64, 20)
  assert p['LandmarkHead']['2']['conv1x1']['kernel'][0, 0, 63, 19] == w[19, 63, 0, 0]
  np.testing.assert_array_equal(p['fpn']['merge2']['1']['scale'], state['fpn.merge2.1.weight'].numpy())
  np.testing.assert_array_equal(bs['body']['stage3']['1']['4']['mean'], state['body.stage3.1.4.running_mean'].numpy())


def test_key_styles_all_accepted(keyed_files):
  """Plain, `module.`-prefixed, `{'state_dict': ...}`-wrapped and num_batches_tracked-free dicts
  give the same tree."""
  state, _ = keyed_files['retinaface_mnet']
  want = expected_leaves(state)
  variants = {
      'module.': {'module.' + k: v for k, v in state.items()},
      'wrapped': {'epoch': 3, 'state_dict': state},
      'no num_batches_tracked': {k: v for k, v in state.items() if not k.endswith('num_batches_tracked')},
  }
  for name, sd in variants.items():
    assert_leaves_equal(convert.convert_state_dict(sd, 'retinaface_mnet'), want)


def test_converted_mnet_serves_every_mobilenet_arch(keyed_files):
  """The mnet layout is shared by the leaky and the 2019 ReLU model: same tree, same values."""
  state, paths = keyed_files['retinaface_mnet']
  assert_leaves_equal(convert_file(paths['legacy'], 'retinaface_mnet_relu'), expected_leaves(state))


# --------------------------------------------------------------------------------------------------
# 2. Strictness
# --------------------------------------------------------------------------------------------------


def _expected_mismatch(file_shapes: dict, arch_shapes: dict):
  """Independent count of missing / unexpected / mis-shaped names between two key lists."""
  f = {strip_module(k): s for k, s in file_shapes.items() if not k.endswith('num_batches_tracked')}
  a = {k: s for k, s in arch_shapes.items() if not k.endswith('num_batches_tracked')}
  missing = sorted(set(a) - set(f))
  unexpected = sorted(set(f) - set(a))
  misshaped = sorted(k for k in set(a) & set(f) if a[k] != f[k])
  return missing, unexpected, misshaped


@pytest.mark.parametrize('file_arch,as_arch', [('retinaface_mnet', 'retinaface_r50'),
                                               ('retinaface_r50', 'retinaface_mnet'),
                                               ('retinaface_r50', 'retinaface_mnet_relu')])
def test_wrong_architecture_lists_every_kind_of_mismatch(keyed_files, key_lists, file_arch, as_arch):
  _, paths = keyed_files[file_arch]
  message, sections = mismatch_of(convert_file, paths['zip'], as_arch)
  assert message.splitlines()[0] == f'{paths["zip"]} does not match the architecture:'
  arch_list = key_lists['retinaface_r50' if as_arch == 'retinaface_r50' else 'retinaface_mnet']
  missing, unexpected, misshaped = _expected_mismatch(key_lists[file_arch], arch_list)
  assert {k: n for k, (n, _) in sections.items()} == {
      'missing': len(missing), 'unexpected': len(unexpected), 'mis-shaped': len(misshaped)}
  # Missing and unexpected are listed sorted (the first 50), then '... and N more'.
  for title, keys in (('missing', missing), ('unexpected', unexpected)):
    listed = sections[title][1]
    assert listed[:min(50, len(keys))] == keys[:50]
    if len(keys) > 50:
      assert listed[50:] == [f'... and {len(keys) - 50} more']
  # Every listed mis-shaped line names a shared key with its two torch shapes (listed in tree
  # order, so which 50 are shown is not pinned here).
  file_shapes = {strip_module(k): s for k, s in key_lists[file_arch].items()}
  listed_misshaped = sections['mis-shaped'][1]
  assert len(listed_misshaped) == min(50, len(misshaped)) + (len(misshaped) > 50)
  for line in listed_misshaped[:50]:
    key = line.split(':')[0]
    assert key in misshaped, line
    assert line == f'{key}: file {file_shapes[key]}, expected {arch_list[key]}'
  if file_arch == 'retinaface_mnet':
    assert 'body.conv1.weight' in sections['missing'][1]
    assert 'body.bn1.running_var' in sections['missing'][1]
    assert 'body.stage1.0.0.weight' in sections['unexpected'][1]
    assert 'fpn.output1.1.running_mean: file (64,), expected (256,)' in listed_misshaped
    assert 'BboxHead.0.conv1x1.weight: file (8, 64, 1, 1), expected (8, 256, 1, 1)' in listed_misshaped
  else:
    assert 'body.stage1.0.0.weight' in sections['missing'][1]
    assert 'body.conv1.weight' in sections['unexpected'][1]
    assert 'body.bn1.running_var' in sections['unexpected'][1]
    assert 'fpn.output1.1.running_mean: file (256,), expected (64,)' in listed_misshaped
    assert 'BboxHead.0.conv1x1.weight: file (8, 256, 1, 1), expected (8, 64, 1, 1)' in listed_misshaped
  assert not any('module.' in line for line in message.splitlines()[1:])  # reported without the prefix
  assert not any('num_batches_tracked' in line for line in message.splitlines())


@pytest.fixture(scope='module')
def mnet_state(keyed_files):
  return dict(keyed_files['retinaface_mnet'][0])


@pytest.mark.parametrize('key,bad_shape,line', [
    ('ssh2.conv5X5_1.0.weight', (64, 16, 3, 3), 'ssh2.conv5X5_1.0.weight: file (64, 16, 3, 3), expected (16, 64, 3, 3)'),
    ('body.stage2.3.0.weight', (128, 1, 1, 3), 'body.stage2.3.0.weight: file (128, 1, 1, 3), expected (128, 1, 3, 3)'),
    ('fpn.merge1.1.running_var', (63,), 'fpn.merge1.1.running_var: file (63,), expected (64,)'),
    ('ClassHead.0.conv1x1.bias', (4, 1), 'ClassHead.0.conv1x1.bias: file (4, 1), expected (4,)'),
])
def test_single_misshaped_tensor(mnet_state, tmp_path, key, bad_shape, line):
  state = dict(mnet_state)
  state[key] = torch.zeros(bad_shape)
  path = save(state, tmp_path / 'bad.pth', 'legacy')
  message, sections = mismatch_of(convert_file, path, 'retinaface_mnet')
  assert sections == {'mis-shaped': (1, [line])}, message


def test_wrong_rank_conv_weight_is_reported_as_misshaped(mnet_state):
  state = dict(mnet_state)
  state['body.stage1.0.0.weight'] = torch.zeros(8, 27)  # a flattened (8, 3, 3, 3) conv
  message, sections = mismatch_of(convert.convert_state_dict, state, 'retinaface_mnet')
  assert sections == {'mis-shaped': (1, ['body.stage1.0.0.weight: file (8, 27), expected (8, 3, 3, 3)'])}


def test_one_missing_and_one_extra_key_are_both_named(mnet_state, tmp_path):
  state = dict(mnet_state)
  del state['LandmarkHead.2.conv1x1.bias']
  state['LandmarkHead.3.conv1x1.bias'] = torch.zeros(20)
  path = save(state, tmp_path / 'bad.pth', 'zip')
  message, sections = mismatch_of(convert_file, path, 'retinaface_mnet')
  assert sections == {'missing': (1, ['LandmarkHead.2.conv1x1.bias']),
                      'unexpected': (1, ['LandmarkHead.3.conv1x1.bias'])}, message


def test_all_problems_reported_together_and_nothing_returned(mnet_state):
  """A missing BN statistic, a stray classifier and a mis-shaped kernel in one report; the input
  is left untouched."""
  state = dict(mnet_state)
  before = {k: v.clone() for k, v in state.items()}
  del state['ssh1.conv3X3.1.running_mean']
  state['fc.weight'] = torch.zeros(1000, 256)
  state['BboxHead.1.conv1x1.weight'] = torch.zeros(8, 64, 3, 3)
  result = 'not set'
  with pytest.raises(CheckpointMismatch) as info:
    result = convert.convert_state_dict(state, 'retinaface_mnet')
  assert result == 'not set'
  assert mismatch_sections(str(info.value)) == {
      'missing': (1, ['ssh1.conv3X3.1.running_mean']),
      'unexpected': (1, ['fc.weight']),
      'mis-shaped': (1, ['BboxHead.1.conv1x1.weight: file (8, 64, 3, 3), expected (8, 64, 1, 1)'])}
  for k, v in before.items():  # the caller's tensors are not modified
    if k != 'BboxHead.1.conv1x1.weight':
      assert (k not in state and k == 'ssh1.conv3X3.1.running_mean') or torch.equal(state[k], v), k


def test_convert_file_rejects_unknown_arch_and_non_mappings(tmp_path, keyed_files):
  with pytest.raises(ValueError, match='unknown arch') as info:
    convert_file(keyed_files['retinaface_mnet'][1]['zip'], 'retinaface_mnet025')
  for name in DETECTORS + BACKBONES:
    assert name in str(info.value)
  path = save([torch.zeros(3)], tmp_path / 'list.pth', 'zip')
  with pytest.raises(CheckpointMismatch, match='expected a state dict'):
    convert_file(path, 'retinaface_mnet')


# --------------------------------------------------------------------------------------------------
# 3. ImageNet backbones -> the detector's `body`
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def pretrain():
  path = str(shared_file(*PRETRAIN_TAR))
  obj = torch.load(path, map_location='cpu', weights_only=True)
  return path, obj['state_dict'], convert_file(path, 'mobilenet0.25')


def test_mobilenet_pretrain_converts_into_body(pretrain):
  path, state, variables = pretrain
  assert len(state) == 164 and all(k.startswith('module.') for k in state)
  assert tuple(state['module.fc.weight'].shape) == (1000, 256)
  assert set(variables) == {'params', 'batch_stats'}
  assert set(variables['params']) == {'body'} and set(variables['batch_stats']) == {'body'}
  assert set(variables['params']['body']) == {'stage1', 'stage2', 'stage3'}  # no fc
  assert_leaves_equal(variables, expected_leaves(state, prefix='body.', drop=('fc.',)))
  assert variables['params']['body']['stage1']['0']['0']['kernel'][2, 1, 0, 7] == \
      state['module.stage1.0.0.weight'][7, 0, 2, 1].item()


@pytest.mark.parametrize('arch', ['retinaface_mnet', 'retinaface_mnet_relu'])
def test_mobilenet_pretrain_merges_into_detector(pretrain, arch):
  _, _, variables = pretrain
  shapes = detector_shapes(arch)
  assert_same_structure(variables, {col: {'body': tree['body']} for col, tree in shapes.items()})
  merged = {col: {**jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), tree), 'body': variables[col]['body']}
            for col, tree in shapes.items()}
  assert_same_structure(merged, shapes)


def test_mobilenet_pretrain_features_match_reference(pretrain):
  """The converted backbone in the Flax MobileNetV1 computes what the reference computes."""
  _, state, variables = pretrain
  model = ref.build_reference_backbone('mobilenet0.25', leaky=0.1)
  model.load_state_dict({strip_module(k): v for k, v in state.items()}, strict=True)
  x = np.random.default_rng(0).standard_normal((1, 64, 64, 3), dtype=np.float32)
  with torch.no_grad():
    want = [t.permute(0, 2, 3, 1).numpy() for t in model.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2)))]
  flax_model = MobileNetV1(slope=0.1, norm=torch_bn(train=False))
  got = jax.jit(flax_model.apply)({col: tree['body'] for col, tree in variables.items()}, jnp.asarray(x))
  assert [g.shape for g in got] == [(1, 8, 8, 64), (1, 4, 4, 128), (1, 2, 2, 256)]
  assert [w.shape for w in want] == [g.shape for g in got]
  for name, g, w in zip(('C3', 'C4', 'C5'), got, want):
    assert np.std(w) > 0.05, name
    np.testing.assert_allclose(np.asarray(g), w, rtol=0, atol=1e-4, err_msg=name)


def test_mobilenet_pretrain_is_not_a_resnet(pretrain):
  path, _, _ = pretrain
  message, sections = mismatch_of(convert_file, path, 'resnet50')
  assert 'body.conv1.weight' in sections['missing'][1]
  assert 'body.stage1.0.0.weight' in sections['unexpected'][1]
  assert not any('fc.' in k for k in sections['unexpected'][1])  # the classifier is dropped, not reported


def test_torchvision_resnet50_converts_into_body(tmp_path, fmt='zip'):
  model = ref.randomize_(ref.build_reference_backbone('resnet50'), seed=5, calibrate=False)
  state = model.state_dict()
  assert 'fc.weight' in state and 'layer4.2.bn3.num_batches_tracked' in state
  path = save(state, tmp_path / f'resnet50_{fmt}.pth', fmt)
  variables = convert_file(path, 'resnet50')
  assert_leaves_equal(variables, expected_leaves(state, prefix='body.', drop=('fc.',)))
  shapes = detector_shapes('retinaface_r50')
  assert_same_structure(variables, {col: {'body': tree['body']} for col, tree in shapes.items()})
  assert variables['params']['body']['layer4']['0']['downsample']['0']['kernel'].shape == (1, 1, 1024, 2048)
  assert variables['params']['body']['layer4']['0']['downsample']['0']['kernel'][0, 0, 1000, 2047] == \
      state['layer4.0.downsample.0.weight'][2047, 1000, 0, 0].item()


# --------------------------------------------------------------------------------------------------
# 4. The CLI. Two real `python -m` runs, started together (each pays the jax import): the
#    conversion, and a failing one (exit status through `sys.exit`). The other errors go through
#    `convert.main`, the function those runs execute.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def cli(tmp_path_factory):
  src = shared_file(*RELU_2019)
  tmp = tmp_path_factory.mktemp('cli')
  cases = {'ok': 'retinaface_mnet_relu', 'wrong_arch': 'retinaface_r50'}
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  procs = {}
  for name, arch in cases.items():
    cmd = [sys.executable, '-m', 'jaxface.convert', '--arch', arch, '--src', str(src), '--out', str(tmp / name)]
    procs[name] = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
  results = {}
  for name, p in procs.items():
    out, err = p.communicate(timeout=300)
    results[name] = (p.returncode, out, err, tmp / name, src)
  return results


def test_cli_converts_and_detector_loads_without_arch(cli):
  rc, out, err, outdir, src = cli['ok']
  assert rc == 0, err
  assert 'retinaface_mnet_relu' in out
  meta = json.loads((outdir / saved_models.META_FILE).read_text())
  assert meta['arch'] == 'retinaface_mnet_relu'
  assert meta['source'] == str(src)
  det = load_detector(str(outdir))
  assert det.arch == 'retinaface_mnet_relu'
  import cv2
  img = cv2.imread(str(shared_file('data', 'images', '1face.png')))
  faces = det.detect(img)
  assert len(faces) == 1
  np.testing.assert_allclose(faces.boxes[0], [42.02, 29.61, 62.27, 56.34], atol=0.05)
  assert abs(faces.scores[0] - 0.978) <= 1e-3


def test_cli_directory_equals_convert_file(cli):
  rc, _, err, outdir, src = cli['ok']
  assert rc == 0, err
  loaded, meta = saved_models.load_variables(str(outdir))
  assert meta['arch'] == 'retinaface_mnet_relu'
  direct = convert_file(str(src), 'retinaface_mnet_relu')
  assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(direct)
  flat_loaded = flax.traverse_util.flatten_dict(loaded)
  flat = flax.traverse_util.flatten_dict(direct)
  assert len(flat) == 253
  for path, want in flat.items():
    got = flat_loaded[path]
    assert got.dtype == want.dtype and got.shape == want.shape, path
    np.testing.assert_array_equal(got, want, err_msg='/'.join(path))


def test_cli_wrong_architecture_prints_the_mismatch(cli):
  rc, out, err, outdir, src = cli['wrong_arch']
  assert rc != 0
  assert out == ''
  assert f'{src} does not match the architecture:' in err
  assert 'missing key(s)' in err and 'unexpected key(s)' in err and 'mis-shaped key(s)' in err
  assert '    body.conv1.weight\n' in err
  assert '    body.stage1.0.0.weight\n' in err
  assert 'Traceback' not in err
  assert not outdir.exists()


def _main(capsys, *argv) -> tuple[int, str]:
  """`convert.main(argv)` -> (exit status, stderr); argparse errors exit through SystemExit."""
  try:
    rc = convert.main([str(a) for a in argv])
  except SystemExit as e:
    rc = e.code
  return rc, capsys.readouterr().err


def test_cli_unknown_arch_lists_valid_names(capsys, tmp_path):
  rc, err = _main(capsys, '--arch', 'retinaface_mnet025', '--src', shared_file(*RELU_2019), '--out', tmp_path / 'o')
  assert rc not in (0, None)
  assert "'retinaface_mnet025'" in err
  for name in DETECTORS + BACKBONES:
    assert name in err
  assert not (tmp_path / 'o').exists()


def test_cli_missing_source_names_the_path(capsys, tmp_path):
  src = tmp_path / 'no_such_file.pth'
  rc, err = _main(capsys, '--arch', 'retinaface_mnet_relu', '--src', src, '--out', tmp_path / 'o')
  assert rc not in (0, None)
  assert str(src) in err
  assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('content', [b'this is not a checkpoint\n', b''], ids=['text', 'empty'])
def test_cli_non_checkpoint_names_the_file(capsys, tmp_path, content):
  src = tmp_path / 'notes.txt'
  src.write_bytes(content)
  rc, err = _main(capsys, '--arch', 'retinaface_mnet_relu', '--src', src, '--out', tmp_path / 'o')
  assert rc not in (0, None)
  assert str(src) in err
  assert not (tmp_path / 'o').exists()


def test_cli_non_mapping_checkpoint_names_the_file(capsys, tmp_path):
  src = save([torch.zeros(2)], tmp_path / 'list.pth', 'legacy')
  rc, err = _main(capsys, '--arch', 'retinaface_mnet', '--src', src, '--out', tmp_path / 'o')
  assert rc not in (0, None)
  assert src in err and 'state dict' in err
  assert not (tmp_path / 'o').exists()


def test_cli_converts_a_backbone(capsys, tmp_path, pretrain):
  path, _, variables = pretrain
  rc = convert.main(['--arch', 'mobilenet0.25', '--src', path, '--out', str(tmp_path / 'bb')])
  assert rc == 0
  loaded, meta = saved_models.load_variables(str(tmp_path / 'bb'))
  assert meta == {'arch': 'mobilenet0.25', 'source': path}
  assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(variables)
  want = flax.traverse_util.flatten_dict(variables)
  for p, g in flax.traverse_util.flatten_dict(loaded).items():
    np.testing.assert_array_equal(g, want[p], err_msg='/'.join(p))


# --------------------------------------------------------------------------------------------------
# 5. load_detector errors
# --------------------------------------------------------------------------------------------------


def test_load_detector_pth_needs_arch():
  path = str(shared_file(*RELU_2019))
  with pytest.raises(ValueError) as info:
    load_detector(path)
  assert path in str(info.value)
  for name in SPECS:
    assert name in str(info.value)


def test_load_detector_unknown_arch_lists_valid_names():
  with pytest.raises(ValueError) as info:
    load_detector(str(shared_file(*RELU_2019)), arch='mobilenet0.25')
  assert "'mobilenet0.25'" in str(info.value)
  for name in DETECTORS:
    assert name in str(info.value)


def test_load_detector_directory_without_meta(tmp_path):
  empty = tmp_path / 'not_converted'
  empty.mkdir()
  with pytest.raises(FileNotFoundError) as info:
    load_detector(str(empty))
  assert str(empty) in str(info.value)
  assert saved_models.META_FILE in str(info.value)


def test_load_detector_missing_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / 'nope.pth'))):
    load_detector(str(tmp_path / 'nope.pth'), arch='retinaface_mnet')


def test_load_detector_arch_must_match_directory(cli):
  rc, _, err, outdir, _ = cli['ok']
  assert rc == 0, err
  with pytest.raises(ValueError) as info:
    load_detector(str(outdir), arch='retinaface_mnet')
  assert 'retinaface_mnet_relu' in str(info.value) and 'retinaface_mnet' in str(info.value)
  assert str(outdir) in str(info.value)


def test_load_detector_rejects_a_backbone_directory(pretrain, tmp_path):
  path, _, variables = pretrain
  d = tmp_path / 'backbone'
  saved_models.save_variables(str(d), variables, {'arch': 'mobilenet0.25', 'source': path})
  with pytest.raises(ValueError, match='not a detector') as info:
    load_detector(str(d))
  for name in DETECTORS:
    assert name in str(info.value)
