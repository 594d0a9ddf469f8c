"""An independent PyTorch re-statement of SCRFD (deepinsight/insightface ``detection/scrfd``).

This module is test-only ground truth: the future Flax port (``jaxface/scrfd/``) is checked against it.
It is written from the facts in ``shared/docs/REFERENCE.md`` section 2 (2.2 configs, 2.3 backbones,
2.4 PAFPN, 2.5 head, 2.6 anchors, 2.9 test paths, 2.10 ONNX export, 2.12 keys), in plain torch and
numpy (no mmdet / mmcv), and deliberately shares no code with ``jaxface`` or with
``tests/reference_torch.py``.

What it provides:

* ``nn.Module`` classes whose ``state_dict`` keys and shapes equal the released checkpoints' for the
  eight released configs (``CONFIGS``), built by ``build_scrfd(name)``;
* a forward pass in the ONNX export convention (section 2.10): per stride 8, 16, 32, scores after
  the sigmoid ``[B, H*W*2, 1]``, box distances after ``Scale`` and *before* the stride
  ``[B, H*W*2, 4]``, keypoint distances ``[B, H*W*2, 10]``; anchor index ``(y*W + x)*2 + a``;
* anchors (section 2.6) and the two post-processing paths of section 2.9:
  ``mmdet_detect`` (the WIDER FACE test protocol behind the README numbers) and
  ``insightface_detect`` (the deployment ``scrfd.py``);
* ``randomize_``: seeded random weights, BN statistics, affine parameters and Scale values that keep
  activations O(1) through the deep nets (34g has 43 bottlenecks);
* ``fold_batchnorm`` and ``export_onnx`` (opset 11, both output layouts the released files use).

Every function works on one image unless its name or docstring says otherwise.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from typing import Callable, NamedTuple, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "STRIDES",
    "NUM_ANCHORS",
    "BASE_SIZES",
    "ANCHOR_SCALES",
    "NUM_KPS",
    "REG_MAX",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "MobileNetV1Spec",
    "ResNetV1eSpec",
    "SCRFDConfig",
    "CONFIGS",
    "build_scrfd",
    "ConvModule",
    "DepthwiseSeparableConvModule",
    "MobileNetV1",
    "BasicBlock",
    "Bottleneck",
    "ResNetV1e",
    "upsample_nearest",
    "PAFPN",
    "Scale",
    "Integral",
    "head_key",
    "SCRFDHead",
    "SCRFD",
    "LevelOutputs",
    "split_outputs",
    "randomize_",
    "damp_classifier_",
    "fold_batchnorm",
    "output_names",
    "export_onnx",
    "torch_runner",
    "onnx_runner",
    "anchor_centers",
    "anchor_boxes",
    "distance2bbox",
    "distance2kps",
    "nms_mmcv",
    "nms_plus_one",
    "mmdet_resize_size",
    "mmdet_preprocess",
    "mmdet_postprocess",
    "mmdet_detect",
    "MmdetMeta",
    "Detections",
    "to_widerface_rows",
    "letterbox_size",
    "insightface_preprocess",
    "insightface_postprocess",
    "insightface_detect",
]

STRIDES = (8, 16, 32)
NUM_ANCHORS = 2  # anchor scales [1, 2] x ratio [1.0], per feature-map location
BASE_SIZES = (16, 64, 256)  # per level; anchor side = base * scale
ANCHOR_SCALES = (1, 2)
NUM_KPS = 5
REG_MAX = 8  # Integral(reg_max=8): the project buffer is linspace(0, 8, 9)

_BN_EPS = 1e-5
_GN_EPS = 1e-5  # torch's default; Flax's GroupNorm default (1e-6) would not match

# Pre-processing shared by both test paths: RGB, (x - 127.5) / 128.
PIXEL_MEAN = 127.5
PIXEL_STD = 128.0


# --------------------------------------------------------------------------------------------------
# Configs (section 2.2). Typed, explicit; no registry.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MobileNetV1Spec:
    """insightface's MobileNetV1: ``stage_planes`` has 6 entries: stem conv, stem dw, layer1..4."""

    stage_blocks: tuple[int, int, int, int]
    stage_planes: tuple[int, int, int, int, int, int]

    @property
    def out_channels(self) -> tuple[int, int, int, int]:  # layer1..4
        return tuple(self.stage_planes[2:])


@dataclasses.dataclass(frozen=True)
class ResNetV1eSpec:
    """ResNet with deep stem, 2x2 max-pool and avg-down shortcuts; ``stage_planes`` before expansion."""

    block: str  # 'basic' | 'bottleneck'
    base_channels: int  # stem output width
    stage_blocks: tuple[int, int, int, int]
    stage_planes: tuple[int, int, int, int]

    @property
    def expansion(self) -> int:
        return {"basic": 1, "bottleneck": 4}[self.block]

    @property
    def out_channels(self) -> tuple[int, int, int, int]:  # layer1..4
        return tuple(p * self.expansion for p in self.stage_planes)


@dataclasses.dataclass(frozen=True)
class SCRFDConfig:
    """One row of REFERENCE.md section 2.2. Common to all: 1 class, cls/reg towers shared, no DFL."""

    backbone: MobileNetV1Spec | ResNetV1eSpec
    neck_channels: int  # PAFPN out_channels == head in_channels
    stacked_convs: int  # head tower depth
    feat_channels: int  # head tower width
    norm: str  # 'gn' | 'bn' in the head (the backbone is always BN, the neck has no norm)
    gn_groups: int | None  # GroupNorm groups when norm == 'gn'
    strides_share: bool  # one head ('0') for all levels, or one per stride ('(8, 8)', ...)
    dw_conv: bool  # depthwise-separable tower convs
    scale_mode: int
    use_kps: bool

    @property
    def use_scale(self) -> bool:
        # SCRFDHead: use_scale = scale_mode > 0 and (strides_share or scale_mode == 2).
        return self.scale_mode > 0 and (self.strides_share or self.scale_mode == 2)

    @property
    def neck_in_channels(self) -> tuple[int, int, int]:
        # PAFPN start_level=1: the neck reads layer2..4 (strides 8, 16, 32).
        return tuple(self.backbone.out_channels[1:])


