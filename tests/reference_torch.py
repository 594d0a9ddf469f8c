"""An independent PyTorch re-statement of the reference RetinaFace (biubug6/Pytorch_Retinaface).

This module is test-only ground truth: the parity tests and benchmarks compare jaxface against it.
It is written from the facts in ``shared/docs/REFERENCE.md`` (sections 1.1, 1.3, 1.4, 1.8, 1.10, 1.13
and 5) and deliberately shares no code with ``jaxface``.

What it provides:

* ``nn.Module`` definitions whose ``state_dict`` names and shapes equal those of the released
  checkpoints (MobileNet-0.25 and ResNet-50 bodies, FPN, SSH, per-level heads);
* ``build_reference`` / ``build_reference_backbone`` factories;
* ``randomize_``: deterministic random weights *and* BN statistics that keep activations O(1);
* the reference inference pipeline (priors, box/landmark decoding, the +1-pixel NMS, thresholds
  and sorting) in plain torch / numpy / Python, split so the forward pass can be timed alone;
* ``load_state_dict_file`` for biubug6 ``.pth`` files (``module.`` prefixes stripped, strict load).

Only torch and numpy are imported (no torchvision).
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BGR_MEAN",
    "MIN_SIZES",
    "STEPS",
    "VARIANCES",
    "ARCHS",
    "BACKBONES",
    "MobileNetV1",
    "ResNet50",
    "Bottleneck",
    "FPN",
    "SSH",
    "RetinaFace",
    "ReferenceOutputs",
    "build_reference",
    "build_reference_backbone",
    "randomize_",
    "load_state_dict_file",
    "strip_module_prefix",
    "prior_box",
    "decode",
    "decode_landm",
    "py_cpu_nms",
    "reference_preprocess",
    "reference_forward",
    "reference_postprocess",
    "reference_detect",
]

BGR_MEAN = (104.0, 117.0, 123.0)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCES = (0.1, 0.2)
NUM_ANCHORS = 2  # anchors per feature-map cell

ARCHS = ("retinaface_mnet", "retinaface_mnet_relu", "retinaface_r50")
BACKBONES = ("mobilenet0.25", "resnet50")

_BN_EPS = 1e-5
_BN_MOMENTUM = 0.1


# --------------------------------------------------------------------------------------------------
# Building blocks. Sequential indices matter: they are part of the checkpoint key names.
# --------------------------------------------------------------------------------------------------


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


def _act(slope: float) -> nn.Module:
    # LeakyReLU with slope 0 computes exactly max(x, 0); keep a single module type so that the
    # "ReLU everywhere" variants differ from the leaky ones only by a number.
    return nn.LeakyReLU(negative_slope=slope)


def conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    """3x3 conv (pad 1, no bias) -> BN -> LeakyReLU(leaky). Keys: ``0`` conv, ``1`` BN."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        _bn(oup),
        _act(leaky),
    )


def conv_bn_no_relu(inp: int, oup: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (pad 1, no bias) -> BN, no activation."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        _bn(oup),
    )


def conv_bn1x1(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    """1x1 conv (pad 0, no bias) -> BN -> LeakyReLU(leaky)."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, stride, 0, bias=False),
        _bn(oup),
        _act(leaky),
    )


def conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    """Depthwise-separable block: dw 3x3 -> BN -> act -> pw 1x1 -> BN -> act (indices 0..5)."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        _bn(inp),
        _act(leaky),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        _bn(oup),
        _act(leaky),
    )


# --------------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------------


