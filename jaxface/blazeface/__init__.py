"""BlazeFace (hollance/BlazeFace-PyTorch, a port of MediaPipe's face detector; REFERENCE.md §3) as a
jaxface family: the front (128 px), back (256 px) and MediaPipe's full-range (192 px) models (`model`), MediaPipe's SSD anchor
calculator (`anchors`), the box and six-keypoint coding (`box_coding`), the outputs' reading
(`outputs`), hollance's `.pth` key map (`weights`) and MediaPipe's `.tflite` files mapped by graph
structure (`tflite_weights`, read without TensorFlow by `jaxface.tflite`).

Detection (`FAMILY`, protocol 'hollance'): every image is letterboxed centred into the model's
square input as MediaPipe does (black padding), scores `sigmoid(clip(logit, +-100))` >= the model's
threshold (0.75 front, 0.65 back), weighted NMS at IoU 0.3 whose merged score is the cluster's mean.
`MEDIAPIPE` is MediaPipe's own protocol (protocol 'mediapipe'): threshold 0.5, the merged score is
the cluster's top score.

Training (`FAMILY.training`, the first open recipe; docs/training.md): SSD-style matching against the
anchor calculator's sizes (`matching`), focal loss and size-normalised smooth-L1 (`loss`), face-size
driven square crops (`augment`); from scratch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from jaxface import nms
from jaxface.blazeface import augment, loss, outputs, tflite_weights, weights
from jaxface.blazeface.model import SPECS, BlazeFace, BlazeSpec
from jaxface.family import Family, Training
from jaxface.keypoints import Keypoints

__all__ = ['FAMILY', 'MEDIAPIPE', 'SPECS', 'BlazeFace', 'BlazeSpec', 'SIX_POINTS']

# The six keypoints "from the perspective of the person" (hollance's README): the person's right
# eye is on the image's left. A mirror swaps the eyes and the ears.
SIX_POINTS = Keypoints(('right_eye', 'left_eye', 'nose', 'mouth', 'right_ear', 'left_ear'), (1, 0, 2, 3, 5, 4))

# hollance's `min_score_thresh` per model (by input side); the full-range model, which hollance never
# ported, keeps MediaPipe's 0.5.
HOLLANCE_CONF = {128: 0.75, 256: 0.65, 192: 0.5}


def _build(spec: BlazeSpec, *, dtype=jnp.float32, bn_axis_name: str | None = None,
           cpu_kernels: bool | None = None) -> BlazeFace:
  del bn_axis_name  # no normalisation layers
  return BlazeFace(spec, dtype=dtype, cpu_kernels=cpu_kernels)


def _convert_torch(state_dict: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
  return weights.convert_detector(state_dict, FAMILY.spec(name), source)


def _augment(image, sample, rng, *, image_size: int, min_face: float = 0.0):
  return augment.blazeface_augment(image, sample, rng, image_size=image_size, min_face=min_face)


def _no_backbone(spec) -> str:
  raise ValueError("BlazeFace trains from scratch (no ImageNet backbone exists for it): set "
                   "--config.pretrained_backbone=''")


def _input_size(spec: BlazeSpec) -> int:
  return spec.input_size


def _hollance_conf(spec: BlazeSpec) -> float:
  return HOLLANCE_CONF[spec.input_size]


FAMILY = Family(
    name='blazeface',
    specs=SPECS,
    build=_build,
    preprocess=outputs.preprocess,
    pad_bgr=(0, 0, 0),        # MediaPipe pads black: -1 after scaling
    keypoints=SIX_POINTS,
    anchor_cells=outputs.anchor_cells,
    scores=outputs.scores,
    decode=outputs.decode,
    nms_threshold=0.3,        # min_suppression_threshold
    nms_plus_one=False,
    test_scale='original',    # no published WIDER protocol; every image is letterboxed into the input
    convert_torch=_convert_torch,
    input_size=_input_size,
    letterbox_centred=True,
    conf_threshold=0.75,
    conf_threshold_of=_hollance_conf,
    conf_inclusive=True,      # scores >= min_score_thresh
    weighted_nms_score=nms.mean_score,
    protocol='hollance',
    convert_tflite=tflite_weights.convert_tflite,
    file_protocols={'.tflite': 'mediapipe'},   # MediaPipe's files run MediaPipe's post-processing
    training=Training(
        loss=loss.family_loss,
        loss_terms=('loss', 'loss_cls', 'loss_box', 'loss_kps'),
        augment=_augment,
        backbone=_no_backbone,
    ),
)

# MediaPipe's face detection graphs: min score 0.5, the cluster keeps its top score.
MEDIAPIPE = dataclasses.replace(
    FAMILY,
    conf_threshold=0.5,
    conf_threshold_of=None,
    weighted_nms_score=nms.top_score,
    protocol='mediapipe',
)