_MBN_500M = MobileNetV1Spec((2, 3, 2, 6), (16, 16, 40, 72, 152, 288))
_MBN_1G = MobileNetV1Spec((3, 2, 1, 5), (32, 48, 48, 160, 216, 312))
_RES_2_5G = ResNetV1eSpec("basic", 24, (3, 5, 3, 2), (24, 48, 48, 80))
_RES_10G = ResNetV1eSpec("basic", 56, (3, 4, 2, 3), (56, 88, 88, 224))
_RES_34G = ResNetV1eSpec("bottleneck", 56, (17, 16, 2, 8), (56, 56, 144, 184))

CONFIGS: dict[str, SCRFDConfig] = {
    # GN, shared head, Scale per level.
    "scrfd_500m": SCRFDConfig(_MBN_500M, 16, 2, 64, "gn", 16, True, True, 2, False),
    "scrfd_1g": SCRFDConfig(_MBN_1G, 24, 2, 96, "gn", 8, True, True, 2, False),
    "scrfd_2.5g": SCRFDConfig(_RES_2_5G, 24, 2, 64, "gn", 16, True, False, 2, False),
    "scrfd_10g": SCRFDConfig(_RES_10G, 56, 3, 80, "gn", 16, True, False, 2, False),
    "scrfd_34g": SCRFDConfig(_RES_34G, 128, 2, 256, "gn", 32, True, False, 2, False),
    # BN, per-stride heads, keypoints. 500m_bnkps has scale_mode=0, hence no Scale modules.
    "scrfd_500m_bnkps": SCRFDConfig(_MBN_500M, 16, 2, 64, "bn", None, False, True, 0, True),
    "scrfd_2.5g_bnkps": SCRFDConfig(_RES_2_5G, 24, 2, 64, "bn", None, False, False, 2, True),
    "scrfd_10g_bnkps": SCRFDConfig(_RES_10G, 56, 3, 80, "bn", None, False, False, 2, True),
}


def build_scrfd(name: str) -> "SCRFD":
    """The eval-mode model of a released config, with torch's default initialisation."""
    if name not in CONFIGS:
        raise ValueError(f"unknown SCRFD config {name!r}; valid names: {sorted(CONFIGS)}")
    return SCRFD(CONFIGS[name]).eval()


# --------------------------------------------------------------------------------------------------
# Building blocks. Attribute names and Sequential indices are part of the checkpoint keys.
# --------------------------------------------------------------------------------------------------


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS)


class ConvModule(nn.Module):
    """mmcv's ConvModule: conv -> optional norm -> optional ReLU.

    The norm submodule is named ``bn`` or ``gn`` (as mmcv's ``build_norm_layer`` names it), so the
    keys read ``...conv.weight``, ``...bn.running_mean``, ``...gn.weight``. The conv has a bias
    exactly when there is no norm (mmcv's ``bias='auto'``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        norm: str | None = None,
        gn_groups: int | None = None,
        act: bool = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=norm is None
        )
        self.norm_name = norm
        if norm == "bn":
            self.bn = _bn(out_channels)
        elif norm == "gn":
            if gn_groups is None:
                raise ValueError("GroupNorm needs gn_groups")
            self.gn = nn.GroupNorm(gn_groups, out_channels, eps=_GN_EPS)
        elif norm is not None:
            raise ValueError(f"unknown norm {norm!r}; valid: 'bn', 'gn', None")
        self.act = nn.ReLU(inplace=False) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm_name is not None:
            x = getattr(self, self.norm_name)(x)
        return self.act(x)


class DepthwiseSeparableConvModule(nn.Module):
    """mmcv's DepthwiseSeparableConvModule: dw3x3 + norm + ReLU, then pw1x1 + norm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, gn_groups: int | None):
        super().__init__()
        self.depthwise_conv = ConvModule(
            in_channels, in_channels, 3, 1, 1, groups=in_channels, norm=norm, gn_groups=gn_groups
        )
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1, norm=norm, gn_groups=gn_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


# ----- MobileNetV1 (section 2.3) -----------------------------------------------------------------


def _conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    # Sequential(conv3x3 p1, BN, ReLU): keys .0.weight, .1.*
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), _bn(oup), nn.ReLU())


def _conv_dw(inp: int, oup: int, stride: int) -> nn.Sequential:
    # Sequential(dw3x3, BN, ReLU, pw1x1, BN, ReLU): keys .0/.1 and .3/.4
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        _bn(inp),
        nn.ReLU(),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        _bn(oup),
        nn.ReLU(),
    )


