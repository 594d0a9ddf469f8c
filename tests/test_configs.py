"""The experiment configs: the reference recipes, the demo variants, clear errors."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.parametrize('name, batch, size, epochs, decay, backbone', [
    ('retinaface_mnet', 32, 640, 250, (190, 220), 'mobilenetV1X0.25_pretrain.tar'),
    ('retinaface_r50', 24, 840, 100, (70, 90), 'resnet50-0676ba61.pth'),
])
def test_reference_recipes(name, batch, size, epochs, decay, backbone, monkeypatch):
  monkeypatch.delenv('JAXFACE_MNET_BACKBONE', raising=False)
  monkeypatch.delenv('JAXFACE_R50_BACKBONE', raising=False)
  c = load(name).get_config()
  assert (c.arch, c.batch_size, c.data.image_size, c.num_epochs, tuple(c.decay_epochs)) == (
      name, batch, size, epochs, decay)
  assert (c.learning_rate, c.momentum, c.weight_decay, c.warmup_epochs, c.loss.loc_weight) == (
      1e-3, 0.9, 5e-4, 0.0, 2.0)
  assert c.data.dataset == 'wider' and c.pretrained_backbone.endswith(backbone)
  assert f'python train.py --config configs/{name}.py' in load(name).__doc__


@pytest.mark.parametrize('name', ['retinaface_mnet', 'retinaface_r50'])
def test_demo_variants_need_no_download(name):
  c = load(name).get_config('demo')
  assert c.data.dataset == 'synthetic' and c.pretrained_backbone == ''
  assert f'configs/{name}.py:demo' in load(name).__doc__
  with pytest.raises(ValueError, match='unknown variant'):
    load(name).get_config('dmeo')


@pytest.mark.parametrize('variant', ['', 'demo'])
def test_every_config_names_a_trainable_arch_and_no_test_hooks(variant):
  """Each config's arch resolves to a family with training parts, and no test-only field (fault
  injection) is part of a production config."""
  from jaxface import families
  for name in ('retinaface_mnet', 'retinaface_r50', 'blazeface_front', 'blazeface_full_range'):
    c = load(name).get_config(variant)
    assert families.family_of(c.arch).training is not None
    assert not any('crash' in k for k in c.keys())


SCRFD_MODELS = ('500m', '1g', '2.5g', '10g', '34g', '500m_bnkps', '2.5g_bnkps', '10g_bnkps')


@pytest.mark.parametrize('model', SCRFD_MODELS)
def test_scrfd_reference_recipes(model):
  """insightface's recipe: SGD 0.01 (0.02 for 34g), momentum 0.9, wd 5e-4, warmup 1500 steps from
  0.001, x0.1 at epochs 440 and 544 of 640, 8 images per GPU on 4 GPUs (16 for 500m_bnkps), 640 px,
  from scratch, labelv2.txt."""
  from jaxface import families
  name = f'scrfd_{model}'
  c = load(name).get_config()
  assert c.arch == name and families.family_of(name).training is not None
  assert c.learning_rate == (0.02 if model == '34g' else 0.01)
  assert (c.momentum, c.weight_decay, c.warmup_steps, c.warmup_ratio) == (0.9, 5e-4, 1500, 0.001)
  assert (c.num_epochs, tuple(c.decay_epochs), c.lr_gamma) == (640, (440, 544), 0.1)
  assert c.batch_size == (64 if model == '500m_bnkps' else 32)
  assert (c.data.image_size, c.data.dataset, c.data.annotations, c.pretrained_backbone) == (640, 'wider', 'scrfd', '')
  assert f'python train.py --config configs/{name}.py' in load(name).__doc__


def test_scrfd_demo_variant():
  c = load('scrfd_500m_bnkps').get_config('demo')
  assert c.data.dataset == 'synthetic' and c.arch == 'scrfd_500m_bnkps'
  assert 'configs/scrfd_500m_bnkps.py:demo' in load('scrfd_500m_bnkps').__doc__
  with pytest.raises(ValueError, match='no variant'):
    load('scrfd_10g').get_config('demo')


def test_scrfd_warmup_is_mmcv_linear():
  """lr at step i < 1500: base * (0.001 + 0.999 * i / 1500), then the step decays by epoch."""
  from jaxface.training import train_step as ts
  s = ts.step_decay(0.01, 403, (440, 544), warmup_steps=1500, warmup_ratio=0.001)
  for i in (0, 1, 750, 1499):
    assert abs(float(s(i)) - 0.01 * (0.001 + 0.999 * i / 1500)) < 1e-9
  assert abs(float(s(1500)) - 0.01) < 1e-9 and abs(float(s(440 * 403)) - 0.001) < 1e-9


@pytest.mark.parametrize('name, size', [('blazeface_front', 128), ('blazeface_full_range', 192)])
def test_blazeface_recipes(name, size):
  """jaxface's BlazeFace recipe: the model's input side, clipped SGD, MediaPipe's protocol for the AP;
  the demo on the synthetic set scores images at the input side; the docstring holds the commands."""
  c = load(name).get_config()
  assert (c.arch, c.data.image_size, c.data.annotations, c.grad_clip_norm, c.eval_protocol) == (
      name, size, 'retinaface', 5.0, 'mediapipe')
  assert c.pretrained_backbone == '' and c.data.dataset == 'wider'
  demo = load(name).get_config('demo')
  assert demo.data.dataset == 'synthetic' and tuple(demo.data.synthetic_val_image_size) == (size, size)
  assert demo.num_steps * 0.8 == pytest.approx(demo.decay_epochs[0] * 10_000 / demo.batch_size)
  doc = load(name).__doc__
  assert f'python train.py --config configs/{name}.py' in doc and f'configs/{name}.py:demo' in doc
  with pytest.raises(ValueError, match='unknown variant'):
    load(name).get_config('dmeo')
