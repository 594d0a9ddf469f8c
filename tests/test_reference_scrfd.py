"""Tests of the PyTorch re-statement of SCRFD (tests/reference_scrfd.py).

The re-statement is the yardstick for jaxface/scrfd, so it is checked here on its own against
shared/docs/REFERENCE.md section 2 and the released key lists (shared/data/checkpoint_keys/scrfd_*):
keys, shapes and parameter counts of all eight released configs; the export-convention output
layout; anchors, box / keypoint decoding, both NMS conventions and both test-time pipelines on hand
examples; the random-weight helper; BN folding; and ONNX Runtime on exported files.
No SCRFD weights exist on this machine, so everything runs on seeded random weights.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is a test-only dependency and is not installed")

import reference_scrfd as ref  # noqa: E402  (needs torch)
from conftest import shared_file  # noqa: E402

NAMES = list(ref.CONFIGS)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread while these tests run. On a shared 2-core machine, two OpenMP threads
    spin-wait for each other whenever one is descheduled: the same work measured 1.2 s on one
    thread and 19-25 s on two. Restored afterwards, since the setting is process-wide."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _read_key_list(name: str) -> list[tuple[str, tuple[int, ...]]]:
    entries = []
    for line in shared_file("data", "checkpoint_keys", f"{name}_keys.txt").read_text().splitlines():
        if not line.strip():
            continue
        key, dims = line.rsplit(" (", 1)
        assert dims.endswith(")"), f"unparsable key line: {line!r}"
        entries.append((key, tuple(int(d) for d in dims[:-1].replace(" ", "").split(",") if d)))
    return entries


@functools.lru_cache(maxsize=None)
def _random_model(name: str, seed: int = 0) -> ref.SCRFD:
    """Shared across tests; tests must not modify it (fold_batchnorm and export deep-copy)."""
    return ref.randomize_(ref.build_scrfd(name), seed=seed)


def _images(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Normalised random pixels: U(-1, 1), the range of (x - 127.5) / 128."""
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------------------------------
# Architecture: keys, shapes, order, parameter counts (section 2.12)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_and_shapes_equal_the_released_list(name):
    expected = _read_key_list(name)
    got = [(k, tuple(v.shape)) for k, v in ref.build_scrfd(name).state_dict().items()]
    expected_keys, got_keys = {k for k, _ in expected}, {k for k, _ in got}
    assert len(expected_keys) == len(expected), "duplicate keys in the list"
    missing, unexpected = sorted(expected_keys - got_keys), sorted(got_keys - expected_keys)
    assert not missing and not unexpected, f"missing={missing[:5]} unexpected={unexpected[:5]}"
    got_shapes = dict(got)
    wrong = [(k, s, got_shapes[k]) for k, s in expected if got_shapes[k] != s]
    assert not wrong, f"(key, listed, built) shape mismatches: {wrong[:5]}"


_HEAD_MODULE_ORDER = ("cls_stride_convs", "stride_cls", "stride_reg", "stride_kps", "scales", "integral")


def _state_dict_rank(key: str) -> int:
    if not key.startswith("bbox_head."):
        return -1
    return _HEAD_MODULE_ORDER.index(key.split(".")[1])


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_order(name):
    listed = [k for k, _ in _read_key_list(name)]
    got = list(ref.build_scrfd(name).state_dict())
    if name != "scrfd_500m_bnkps":
        assert got == listed
        return
    # This one list interleaves the per-stride head (cls_stride_convs.(8, 8), stride_cls.(8, 8), ...,
    # then (16, 16)...), which no state_dict of ModuleDicts can produce (REFERENCE 2.12 says all
    # strides of cls_stride_convs come first). Grouping its head keys by module, stably, gives ours.
    assert got != listed
    assert got == sorted(listed, key=_state_dict_rank)