class MobileNetV1(nn.Module):
    """stem = [conv_bn(3, p0, s2), conv_dw(p0, p1, s1)]; layer i+1 = blocks of conv_dw whose first
    is stride 2 (p[i+1] -> p[i+2]) and the rest p[i+2] -> p[i+2]. Outputs layer1..4 (strides 4..32)."""

    def __init__(self, spec: MobileNetV1Spec):
        super().__init__()
        p = spec.stage_planes
        self.stem = nn.Sequential(_conv_bn(3, p[0], 2), _conv_dw(p[0], p[1], 1))
        for i, num_blocks in enumerate(spec.stage_blocks):
            blocks = [_conv_dw(p[i + 1], p[i + 2], 2)]
            blocks += [_conv_dw(p[i + 2], p[i + 2], 1) for _ in range(num_blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs


# ----- ResNetV1e (section 2.3) -------------------------------------------------------------------


def _avg_down_shortcut(inplanes: int, outplanes: int, stride: int) -> nn.Sequential:
    """AvgPool(k=stride, ceil, no pad counting) -> conv1x1 s1 -> BN. The pool is there even at
    stride 1 (a kernel-1 no-op), which is why the keys are downsample.1 (conv) and .2 (BN)."""
    return nn.Sequential(
        nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
        nn.Conv2d(inplanes, outplanes, 1, 1, bias=False),
        _bn(outplanes),
    )


class BasicBlock(nn.Module):
    expansion = 1
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))
    last_bn = "bn2"  # zero-initialised in the reference (zero_init_residual)

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """PyTorch style: the stride sits on the 3x3 conv2."""

    expansion = 4
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))
    last_bn = "bn3"

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, 1, bias=False)
        self.bn3 = _bn(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetV1e(nn.Module):
    """Deep stem (3 convs, base/2, base/2, base) -> MaxPool 2x2 s2 -> 4 stages at strides (1, 2, 2, 2)."""

    def __init__(self, spec: ResNetV1eSpec):
        super().__init__()
        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[spec.block]
        half = spec.base_channels // 2
        # Indices 0/1, 3/4, 6/7 carry the weights (the ReLUs are 2, 5, 8).
        self.stem = nn.Sequential(
            nn.Conv2d(3, half, 3, 2, 1, bias=False), _bn(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, 1, 1, bias=False), _bn(half), nn.ReLU(),
            nn.Conv2d(half, spec.base_channels, 3, 1, 1, bias=False), _bn(spec.base_channels), nn.ReLU(),
        )  # fmt: skip
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2, padding=0)
        inplanes = spec.base_channels
        for i, (num_blocks, planes) in enumerate(zip(spec.stage_blocks, spec.stage_planes)):
            stride = 1 if i == 0 else 2
            out = planes * block.expansion
            shortcut = None
            if stride != 1 or inplanes != out:
                shortcut = _avg_down_shortcut(inplanes, out, stride)
            blocks = [block(inplanes, planes, stride, shortcut)]
            blocks += [block(out, planes, 1, None) for _ in range(num_blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.stem(x))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs


# ----- PAFPN (section 2.4) -----------------------------------------------------------------------


def upsample_nearest(x: torch.Tensor, size) -> torch.Tensor:
    """PyTorch's legacy nearest resize to ``size``: output row i reads input row floor(i * in / out).

    For an exact 2x this is a repeat; for e.g. 5 -> 9 rows it reads rows 0,0,1,1,2,2,3,3,4 (not what
    a half-pixel-centre resize such as ``jax.image.resize('nearest')`` reads).
    """
    return F.interpolate(x, size=size, mode="nearest")


class PAFPN(nn.Module):
    """FPN + bottom-up path; every conv is a biased conv with no norm and no activation."""

    def __init__(self, in_channels: Sequence[int], out_channels: int):
        super().__init__()
        n = len(in_channels)

        def plain(cin: int, k: int, stride: int = 1) -> ConvModule:
            return ConvModule(cin, out_channels, k, stride, k // 2, norm=None, act=False)

        self.lateral_convs = nn.ModuleList([plain(c, 1) for c in in_channels])
        self.fpn_convs = nn.ModuleList([plain(out_channels, 3) for _ in range(n)])
        self.downsample_convs = nn.ModuleList([plain(out_channels, 3, 2) for _ in range(n - 1)])
        self.pafpn_convs = nn.ModuleList([plain(out_channels, 3) for _ in range(n - 1)])

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(lat) - 1, 0, -1):  # top-down, in place, coarsest first
            lat[i - 1] = lat[i - 1] + upsample_nearest(lat[i], lat[i - 1].shape[2:])
        inter = [conv(x) for conv, x in zip(self.fpn_convs, lat)]
        for i in range(len(inter) - 1):  # bottom-up, each step sees the already-updated level
            inter[i + 1] = inter[i + 1] + self.downsample_convs[i](inter[i])
        return [inter[0]] + [conv(x) for conv, x in zip(self.pafpn_convs, inter[1:])]


# ----- Head (section 2.5) ------------------------------------------------------------------------


class Scale(nn.Module):
    """mmcv's Scale: one learnable scalar (key ``scale``, shape ())."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class Integral(nn.Module):
    """Unused at test time (DFL is off), but its ``project`` buffer is in every checkpoint."""

    def __init__(self, reg_max: int = REG_MAX):
        super().__init__()
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))


def head_key(stride: int, strides_share: bool) -> str:
    """'0' for a shared head; else str of the anchor generator's stride *tuple*: '(8, 8)'."""
    return "0" if strides_share else str((stride, stride))


class SCRFDHead(nn.Module):
    """Per level: tower (cls_stride_convs) -> stride_cls / stride_reg (x Scale) / stride_kps.

    The reference also registers ``reg_stride_convs``, a ModuleDict of *empty* ModuleLists
    (cls_reg_share=True): it owns no tensors, so it is left out here.
    """

    def __init__(self, cfg: SCRFDConfig):
        super().__init__()
        self.strides = STRIDES
        self.strides_share = cfg.strides_share
        self.use_kps = cfg.use_kps
        self.use_scale = cfg.use_scale
        keys = ["0"] if cfg.strides_share else [head_key(s, False) for s in STRIDES]

        def tower() -> nn.ModuleList:
            convs = nn.ModuleList()
            for i in range(cfg.stacked_convs):
                cin = cfg.neck_channels if i == 0 else cfg.feat_channels
                if cfg.dw_conv:
                    convs.append(DepthwiseSeparableConvModule(cin, cfg.feat_channels, cfg.norm, cfg.gn_groups))
                else:
                    convs.append(ConvModule(cin, cfg.feat_channels, 3, 1, 1, norm=cfg.norm, gn_groups=cfg.gn_groups))
            return convs

        f = cfg.feat_channels
        self.cls_stride_convs = nn.ModuleDict({k: tower() for k in keys})
        self.stride_cls = nn.ModuleDict({k: nn.Conv2d(f, 1 * NUM_ANCHORS, 3, padding=1) for k in keys})
        self.stride_reg = nn.ModuleDict({k: nn.Conv2d(f, 4 * NUM_ANCHORS, 3, padding=1) for k in keys})
        if cfg.use_kps:
            self.stride_kps = nn.ModuleDict(
                {k: nn.Conv2d(f, 2 * NUM_KPS * NUM_ANCHORS, 3, padding=1) for k in keys}
            )
        if cfg.use_scale:
            self.scales = nn.ModuleList([Scale(1.0) for _ in STRIDES])
        self.integral = Integral(REG_MAX)

    def forward_raw(self, feats: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Per level (cls logits, box distances x Scale, kps distances or None), NCHW."""
        outs = []
        for level, (x, stride) in enumerate(zip(feats, self.strides)):
            key = head_key(stride, self.strides_share)
            for conv in self.cls_stride_convs[key]:
                x = conv(x)
            cls = self.stride_cls[key](x)
            reg = self.stride_reg[key](x)  # cls_reg_share: the reg branch reuses the cls tower
            if self.use_scale:
                reg = self.scales[level](reg)  # linear: no exp, no ReLU
            kps = self.stride_kps[key](x) if self.use_kps else None  # never scaled
            outs.append((cls, reg, kps))
        return outs

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """ONNX-export convention: (score_8, score_16, score_32, bbox_8, ..., [kps_8, ...]).

        NCHW -> NHWC -> [B, H*W*A, C], so row (y*W + x)*A + a holds anchor a of location (y, x).
        """
        scores, boxes, kpss = [], [], []
        for cls, reg, kps in self.forward_raw(feats):
            b = cls.shape[0]
            scores.append(cls.permute(0, 2, 3, 1).reshape(b, -1, 1).sigmoid())
            boxes.append(reg.permute(0, 2, 3, 1).reshape(b, -1, 4))
            if kps is not None:
                kpss.append(kps.permute(0, 2, 3, 1).reshape(b, -1, 2 * NUM_KPS))
        return tuple(scores + boxes + kpss)


class SCRFD(nn.Module):
    """backbone -> PAFPN (layers 2..4) -> SCRFDHead. Input: [B, 3, H, W], RGB, (x - 127.5) / 128."""

    def __init__(self, cfg: SCRFDConfig):
        super().__init__()
        self.cfg = cfg
        if isinstance(cfg.backbone, MobileNetV1Spec):
            self.backbone = MobileNetV1(cfg.backbone)
        else:
            self.backbone = ResNetV1e(cfg.backbone)
        self.neck = PAFPN(cfg.neck_in_channels, cfg.neck_channels)
        self.bbox_head = SCRFDHead(cfg)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The three PAFPN outputs (strides 8, 16, 32), NCHW."""
        return self.neck(self.backbone(x)[1:])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.bbox_head(self.features(x))


class LevelOutputs(NamedTuple):
    scores: list  # per level [..., HW2, 1]
    boxes: list  # per level [..., HW2, 4], stride units
    kps: list | None  # per level [..., HW2, 10], stride units


def split_outputs(outputs: Sequence) -> LevelOutputs:
    """Group the flat export-order outputs (6 or 9 of them) per kind."""
    n = len(STRIDES)
    if len(outputs) not in (2 * n, 3 * n):
        raise ValueError(f"expected {2 * n} or {3 * n} outputs (3 strides, with or without kps), got {len(outputs)}")
    kps = list(outputs[2 * n:]) if len(outputs) == 3 * n else None
    return LevelOutputs(list(outputs[:n]), list(outputs[n:2 * n]), kps)


# --------------------------------------------------------------------------------------------------
# Random weights for parity tests.
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def randomize_(
    model: SCRFD,
    seed: int,
    calib_input: torch.Tensor | None = None,
    calib_hw: tuple[int, int] = (128, 128),
    calib_batch: int = 2,
) -> SCRFD:
    """Fill ``model`` in place with seeded random values; returns it in eval mode.

    * convs followed by a norm and ReLU: He-normal, std sqrt(2 / fan_in); convs with nothing after
      them (the neck, stride_cls / stride_reg / stride_kps): std 1 / sqrt(fan_in), so each keeps the
      variance of its input;
    * biases: neck U(-0.1, 0.1); stride_cls U(-1.5, 0.5) (a spread of sigmoid scores, mostly low, as
      in a trained detector); stride_reg U(0.5, 2.5) (mostly positive distances, so decoded boxes
      are mostly proper boxes); stride_kps U(-1, 1);
    * BN and GN affine: weight U(0.5, 1.5), bias U(0.25, 1.25). The positive bias matters. Fed
      N(0, 1), a ReLU passes half of a perturbation's energy but only 0.34 of the signal's variance
      (the other 0.16 of its output energy is a mean, which the next norm removes), so float32
      rounding differences grow sqrt(0.5 / 0.34) = 1.2x per conv-norm-ReLU: ~200x through
      500m_bnkps, 5e-4 at its outputs, too much for a 1e-4 parity check. With ReLU inputs mostly
      positive the growth is ~1.04x, and about 1 in 5 ReLU inputs is still negative, so the ReLUs
      are still exercised;
    * the BN that closes a residual branch (bn2 / bn3): weight U(0.1, 0.4), bias U(-0.1, 0.1),
      standing in for the reference's zero-initialised last BN, so 17 stacked bottlenecks add up to
      O(1) rather than O(sqrt(17)) and do not pile up a mean;
    * Scale: U(0.5, 1.5).

    BN statistics are then *calibrated*: one eval-mode forward pass on ``calib_input`` (default:
    ``calib_batch`` images of U(-1, 1), the range of normalised pixels) sets, just before each BN
    runs, ``running_mean = mean + 0.2 * std * N(0, 1)`` and ``running_var = var * U(0.5, 2)`` of
    what actually reaches it. Layers are visited in execution order, so each BN sees calibrated
    predecessors. Activations therefore stay O(1) even in 34g, while the running statistics differ
    from the batch statistics (an implementation that normalised with batch statistics, or ignored
    running_mean / running_var, would not match). The default calibration gives the stride-32 BNs
    2 x 4 x 4 = 32 samples per channel; statistics from a small input describe a large one less
    well (zero padding weighs more at 4 x 4), which the positive norm biases make harmless: folded
    and unfolded 640 x 640 outputs of every config still agree to 4e-5.
    """
    gen = torch.Generator().manual_seed(int(seed))

    def normal(shape, std: float = 1.0) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=gen) * std

    def uniform(shape, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(tuple(shape), generator=gen) * (hi - lo) + lo

    head = model.bbox_head
    bias_ranges = {}
    for dict_name, rng in (("stride_cls", (-1.5, 0.5)), ("stride_reg", (0.5, 2.5)), ("stride_kps", (-1.0, 1.0))):
        if hasattr(head, dict_name):  # stride_kps only in keypoint models
            for conv in getattr(head, dict_name).values():
                bias_ranges[id(conv)] = rng
    linear_convs = set(bias_ranges) | {id(m.conv) for m in model.neck.modules() if isinstance(m, ConvModule)}
    residual_bns = set()
    for m in model.modules():
        if isinstance(m, (BasicBlock, Bottleneck)):
            residual_bns.add(id(getattr(m, m.last_bn)))

    for m in model.modules():  # registration order: deterministic for a given config
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            std = 1.0 / math.sqrt(fan_in) if id(m) in linear_convs else math.sqrt(2.0 / fan_in)
            m.weight.copy_(normal(m.weight.shape, std))
            if m.bias is not None:
                m.bias.copy_(uniform(m.bias.shape, *bias_ranges.get(id(m), (-0.1, 0.1))))
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            if id(m) in residual_bns:
                m.weight.copy_(uniform(m.weight.shape, 0.1, 0.4))
                m.bias.copy_(uniform(m.bias.shape, -0.1, 0.1))
            else:
                m.weight.copy_(uniform(m.weight.shape, 0.5, 1.5))
                m.bias.copy_(uniform(m.bias.shape, 0.25, 1.25))
        elif isinstance(m, Scale):
            m.scale.copy_(uniform((), 0.5, 1.5))

    model.eval()
    if calib_input is None:
        calib_input = uniform((calib_batch, 3, *calib_hw), -1.0, 1.0)

    def calibrate(module: nn.BatchNorm2d, args) -> None:
        (x,) = args
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        module.running_mean.copy_(mean + 0.2 * var.sqrt() * normal(mean.shape))
        module.running_var.copy_(var * uniform(var.shape, 0.5, 2.0))

    hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        model(calib_input)
    finally:
        for h in hooks:
            h.remove()
    return model


# --------------------------------------------------------------------------------------------------
# BN folding and ONNX export (section 2.10).
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv <- bn(conv(.)) in eval mode: w' = w * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta."""
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.copy_(conv.weight * factor.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - bn.running_mean) * factor + bn.bias)


@torch.no_grad()
def damp_classifier_(model: nn.Module) -> nn.Module:
    """Give the classifiers their reference initialisation (bias -4.595, a 0.01 prior) and halve their
    weights, so that a randomised model scores a photo's anchors as a trained one would: a few hundred
    above 0.02, not thousands. For detection tests and benchmarks; returns the model."""
    for name, p in model.named_parameters():
        if "stride_cls" in name:
            p.mul_(0.5) if name.endswith("weight") else p.fill_(-4.595)
    return model


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (eval mode) with every BatchNorm folded into the conv before it.

    This is how insightface's released ONNX files are made. GroupNorm cannot be folded (it depends
    on the input) and stays. Raises if a BatchNorm is left without a conv to fold into.
    """
    model = copy.deepcopy(model).eval()
    for m in list(model.modules()):
        if isinstance(m, nn.Sequential):  # MobileNet blocks, the ResNet stem, avg-down shortcuts
            for i in range(len(m) - 1):
                if isinstance(m[i], nn.Conv2d) and isinstance(m[i + 1], nn.BatchNorm2d):
                    _fold_into(m[i], m[i + 1])
                    m[i + 1] = nn.Identity()
        elif isinstance(m, (BasicBlock, Bottleneck)):
            for conv_name, bn_name in m.conv_bn_pairs:
                _fold_into(getattr(m, conv_name), getattr(m, bn_name))
                setattr(m, bn_name, nn.Identity())
        elif isinstance(m, ConvModule) and m.norm_name == "bn":
            _fold_into(m.conv, m.bn)
            m.bn = nn.Identity()
    left = [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise RuntimeError(f"BatchNorm layers left unfolded: {left}")
    return model


def output_names(use_kps: bool) -> list[str]:
    """score_8, score_16, score_32, bbox_8, ..., [kps_8, ...]: the order scrfd.py indexes by."""
    kinds = ("score", "bbox", "kps") if use_kps else ("score", "bbox")
    return [f"{kind}_{s}" for kind in kinds for s in STRIDES]


class _FirstImage(nn.Module):
    """Older released files (buffalo packs): batch fixed at 1, rank-2 outputs [H*W*2, C]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(o[0] for o in self.model(x))


