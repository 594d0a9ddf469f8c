"""The family contract: what shared code (inference, the detector, evaluation, the train step and
loop, the converter) needs to know about a detector family, as one frozen object.

A family is a package (`jaxface/retinaface/`, ...) that builds one `Family` from its own modules.
Shared code receives it as an argument and never imports a family; the one place that maps names to
families is `jaxface.families` (for CLIs and checkpoint metadata).

Worked example: how `Detector` runs any family on a batch of uint8 BGR images `[B, H, W, 3]`:

    family = families.family_of('retinaface_mnet')       # the name table, at the edge
    spec = family.specs['retinaface_mnet']               # a typed, frozen model description
    model = family.build(spec)                           # a flax module
    outputs = model.apply(variables, family.preprocess(images))   # the head outputs, a tuple
    scores = family.scores(outputs)                      # [B, A] face probability per anchor
    cells = family.anchor_cells(spec, H, W)              # [A, 3] (row, col, stride), static numpy
    boxes, points = family.decode(spec, one_image_outputs, idx, (H, W), image_hw=(h, w))  # K candidates, px
    # ... then NMS with family.nms_threshold / family.nms_plus_one (jaxface.nms)

Adding a family is a new package that fills these fields and one entry in `jaxface.families`
(docs/families.md walks through it).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import numpy as np

from jaxface.keypoints import Keypoints

# A family's head outputs: a tuple of `[B, A, ...]` arrays in anchor order (for RetinaFace
# `(box offsets [B,A,4], class logits [B,A,2], landmark offsets [B,A,10])`).
Outputs = tuple[jax.Array, ...]


@dataclasses.dataclass(frozen=True)
class Training:
  """What the shared train step and loop need beyond inference.

  loss: `(spec, outputs, batch, *, axis_name, **hyper) -> (scalar loss, metrics)`, one compiled
    function over the batch from `jaxface.data.pipeline` (image `[B,S,S,3]`, ground truth padded to
    `[B,G,...]` with masks). Under pmap, `axis_name` is the device axis over which its normalisers
    are reduced. `metrics` holds `loss_terms` and `num_pos` (the global positive count).
  loss_terms: the metric names the loop logs, the total first.
  augment: `(image BGR uint8, Sample, rng, *, image_size, min_face) -> data.transforms.Augmented`.
  backbone: `spec -> name` of the ImageNet backbone whose converted weights
    (`Family.convert_torch(state_dict, name, source)`, a partial variable tree) start training.
  """
  loss: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
  loss_terms: tuple[str, ...]
  augment: Callable[..., Any]
  backbone: Callable[[Any], str]


@dataclasses.dataclass(frozen=True)
class Family:
  """One detector family (see the module docstring for how shared code uses each field).

  name: the family's name ('retinaface').
  specs: released architecture name -> typed, frozen model description.
  build: `(spec, *, dtype=float32, bn_axis_name=None, cpu_kernels=None) -> flax module`; the module
    maps the network input `[B,H,W,3]` to the head outputs (`Outputs`), `train=True` for BN batch
    statistics; `cpu_kernels` picks its layers' path (`jaxface.cpu_kernels.enabled`).
  preprocess: uint8 BGR `[B,H,W,3]` -> the network input (mean, std, channel order).
  pad_bgr: the uint8 BGR colour that preprocesses to zero, which padded pixels hold; None where no
    uint8 colour does (SCRFD's `(x - 127.5) / 128`): padded pixels are then set to zero after
    preprocessing, inside the compiled program, as mmdet pads after normalising.
  keypoints: the keypoints per face and their mirror order.
  anchor_cells: `(spec, H, W) -> [A, 3] int32` (row, column, stride) of each anchor in head order,
    static numpy: an anchor exists in an unpadded `h x w` image iff row < ceil(h/stride) and
    column < ceil(w/stride), so padded batches mask the anchors the image itself would not have.
  scores: head outputs `[B, ...]` -> `[B, A]` face probability.
  decode: `(spec, one image's head outputs, idx [K], input_hw=(H, W), image_hw=[2]) ->
    (boxes [K,4] xyxy px, keypoints [K,P,2] px)` for the candidate anchors `idx` of an `H x W`
    input; `image_hw` (traced) is the unpadded image inside it, for families that clip to it.
  nms_threshold, nms_plus_one: the reference's test-time NMS (IoU threshold; `+1`-pixel areas).
  test_scale: the evaluation protocol its published WIDER numbers use ('original', 'mxnet', 'vga').
  input_size: None (any input size; anchors beyond an image padded into a larger batch are masked),
    or `spec -> S`, a fixed square network input: the detector resizes each image keeping its aspect
    ratio so the long side is `S` (by `letterbox`, bilinear), places it top-left (or centred, where
    `letterbox_centred`), keeps every anchor (`decode` clips boxes where the protocol does), and maps
    the decoded boxes back to the image's pixels inside the program, before NMS (as the references do).
  letterbox: `(h, w, input_size) -> (new_h, new_w, scale [2] float32 (x, y))`, the resize rule of a
    fixed-input family; None: mmcv's `imrescale` (sides `int(x*s + 0.5)`, scale per axis from the
    integer sizes, `inference.letterbox_size`).
  letterbox_centred: the image goes in centred instead (MediaPipe's letterbox,
    `inference.centred_letterbox`: one scale `S / long side`, the padding split evenly, `pad_bgr`).
  conf_threshold: the default score threshold; conf_inclusive: keep scores `>=` it (else `>`).
  conf_threshold_of: `spec -> threshold` where the default differs per model (BlazeFace's front and
    back models), else None (`default_conf`).
  convert_tflite: `(path, arch or None) -> (arch, variables)` for the family's `.tflite` files (the
    architecture recognised from the graph when `arch` is None), or None.
  file_protocols: file suffix -> the protocol a file of that kind loads under by default (BlazeFace:
    `.tflite` files run MediaPipe's protocol, `.pth` files hollance's, the family's own).
  weighted_nms_score: None (greedy NMS), or weighted NMS (`jaxface.nms.weighted_nms`) with this rule
    for a cluster's score (`nms.mean_score`, `nms.top_score`).
  pre_nms_top_k, max_detections: the reference's caps on NMS's input and output (None: none; the
    compiled program then sizes them by the anchor count).
  protocol: the name of this test protocol. A family package may export variants of its `Family`
    with another protocol (`dataclasses.replace`); `jaxface.families.PROTOCOLS` names them.
  convert_torch: `(state dict with numpy values, name, source file) -> variables`, strict; `name`
    is an arch of `specs` or an ImageNet backbone name of `backbones`.
  backbones: the ImageNet backbone names `convert_torch` also takes (for training).
  training: the train-side parts, or None for an inference-only family.
  convert_onnx: `(path, arch or None) -> (arch, variables)` for the family's released ONNX files
    (the architecture recognised from the graph when `arch` is None), or None.
  """
  name: str
  specs: Mapping[str, Any]
  build: Callable[..., Any]
  preprocess: Callable[[jax.Array], jax.Array]
  pad_bgr: tuple[int, int, int] | None
  keypoints: Keypoints
  anchor_cells: Callable[[Any, int, int], np.ndarray]
  scores: Callable[[Outputs], jax.Array]
  decode: Callable[..., tuple[jax.Array, jax.Array]]
  nms_threshold: float
  nms_plus_one: bool
  test_scale: str
  convert_torch: Callable[[Mapping[str, np.ndarray], str, str], dict[str, Any]]
  backbones: tuple[str, ...] = ()
  training: Training | None = None
  input_size: Callable[[Any], int] | None = None
  convert_onnx: Callable[[str, str | None], tuple[str, dict[str, Any]]] | None = None
  letterbox: Callable[[int, int, int], tuple[int, int, np.ndarray]] | None = None
  conf_threshold: float = 0.02
  conf_inclusive: bool = False
  pre_nms_top_k: int | None = None
  max_detections: int | None = None
  protocol: str = 'reference'
  letterbox_centred: bool = False
  conf_threshold_of: Callable[[Any], float] | None = None
  weighted_nms_score: Callable[..., jax.Array] | None = None
  convert_tflite: Callable[[str, str | None], tuple[str, dict[str, Any]]] | None = None
  file_protocols: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def spec(self, arch: str) -> Any:
    """The spec of a released architecture; an unknown name lists the valid ones."""
    if arch not in self.specs:
      raise ValueError(f'unknown {self.name} arch {arch!r}; valid: {", ".join(sorted(self.specs))}')
    return self.specs[arch]

  def default_conf(self, spec: Any) -> float:
    """The protocol's score threshold for a model (`conf_threshold_of`, else `conf_threshold`)."""
    return self.conf_threshold if self.conf_threshold_of is None else self.conf_threshold_of(spec)

  def model(self, arch: str, **kwargs) -> Any:
    """`build(spec(arch), **kwargs)`."""
    return self.build(self.spec(arch), **kwargs)
