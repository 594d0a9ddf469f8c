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
  for name in ('retinaface_mnet', 'retinaface_r50'):
    c = load(name).get_config(variant)
    assert families.family_of(c.arch).training is not None
    assert not any('crash' in k for k in c.keys())