def export_onnx(
    model: SCRFD,
    path: str,
    layout: str = "batched",
    input_hw: tuple[int, int] = (640, 640),
    fold_bn: bool = True,
) -> list[str]:
    """Export ``model`` (eval) to ONNX opset 11 with the released files' output names.

    ``layout='batched'``: input ``input.1`` [B, 3, H, W] and outputs [B, H*W*2, C], with dynamic
    batch / height / width (what ``scrfd2onnx.py`` writes without ``--shape``);
    ``layout='single'``: input [1, 3, H, W] fixed, outputs [H*W*2, C] (older files).
    Returns the output names in order.
    """
    if layout not in ("batched", "single"):
        raise ValueError(f"unknown layout {layout!r}; valid: 'batched', 'single'")
    net = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    names = output_names(model.cfg.use_kps)
    dummy = torch.zeros(1, 3, *input_hw)
    dynamic_axes = None
    if layout == "single":
        net = _FirstImage(net)
    else:
        dynamic_axes = {"input.1": {0: "batch", 2: "height", 3: "width"}}
        dynamic_axes.update({n: {0: "batch", 1: "anchors"} for n in names})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but is the one with opset 11
        torch.onnx.export(
            net, (dummy,), path, dynamo=False, opset_version=11, input_names=["input.1"],
            output_names=names, dynamic_axes=dynamic_axes, do_constant_folding=True,
        )  # fmt: skip
    return names


