"""SCRFD's Flax models (jaxface.scrfd) against the independent torch re-statement (tests/reference_scrfd.py)
and the released checkpoints' key lists (REFERENCE.md §2.2-2.5, §2.12).

Every released config is checked with random weights (randomised BN statistics and GN/BN affine
parameters, random `Scale`s) converted through the real converter: the raw outputs in the ONNX export's
convention equal the re-statement's. An odd input size exercises the upsampling rule and ResNetV1e's
flooring max-pool.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_scrfd as ref
from conftest import shared_file
from jaxface.scrfd import anchors, model, weights
from jaxface.state_dicts import CheckpointMismatch, template

torch = pytest.importorskip('torch')

# §2.12: trainable parameters of each released config (BN running statistics, num_batches_tracked
# and the DFL projection buffer are not parameters).
PARAMS = {'scrfd_500m': 572_741, 'scrfd_1g': 635_565, 'scrfd_2.5g': 671_761, 'scrfd_10g': 3_860_225,
          'scrfd_34g': 9_802_737, 'scrfd_500m_bnkps': 631_410, 'scrfd_2.5g_bnkps': 819_809,
          'scrfd_10g_bnkps': 4_229_905}


@pytest.fixture(autouse=True)
def one_torch_thread():
  old = torch.get_num_threads()
  torch.set_num_threads(1)  # two threads spin-wait on a shared 2-core machine
  yield
  torch.set_num_threads(old)


def key_list(arch: str) -> dict[str, tuple[int, ...]]:
  text = shared_file('data', 'checkpoint_keys', f'{arch}_keys.txt').read_text()
  out = {}
  for line in text.splitlines():
    key, shape = re.fullmatch(r'(.+) \(([\d, ]*)\)', line.strip()).groups()
    out[key] = tuple(int(d) for d in shape.split(',') if d.strip())
  return out


@pytest.mark.parametrize('arch', sorted(model.SPECS))
def test_released_key_lists_convert_and_parameter_counts_are_published(arch):
  """Random tensors with exactly the released names and shapes convert strictly, and land where
  their names say; the model's parameter count is §2.12's."""
  keys = key_list(arch)
  rng = np.random.default_rng(0)
  state = {k: (np.linspace(0, 8, 9) if k == weights.PROJECT_KEY else rng.normal(size=s).astype(np.float32))
           for k, s in keys.items()}
  state = {'meta': {'CLASSES': ('FG',)}, 'state_dict': state}  # an mmcv checkpoint
  variables = weights.convert_detector(state, model.SPECS[arch], source=arch)
  flat = {'.'.join(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(variables)}
  n = sum(int(np.prod(v.shape)) for k, v in flat.items() if k.startswith('params.'))
  assert n == PARAMS[arch]
  # Spot checks of the layout: a conv transposed to HWIO, a per-stride or shared head, a Scale.
  head = '0' if model.SPECS[arch].strides_share else '(8, 8)'
  np.testing.assert_array_equal(flat[f'params.bbox_head.stride_cls.{head}.kernel'],
                                state['state_dict'][f'bbox_head.stride_cls.{head}.weight'].transpose(2, 3, 1, 0))
  if model.SPECS[arch].use_scale:
    assert flat['params.bbox_head.scales.2.value'] == state['state_dict']['bbox_head.scales.2.scale']


def test_another_size_or_family_fails_naming_keys():
  keys = key_list('scrfd_10g_bnkps')
  state = {k: np.zeros(s, np.float32) for k, s in keys.items()}
  state[weights.PROJECT_KEY] = np.linspace(0, 8, 9)
  with pytest.raises(CheckpointMismatch, match=r'mis-shaped key.*\n.*backbone\.') as info:
    weights.convert_detector(state, model.SPECS['scrfd_2.5g_bnkps'], source='det_10g.pth')
  assert 'det_10g.pth does not match' in str(info.value)
  with pytest.raises(CheckpointMismatch, match='missing key'):
    weights.convert_detector({k: v for k, v in state.items() if 'stride_kps' not in k},
                             model.SPECS['scrfd_10g_bnkps'])
  with pytest.raises(CheckpointMismatch, match='linspace'):
    weights.convert_detector(dict(state, **{weights.PROJECT_KEY: np.ones(9)}), model.SPECS['scrfd_10g_bnkps'])


def _reference_outputs(net, images_nhwc):
  with torch.no_grad():
    out = ref.split_outputs(net(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())))
  b = images_nhwc.shape[0]
  cat = lambda parts, c: np.concatenate([np.asarray(p).reshape(b, -1, c) for p in parts], axis=1)
  return cat(out.scores, 1), cat(out.boxes, 4), (cat(out.kps, 10) if out.kps is not None else None)


# 640 x 640: the test protocol's input. 100 x 132: odd at stride 8 for the ResNets' max-pool (50 -> 25),
# and a non-2x upsampling.
@pytest.mark.parametrize('arch', sorted(model.SPECS))
@pytest.mark.parametrize('shape', [(1, 640, 640), (2, 100, 132)])
def test_raw_outputs_equal_the_restatement(arch, shape):
  net = ref.randomize_(ref.build_scrfd(arch), seed=1)
  variables = weights.convert_detector({k: v.numpy() for k, v in net.state_dict().items()}, model.SPECS[arch])
  images = np.random.default_rng(2).uniform(-1, 1, (*shape, 3)).astype(np.float32)
  want = _reference_outputs(net, images)
  paths = (None, False) if arch in ('scrfd_500m', 'scrfd_10g_bnkps') else (None,)  # CPU kernels, plain layers
  for cpu_kernels in paths:
    got = jax.jit(model.SCRFD(model.SPECS[arch], cpu_kernels=cpu_kernels).apply)(variables, jnp.asarray(images))
    assert got[0].shape[1] == len(anchors.anchor_grid(*shape[1:], model.SPECS[arch].backbone.max_pool_stem)[0])
    for name, g, w in zip(('scores', 'boxes', 'keypoints'), got, want):
      if w is None:
        assert g.shape[-1] == 0
        continue
      np.testing.assert_allclose(np.asarray(g), w, rtol=0, atol=1e-4, err_msg=f'{arch} {name} {cpu_kernels}')
