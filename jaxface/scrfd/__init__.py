"""SCRFD (insightface `detection/scrfd`, REFERENCE.md §2) as a jaxface family: the eight released
models (`model`), the anchor tables and distance coding (`anchors`, `box_coding`), mmdet's test
protocol (`outputs`; `Family.input_size` 640: letterboxed top-left, zero padding after normalising,
boxes clipped to the image), the strict `.pth` key map (`weights`) and the training augmentation
(`augment`).

insightface's ONNX files (BN folded, numeric names) load by graph structure (`onnx_weights`).
`DEPLOYMENT` is the same family under insightface's `scrfd.py` protocol (protocol 'insightface'):
truncating letterbox on black uint8 padding, scores >= 0.5, no clipping, NMS 0.4 with +1 areas.

Training (`FAMILY.training`): ATSS targets (`atss`), QFL + DIoU + keypoint losses (`loss`), the
reference augmentation (`augment`); from scratch, no ImageNet backbone.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from jaxface.family import Family, Training
from jaxface.keypoints import FIVE_POINTS
from jaxface.scrfd import augment, loss, onnx_weights, outputs, weights
from jaxface.scrfd.atss import atss_assign
from jaxface.scrfd.model import SCRFD, SPECS, ScrfdSpec

__all__ = ['DEPLOYMENT', 'FAMILY', 'SCRFD', 'SPECS', 'ScrfdSpec', 'atss_assign']


def _build(spec: ScrfdSpec, *, dtype=jnp.float32, bn_axis_name: str | None = None,
           cpu_kernels: bool | None = None) -> SCRFD:
  return SCRFD(spec, dtype=dtype, bn_axis_name=bn_axis_name, cpu_kernels=cpu_kernels)


def _convert_onnx(path: str, arch: str | None) -> tuple[str, dict[str, Any]]:
  arch = arch or onnx_weights.recognise(path)
  return arch, onnx_weights.convert_onnx(path, FAMILY.spec(arch))


def _augment(image, sample, rng, *, image_size: int, min_face: float = 0.0):
  return augment.scrfd_augment(image, sample, rng, image_size=image_size, min_face=min_face)


def _no_backbone(spec) -> str:
  raise ValueError("SCRFD trains from scratch (insightface's configs load no ImageNet weights): set "
                   "--config.pretrained_backbone=''")


def _convert_torch(state_dict: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
  return weights.convert_detector(state_dict, FAMILY.spec(name), source)


FAMILY = Family(
    name='scrfd',
    specs=SPECS,
    build=_build,
    preprocess=outputs.preprocess,
    pad_bgr=None,             # mmdet pads with 0 after normalising: no uint8 colour is 0 there
    keypoints=FIVE_POINTS,
    anchor_cells=outputs.anchor_cells,
    scores=outputs.scores,
    decode=outputs.decode,
    nms_threshold=0.45,       # test_cfg nms iou_threshold
    nms_plus_one=False,       # mmcv's NMS: plain IoU
    test_scale='vga',         # every published SCRFD number
    convert_torch=_convert_torch,
    input_size=outputs.input_size,  # 640: test_widerface.py --mode 0, keep-ratio resize and pad to 640 x 640
    convert_onnx=_convert_onnx,
    conf_threshold=0.02,      # test_widerface.py --thr; scores > it
    protocol='mmdet',         # no caps before or after NMS (max_per_img -1)
    training=Training(
        loss=loss.family_loss,
        loss_terms=('loss', 'loss_cls', 'loss_bbox', 'loss_kps'),
        augment=_augment,
        backbone=_no_backbone,
    ),
)

# insightface's deployment path (`scrfd.py`, the python-package's model_zoo): what people running the
# released ONNX files get.
DEPLOYMENT = dataclasses.replace(
    FAMILY,
    pad_bgr=(0, 0, 0),        # black uint8 canvas, normalised with the image
    decode=outputs.decode_unclipped,
    letterbox=outputs.insightface_letterbox,
    conf_threshold=0.5,       # det_thresh
    conf_inclusive=True,      # scores >= thresh
    nms_threshold=0.4,
    nms_plus_one=True,        # its nms(): +1-pixel areas, in image pixels
    protocol='insightface',
)