Runner = Callable[[np.ndarray], list]  # blob [1, 3, H, W] float32 -> outputs in export order


def torch_runner(model: nn.Module) -> Runner:
    def run(blob: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [o.numpy() for o in model(torch.from_numpy(np.ascontiguousarray(blob, np.float32)))]

    return run


def onnx_runner(session) -> Runner:
    """``session``: an onnxruntime InferenceSession; outputs in the session's (export) order."""
    in_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]

    def run(blob: np.ndarray) -> list[np.ndarray]:
        return session.run(names, {in_name: np.ascontiguousarray(blob, np.float32)})

    return run


# --------------------------------------------------------------------------------------------------
# Anchors and decoding (section 2.6): centres at (x*s, y*s), no +0.5; location-major, then anchor.
# --------------------------------------------------------------------------------------------------


def anchor_centers(height: int, width: int, stride: int, num_anchors: int = NUM_ANCHORS) -> np.ndarray:
    """[height*width*num_anchors, 2] float32 (x, y); row (y*width + x)*num_anchors + a."""
    ys, xs = np.mgrid[:height, :width]
    centers = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centers, num_anchors, axis=0)


def anchor_boxes(height: int, width: int, stride: int, base_size: int) -> np.ndarray:
    """mmdet AnchorGenerator(center_offset=0, ratios=[1], scales=[1, 2], scale_major): [HW2, 4] xyxy.

    Anchor a of a location is a square of side base_size * ANCHOR_SCALES[a] centred on (x*s, y*s).
    Only ATSS training uses the boxes; inference needs only their centres.
    """
    centers = anchor_centers(height, width, stride)
    half = np.tile(np.array([base_size * s / 2 for s in ANCHOR_SCALES], np.float32), height * width)[:, None]
    return np.concatenate([centers - half, centers + half], axis=1)