class MobileNetV1(nn.Module):
    """MobileNetV1 with width 0.25 ("mobilenet0.25").

    ``forward_features`` returns the stride 8/16/32 maps (64/128/256 channels).
    With ``include_top`` the module also owns ``avg`` and ``fc(256->1000)`` (the ImageNet classifier
    of the pretrain checkpoint); inside the detector they are absent, as in the reference where the
    layers after ``stage3`` are dropped.
    """

    def __init__(self, leaky: float = 0.1, include_top: bool = True, num_classes: int = 1000):
        super().__init__()
        self.include_top = include_top
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, 2, leaky=leaky),
            conv_dw(8, 16, 1, leaky),
            conv_dw(16, 32, 2, leaky),
            conv_dw(32, 32, 1, leaky),
            conv_dw(32, 64, 2, leaky),
            conv_dw(64, 64, 1, leaky),
        )
        self.stage2 = nn.Sequential(
            conv_dw(64, 128, 2, leaky),
            *[conv_dw(128, 128, 1, leaky) for _ in range(5)],
        )
        self.stage3 = nn.Sequential(
            conv_dw(128, 256, 2, leaky),
            conv_dw(256, 256, 1, leaky),
        )
        if include_top:
            self.avg = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(256, num_classes)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        c5 = self.stage3(c4)
        return [c3, c4, c5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.include_top:
            raise RuntimeError("MobileNetV1 built without a classifier; use forward_features")
        c5 = self.forward_features(x)[-1]
        return self.fc(torch.flatten(self.avg(c5), 1))


class Bottleneck(nn.Module):
    """torchvision ResNet v1.5 bottleneck: the stride sits on the 3x3 ``conv2``."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, 1, 0, bias=False)
        self.bn1 = _bn(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = _bn(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, 1, 0, bias=False)
        self.bn3 = _bn(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


class ResNet50(nn.Module):
    """ResNet-50 in torchvision's key layout (``conv1``, ``bn1``, ``layer1..4``, optional ``fc``).

    Stem: 7x7/2 conv (pad 3) -> BN -> ReLU -> 3x3/2 max-pool (pad 1). Blocks [3, 4, 6, 3].
    ``forward_features`` returns C3, C4, C5 (512/1024/2048 channels, strides 8/16/32).
    """

    def __init__(self, include_top: bool = True, num_classes: int = 1000):
        super().__init__()
        self.include_top = include_top
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = _bn(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._inplanes = 64
        self.layer1 = self._make_layer(64, 3, stride=1)
        self.layer2 = self._make_layer(128, 4, stride=2)
        self.layer3 = self._make_layer(256, 6, stride=2)
        self.layer4 = self._make_layer(512, 3, stride=2)
        if include_top:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self._inplanes, out, 1, stride, 0, bias=False), _bn(out))
        layers = [Bottleneck(self._inplanes, planes, stride, downsample)]
        self._inplanes = out
        layers += [Bottleneck(out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.include_top:
            raise RuntimeError("ResNet50 built without a classifier; use forward_features")
        c5 = self.forward_features(x)[-1]
        return self.fc(torch.flatten(self.avgpool(c5), 1))


# --------------------------------------------------------------------------------------------------
# Neck and heads
# --------------------------------------------------------------------------------------------------


class FPN(nn.Module):
    """Top-down FPN: 1x1 laterals ``output1..3``; 3x3 ``merge2`` then ``merge1``; no merge on level 3."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, leaky: float):
        super().__init__()
        self.output1 = conv_bn1x1(in_channels[0], out_channels, 1, leaky=leaky)
        self.output2 = conv_bn1x1(in_channels[1], out_channels, 1, leaky=leaky)
        self.output3 = conv_bn1x1(in_channels[2], out_channels, 1, leaky=leaky)
        self.merge1 = conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        p1 = self.output1(feats[0])
        p2 = self.output2(feats[1])
        p3 = self.output3(feats[2])
        # Legacy 'nearest' (src = floor(dst * in / out)) to the exact size of the finer map.
        p2 = self.merge2(p2 + F.interpolate(p3, size=[p2.shape[2], p2.shape[3]], mode="nearest"))
        p1 = self.merge1(p1 + F.interpolate(p2, size=[p1.shape[2], p1.shape[3]], mode="nearest"))
        return [p1, p2, p3]


class SSH(nn.Module):
    """SSH context module; internals use LeakyReLU(leaky), the concat is followed by a plain ReLU."""

    def __init__(self, in_channels: int, out_channels: int, leaky: float):
        super().__init__()
        if out_channels % 4:
            raise ValueError("SSH out_channels must be divisible by 4")
        quarter = out_channels // 4
        self.conv3X3 = conv_bn_no_relu(in_channels, out_channels // 2)
        self.conv5X5_1 = conv_bn(in_channels, quarter, leaky=leaky)
        self.conv5X5_2 = conv_bn_no_relu(quarter, quarter)
        self.conv7X7_2 = conv_bn(quarter, quarter, leaky=leaky)
        self.conv7x7_3 = conv_bn_no_relu(quarter, quarter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3 = self.conv3X3(x)
        shared = self.conv5X5_1(x)
        branch5 = self.conv5X5_2(shared)
        branch7 = self.conv7x7_3(self.conv7X7_2(shared))  # the 7x7 path starts from conv5X5_1's output
        return F.relu(torch.cat([branch3, branch5, branch7], dim=1))


class _Head(nn.Module):
    """One level's 1x1 conv head; output flattened NHWC -> (N, H*W*anchors, k)."""

    def __init__(self, in_channels: int, per_anchor: int, num_anchors: int = NUM_ANCHORS):
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(in_channels, num_anchors * per_anchor, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return y.view(y.shape[0], -1, self.per_anchor)


class _Body(nn.Module):
    """Holds just the backbone modules the detector keeps (keys ``body.stage*`` / ``body.layer*``)."""

    def __init__(self, backbone: nn.Module, keep: Iterable[str]):
        super().__init__()
        for name in keep:
            self.add_module(name, getattr(backbone, name))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # C3, C4, C5
        raise NotImplementedError


class _MobileNetBody(_Body):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        return [c3, c4, self.stage3(c4)]


class _ResNetBody(_Body):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer2(self.layer1(x))
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


class RetinaFace(nn.Module):
    """RetinaFace detector. ``forward`` returns raw ``(bbox [N,A,4], class_logits [N,A,2], landmarks [N,A,10])``.

    Anchors are ordered by level (stride 8, 16, 32), then ``(y * W + x) * 2 + a`` within a level,
    where ``a = 0`` is the smaller min_size. No softmax is applied here (see ``reference_forward``).
    """

    def __init__(self, body: nn.Module, in_channels: Sequence[int], out_channels: int, neck_leaky: float):
        super().__init__()
        self.body = body
        self.fpn = FPN(in_channels, out_channels, leaky=neck_leaky)
        self.ssh1 = SSH(out_channels, out_channels, leaky=neck_leaky)
        self.ssh2 = SSH(out_channels, out_channels, leaky=neck_leaky)
        self.ssh3 = SSH(out_channels, out_channels, leaky=neck_leaky)
        self.ClassHead = nn.ModuleList([_Head(out_channels, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(out_channels, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(out_channels, 10) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.fpn(self.body(x))
        feats = [self.ssh1(p[0]), self.ssh2(p[1]), self.ssh3(p[2])]
        bbox = torch.cat([head(f) for head, f in zip(self.BboxHead, feats)], dim=1)
        cls = torch.cat([head(f) for head, f in zip(self.ClassHead, feats)], dim=1)
        ldm = torch.cat([head(f) for head, f in zip(self.LandmarkHead, feats)], dim=1)
        return bbox, cls, ldm


def _neck_leaky(out_channels: int) -> float:
    # Today's reference: LeakyReLU(0.1) in FPN/SSH internals for narrow necks (mnet), ReLU otherwise.
    return 0.1 if out_channels <= 64 else 0.0


def build_reference(arch: str) -> RetinaFace:
    """Build a reference RetinaFace (eval mode, default torch init).

    arch:
      * ``retinaface_mnet``: MobileNet-0.25, LeakyReLU(0.1) in body / FPN / SSH internals (today's code);
      * ``retinaface_mnet_relu``: the 2019 first release, every leaky slope 0 (plain ReLU);
      * ``retinaface_r50``: torchvision ResNet-50 body, ReLU everywhere.
    """
    if arch in ("retinaface_mnet", "retinaface_mnet_relu"):
        relu_only = arch == "retinaface_mnet_relu"
        body_leaky = 0.0 if relu_only else 0.1
        out_channels = 64
        neck_leaky = 0.0 if relu_only else _neck_leaky(out_channels)
        backbone = MobileNetV1(leaky=body_leaky, include_top=False)
        body = _MobileNetBody(backbone, ("stage1", "stage2", "stage3"))
        in_channel = 32
    elif arch == "retinaface_r50":
        out_channels = 256
        neck_leaky = _neck_leaky(out_channels)
        backbone = ResNet50(include_top=False)
        body = _ResNetBody(backbone, ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"))
        in_channel = 256
    else:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    model = RetinaFace(body, [in_channel * 2, in_channel * 4, in_channel * 8], out_channels, neck_leaky)
    return model.eval()


def build_reference_backbone(name: str, leaky: float = 0.1) -> nn.Module:
    """ImageNet-style backbone with classifier, in the key layout of its pretrain checkpoint.

    ``mobilenet0.25`` -> keys ``stage1.* .. stage3.*, fc.weight, fc.bias`` (``leaky`` is its slope);
    ``resnet50`` -> torchvision keys ``conv1, bn1, layer1..4, fc``.
    """
    if name == "mobilenet0.25":
        return MobileNetV1(leaky=leaky, include_top=True).eval()
    if name == "resnet50":
        return ResNet50(include_top=True).eval()
    raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONES}")


# --------------------------------------------------------------------------------------------------
# Random weights
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def randomize_(
    model: nn.Module,
    seed: int,
    calibrate: bool = True,
    calib_input: torch.Tensor | None = None,
    calib_hw: tuple[int, int] = (128, 128),
    calib_batch: int = 4,
    input_std: float = 1.0,
) -> nn.Module:
    """Fill ``model`` in place with deterministic random weights and BN statistics; returns it in eval mode.

    * convs: He-normal (std sqrt(2 / fan_in)); the detection heads and ``fc``: std 1/sqrt(fan_in);
      biases U(-0.1, 0.1);
    * BN: weight U(0.5, 1.5), bias U(-0.2, 0.2), running_mean N(0, 0.1), running_var U(0.5, 2).

    With ``calibrate`` (default), one extra forward pass (eval mode) on a seeded random input re-sets
    every BN's running statistics from the statistics of what actually reaches it, randomly perturbed:
    ``running_mean = mean + 0.25 * std * N(0, 1)`` and ``running_var = var * U(0.5, 2)``. The layers are
    visited in execution order, so each BN sees its already-calibrated predecessors. This keeps
    activations O(1) through the deep ResNet-50 (no exploding or vanishing outputs), while the running
    statistics still differ from batch statistics, so an implementation that used batch statistics or
    ignored running_mean / running_var would not match. The calibration input is ``calib_input`` if
    given, else N(0, input_std^2) of shape (calib_batch, 3, *calib_hw). It needs enough samples per
    channel at stride 32 (the default 4 x 128 x 128 gives 64); a tiny calibration input (one 64 x 64
    image: 4 samples per channel) estimates near-zero variances and makes the outputs explode. Choose
    ``input_std`` near the scale of the inputs you will compare on (about 1 for standard-normal test
    tensors, ~60 for mean-subtracted pixels).
    """
    gen = torch.Generator().manual_seed(int(seed))

    def normal(shape, std):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    def uniform(shape, lo, hi):
        return torch.rand(shape, generator=gen, dtype=torch.float32) * (hi - lo) + lo

    head_convs = set()
    for name, module in model.named_modules():
        if isinstance(module, _Head):
            head_convs.add(id(module.conv1x1))

    for _, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            w = module.weight
            fan_in = w.shape[1] * w.shape[2] * w.shape[3]
            std = 1.0 / math.sqrt(fan_in) if id(module) in head_convs else math.sqrt(2.0 / fan_in)
            w.copy_(normal(w.shape, std))
            if module.bias is not None:
                module.bias.copy_(uniform(module.bias.shape, -0.1, 0.1))
        elif isinstance(module, nn.Linear):
            module.weight.copy_(normal(module.weight.shape, 1.0 / math.sqrt(module.weight.shape[1])))
            if module.bias is not None:
                module.bias.copy_(uniform(module.bias.shape, -0.1, 0.1))
        elif isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.weight.copy_(uniform((c,), 0.5, 1.5))
            module.bias.copy_(uniform((c,), -0.2, 0.2))
            module.running_mean.copy_(normal((c,), 0.1))
            module.running_var.copy_(uniform((c,), 0.5, 2.0))

    model.eval()
    if not calibrate:
        return model

    if calib_input is None:
        calib_input = normal((calib_batch, 3, *calib_hw), input_std)

    def pre_hook(bn: nn.BatchNorm2d, args):
        x = args[0].detach().to(torch.float64)
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        var = var.clamp_min(max(1e-4, 1e-2 * float(var.mean())))  # no near-constant channel blows up
        c = bn.num_features
        noise = normal((c,), 1.0).to(torch.float64)
        factor = uniform((c,), 0.5, 2.0).to(torch.float64)
        bn.running_mean.copy_((mean + 0.25 * var.sqrt() * noise).to(bn.running_mean.dtype))
        bn.running_var.copy_((var * factor).to(bn.running_var.dtype))

    handles = [m.register_forward_pre_hook(pre_hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        if isinstance(model, (MobileNetV1, ResNet50)):
            model.forward_features(calib_input)
        else:
            model(calib_input)
    finally:
        for h in handles:
            h.remove()
    return model


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def strip_module_prefix(state_dict: dict) -> dict:
    """Drop a leading ``module.`` (DataParallel) from every key that has one."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def load_state_dict_file(model: nn.Module, path) -> nn.Module:
    """Load a biubug6-style checkpoint into ``model`` strictly.

    Accepts a plain state_dict or a dict holding ``state_dict`` (e.g. the MobileNet pretrain "tar"),
    strips ``module.`` prefixes, and raises on any missing or unexpected key.
    """
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    model.load_state_dict(strip_module_prefix(obj), strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------------
# Priors, box coding and NMS (as the reference runs them)
# --------------------------------------------------------------------------------------------------


def prior_box(
    h: int,
    w: int,
    min_sizes: Sequence[Sequence[int]] = MIN_SIZES,
    steps: Sequence[int] = STEPS,
) -> np.ndarray:
    """Normalised ``[cx, cy, w, h]`` priors for an (h, w) image, float32 ``[A, 4]``.

    Plain Python loops in the reference order: level, row i, column j, min_size. The arithmetic is
    done in Python floats and converted to float32 at the end, as the reference does.
    """
    anchors: list[float] = []
    for k, step in enumerate(steps):
        fh = int(math.ceil(h / step))
        fw = int(math.ceil(w / step))
        for i in range(fh):
            for j in range(fw):
                for min_size in min_sizes[k]:
                    s_kx = min_size / w
                    s_ky = min_size / h
                    cx = (j + 0.5) * step / w
                    cy = (i + 0.5) * step / h
                    anchors += [cx, cy, s_kx, s_ky]
    return np.asarray(anchors, dtype=np.float32).reshape(-1, 4)


def _as_tensor(x) -> tuple[torch.Tensor, bool]:
    if isinstance(x, torch.Tensor):
        return x, True
    return torch.as_tensor(np.asarray(x)), False


def decode(loc, priors, variances: Sequence[float] = VARIANCES):
    """Decode ``[A, 4]`` box offsets against ``[A, 4]`` (cx, cy, w, h) priors into xyxy (normalised).

    Returns the same kind (numpy or torch) as ``loc``. Computed in torch in the reference's op order.
    """
    loc_t, is_torch = _as_tensor(loc)
    pri, _ = _as_tensor(priors)
    pri = pri.to(loc_t.dtype)
    centers = pri[:, :2] + loc_t[:, :2] * variances[0] * pri[:, 2:]
    sizes = pri[:, 2:] * torch.exp(loc_t[:, 2:] * variances[1])
    boxes = torch.cat((centers, sizes), dim=1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes if is_torch else boxes.numpy()


def decode_landm(pre, priors, variances: Sequence[float] = VARIANCES):
    """Decode ``[A, 10]`` landmark offsets: point k = prior centre + pre[2k:2k+2] * v0 * prior size."""
    pre_t, is_torch = _as_tensor(pre)
    pri, _ = _as_tensor(priors)
    pri = pri.to(pre_t.dtype)
    points = [pri[:, :2] + pre_t[:, 2 * k : 2 * k + 2] * variances[0] * pri[:, 2:] for k in range(5)]
    out = torch.cat(points, dim=1)
    return out if is_torch else out.numpy()


def py_cpu_nms(dets: np.ndarray, thresh: float) -> list[int]:
    """Greedy NMS on ``[N, 5]`` (x1, y1, x2, y2, score) with the +1-pixel area convention.

    Visits boxes in descending score order (``argsort()[::-1]``) and keeps a candidate while its IoU
    with the current box is <= ``thresh``. Returns the kept row indices.
    """
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        best = order[0]
        keep.append(int(best))
        rest = order[1:]
        ix1 = np.maximum(x1[best], x1[rest])
        iy1 = np.maximum(y1[best], y1[rest])
        ix2 = np.minimum(x2[best], x2[rest])
        iy2 = np.minimum(y2[best], y2[rest])
        iw = np.maximum(0.0, ix2 - ix1 + 1)
        ih = np.maximum(0.0, iy2 - iy1 + 1)
        inter = iw * ih
        iou = inter / (areas[best] + areas[rest] - inter)
        survivors = np.where(iou <= thresh)[0]
        order = rest[survivors]
    return keep


# --------------------------------------------------------------------------------------------------
# The inference pipeline (detect.py / test_widerface.py at resize = 1)
# --------------------------------------------------------------------------------------------------


class ReferenceOutputs(NamedTuple):
    """Batch-1 network outputs after softmax: loc [1,A,4], conf [1,A,2] (probabilities), landms [1,A,10]."""

    loc: torch.Tensor
    conf: torch.Tensor
    landms: torch.Tensor


def reference_preprocess(img_bgr_uint8: np.ndarray) -> torch.Tensor:
    """HWC BGR uint8 -> float32 BGR minus (104, 117, 123) -> [1, 3, H, W] tensor (no std division)."""
    img = np.float32(img_bgr_uint8)
    img -= BGR_MEAN
    return torch.from_numpy(img.transpose(2, 0, 1).copy()).unsqueeze(0)


def reference_forward(model: nn.Module, img) -> ReferenceOutputs:
    """Eager forward under ``torch.no_grad`` plus the test-phase softmax.

    ``img`` is an HWC BGR uint8 image (preprocessed here) or an already preprocessed [1,3,H,W] tensor
    (so a benchmark can exclude preprocessing from the timed region).
    """
    x = img if isinstance(img, torch.Tensor) else reference_preprocess(img)
    with torch.no_grad():
        loc, logits, landms = model(x)
        conf = F.softmax(logits, dim=-1)
    return ReferenceOutputs(loc, conf, landms)


def reference_postprocess(
    outputs,
    h: int,
    w: int,
    conf_threshold: float = 0.02,
    nms_threshold: float = 0.4,
    top_k: int | None = None,
    keep_top_k: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Priors for (h, w), decode, scale to pixels, threshold, sort, optional top_k, NMS, optional keep_top_k.

    ``outputs`` is ``(loc [1,A,4], conf_probabilities [1,A,2], landms [1,A,10])`` (a ``ReferenceOutputs``).
    Returns numpy ``boxes [N,4]`` (x1,y1,x2,y2 px), ``scores [N]``, ``landmarks [N,5,2]``, in NMS order
    (descending score).
    """
    loc, conf, landms = outputs
    priors = torch.from_numpy(prior_box(h, w))
    box_scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    ldm_scale = torch.tensor([w, h] * 5, dtype=torch.float32)

    boxes = (decode(loc.detach().squeeze(0), priors, VARIANCES) * box_scale).cpu().numpy()
    scores = conf.detach().squeeze(0).cpu().numpy()[:, 1]
    ldms = (decode_landm(landms.detach().squeeze(0), priors, VARIANCES) * ldm_scale).cpu().numpy()

    inds = np.where(scores > conf_threshold)[0]
    boxes, ldms, scores = boxes[inds], ldms[inds], scores[inds]

    order = scores.argsort()[::-1]
    if top_k is not None:
        order = order[:top_k]
    boxes, ldms, scores = boxes[order], ldms[order], scores[order]

    dets = np.hstack((boxes, scores[:, np.newaxis])).astype(np.float32, copy=False)
    keep = py_cpu_nms(dets, nms_threshold)
    dets, ldms = dets[keep, :], ldms[keep]
    if keep_top_k is not None:
        dets, ldms = dets[:keep_top_k], ldms[:keep_top_k]
    return dets[:, :4].copy(), dets[:, 4].copy(), ldms.reshape(-1, 5, 2)


def reference_detect(
    model: nn.Module,
    img_bgr_uint8: np.ndarray,
    conf_threshold: float = 0.02,
    nms_threshold: float = 0.4,
    top_k: int | None = None,
    keep_top_k: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole reference inference at the original image scale (resize = 1).

    ``detect.py`` defaults are ``top_k=5000, keep_top_k=750``; ``test_widerface.py`` applies neither
    (the default here, None).
    """
    h, w = img_bgr_uint8.shape[:2]
    outputs = reference_forward(model, img_bgr_uint8)
    return reference_postprocess(outputs, h, w, conf_threshold, nms_threshold, top_k, keep_top_k)
