"""RetinaFace (biubug6/Pytorch_Retinaface): MobileNet-0.25 and ResNet-50, as a jaxface family.

Everything that is RetinaFace's lives in this package: the model and its backbones (`model`,
`mobilenet`, `resnet`), the prior table (`anchors`), the matched box coding pair (`box_coding`),
the IoU matcher and MultiBox loss (`matching`, `loss`), the training augmentation (`augment`), the
input and output conventions (`outputs`) and the checkpoint key map (`weights`). `FAMILY` hands
them to shared code (`jaxface.family`). `DEFAULT_MODEL` is the released 2019 MobileNet-0.25 as
package data (see `tools/make_default_model.py`).
"""
from __future__ import annotations

import functools
import os
from typing import Any, Mapping

import jax.numpy as jnp

from jaxface.family import Family, Training
from jaxface.keypoints import FIVE_POINTS
from jaxface.retinaface import augment, loss, outputs, weights
from jaxface.retinaface.model import SPECS, RetinaFace, RetinaFaceSpec, neck_and_heads

__all__ = ['DEFAULT_MODEL', 'FAMILY', 'SPECS', 'RetinaFace', 'RetinaFaceSpec', 'neck_and_heads', 'retinaface']

# biubug6's first release (MIT), converted by tools/make_default_model.py: a saved-model directory
# (`jaxface.saved_models`) that needs nothing downloaded.
DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'default_model')


def retinaface(arch: str, **kwargs) -> RetinaFace:
  """The model for a released architecture name; an unknown name lists the valid ones."""
  return FAMILY.model(arch, **kwargs)


def _build(spec: RetinaFaceSpec, *, dtype=jnp.float32, bn_axis_name: str | None = None,
           cpu_kernels: bool | None = None) -> RetinaFace:
  return RetinaFace(spec, dtype=dtype, bn_axis_name=bn_axis_name, cpu_kernels=cpu_kernels)


def _convert_torch(state_dict: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
  if name in weights.BACKBONES:
    return weights.convert_backbone(state_dict, name, source)
  return weights.convert_detector(state_dict, FAMILY.spec(name), source)


def _augment(image, sample, rng, *, image_size: int, min_face: float = 0.0):
  return augment.retinaface_augment(image, sample, rng, image_size=image_size, min_face=min_face)


FAMILY = Family(
    name='retinaface',
    specs=SPECS,
    build=_build,
    preprocess=outputs.preprocess,
    pad_bgr=outputs.BGR_MEAN,
    keypoints=FIVE_POINTS,
    anchor_cells=outputs.anchor_cells,
    scores=outputs.scores,
    decode=outputs.decode,
    nms_threshold=0.4,        # test_widerface.py / detect.py
    nms_plus_one=True,        # py_cpu_nms's +1-pixel areas
    test_scale='original',    # biubug6's README numbers: the image at its own size
    pre_nms_top_k=5000,       # detect.py's top_k
    max_detections=750,       # detect.py's keep_top_k
    protocol='biubug6',       # Pytorch_Retinaface's detect.py / test_widerface.py
    convert_torch=_convert_torch,
    backbones=tuple(weights.BACKBONES),
    training=Training(
        loss=loss.family_loss,
        loss_terms=('loss', 'loss_loc', 'loss_cls', 'loss_landm'),
        augment=_augment,
        backbone=lambda spec: spec.backbone,
    ),
)
