"""biubug6's PyTorch checkpoints -> RetinaFace variables (REFERENCE.md §1.10), strictly.

The Flax modules carry the checkpoint's names, so this is the shared by-name map
(`jaxface.state_dicts.convert`) against the model's variable shapes. The ImageNet backbones that
training starts from map onto the detector's `body`.
"""
from __future__ import annotations

from typing import Any, Mapping

from jaxface import state_dicts
from jaxface.layers import torch_bn
from jaxface.retinaface.mobilenet import MobileNetV1
from jaxface.retinaface.model import RetinaFace
from jaxface.retinaface.resnet import ResNet50

# ImageNet backbones that training starts from: (Flax module, keys dropped on purpose).
BACKBONES = {
    'mobilenet0.25': (lambda: MobileNetV1(0.1, norm=torch_bn(train=False)), ('fc.',)),
    'resnet50': (lambda: ResNet50(norm=torch_bn(train=False)), ('fc.',)),
}


def convert_detector(state_dict: Mapping[str, Any], spec, source: str = 'checkpoint') -> dict[str, Any]:
  """A biubug6 RetinaFace state dict (with or without `module.`) -> `{'params', 'batch_stats'}`."""
  return state_dicts.convert(state_dicts.normalise_keys(state_dict), state_dicts.template(RetinaFace(spec)),
                             source=source)


def convert_backbone(state_dict: Mapping[str, Any], backbone: str, source: str = 'checkpoint') -> dict[str, Any]:
  """An ImageNet backbone (the MobileNet-0.25 `.tar`, a torchvision ResNet-50) -> the detector's `body`.

  Returns `{'params': {'body': ...}, 'batch_stats': {'body': ...}}` to merge into a freshly
  initialised detector; the classifier (`fc`) is dropped.
  """
  if backbone not in BACKBONES:
    raise ValueError(f'unknown backbone {backbone!r}; valid: {", ".join(sorted(BACKBONES))}')
  make, drop = BACKBONES[backbone]
  shapes = state_dicts.template(make())
  shapes = {col: {'body': tree} for col, tree in shapes.items()}
  return state_dicts.convert(state_dicts.normalise_keys(state_dict), shapes, prefix='body.',
                             drop=tuple('body.' + d for d in drop) + drop, source=source)