def distance2bbox(points: np.ndarray, distance: np.ndarray, max_shape: tuple[int, int] | None = None) -> np.ndarray:
    """(cx - l, cy - t, cx + r, cy + b); with ``max_shape=(h, w)`` x is clamped to [0, w], y to [0, h]."""
    x1 = points[:, 0] - distance[:, 0]
    y1 = points[:, 1] - distance[:, 1]
    x2 = points[:, 0] + distance[:, 2]
    y2 = points[:, 1] + distance[:, 3]
    if max_shape is not None:
        h, w = max_shape
        x1, x2 = np.clip(x1, 0, w), np.clip(x2, 0, w)
        y1, y2 = np.clip(y1, 0, h), np.clip(y2, 0, h)
    return np.stack([x1, y1, x2, y2], axis=-1)


def distance2kps(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """[N, 2*K] offsets -> [N, K, 2] points: x_k = cx + d[2k], y_k = cy + d[2k+1] (no clipping)."""
    offsets = distance.reshape(distance.shape[0], -1, 2)
    return points[:, None, :] + offsets


# --------------------------------------------------------------------------------------------------
# NMS, the two conventions.
# --------------------------------------------------------------------------------------------------


def nms_mmcv(boxes: np.ndarray, scores: np.ndarray, iou_thr: float, ties: str = "keep") -> np.ndarray:
    """mmcv's nms (used by mmdet's multiclass_nms): areas without +1; indices of kept boxes, by score.

    ``ties`` decides a box whose IoU with a kept box equals ``iou_thr`` exactly:
    ``'keep'`` (mmcv's CUDA kernel, suppress only IoU > thr: the GPU runs behind the published
    numbers) or ``'suppress'`` (mmcv's CPU kernel, suppress IoU >= thr). IoU is computed in float64
    from the given boxes (the CUDA kernel compares ``inter > thr * union`` in float32; the two can
    differ within an ulp of the threshold). Equal scores are visited in index order (a stable sort;
    mmcv's ``torch.sort`` leaves that order unspecified).
    """
    if ties not in ("keep", "suppress"):
        raise ValueError(f"ties must be 'keep' or 'suppress', got {ties!r}")
    b = np.asarray(boxes, np.float64)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    suppressed = np.zeros(len(b), bool)
    keep = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        w = np.maximum(0.0, np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]))
        h = np.maximum(0.0, np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]))
        inter = w * h
        union = areas[i] + areas[rest] - inter
        # A pair with zero union (two zero-area boxes, e.g. clipped flat) never suppresses: the CUDA
        # test inter > thr * union is 0 > 0, the CPU one compares NaN.
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        suppressed[rest[iou > iou_thr if ties == "keep" else iou >= iou_thr]] = True
    return np.asarray(keep, np.int64)


