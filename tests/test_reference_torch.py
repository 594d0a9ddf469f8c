"""Sanity tests of the PyTorch re-statement of the reference RetinaFace (tests/reference_torch.py).

The re-statement is the ground truth for the parity tests, so it is checked here on its own against
the facts in shared/docs/REFERENCE.md: checkpoint key names and shapes, parameter counts, prior
counts and layout, the +1-pixel NMS, and detections of the real 2019 checkpoint (section 1.13).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is a test-only dependency and is not installed")

import reference_torch as ref  # noqa: E402  (needs torch)

torch.set_num_threads(min(2, torch.get_num_threads()))

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path | None:
    env = os.environ.get("JAXFACE_SHARED")
    path = Path(env) if env else REPO_ROOT.parent / "shared"
    return path if path.is_dir() else None


SHARED = _shared_dir()
needs_shared = pytest.mark.skipif(
    SHARED is None,
    reason="shared assets not found: set JAXFACE_SHARED or place them at ../shared next to the repo",
)


def _shared_file(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared asset missing: {path}")
    return path


_KEY_LINE = re.compile(r"^(\S+) \(([0-9, ]*)\)$")


def _read_key_list(name: str) -> list[tuple[str, tuple[int, ...]]]:
    entries = []
    for line in _shared_file("data", "checkpoint_keys", name).read_text().splitlines():
        if not line.strip():
            continue
        m = _KEY_LINE.match(line.strip())
        assert m, f"unparsable key line: {line!r}"
        key, dims = m.groups()
        shape = tuple(int(d) for d in dims.replace(" ", "").split(",") if d)
        entries.append((key[len("module."):] if key.startswith("module.") else key, shape))
    return entries


def _model_keys(model) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------
# Architecture: key names, shapes, order and parameter counts
# --------------------------------------------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize(
    "arch,key_file,n_keys",
    [
        ("retinaface_mnet", "retinaface_mnet_keys.txt", 300),
        ("retinaface_mnet_relu", "retinaface_mnet_keys.txt", 300),
        ("retinaface_r50", "retinaface_r50_keys.txt", 456),
    ],
)
def test_state_dict_matches_released_checkpoint_keys(arch, key_file, n_keys):
    expected = _read_key_list(key_file)
    got = _model_keys(ref.build_reference(arch))
    assert len(expected) == n_keys
    missing = sorted({k for k, _ in expected} - {k for k, _ in got})
    unexpected = sorted({k for k, _ in got} - {k for k, _ in expected})
    assert not missing and not unexpected, f"missing={missing[:5]} unexpected={unexpected[:5]}"
    assert dict(got) == dict(expected), "shape mismatch"
    assert [k for k, _ in got] == [k for k, _ in expected], "key order differs from the checkpoint"
    assert len([k for k, _ in got if not k.endswith("num_batches_tracked")]) == {300: 253, 456: 383}[n_keys]


@pytest.mark.parametrize(
    "arch,count", [("retinaface_mnet", 426_608), ("retinaface_mnet_relu", 426_608), ("retinaface_r50", 27_293_600)]
)
def test_parameter_counts(arch, count):
    assert _n_params(ref.build_reference(arch)) == count


def test_backbone_layouts_match_detector_bodies():
    for backbone_name, arch in (("mobilenet0.25", "retinaface_mnet"), ("resnet50", "retinaface_r50")):
        backbone = _model_keys(ref.build_reference_backbone(backbone_name))
        body = [(k[len("body."):], s) for k, s in _model_keys(ref.build_reference(arch)) if k.startswith("body.")]
        # The detector keeps every backbone tensor except the ImageNet classifier.
        assert [e for e in backbone if not e[0].startswith("fc.")] == body
        assert [e for e in backbone if e[0].startswith("fc.")] == [
            ("fc.weight", (1000, body[-2][1][0])),
            ("fc.bias", (1000,)),
        ]
    # torchvision's resnet50 has 25,557,032 parameters and 320 state_dict entries.
    r50 = ref.build_reference_backbone("resnet50")
    assert _n_params(r50) == 25_557_032
    assert len(r50.state_dict()) == 320


@needs_shared
def test_mobilenet_pretrain_checkpoint_loads_strictly():
    backbone = ref.build_reference_backbone("mobilenet0.25")
    assert len(backbone.state_dict()) == 164
    ref.load_state_dict_file(backbone, _shared_file("data", "weights", "mobilenetV1X0.25_pretrain.tar"))
    with torch.no_grad():
        logits = backbone(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_strict_loading_rejects_wrong_keys(tmp_path):
    model = ref.build_reference("retinaface_mnet")
    sd = {("module." + k): v for k, v in model.state_dict().items()}  # DataParallel-style names load
    torch.save(sd, tmp_path / "ok.pth")
    ref.load_state_dict_file(ref.build_reference("retinaface_mnet"), tmp_path / "ok.pth")
    sd.pop("module.ClassHead.0.conv1x1.bias")
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError):
        ref.load_state_dict_file(ref.build_reference("retinaface_mnet"), tmp_path / "bad.pth")


# --------------------------------------------------------------------------------------------------
# Forward shapes, anchor layout and random weights
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["retinaface_mnet", "retinaface_r50"])
@pytest.mark.parametrize("hw", [(64, 64), (72, 100)])  # 72 x 100: odd feature-map sizes (9x13, 5x7, 3x4)
def test_forward_shapes_match_prior_count(arch, hw):
    model = ref.randomize_(ref.build_reference(arch), seed=0)
    with torch.no_grad():
        bbox, cls, ldm = model(torch.randn(2, 3, *hw))
    n = len(ref.prior_box(*hw))
    assert bbox.shape == (2, n, 4) and cls.shape == (2, n, 2) and ldm.shape == (2, n, 10)


def test_forward_anchor_order_is_level_then_y_x_anchor():
    """Output row ((y * W + x) * 2 + a) of a level is head channel block a at pixel (y, x)."""
    model = ref.randomize_(ref.build_reference("retinaface_mnet"), seed=1)
    captured = {}
    model.ClassHead[1].conv1x1.register_forward_hook(lambda m, i, o: captured.setdefault("raw", o))
    h, w = 72, 100
    with torch.no_grad():
        _, cls, _ = model(torch.randn(1, 3, h, w))
    raw = captured["raw"][0]  # [4, fh, fw] at stride 16
    fh0, fw0 = -(-h // 8), -(-w // 8)
    fh1, fw1 = raw.shape[1:]
    assert (fh1, fw1) == (-(-h // 16), -(-w // 16))
    offset = fh0 * fw0 * 2
    for y, x, a in [(0, 0, 0), (0, 0, 1), (2, 5, 1), (fh1 - 1, fw1 - 1, 0)]:
        row = offset + (y * fw1 + x) * 2 + a
        torch.testing.assert_close(cls[0, row], raw[2 * a : 2 * a + 2, y, x])


def test_mnet_variants_differ_only_in_activation_slopes():
    relu = ref.build_reference("retinaface_mnet_relu")
    leaky = ref.build_reference("retinaface_mnet")
    ref.randomize_(relu, seed=3)
    leaky.load_state_dict(relu.state_dict())
    slopes = lambda m: sorted({mod.negative_slope for mod in m.modules() if isinstance(mod, torch.nn.LeakyReLU)})
    assert slopes(relu) == [0.0] and slopes(leaky) == [0.1]
    assert all(mod.negative_slope == 0.0 for mod in ref.build_reference("retinaface_r50").modules()
               if isinstance(mod, torch.nn.LeakyReLU))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(relu(x)[1], leaky(x)[1], atol=1e-3)


def test_randomize_is_deterministic_and_randomises_bn():
    a = ref.randomize_(ref.build_reference("retinaface_mnet"), seed=7).state_dict()
    b = ref.randomize_(ref.build_reference("retinaface_mnet"), seed=7).state_dict()
    c = ref.randomize_(ref.build_reference("retinaface_mnet"), seed=8).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert not torch.equal(a["fpn.merge1.0.weight"], c["fpn.merge1.0.weight"])
    for k in a:
        if k.endswith("running_var"):
            assert (a[k] > 0).all() and not torch.allclose(a[k], torch.ones_like(a[k]))
        if k.endswith("running_mean") or (k.endswith(".bias") and "conv1x1" not in k):
            assert a[k].abs().max() > 1e-3, k
        if k.endswith(".1.weight") and a[k].ndim == 1:  # BN gamma
            assert not torch.allclose(a[k], torch.ones_like(a[k]))


@pytest.mark.parametrize("arch", ["retinaface_mnet", "retinaface_mnet_relu", "retinaface_r50"])
def test_randomized_outputs_are_order_one(arch):
    model = ref.randomize_(ref.build_reference(arch), seed=0)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(11)))
    for out in outs:
        assert torch.isfinite(out).all()
        assert 0.1 < float(out.std()) < 10.0
        assert float(out.abs().max()) < 100.0


# --------------------------------------------------------------------------------------------------
# Priors, decoding, NMS
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw,count", [((640, 640), 16_800), ((840, 840), 29_126), ((128, 128), 672)])
def test_prior_counts(hw, count):
    priors = ref.prior_box(*hw)
    assert priors.shape == (count, 4) and priors.dtype == np.float32


def test_prior_layout_non_square():
    h, w = 72, 100  # stride-8 map is 9 x 13
    p = ref.prior_box(h, w).astype(np.float64)
    np.testing.assert_allclose(p[0], [4 / w, 4 / h, 16 / w, 16 / h], rtol=1e-6)
    np.testing.assert_allclose(p[1], [4 / w, 4 / h, 32 / w, 32 / h], rtol=1e-6)
    # row i=1, col j=2 of level 0: index (1 * 13 + 2) * 2
    np.testing.assert_allclose(p[(13 + 2) * 2], [2.5 * 8 / w, 1.5 * 8 / h, 16 / w, 16 / h], rtol=1e-6)
    n0 = 9 * 13 * 2
    np.testing.assert_allclose(p[n0], [8 / w, 8 / h, 64 / w, 64 / h], rtol=1e-6)  # level 1 starts
    n1 = n0 + 5 * 7 * 2
    np.testing.assert_allclose(p[n1 + 1], [16 / w, 16 / h, 512 / w, 512 / h], rtol=1e-6)
    assert len(p) == n1 + 3 * 4 * 2


def test_decode_and_decode_landm():
    priors = np.array([[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.1, 0.1]], np.float32)
    zero = np.zeros((2, 4), np.float32)
    np.testing.assert_allclose(ref.decode(zero, priors), [[0.4, 0.3, 0.6, 0.7], [0.2, 0.7, 0.3, 0.8]], atol=1e-6)
    loc = np.array([[1.0, -1.0, np.log(2.0) / 0.2, 0.0]], np.float32)
    # centre (0.5 + 0.1*0.2, 0.5 - 0.1*0.4) = (0.52, 0.46); size (0.4, 0.4)
    np.testing.assert_allclose(ref.decode(loc, priors[:1]), [[0.32, 0.26, 0.72, 0.66]], atol=1e-6)
    pre = np.arange(10, dtype=np.float32)[None]
    want = [0.5 + 0.1 * 0.2 * pre[0, 2 * k] for k in range(5)], [0.5 + 0.1 * 0.4 * pre[0, 2 * k + 1] for k in range(5)]
    got = ref.decode_landm(pre, priors[:1]).reshape(5, 2)
    np.testing.assert_allclose(got[:, 0], want[0], atol=1e-6)
    np.testing.assert_allclose(got[:, 1], want[1], atol=1e-6)
    assert isinstance(ref.decode(torch.from_numpy(zero), priors), torch.Tensor)


def test_nms_uses_plus_one_areas_and_keeps_iou_equal_to_threshold():
    # With +1: areas 100 and 100, intersection 5 * 10 = 50 -> IoU 1/3 (without +1 it would be 36/126).
    dets = np.array([[0, 0, 9, 9, 0.9], [5, 0, 14, 9, 0.8]], np.float32)
    assert ref.py_cpu_nms(dets, 0.3) == [0]
    assert ref.py_cpu_nms(dets, 0.34) == [0, 1]
    # IoU exactly 0.5 (100 / 200) is kept at thresh 0.5, suppressed below it.
    dets = np.array([[0, 0, 9, 19, 0.5], [0, 0, 9, 9, 0.7]], np.float32)
    assert ref.py_cpu_nms(dets, 0.5) == [1, 0]
    assert ref.py_cpu_nms(dets, 0.49) == [1]
    # Greedy chain: b suppressed by a, so c (overlapping b only) survives.
    dets = np.array([[0, 0, 9, 9, 0.9], [4, 0, 13, 9, 0.8], [8, 0, 17, 9, 0.7]], np.float32)
    assert ref.py_cpu_nms(dets, 0.3) == [0, 2]


def test_postprocess_thresholds_sorts_and_caps():
    h, w = 64, 64
    n = len(ref.prior_box(h, w))
    gen = torch.Generator().manual_seed(0)
    loc = torch.randn(1, n, 4, generator=gen) * 0.1
    ldm = torch.randn(1, n, 10, generator=gen) * 0.1
    conf = torch.softmax(torch.randn(1, n, 2, generator=gen) * 3, dim=-1)
    outputs = ref.ReferenceOutputs(loc, conf, ldm)
    boxes, scores, lms = ref.reference_postprocess(outputs, h, w, conf_threshold=0.5, nms_threshold=0.4)
    assert boxes.shape == (len(scores), 4) and lms.shape == (len(scores), 5, 2)
    assert len(scores) > 1 and (scores > 0.5).all() and (np.diff(scores) <= 0).all()
    capped = ref.reference_postprocess(outputs, h, w, conf_threshold=0.5, nms_threshold=0.4, keep_top_k=1)
    assert len(capped[1]) == 1 and capped[1][0] == scores[0]
    few = ref.reference_postprocess(outputs, h, w, conf_threshold=0.5, nms_threshold=1.0, top_k=3)
    assert len(few[1]) == 3


# --------------------------------------------------------------------------------------------------
# The real 2019 ReLU checkpoint (REFERENCE.md section 1.13)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relu_2019():
    if SHARED is None:
        pytest.skip("shared assets not found: set JAXFACE_SHARED or place them at ../shared next to the repo")
    model = ref.build_reference("retinaface_mnet_relu")
    return ref.load_state_dict_file(model, _shared_file("data", "weights", "retinaface_mnet025_relu_2019.pth"))


def _imread(name: str) -> np.ndarray:
    cv2 = pytest.importorskip("cv2", reason="opencv is needed to read the test images")
    img = cv2.imread(str(_shared_file("data", "images", name)))
    assert img is not None and img.dtype == np.uint8
    return img


@needs_shared
def test_real_checkpoint_one_face(relu_2019):
    img = _imread("1face.png")
    assert img.shape == (128, 128, 3)
    boxes, scores, lms = ref.reference_detect(relu_2019, img, conf_threshold=0.02, nms_threshold=0.4)
    assert len(scores) == 1
    np.testing.assert_allclose(boxes[0], [42.02, 29.61, 62.27, 56.34], atol=0.05)
    np.testing.assert_allclose(scores[0], 0.978, atol=1e-3)
    want = [(49.5, 39.2), (58.4, 39.6), (54.8, 44.5), (49.7, 49.1), (57.2, 49.4)]
    np.testing.assert_allclose(lms[0], want, atol=0.06)  # listed to 0.1 px


@needs_shared
def test_real_checkpoint_three_faces(relu_2019):
    boxes, scores, _ = ref.reference_detect(relu_2019, _imread("3faces.png"))
    np.testing.assert_allclose(scores[:3], [0.979, 0.907, 0.824], atol=1e-3)
    assert (scores[3:] < 0.5).all()  # anything else is a low-confidence leftover above conf 0.02
    assert (boxes[:3, 2] > boxes[:3, 0]).all() and (boxes[:3, 3] > boxes[:3, 1]).all()


@needs_shared
def test_real_checkpoint_needs_relu_activations(relu_2019):
    """Run with today's LeakyReLU(0.1), the 2019 weights no longer reproduce section 1.13."""
    leaky = ref.build_reference("retinaface_mnet")
    leaky.load_state_dict(relu_2019.state_dict())
    boxes, scores, _ = ref.reference_detect(leaky, _imread("1face.png"))
    assert not (len(scores) == 1 and np.allclose(boxes[0], [42.02, 29.61, 62.27, 56.34], atol=0.05))


@needs_shared
def test_forward_and_postprocess_split_equals_detect(relu_2019):
    img = _imread("3faces.png")
    x = ref.reference_preprocess(img)
    assert x.shape == (1, 3, 128, 128) and x.dtype == torch.float32
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), img[0, 0].astype(np.float32) - np.float32(ref.BGR_MEAN))
    outputs = ref.reference_forward(relu_2019, x)
    torch.testing.assert_close(outputs.conf.sum(-1), torch.ones(1, 672))
    split = ref.reference_postprocess(outputs, 128, 128)
    whole = ref.reference_detect(relu_2019, img)
    for a, b in zip(split, whole):
        np.testing.assert_array_equal(a, b)