# REFERENCE 2.12's "Params" column counts trainable parameters only (model.parameters()): BN
# running_mean / running_var, num_batches_tracked and the integral.project buffer are excluded.
# Its "Tensors" column counts every state_dict entry, buffers included (= lines in the key list).
# The arithmetic, element counts summed over each key list:
#   config        all entries = params    + running stats + num_batches_tracked + project
#   500m            581,643   =   572,741 +   8,864 +  29 + 9   -> 0.573M (all: 0.582M)
#   1g              644,255   =   635,565 +   8,656 +  25 + 9   -> 0.636M (all: 0.644M)
#   2.5g            674,714   =   671,761 +   2,912 +  32 + 9   -> 0.672M (all: 0.675M)
#   10g           3,866,760   = 3,860,225 +   6,496 +  30 + 9   -> 3.860M (all: 3.867M)
#   34g           9,849,922   = 9,802,737 +  47,040 + 136 + 9   -> 9.803M (all: 9.850M)
#   500m_bnkps      641,572   =   631,410 +  10,112 +  41 + 9   -> 0.631M (all: 0.642M)
#   2.5g_bnkps      823,536   =   819,809 +   3,680 +  38 + 9   -> 0.820M (all: 0.824M)
#   10g_bnkps     4,237,889   = 4,229,905 +   7,936 +  39 + 9   -> 4.230M (all: 4.238M)
# Only "params" rounds to the table in every row (running stats = 2 x BN channels; one
# num_batches_tracked per BN). Worked example, the 500m head (shared, dw, GN(16)): tower conv 0
# = dw 16*9 + GN 2*16 + pw 64*16 + GN 2*64 = 1,328; conv 1 = 64*9 + 128 + 64*64 + 128 = 4,928;
# stride_cls 2*64*9 + 2 = 1,154; stride_reg 8*64*9 + 8 = 4,616; 3 Scales = 3: 12,029 in all.
PARAM_TABLE = {
    # name: (exact parameters, REFERENCE "Params" in M, REFERENCE "Tensors")
    "scrfd_500m": (572_741, 0.573, 214),
    "scrfd_1g": (635_565, 0.636, 190),
    "scrfd_2.5g": (671_761, 0.672, 226),
    "scrfd_10g": (3_860_225, 3.860, 217),
    "scrfd_34g": (9_802_737, 9.803, 850),
    "scrfd_500m_bnkps": (631_410, 0.631, 285),
    "scrfd_2.5g_bnkps": (819_809, 0.820, 270),
    "scrfd_10g_bnkps": (4_229_905, 4.230, 276),
}


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_match_reference_table(name):
    exact, millions, tensors = PARAM_TABLE[name]
    model = ref.build_scrfd(name)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == exact
    assert round(n_params / 1e6, 3) == millions
    assert len(model.state_dict()) == tensors
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    bn_channels = sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    n_all = sum(v.numel() for v in model.state_dict().values())
    assert n_all == n_params + 2 * bn_channels + n_bn + 9  # running stats, num_batches_tracked, project


def test_500m_head_parameter_arithmetic():
    head = ref.build_scrfd("scrfd_500m").bbox_head
    assert sum(p.numel() for p in head.parameters()) == 1_328 + 4_928 + 1_154 + 4_616 + 3 == 12_029


def test_config_table_facts():
    assert {n: c.use_scale for n, c in ref.CONFIGS.items()} == {
        "scrfd_500m": True, "scrfd_1g": True, "scrfd_2.5g": True, "scrfd_10g": True, "scrfd_34g": True,
        "scrfd_500m_bnkps": False,  # scale_mode 0
        "scrfd_2.5g_bnkps": True, "scrfd_10g_bnkps": True,  # per-stride, but scale_mode 2
    }  # fmt: skip
    # use_scale = scale_mode > 0 and (strides_share or scale_mode == 2)
    base = ref.CONFIGS["scrfd_500m"]
    for scale_mode, share, expected in [(0, True, False), (1, True, True), (1, False, False), (2, False, True)]:
        cfg = dataclasses.replace(base, scale_mode=scale_mode, strides_share=share)
        assert cfg.use_scale is expected, (scale_mode, share)
    assert ref.CONFIGS["scrfd_34g"].backbone.out_channels == (224, 224, 576, 736)
    assert ref.CONFIGS["scrfd_34g"].neck_in_channels == (224, 576, 736)
    with pytest.raises(ValueError, match="scrfd_10g_bnkps"):
        ref.build_scrfd("scrfd_1gbn")