def nms_plus_one(dets: np.ndarray, thresh: float) -> list[int]:
    """insightface scrfd.py's NMS on [N, 5] (x1, y1, x2, y2, score): areas and overlaps with +1,
    keep IoU <= thresh, in the dtype of ``dets`` (float32 in scrfd.py). Equal scores: the stable
    ascending argsort reversed (the later index first), which is what numpy's default sort does on
    small arrays; numpy leaves the order of ties unspecified in general. Degenerate (inverted) boxes
    are not special-cased, as in scrfd.py: a NaN overlap fails ``<= thresh``, so that box is dropped."""
    x1, y1, x2, y2, scores = (dets[:, k] for k in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores, kind="stable")[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


# --------------------------------------------------------------------------------------------------
# Path (a): the mmdet test protocol (tools/test_widerface.py --mode 0), section 2.9.
# --------------------------------------------------------------------------------------------------


class MmdetMeta(NamedTuple):
    img_shape: tuple[int, int]  # (h, w) of the resized, unpadded image: the clipping bounds
    scale_factor: np.ndarray  # float32 [w_scale, h_scale, w_scale, h_scale]
    ori_shape: tuple[int, int]


class Detections(NamedTuple):
    boxes: np.ndarray  # [N, 4] x1 y1 x2 y2, original-image pixels, float32
    scores: np.ndarray  # [N], descending
    kps: np.ndarray | None  # [N, 5, 2] or None for models without keypoints


def mmdet_resize_size(height: int, width: int, size: int = 640) -> tuple[int, int]:
    """mmcv.imrescale to (size, size): s = size / long side; new side = int(side * s + 0.5). (h, w)."""
    s = min(size / max(height, width), size / min(height, width))  # = size / long side
    return int(height * float(s) + 0.5), int(width * float(s) + 0.5)


def mmdet_preprocess(img_bgr: np.ndarray, size: int = 640) -> tuple[np.ndarray, MmdetMeta]:
    """Keep-ratio bilinear resize (on the loaded uint8 image: the test pipeline's LoadImageFromFile
    does not convert to float), BGR->RGB, (x - 127.5) / 128, zero-pad bottom/right to size x size
    *after* normalising (zero = mid-gray). Returns the blob [1, 3, size, size] float32 and the meta."""
    h, w = img_bgr.shape[:2]
    new_h, new_w = mmdet_resize_size(h, w, size)
    resized = cv2.resize(img_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    norm = (resized[..., ::-1].astype(np.float32) - PIXEL_MEAN) / PIXEL_STD
    padded = np.zeros((size, size, 3), np.float32)
    padded[:new_h, :new_w] = norm
    # mmdet Resize: per-axis factors from the integer sizes, stored as float32.
    scale_factor = np.array([new_w / w, new_h / h, new_w / w, new_h / h], np.float32)
    return padded.transpose(2, 0, 1)[None].copy(), MmdetMeta((new_h, new_w), scale_factor, (h, w))


def _image0(output: np.ndarray) -> np.ndarray:
    """[HW2, C] of image 0 from a rank-3 (batched) or rank-2 (single-image) output."""
    output = np.asarray(output, np.float32)
    return output[0] if output.ndim == 3 else output


def _level_shapes(input_hw: tuple[int, int]) -> list[tuple[int, int]]:
    h, w = input_hw
    if h % STRIDES[-1] or w % STRIDES[-1]:
        raise ValueError(f"input {h}x{w} must be a multiple of {STRIDES[-1]} for these decoders")
    return [(h // s, w // s) for s in STRIDES]


def mmdet_postprocess(
    outputs: Sequence[np.ndarray],
    meta: MmdetMeta,
    input_hw: tuple[int, int] = (640, 640),
    score_thr: float = 0.02,
    iou_thr: float = 0.45,
    nms_ties: str = "keep",
) -> Detections:
    """SCRFDHead.get_bboxes + multiclass_nms for one image.

    ``outputs``: export-order outputs of one image (rank 2, [HW2, C]) or of a batch of one (rank 3).
    Per level: distances x stride, distance2bbox clipped to the unpadded resized image; then all
    levels together: divide by scale_factor, keep score > score_thr (strict), mmcv NMS (no +1),
    sorted by score; max_per_img = -1 (no cap). mmdet never decodes keypoints; here they are decoded
    as insightface's scrfd.py does (centre + d * stride, no clipping) and rescaled like the boxes
    (x / w_scale, y / h_scale), then carried through the same selection.
    """
    lv = split_outputs([_image0(o) for o in outputs])
    boxes, scores, kpss = [], [], []
    for level, ((fh, fw), stride) in enumerate(zip(_level_shapes(input_hw), STRIDES)):
        centers = anchor_centers(fh, fw, stride)
        boxes.append(distance2bbox(centers, lv.boxes[level] * np.float32(stride), max_shape=meta.img_shape))
        scores.append(lv.scores[level][:, 0])
        if lv.kps is not None:
            kpss.append(distance2kps(centers, lv.kps[level] * np.float32(stride)))
    boxes = np.concatenate(boxes) / meta.scale_factor
    scores = np.concatenate(scores)
    kps = np.concatenate(kpss) / meta.scale_factor[:2] if kpss else None
    valid = np.nonzero(scores > score_thr)[0]
    keep = valid[nms_mmcv(boxes[valid], scores[valid], iou_thr, ties=nms_ties)]
    return Detections(boxes[keep], scores[keep], None if kps is None else kps[keep])


def mmdet_detect(img_bgr: np.ndarray, run_net: Runner, size: int = 640, **kwargs) -> Detections:
    """Path (a) end to end: ``run_net`` maps the blob to the export-order outputs."""
    blob, meta = mmdet_preprocess(img_bgr, size)
    return mmdet_postprocess(run_net(blob), meta, (size, size), **kwargs)


def to_widerface_rows(det: Detections) -> np.ndarray:
    """test_widerface.py keeps [x1, y1, w, h, score] floats (not int-truncated)."""
    b = det.boxes
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1], det.scores], axis=1)


# --------------------------------------------------------------------------------------------------
# Path (b): insightface's deployment scrfd.py, section 2.9.
# --------------------------------------------------------------------------------------------------


def letterbox_size(height: int, width: int, input_size: tuple[int, int] = (640, 640)) -> tuple[int, int, float]:
    """scrfd.py's resize: (new_h, new_w, det_scale). ``input_size`` is (width, height) as in scrfd.py.

    The side that binds is set to the input's; the other is *truncated* (int), unlike mmcv's
    round-half-up; det_scale = new_h / h is used for both axes.
    """
    im_ratio = float(height) / width
    model_ratio = float(input_size[1]) / input_size[0]
    if im_ratio > model_ratio:
        new_h = input_size[1]
        new_w = int(new_h / im_ratio)
    else:
        new_w = input_size[0]
        new_h = int(new_w * im_ratio)
    return new_h, new_w, float(new_h) / height


def insightface_preprocess(img_bgr: np.ndarray, input_size: tuple[int, int] = (640, 640)) -> tuple[np.ndarray, float]:
    """Letterbox into the top-left corner of a black uint8 canvas, then
    blobFromImage(1/128, mean 127.5, swapRB): the padding becomes -127.5/128, not 0."""
    new_h, new_w, det_scale = letterbox_size(img_bgr.shape[0], img_bgr.shape[1], input_size)
    canvas = np.zeros((input_size[1], input_size[0], 3), np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(img_bgr, (new_w, new_h))  # cv2 default: bilinear
    blob = cv2.dnn.blobFromImage(
        canvas, 1.0 / PIXEL_STD, (input_size[0], input_size[1]), (PIXEL_MEAN,) * 3, swapRB=True
    )
    return blob, det_scale


def insightface_postprocess(
    outputs: Sequence[np.ndarray],
    det_scale: float,
    input_hw: tuple[int, int],
    ori_hw: tuple[int, int],
    thresh: float = 0.5,
    nms_thresh: float = 0.4,
    max_num: int = 0,
    metric: str = "default",
) -> tuple[np.ndarray, np.ndarray | None]:
    """scrfd.py's forward()'s decode + detect()'s selection. Returns (det [N, 5] float32, kps [N, 5, 2] | None).

    Outputs may be rank 3 (batched files: image 0 is used) or rank 2 (older files). Per level: keep
    score >= thresh, distance2bbox *without* clipping; then concatenate, sort descending, divide by
    det_scale, +1-NMS at ``nms_thresh``; with ``max_num`` > 0, keep the max_num largest by
    area - 2 * (squared distance of the box centre from the image centre) (``metric='max'``: area).
    """
    lv = split_outputs([_image0(o) for o in outputs])
    scores_l, boxes_l, kps_l = [], [], []
    for level, ((fh, fw), stride) in enumerate(zip(_level_shapes(input_hw), STRIDES)):
        centers = anchor_centers(fh, fw, stride)
        scores = lv.scores[level]
        pos = np.where(scores >= thresh)[0]
        scores_l.append(scores[pos])
        boxes_l.append(distance2bbox(centers, lv.boxes[level] * stride)[pos])
        if lv.kps is not None:
            kps_l.append(distance2kps(centers, lv.kps[level] * stride)[pos])
    scores = np.vstack(scores_l)
    order = np.argsort(scores.ravel(), kind="stable")[::-1]
    boxes = np.vstack(boxes_l) / det_scale
    pre_det = np.hstack((boxes, scores)).astype(np.float32, copy=False)[order]
    keep = nms_plus_one(pre_det, nms_thresh)
    det = pre_det[keep]
    kps = (np.vstack(kps_l) / det_scale)[order][keep] if lv.kps is not None else None
    if max_num > 0 and det.shape[0] > max_num:
        area = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
        cy, cx = ori_hw[0] // 2, ori_hw[1] // 2
        offset2 = ((det[:, 0] + det[:, 2]) / 2 - cx) ** 2 + ((det[:, 1] + det[:, 3]) / 2 - cy) ** 2
        values = area if metric == "max" else area - offset2 * 2.0
        pick = np.argsort(values, kind="stable")[::-1][:max_num]
        det = det[pick]
        kps = kps[pick] if kps is not None else None
    return det, kps


def insightface_detect(
    img_bgr: np.ndarray, run_net: Runner, input_size: tuple[int, int] = (640, 640), **kwargs
) -> tuple[np.ndarray, np.ndarray | None]:
    """Path (b) end to end (defaults: det_thresh 0.5, NMS 0.4, no max_num)."""
    blob, det_scale = insightface_preprocess(img_bgr, input_size)
    outputs = run_net(blob)
    return insightface_postprocess(outputs, det_scale, blob.shape[2:], img_bgr.shape[:2], **kwargs)