@pytest.mark.parametrize("name,groups", [("scrfd_500m", 16), ("scrfd_1g", 8), ("scrfd_2.5g", 16), ("scrfd_10g", 16), ("scrfd_34g", 32), ("scrfd_10g_bnkps", None)])
def test_norm_layers(name, groups):
    model = ref.build_scrfd(name)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    gns = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert bns and all(m.eps == 1e-5 for m in bns)
    assert all(m.eps == 1e-5 and m.num_groups == groups for m in gns)
    assert bool(gns) == (groups is not None)
    # The neck is linear: biased convs, nothing else.
    assert not [m for m in model.neck.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.ReLU))]
    assert all(m.bias is not None for m in model.neck.modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.equal(model.bbox_head.integral.project, torch.arange(9, dtype=torch.float32))


# --------------------------------------------------------------------------------------------------
# Forward: the export convention (section 2.10)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["scrfd_500m", "scrfd_2.5g_bnkps"])
def test_output_layout_is_nhwc_flattened_with_scale_on_boxes_only(name):
    model = _random_model(name)
    x = _images(2, 64, 96, seed=1)  # levels 8x12, 4x6, 2x3
    with torch.no_grad():
        outs = model(x)
        raw = model.bbox_head.forward_raw(model.features(x))
        pre_scale = [model.bbox_head.stride_reg[ref.head_key(s, model.cfg.strides_share)] for s in ref.STRIDES]
    lv = ref.split_outputs(outs)
    use_kps = model.cfg.use_kps
    assert len(outs) == (9 if use_kps else 6)
    assert [tuple(o.shape) for o in lv.scores] == [(2, 192, 1), (2, 48, 1), (2, 12, 1)]
    assert [tuple(o.shape) for o in lv.boxes] == [(2, 192, 4), (2, 48, 4), (2, 12, 4)]
    if use_kps:
        assert [tuple(o.shape) for o in lv.kps] == [(2, 192, 10), (2, 48, 10), (2, 12, 10)]
    # Anchor a of location (y, x) is row (y*W + x)*2 + a. Stride 8 (W = 12), y=1, x=2, a=1 -> row 29.
    cls, reg, kps = raw[0]
    assert torch.equal(lv.scores[0][1, 29, 0], torch.sigmoid(cls[1, 1, 1, 2]))
    assert torch.equal(lv.boxes[0][1, 29], reg[1, 4:8, 1, 2])
    if use_kps:
        assert torch.equal(lv.kps[0][1, 29], kps[1, 10:20, 1, 2])
    for level, (cls, reg, kps) in enumerate(raw):  # every row of every level
        h, w = cls.shape[2:]
        assert torch.equal(lv.scores[level], cls.sigmoid().permute(0, 2, 3, 1).reshape(2, h * w * 2, 1))
        assert torch.equal(lv.boxes[level], reg.permute(0, 2, 3, 1).reshape(2, h * w * 2, 4))
    # Boxes are Scale x stride_reg (no exp, no ReLU, no stride); keypoints are not scaled.
    with torch.no_grad():
        tower = model.features(x)[2]
        key = ref.head_key(32, model.cfg.strides_share)
        for conv in model.bbox_head.cls_stride_convs[key]:
            tower = conv(tower)
        unscaled = pre_scale[2](tower)
    scale = model.bbox_head.scales[2].scale
    assert scale.item() != 1.0
    torch.testing.assert_close(raw[2][1], unscaled * scale, rtol=0, atol=0)
    if use_kps:
        torch.testing.assert_close(raw[2][2], model.bbox_head.stride_kps[key](tower), rtol=0, atol=0)


def test_500m_bnkps_has_no_scale_and_per_stride_heads():
    model = _random_model("scrfd_500m_bnkps")
    head = model.bbox_head
    assert not hasattr(head, "scales")
    assert list(head.cls_stride_convs) == ["(8, 8)", "(16, 16)", "(32, 32)"]
    x = _images(1, 64, 64, seed=2)
    with torch.no_grad():
        feats = model.features(x)
        tower = feats[0]
        for conv in head.cls_stride_convs["(8, 8)"]:
            tower = conv(tower)
        boxes = model(x)[3]
    torch.testing.assert_close(boxes, head.stride_reg["(8, 8)"](tower).permute(0, 2, 3, 1).reshape(1, -1, 4), rtol=0, atol=0)


def test_upsample_nearest_reads_floor_of_scaled_index():
    col = torch.arange(5.0).reshape(1, 1, 5, 1)
    # 5 -> 9 rows (a 72 px input gives stride-16 5x5 and stride-8 9x9): row i reads floor(i * 5 / 9).
    assert ref.upsample_nearest(col, (9, 1)).flatten().tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert ref.upsample_nearest(col[:, :, :3], (6, 1)).flatten().tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("name,hw,level_hw", [
    ("scrfd_500m_bnkps", (72, 72), [(9, 9), (5, 5), (3, 3)]),  # MobileNet: every stride-2 conv rounds up
    ("scrfd_2.5g", (72, 72), [(9, 9), (5, 5), (3, 3)]),  # ResNet: stem rounds up, 2x2 max-pool rounds down
    ("scrfd_2.5g", (76, 100), [(10, 13), (5, 7), (3, 4)]),  # 76 -> 38 -> 19 -> 10 -> 5 -> 3
])  # fmt: skip
def test_odd_sizes_run_through_the_neck(name, hw, level_hw):
    model = _random_model(name)
    with torch.no_grad():
        feats = model.features(_images(1, *hw, seed=3))
        outs = model(_images(1, *hw, seed=3))
    assert [tuple(f.shape[2:]) for f in feats] == level_hw
    assert [o.shape[1] for o in outs[:3]] == [h * w * 2 for h, w in level_hw]


# --------------------------------------------------------------------------------------------------
# Random weights
# --------------------------------------------------------------------------------------------------


def test_randomize_is_seeded_and_changes_every_kind_of_tensor():
    def random_state(seed):
        return ref.randomize_(ref.build_scrfd("scrfd_2.5g_bnkps"), seed=seed, calib_hw=(64, 64)).state_dict()

    a, b, c = random_state(7), random_state(7), random_state(8)
    fresh = ref.build_scrfd("scrfd_2.5g_bnkps").state_dict()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
        if key.endswith(("num_batches_tracked", "integral.project")):
            assert torch.equal(value, fresh[key]), key
        else:
            assert not torch.equal(value, c[key]), key
            assert not torch.equal(value, fresh[key]), key  # BN stats, affine, Scale, weights, biases
    gn = _random_model("scrfd_500m").bbox_head.cls_stride_convs["0"][0].pointwise_conv.gn
    assert not torch.equal(gn.weight, torch.ones_like(gn.weight)) and not torch.equal(gn.bias, torch.zeros_like(gn.bias))


@pytest.mark.parametrize("name", NAMES)
def test_random_weights_keep_activations_order_one(name):
    model = _random_model(name)
    x = _images(2, 64, 96, seed=4)
    with torch.no_grad():
        feats = model.features(x)
        lv = ref.split_outputs(model(x))
    for f in feats:
        assert 0.3 < f.std().item() < 5.0, [round(g.std().item(), 3) for g in feats]
    scores = torch.cat([s.flatten() for s in lv.scores])
    boxes = torch.cat([b.flatten() for b in lv.boxes])
    assert torch.isfinite(scores).all() and torch.isfinite(boxes).all()
    assert ((scores > 0.02) & (scores < 0.98)).float().mean() > 0.5  # not saturated
    assert 0.1 < boxes.std().item() < 10.0 and 0.3 < boxes.mean().item() < 5.0
    if lv.kps is not None:
        assert 0.1 < torch.cat([k.flatten() for k in lv.kps]).std().item() < 10.0


# --------------------------------------------------------------------------------------------------
# BN folding and ONNX export
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_fold_batchnorm_preserves_outputs(name):
    model = _random_model(name)
    folded = ref.fold_batchnorm(model)
    assert not [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    n_gn = sum(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in folded.modules()) == n_gn  # GN cannot fold
    x = _images(1, 64, 64, seed=5)
    with torch.no_grad():
        for a, b in zip(model(x), folded(x)):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_output_names():
    assert ref.output_names(False) == ["score_8", "score_16", "score_32", "bbox_8", "bbox_16", "bbox_32"]
    assert ref.output_names(True)[6:] == ["kps_8", "kps_16", "kps_32"]


@pytest.mark.parametrize("name", ["scrfd_500m_bnkps", "scrfd_10g_bnkps"])
def test_onnx_runtime_matches_torch_on_both_layouts(name, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _random_model(name)
    x = _images(1, 640, 640, seed=6)
    with torch.no_grad():
        expected = [o.numpy() for o in model(x)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # see one_torch_thread
    sessions = {}
    for layout in ("batched", "single"):
        path = str(tmp_path / f"{name}_{layout}.onnx")
        names = ref.export_onnx(model, path, layout=layout)
        graph = onnx.load(path)
        assert [o.opset_import[0].version for o in [graph]] == [11]
        assert "BatchNormalization" not in {n.op_type for n in graph.graph.node}  # folded, as released
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        sessions[layout] = session
        assert [o.name for o in session.get_outputs()] == names == ref.output_names(True)
        got = ref.onnx_runner(session)(x.numpy())
        for out_name, g, e in zip(names, got, expected):
            want = e if layout == "batched" else e[0]  # single: [H*W*2, C], no batch axis
            assert g.shape == want.shape, (layout, out_name)
            np.testing.assert_allclose(g, want, rtol=0, atol=1e-4, err_msg=f"{layout} {out_name}")
    assert [tuple(o.shape) for o in sessions["single"].get_outputs()][:3] == [(12800, 1), (3200, 1), (800, 1)]
    # The batched file has dynamic batch and size: two 128x160 images.
    x2 = _images(2, 128, 160, seed=7)
    with torch.no_grad():
        expected2 = [o.numpy() for o in model(x2)]
    for g, e in zip(ref.onnx_runner(sessions["batched"])(x2.numpy()), expected2):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-4)
    if name != "scrfd_500m_bnkps":
        return  # the layouts, not the model, are under test below: one model is enough
    # Deployment path on either layout gives the detections of the torch model. Random weights give
    # many exactly tied scores, whose order can differ between the two, so rows are paired by content.
    img = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    det_t, kps_t = ref.insightface_detect(img, ref.torch_runner(model), thresh=0.9)
    assert 0 < len(det_t) < 1000
    for session in sessions.values():
        det_o, kps_o = ref.insightface_detect(img, ref.onnx_runner(session), thresh=0.9)
        assert det_o.shape == det_t.shape
        gap = np.abs(det_o[:, None, :] - det_t[None, :, :]).max(axis=2)  # [N_onnx, N_torch]
        pair = gap.argmin(axis=1)
        assert sorted(pair.tolist()) == list(range(len(det_t)))  # one to one
        np.testing.assert_allclose(det_o, det_t[pair], rtol=0, atol=1e-2)
        np.testing.assert_allclose(kps_o, kps_t[pair], rtol=0, atol=1e-2)


# --------------------------------------------------------------------------------------------------
# Anchors and decoding (section 2.6)
# --------------------------------------------------------------------------------------------------


def test_anchor_centers_by_hand():
    # 2 rows x 3 columns at stride 8: centres (x*8, y*8), no +0.5; each location twice (2 anchors).
    expected = [[0, 0], [0, 0], [8, 0], [8, 0], [16, 0], [16, 0],
                [0, 8], [0, 8], [8, 8], [8, 8], [16, 8], [16, 8]]  # fmt: skip
    np.testing.assert_array_equal(ref.anchor_centers(2, 3, 8), np.array(expected, np.float32))
    # 640 x 640: 80*80*2 + 40*40*2 + 20*20*2 = 12800 + 3200 + 800 = 16800 anchors.
    assert sum(len(ref.anchor_centers(640 // s, 640 // s, s)) for s in ref.STRIDES) == 16800


def test_anchor_boxes_by_hand():
    # Stride 16, base 64: sides 64 and 128, centred on (x*16, y*16).
    boxes = ref.anchor_boxes(1, 2, 16, 64)
    np.testing.assert_array_equal(boxes, np.array([
        [-32, -32, 32, 32], [-64, -64, 64, 64],  # (x=0, y=0)
        [-16, -32, 48, 32], [-48, -64, 80, 64],  # (x=1, y=0): centre (16, 0)
    ], np.float32))  # fmt: skip
    np.testing.assert_array_equal((boxes[:, :2] + boxes[:, 2:]) / 2, ref.anchor_centers(1, 2, 16))


def test_distance2bbox_and_distance2kps_by_hand():
    points = np.array([[16, 8], [0, 0]], np.float32)
    dist = np.array([[2, 3, 4, 5], [3, 1, 2, 2]], np.float32)
    np.testing.assert_array_equal(ref.distance2bbox(points, dist), [[14, 5, 20, 13], [-3, -1, 2, 2]])
    # Clipped to an 18-wide, 10-high image: x to [0, 18], y to [0, 10].
    np.testing.assert_array_equal(ref.distance2bbox(points, dist, max_shape=(10, 18)), [[14, 5, 18, 10], [0, 0, 2, 2]])
    kps = ref.distance2kps(points[:1], np.array([[1, 2, -1, -2, 0, 0, 0.5, 0.5, -16, -8]], np.float32))
    np.testing.assert_array_equal(kps, [[[17, 10], [15, 6], [16, 8], [16.5, 8.5], [0, 0]]])


# --------------------------------------------------------------------------------------------------
# NMS: mmcv (no +1, section 2.9 a) and insightface (+1, section 2.9 b)
# --------------------------------------------------------------------------------------------------


def test_nms_mmcv_by_hand_with_ties():
    boxes = np.array([
        [0, 0, 20, 10],  # 0: score .9, area 200
        [0, 0, 9, 10],  # 1: .8, inside box 0: IoU = 90 / 200 = 0.45 exactly
        [1, 0, 21, 10],  # 2: .7, IoU with box 0 = 190 / 210 = 0.905
        [100, 100, 110, 110],  # 3: .8, the same score as box 1, disjoint
    ], np.float32)  # fmt: skip
    scores = np.array([0.9, 0.8, 0.7, 0.8], np.float32)
    # CUDA semantics (suppress IoU > thr): the tie at 0.45 is kept. Equal scores: index order.
    assert ref.nms_mmcv(boxes, scores, 0.45).tolist() == [0, 1, 3]
    # CPU semantics (suppress IoU >= thr): the tie goes.
    assert ref.nms_mmcv(boxes, scores, 0.45, ties="suppress").tolist() == [0, 3]
    # No +1: [0,0,10,10] vs [0,0,10,4] is 40 / 100 = 0.4 (with +1 it would be 55 / 121 = 0.45).
    pair = np.array([[0, 0, 10, 10], [0, 0, 10, 4]], np.float32)
    assert ref.nms_mmcv(pair, np.array([0.9, 0.8]), 0.4).tolist() == [0, 1]
    # Two identical flat boxes (clipped to the image edge): zero union never suppresses.
    flat = np.array([[5, 0, 9, 0], [5, 0, 9, 0]], np.float32)
    assert ref.nms_mmcv(flat, np.array([0.9, 0.8]), 0.45).tolist() == [0, 1]


def test_nms_plus_one_by_hand_with_ties():
    dets = np.array([
        [0, 0, 9, 9, 0.9],  # 0: +1 area 10 x 10 = 100
        [0, 0, 9, 3, 0.8],  # 1: +1 area 40, inside 0: IoU 40 / 100 = 0.4 -> kept (<= thr)
        [0, 0, 9, 4, 0.7],  # 2: IoU 50 / 100 = 0.5 -> suppressed
        [50, 50, 60, 60, 0.6],  # 3 and 4: equal scores, disjoint
        [200, 200, 210, 210, 0.6],
    ], np.float32)  # fmt: skip
    # Ties in score: the reversed stable argsort visits the later index first.
    assert ref.nms_plus_one(dets, 0.4) == [0, 1, 4, 3]
    # The +1 matters: [0,0,10,10] vs [0,0,10,4] is 55 / 121 = 0.4545 > 0.4 -> suppressed.
    assert ref.nms_plus_one(np.array([[0, 0, 10, 10, 0.9], [0, 0, 10, 4, 0.8]], np.float32), 0.4) == [0]


# --------------------------------------------------------------------------------------------------
# Pre-processing (section 2.9)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw,insightface,mmdet", [
    # (h, w): scrfd.py letterbox (new_h, new_w, det_scale); mmcv.imrescale (new_h, new_w)
    ((480, 640), (480, 640, 1.0), (480, 640)),
    ((1080, 1920), (360, 640, 1 / 3), (360, 640)),
    ((359, 500), (459, 640, 459 / 359), (460, 640)),  # 359 * 1.28 = 459.52: truncated vs rounded
    ((500, 359), (640, 459, 1.28), (640, 460)),  # portrait: det_scale comes from the height alone
    ((100, 100), (640, 640, 6.4), (640, 640)),  # small images are upscaled
    ((101, 203), (318, 640, 318 / 101), (318, 640)),
])  # fmt: skip
def test_resize_sizes(hw, insightface, mmdet):
    new_h, new_w, det_scale = ref.letterbox_size(*hw)
    assert (new_h, new_w) == insightface[:2]
    assert det_scale == pytest.approx(insightface[2], rel=1e-12)
    assert ref.mmdet_resize_size(*hw) == mmdet


def test_preprocess_values_and_padding():
    img = np.zeros((2, 4, 3), np.uint8)
    img[...] = (0, 128, 255)  # BGR
    r, g, b = (255 - 127.5) / 128, (128 - 127.5) / 128, (0 - 127.5) / 128  # 0.99609375, 0.00390625, -0.99609375
    blob, meta = ref.mmdet_preprocess(img, size=8)  # scale 2 -> 4 x 8, then zero-pad to 8 x 8
    assert blob.shape == (1, 3, 8, 8) and blob.dtype == np.float32
    assert meta.img_shape == (4, 8) and meta.scale_factor.tolist() == [2, 2, 2, 2]
    np.testing.assert_array_equal(blob[0, :, :4], np.array([r, g, b], np.float32)[:, None, None] * np.ones((3, 4, 8)))
    np.testing.assert_array_equal(blob[0, :, 4:], 0.0)  # padded after normalising: mid-gray
    blob, det_scale = ref.insightface_preprocess(img, input_size=(8, 8))
    assert blob.shape == (1, 3, 8, 8) and det_scale == 2.0
    np.testing.assert_array_equal(blob[0, :, :4], np.array([r, g, b], np.float32)[:, None, None] * np.ones((3, 4, 8)))
    np.testing.assert_array_equal(blob[0, :, 4:], np.float32(-127.5 / 128))  # black uint8 padding


# --------------------------------------------------------------------------------------------------
# Post-processing on hand-made network outputs
# --------------------------------------------------------------------------------------------------


def _hand_outputs(batched: bool) -> list[np.ndarray]:
    """Export-order outputs for a 64 x 64 input (levels 8x8, 4x4, 2x2 -> 128, 32, 8 rows), kps model.

    Row (y*W + x)*2 + a. Everything scores 0.01 except:
      stride 8, y=1 x=2 a=1 (row 21): 0.9, distances (1,1,1,1) -> box (8, 0, 24, 16), kps below;
      stride 8, y=1 x=2 a=0 (row 20): 0.7, the same box (a duplicate for NMS);
      stride 16, y=2 x=3 a=0 (row 22): 0.8, distances (.5,.5,1.5,1) from (48, 32) -> (40, 24, 72, 48);
      stride 32, y=0 x=0 a=0 (row 0): exactly 0.02, distances .25 -> (-8, -8, 8, 8).
    """
    rows = (128, 32, 8)
    scores = [np.full((n, 1), 0.01, np.float32) for n in rows]
    boxes = [np.zeros((n, 4), np.float32) for n in rows]
    kps = [np.zeros((n, 10), np.float32) for n in rows]
    scores[0][21], boxes[0][21] = 0.9, 1.0
    kps[0][21] = [0.5, 0.25, -0.5, 0.25, 0, 0, 1, -1, 0.5, 0.5]  # x8 from (16, 8)
    scores[0][20], boxes[0][20] = 0.7, 1.0
    scores[1][22], boxes[1][22] = 0.8, [0.5, 0.5, 1.5, 1.0]
    scores[2][0], boxes[2][0] = 0.02, 0.25
    outs = scores + boxes + kps
    return [o[None] for o in outs] if batched else outs


HAND_KPS = np.array([[20, 10], [12, 10], [16, 8], [24, 0], [20, 12]], np.float32)  # (16, 8) + d * 8


@pytest.mark.parametrize("batched", [True, False])
def test_mmdet_postprocess_by_hand(batched):
    # A 32 x 32 original resized x2 to 64 x 64: clip to [0, 64], then divide by 2.
    meta = ref.MmdetMeta((64, 64), np.full(4, 2.0, np.float32), (32, 32))
    det = ref.mmdet_postprocess(_hand_outputs(batched), meta, (64, 64))
    # 0.7 duplicate: IoU 1 -> suppressed; 0.02: not > score_thr 0.02 -> dropped; stride-16 box: x2 72 -> 64.
    np.testing.assert_array_equal(det.boxes, [[4, 0, 12, 8], [20, 12, 32, 24]])
    np.testing.assert_array_equal(det.scores, np.array([0.9, 0.8], np.float32))
    np.testing.assert_array_equal(det.kps[0], HAND_KPS / 2)
    np.testing.assert_array_equal(ref.to_widerface_rows(det)[:, :4], [[4, 0, 8, 8], [20, 12, 12, 12]])


@pytest.mark.parametrize("batched", [True, False])
def test_insightface_postprocess_by_hand(batched):
    # A 32 x 32 original letterboxed into 64 x 64: det_scale 2, no clipping.
    outs = _hand_outputs(batched)
    det, kps = ref.insightface_postprocess(outs, 2.0, (64, 64), (32, 32), thresh=0.5)
    np.testing.assert_array_equal(det, np.array([[4, 0, 12, 8, 0.9], [20, 12, 36, 24, 0.8]], np.float32))
    np.testing.assert_array_equal(kps[0], HAND_KPS / 2)
    # thresh 0.02 keeps the 0.02 score (>=), unclipped: (-8, -8, 8, 8) / 2.
    det, _ = ref.insightface_postprocess(outs, 2.0, (64, 64), (32, 32), thresh=0.02)
    np.testing.assert_array_equal(det[-1], np.array([-4, -4, 4, 4, 0.02], np.float32))
    # max_num=1 by area - 2 * offset^2 around the image centre (16, 16):
    #   (4, 0, 12, 8):   64 - 2 * ((8-16)^2 + (4-16)^2)  =  64 - 416 = -352
    #   (20, 12, 36, 24): 192 - 2 * ((28-16)^2 + (18-16)^2) = 192 - 296 = -104  <- kept
    det, kps = ref.insightface_postprocess(outs, 2.0, (64, 64), (32, 32), thresh=0.5, max_num=1)
    np.testing.assert_array_equal(det, np.array([[20, 12, 36, 24, 0.8]], np.float32))
    assert kps.shape == (1, 5, 2)


def test_postprocess_with_nothing_above_threshold():
    outs = _hand_outputs(batched=False)
    det = ref.mmdet_postprocess(outs, ref.MmdetMeta((64, 64), np.full(4, 2.0, np.float32), (32, 32)), (64, 64), score_thr=0.95)
    assert det.boxes.shape == (0, 4) and det.scores.shape == (0,) and det.kps.shape == (0, 5, 2)
    det, kps = ref.insightface_postprocess(outs, 2.0, (64, 64), (32, 32), thresh=0.95)
    assert det.shape == (0, 5) and kps.shape == (0, 5, 2)


def _iou(a, b, plus_one=0.0):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + plus_one)
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + plus_one)
    area = lambda r: (r[2] - r[0] + plus_one) * (r[3] - r[1] + plus_one)  # noqa: E731
    union = area(a) + area(b) - w * h
    return w * h / union if union > 0 else 0.0


def test_both_pipelines_end_to_end_on_a_random_model():
    model = _random_model("scrfd_500m_bnkps")
    img = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    det = ref.mmdet_detect(img, ref.torch_runner(model), size=64)
    assert len(det.scores) > 1 and det.kps.shape == (len(det.scores), 5, 2)
    assert (det.scores > 0.02).all() and (np.diff(det.scores) <= 0).all()
    assert (det.boxes >= 0).all() and (det.boxes[:, [0, 2]] <= 56 + 1e-3).all() and (det.boxes[:, [1, 3]] <= 40 + 1e-3).all()
    for i in range(len(det.boxes)):
        for j in range(i):
            assert _iou(det.boxes[i], det.boxes[j]) <= 0.45
    det, kps = ref.insightface_detect(img, ref.torch_runner(model), input_size=(64, 64))
    assert len(det) > 1 and kps.shape == (len(det), 5, 2)
    assert (det[:, 4] >= 0.5).all() and (np.diff(det[:, 4]) <= 0).all()
    for i in range(len(det)):
        for j in range(i):
            assert _iou(det[i], det[j], plus_one=1.0) <= 0.4 + 1e-6
