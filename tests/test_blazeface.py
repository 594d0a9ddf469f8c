"""BlazeFace against the torch re-statement (`reference_blazeface.py`), the shared anchors and
checkpoints, and hollance's published outputs (REFERENCE.md §3.5)."""
from __future__ import annotations

import json

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import reference_blazeface as ref
from conftest import shared_file
from jaxface import blazeface, convert, detect, families, inference, nms
from jaxface.blazeface import anchors, box_coding
from jaxface.detector import Detector, load_detector
from jaxface.state_dicts import CheckpointMismatch
from jaxface.torch_pickle import load_torch_file

ARCHS = ('blazeface_front', 'blazeface_back')
BACK = {'blazeface_front': False, 'blazeface_back': True}
OPTIONS = {'blazeface_front': anchors.FRONT, 'blazeface_back': anchors.BACK}


def weights_path(arch):
  return str(shared_file('data', 'weights', f'{arch}.pth'))


def image(name, size=128):
  img = cv2.imread(str(shared_file('data', 'images', name)))
  return img if size == img.shape[0] else cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)


@pytest.fixture(scope='module')
def real():
  """(torch re-statement, jaxface Detector) per arch with the shared checkpoints."""
  out = {}
  for arch in ARCHS:
    model = ref.BlazeFaceRef(BACK[arch]).eval()
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in load_torch_file(weights_path(arch)).items()})
    out[arch] = (model, load_detector(weights_path(arch), arch))
  return out


# --- anchors and coding ----------------------------------------------------------------------------

@pytest.mark.parametrize('arch', ARCHS)
def test_anchor_tables_equal_the_shared_file(arch):
  shared = np.load(shared_file('data', 'weights', 'blazeface_anchors.npy'))
  table, sizes, cells = anchors.anchor_table(OPTIONS[arch])
  assert table.dtype == np.float64 and np.array_equal(table, shared)
  assert cells.shape == (896, 3) and set(cells[:, 2]) == ({8, 16} if arch == 'blazeface_front' else {16, 32})
  # The calculator's own sizes: the interpolated scale sqrt(s_i s_i+1) after each layer's scale.
  o = OPTIONS[arch]
  assert sizes[0, 0] == pytest.approx(o.min_scale)
  assert sizes[1, 0] == pytest.approx(np.sqrt(o.min_scale * (o.min_scale + (o.max_scale - o.min_scale) / 3)))
  assert sizes[-1, 0] == pytest.approx(np.sqrt(o.max_scale * 1.0))


def test_anchor_calculator_equals_the_plain_loop_for_all_three_models():
  for o in (anchors.FRONT, anchors.BACK, anchors.FULL_RANGE):
    expected = ref.ssd_anchors(o.input_size, o.num_layers, o.min_scale, o.max_scale, o.strides,
                               interpolated_ratio=o.interpolated_scale_aspect_ratio)
    assert np.array_equal(anchors.anchor_table(o)[0], expected)
  assert len(anchors.anchor_table(anchors.FULL_RANGE)[0]) == 2304


def test_decode_equals_the_reference_and_encode_inverts_it():
  rng = np.random.default_rng(0)
  table = anchors.anchor_table(anchors.FRONT)[0]
  raw = rng.normal(0, 20, (896, 16)).astype(np.float32)
  boxes, points = box_coding.decode(jnp.asarray(raw), jnp.asarray(table, jnp.float32), 128)
  expected = ref.decode_boxes(torch.from_numpy(raw)[None], torch.from_numpy(table).float(), 128)[0].numpy()
  np.testing.assert_allclose(np.asarray(boxes), expected[:, [1, 0, 3, 2]], atol=1e-6)
  np.testing.assert_allclose(np.asarray(points).reshape(896, 12), expected[:, 4:16], atol=1e-6)
  # The training anchors are the calculator's sizes, not 1: the pair must invert for any anchor.
  sized = np.concatenate([table[:, :2], anchors.anchor_table(anchors.FRONT)[1]], axis=1).astype(np.float32)
  b, p = box_coding.decode(jnp.asarray(raw), jnp.asarray(sized), 128)
  np.testing.assert_allclose(np.asarray(box_coding.encode(b, p, jnp.asarray(sized), 128)), raw, atol=2e-3)


# --- the network -------------------------------------------------------------------------------------

@pytest.mark.parametrize('arch,params', [('blazeface_front', 101_390), ('blazeface_back', 136_240),
                                         ('blazeface_full_range', 514_069), ('blazeface_full_range_sparse', 508_308)])
def test_parameter_counts_are_the_released_ones(arch, params):
  spec = blazeface.SPECS[arch]
  for cpu_kernels in (None, True, False):  # either path builds the same network
    shapes = jax.eval_shape(blazeface.BlazeFace(spec, cpu_kernels=cpu_kernels).init, jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1, spec.input_size, spec.input_size, 3), jnp.float32))
    assert sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(shapes)) == params, cpu_kernels
  if arch in BACK:  # hollance never ported the full-range model: its count is the .tflite file's
    assert sum(p.numel() for p in ref.BlazeFaceRef(BACK[arch]).parameters()) == params


@pytest.mark.parametrize('arch', ARCHS)
def test_random_weights_match_the_restatement(arch):
  model = ref.randomize_(ref.BlazeFaceRef(BACK[arch]).eval(), seed=3)
  variables = convert.convert_state_dict(model.state_dict(), arch, 'random')
  det = Detector(families.family_of(arch), arch, variables)
  s = blazeface.SPECS[arch].input_size
  img = np.random.default_rng(1).integers(0, 256, (s, s, 3), dtype=np.uint8)
  regressors, logits = det.raw_outputs(img)
  x = torch.from_numpy(img[..., ::-1].copy()).permute(2, 0, 1).float()[None] / 127.5 - 1
  with torch.no_grad():
    r_ref, c_ref = model(x)
  assert regressors.shape == (896, 16) and logits.shape == (896, 1)
  scale = float(np.abs(r_ref.numpy()).max())
  np.testing.assert_allclose(regressors, r_ref[0].numpy(), atol=1e-4 * max(scale, 1.0))
  np.testing.assert_allclose(logits, c_ref[0].numpy(), atol=1e-4 * max(float(np.abs(c_ref.numpy()).max()), 1.0))


@pytest.mark.parametrize('arch', ARCHS)
def test_real_checkpoint_raw_outputs_match_the_restatement(real, arch):
  model, det = real[arch]
  img = image('3faces.png', blazeface.SPECS[arch].input_size)
  regressors, logits = det.raw_outputs(img)
  x = torch.from_numpy(img[..., ::-1].copy()).permute(2, 0, 1).float()[None] / 127.5 - 1
  with torch.no_grad():
    r_ref, c_ref = model(x)
  np.testing.assert_allclose(regressors, r_ref[0].numpy(), rtol=2e-5, atol=1e-3)
  np.testing.assert_allclose(logits, c_ref[0].numpy(), rtol=2e-5, atol=1e-3)  # background logits reach -1e3


def test_a_checkpoint_of_the_other_model_fails_naming_keys():
  with pytest.raises(CheckpointMismatch, match=r'missing key.*\n.*backbone\.'):
    load_detector(weights_path('blazeface_front'), 'blazeface_back')
  sd = dict(load_torch_file(weights_path('blazeface_front')))
  sd['classifier_8.weight'] = np.zeros((2, 96, 1, 1), np.float32)
  with pytest.raises(CheckpointMismatch, match=r'classifier_8.weight: file \(2, 96, 1, 1\), expected \(2, 88, 1, 1\)'):
    convert.convert_state_dict(sd, 'blazeface_front', 'edited.pth')


# --- detection ---------------------------------------------------------------------------------------

FRONT_1FACE = [0.2714, 0.3171, 0.4416, 0.4873, 0.3863, 0.3127, 0.4613, 0.3186, 0.4400, 0.3557, 0.4328, 0.3915,
               0.3154, 0.3296, 0.4778, 0.3367, 0.9960]


def as_reference_rows(det, size):
  """jaxface Detections (pixels) -> hollance's `[N, 17]` rows (ymin, xmin, ymax, xmax, 6 x (x, y), score)."""
  b = det.boxes / size
  return np.concatenate([b[:, [1, 0, 3, 2]], det.landmarks.reshape(-1, 12) / size, det.scores[:, None]], axis=1)


def test_published_front_outputs(real):
  det = real['blazeface_front'][1]
  one = as_reference_rows(det.detect(image('1face.png')), 128)
  assert one.shape == (1, 17)
  np.testing.assert_allclose(one[0], FRONT_1FACE, atol=1.5e-4)
  np.testing.assert_allclose(np.sort(det.detect(image('3faces.png')).scores), [0.9245, 0.9968, 0.9991], atol=1e-4)
  assert len(det.detect(image('4faces.png'))) == 0


def test_published_back_outputs(real):
  det = real['blazeface_back'][1]
  np.testing.assert_allclose(det.detect(image('1face.png', 256)).scores, [0.8783], atol=1e-4)
  np.testing.assert_allclose(det.detect(image('3faces.png', 256)).scores, [0.8168, 0.8559, 0.8399], atol=1e-4)
  np.testing.assert_allclose(det.detect(image('4faces.png', 256)).scores, [0.8175, 0.8296, 0.6989], atol=1e-4)
  one = as_reference_rows(det.detect(image('1face.png', 256)), 256)
  np.testing.assert_allclose(one[0, :4], [0.2729, 0.3162, 0.4527, 0.4960], atol=1.5e-3)


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('protocol', ['hollance', 'mediapipe'])
@pytest.mark.parametrize('conf', [None, 0.3])
def test_detections_equal_the_restatement(real, arch, protocol, conf):
  """Same clusters, coordinates and scores, including clusters of several anchors (conf 0.3)."""
  model, _ = real[arch]
  det = Detector(families.family_of(arch, protocol), arch, real[arch][1].variables)
  size = blazeface.SPECS[arch].input_size
  table = anchors.anchor_table(OPTIONS[arch])[0]
  threshold = det.family.default_conf(det.spec) if conf is None else conf
  for name in ('1face.png', '3faces.png', '4faces.png'):
    img = image(name, size)
    expected = ref.detect(model, img[..., ::-1].copy(), table, threshold, top_score=protocol == 'mediapipe')
    got = as_reference_rows(det.detect(img, conf), size)
    assert got.shape == expected.shape, name
    np.testing.assert_allclose(got, expected, atol=2e-5, err_msg=name)


def test_protocol_defaults():
  assert families.protocols(blazeface.FAMILY) == ('hollance', 'mediapipe')
  front, back = blazeface.SPECS['blazeface_front'], blazeface.SPECS['blazeface_back']
  assert (blazeface.FAMILY.default_conf(front), blazeface.FAMILY.default_conf(back)) == (0.75, 0.65)
  assert blazeface.MEDIAPIPE.default_conf(front) == blazeface.MEDIAPIPE.default_conf(back) == 0.5
  assert blazeface.FAMILY.nms_threshold == blazeface.MEDIAPIPE.nms_threshold == 0.3


def mediapipe_letterbox_removal(rows: np.ndarray, image_hw, size: int) -> np.ndarray:
  """MediaPipe's `DetectionLetterboxRemoval` on normalised `[N, 17]` rows of the letterboxed input,
  with its padding fractions from the region of interest expanded to the input's aspect ratio."""
  h, w = image_hw
  pad_x = (1 - w / max(h, w)) / 2   # left = right, as fractions of the input
  pad_y = (1 - h / max(h, w)) / 2
  out = rows.copy()
  xs = [1, 3] + list(range(4, 16, 2))
  ys = [0, 2] + list(range(5, 16, 2))
  out[:, xs] = (rows[:, xs] - pad_x) / (1 - 2 * pad_x) * w
  out[:, ys] = (rows[:, ys] - pad_y) / (1 - 2 * pad_y) * h
  return out


@pytest.mark.parametrize('hw', [(120, 150), (300, 250)])
def test_any_image_is_letterboxed_centred_and_mapped_back(real, hw):
  model, det = real['blazeface_front']
  big = cv2.resize(image('3faces.png', 128), (min(hw), min(hw)))
  img = np.zeros(hw + (3,), np.uint8)
  top, left = (hw[0] - min(hw)) // 2, (hw[1] - min(hw)) // 2
  img[top:top + min(hw), left:left + min(hw)] = big
  canvas, scale, offset = inference.centred_letterbox(img, 128, (0, 0, 0))
  s = 128 / max(hw)
  np.testing.assert_allclose(scale, [s, s])
  np.testing.assert_allclose(offset, [(128 - s * hw[1]) / 2, (128 - s * hw[0]) / 2], atol=1e-5)
  expected = ref.detect(model, canvas[..., ::-1].copy(), anchors.anchor_table(anchors.FRONT)[0], 0.5)
  expected = mediapipe_letterbox_removal(expected, hw, 128)
  got = det.detect(img, 0.5)
  assert len(got) == len(expected) >= 2
  rows = np.concatenate([got.boxes[:, [1, 0, 3, 2]], got.landmarks.reshape(-1, 12), got.scores[:, None]], axis=1)
  np.testing.assert_allclose(rows[:, :16], expected[:, :16], atol=2e-3 * max(hw))
  np.testing.assert_allclose(rows[:, 16], expected[:, 16], atol=1e-5)


def test_centred_letterbox_places_the_image_exactly_at_scale_one():
  img = np.random.default_rng(0).integers(1, 256, (64, 128, 3), dtype=np.uint8)
  canvas, scale, offset = inference.centred_letterbox(img, 128, (0, 0, 0))
  assert np.array_equal(canvas[32:96], img) and not canvas[:32].any() and not canvas[96:].any()
  np.testing.assert_array_equal(offset, [0, 32])


def run_weighted_nms(boxes, points, scores, candidate, top):
  """jaxface's weighted NMS -> `[N, 17]` rows in the re-statement's layout."""
  k = len(scores)
  rule = nms.top_score if top else nms.mean_score
  b, p, s, valid = jax.jit(nms.weighted_nms, static_argnums=(5, 6))(boxes, points, scores, candidate, 0.3, k, rule)
  n = int(valid.sum())
  return np.concatenate([np.asarray(b)[:n][:, [1, 0, 3, 2]], np.asarray(p)[:n].reshape(n, 12),
                         np.asarray(s)[:n, None]], axis=1)


def restated_weighted_nms(boxes, points, scores, candidate, top):
  rows = np.concatenate([boxes[:, [1, 0, 3, 2]], points.reshape(len(scores), 12), scores[:, None]], axis=1)[candidate]
  faces = ref.weighted_nms(rows, 0.3, top)
  return np.stack(faces) if faces else np.zeros((0, 17))


def nms_case(name, k=60, seed=5):
  rng = np.random.default_rng(seed)
  centres = rng.uniform(0.2, 0.8, (8, 2))[rng.integers(0, 8, k)] + rng.normal(0, 0.02, (k, 2))
  half = rng.uniform(0.05, 0.12, (k, 2))
  boxes = np.concatenate([centres - half, centres + half], axis=1).astype(np.float32)
  points = rng.uniform(0, 1, (k, 6, 2)).astype(np.float32)
  scores = rng.uniform(0.5, 1.0, k).astype(np.float32)
  candidate = rng.uniform(size=k) < 0.8
  if name == 'ties':          # equal scores everywhere, and exact duplicate boxes
    scores = np.round(scores * 4) / 4
    boxes[5], boxes[9] = boxes[4], boxes[4]
  elif name == 'none':        # no candidate at all
    candidate[:] = False
  elif name == 'one cluster':  # every box overlaps every other
    boxes = np.tile(np.array([[0.3, 0.3, 0.6, 0.6]], np.float32), (k, 1)) + rng.normal(0, 0.005, (k, 4)).astype(np.float32)
  return boxes, points, scores, candidate


@pytest.mark.parametrize('case', ['random', 'ties', 'none', 'one cluster'])
@pytest.mark.parametrize('top', [False, True])
def test_weighted_nms_equals_the_restatement(case, top):
  boxes, points, scores, candidate = nms_case(case)
  got = run_weighted_nms(boxes, points, scores, candidate, top)
  expected = restated_weighted_nms(boxes, points, scores, candidate, top)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, atol=1e-6)
  if case == 'random':
    assert 1 < len(got) < candidate.sum()  # clusters merged
  if case == 'one cluster':
    assert len(got) == 1 and got[0, 16] == pytest.approx(scores[candidate].max() if top else scores[candidate].mean())


def test_one_program_per_batch_shape(real):
  det = real['blazeface_front'][1]
  before = len(det.compiled_shapes)
  for name in ('1face.png', '3faces.png', '4faces.png'):
    det.detect(cv2.resize(image(name), (100 + len(name), 90)), conf_threshold=0.6)
  assert len(det.compiled_shapes) - before <= 1


def test_a_batch_runs_in_chunks_on_the_cpu_and_equals_single_images(real):
  """18 photos in one batch of 32: on the CPU the forward loops over chunks of 8 (`forward_chunk`);
  every image's faces equal its own single-image detection."""
  from jaxface import cpu_kernels
  if jax.default_backend() == 'cpu':
    assert cpu_kernels.forward_chunk(32, 128, 128) == 8
  det = load_detector(weights_path('blazeface_front'), 'blazeface_front', batch_size=32)
  imgs = [cv2.resize(image(n), (90 + 7 * i, 110)) for i, n in enumerate(('1face.png', '3faces.png', '4faces.png') * 6)]
  got = det.detect_batch(imgs, conf_threshold=0.6)
  assert [s[0] for s in det.compiled_shapes] == [32]
  single = real['blazeface_front'][1]
  for img, faces in zip(imgs, got):
    want = single.detect(img, conf_threshold=0.6)
    assert len(faces) == len(want)
    np.testing.assert_allclose(faces.boxes, want.boxes, atol=1e-3)
    np.testing.assert_allclose(faces.scores, want.scores, atol=1e-5)
  assert sum(len(f) for f in got) >= 6


def test_cli_draws_six_keypoints(tmp_path):
  out = tmp_path / 'out.jsonl'
  code = detect.main(['--weights', weights_path('blazeface_front'), '--arch', 'blazeface_front', '--json', str(out),
                      '--save-vis', str(tmp_path / 'vis'), str(shared_file('data', 'images', '1face.png'))])
  assert code == 0
  record = json.loads(out.read_text().splitlines()[0])
  assert len(record['faces']) == 1 and len(record['faces'][0]['landmarks']) == 6
  np.testing.assert_allclose(record['faces'][0]['box'], np.array(FRONT_1FACE)[[1, 0, 3, 2]] * 128, atol=0.05)
  assert list((tmp_path / 'vis').iterdir())


# --- MediaPipe's .tflite files -------------------------------------------------------------------

TFLITE = {'face_detection_short_range': 'blazeface_front', 'face_detection_back': 'blazeface_back',
          'face_detection_full_range': 'blazeface_full_range',
          'face_detection_full_range_sparse': 'blazeface_full_range_sparse'}
OPTIONS['blazeface_full_range'] = OPTIONS['blazeface_full_range_sparse'] = anchors.FULL_RANGE


def tflite_path(name):
  return str(shared_file('data', 'weights', 'mediapipe', f'{name}.tflite'))


def litert_outputs(path, rgb_minus1_1: np.ndarray):
  """ai-edge-litert (test-only) running the file: `(regressors [A,16], classificators [A,1])`."""
  interpreter_module = pytest.importorskip('ai_edge_litert.interpreter', reason='ai-edge-litert is not installed')
  it = interpreter_module.Interpreter(model_path=path,  # its reference kernels, not XNNPACK's
                                     experimental_op_resolver_type=interpreter_module.OpResolverType.BUILTIN_REF)
  it.allocate_tensors()
  it.set_tensor(it.get_input_details()[0]['index'], rgb_minus1_1[None].astype(np.float32))
  it.invoke()
  outs = sorted((it.get_tensor(o['index'])[0] for o in it.get_output_details()), key=lambda a: a.shape[-1])
  return outs[1], outs[0]  # the full-range file names them reshaped_regressor_face_4 / reshaped_classifier_face_4


@pytest.mark.parametrize('name', sorted(TFLITE))
def test_tflite_files_load_without_an_arch_and_match_litert(name):
  det = load_detector(tflite_path(name))
  assert det.arch == TFLITE[name] and det.family.protocol == 'mediapipe'
  size = blazeface.SPECS[det.arch].input_size
  table = anchors.anchor_table(OPTIONS[det.arch])[0]
  for img_name in ('1face.png', '3faces.png', '4faces.png'):
    img = image(img_name, size)
    regressors, logits = det.raw_outputs(img)
    r_ref, c_ref = litert_outputs(tflite_path(name), img[..., ::-1] / 127.5 - 1.0)
    np.testing.assert_allclose(regressors, r_ref, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(logits, c_ref, rtol=1e-6, atol=1e-3)   # background logits reach -1e4
    # MediaPipe's post-processing (threshold 0.5, top-score clusters) on LiteRT's own outputs.
    boxes = ref.decode_boxes(torch.from_numpy(r_ref)[None], torch.from_numpy(table).float(), size)[0]
    scores = torch.sigmoid(torch.from_numpy(c_ref[:, 0]).clamp(-100, 100))
    keep = scores >= 0.5
    faces = ref.weighted_nms(torch.cat([boxes[keep], scores[keep, None]], dim=1).numpy(), 0.3, top_score=True)
    expected = np.stack(faces) if faces else np.zeros((0, 17))
    got = as_reference_rows(det.detect(img), size)
    assert got.shape == expected.shape, img_name
    np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=img_name)


def test_every_weight_of_a_tflite_file_is_used():
  """The converted parameters are the files' own count (the sparse file's densified), each conv once."""
  from jaxface import tflite
  for name, arch in TFLITE.items():
    model = tflite.read(tflite_path(name))
    in_file = sum(model.constant(op.inputs[k]).size for op in model.operators
                  if op.op in ('CONV_2D', 'DEPTHWISE_CONV_2D') for k in (1, 2))
    variables = convert.convert_tflite_file(tflite_path(name))[1]
    assert sum(v.size for v in jax.tree_util.tree_leaves(variables)) == in_file, name
  sparse = tflite.read(tflite_path('face_detection_full_range_sparse'))
  stored = [t for t in sparse.tensors if t.sparse]
  assert len(stored) == 46 and all(t.data.shape == t.shape for t in stored)
  # About half of each densified kernel is zero (the file stores only the rest).
  zeros = sum(int((t.data == 0).sum()) for t in stored) / sum(t.data.size for t in stored)
  assert 0.3 < zeros < 0.9


def test_the_back_tflite_file_holds_the_pth_weights_bit_for_bit():
  from_tflite = convert.convert_tflite_file(tflite_path('face_detection_back'))[1]
  from_pth = convert.convert_file(weights_path('blazeface_back'), 'blazeface_back')
  a, b = (jax.tree_util.tree_flatten_with_path(v)[0] for v in (from_tflite, from_pth))
  assert [p for p, _ in a] == [p for p, _ in b]
  assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))


def test_tflite_files_fail_clearly(tmp_path):
  with pytest.raises(CheckpointMismatch, match='holds a blazeface_front model'):
    load_detector(tflite_path('face_detection_short_range'), 'blazeface_back')
  with pytest.raises(CheckpointMismatch, match='holds a blazeface_full_range_sparse model'):
    load_detector(tflite_path('face_detection_full_range_sparse'), 'blazeface_full_range')
  bogus = tmp_path / 'model.tflite'
  bogus.write_bytes(b'\x00' * 64)
  with pytest.raises(ValueError, match=r'model.tflite: not a TFLite model'):
    load_detector(str(bogus))
  # A graph whose convolutions diverge from the architecture: the short-range file with its first
  # depthwise conv's stride edited names that node.
  from jaxface import tflite
  from jaxface.blazeface import tflite_weights
  model = tflite.read(tflite_path('face_detection_short_range'))
  import dataclasses
  ops = list(model.operators)
  i = next(k for k, op in enumerate(ops) if op.op == 'DEPTHWISE_CONV_2D')
  ops[i] = dataclasses.replace(ops[i], stride=(2, 2))
  edited = dataclasses.replace(model, operators=tuple(ops))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(tflite, 'read', lambda path: edited)
    with pytest.raises(CheckpointMismatch, match=rf'node {ops[i].index} \(DEPTHWISE_CONV_2D .*expected DEPTHWISE_CONV_2D '
                                                 r'at stride 1 for backbone1.2.convs.0'):
      tflite_weights.convert_tflite('edited.tflite')
  # The sparse file's stem with its fused ReLU taken away.
  model = tflite.read(tflite_path('face_detection_full_range_sparse'))
  ops = list(model.operators)
  i = next(k for k, op in enumerate(ops) if op.op == 'CONV_2D')
  ops[i] = dataclasses.replace(ops[i], activation=None)
  edited = dataclasses.replace(model, operators=tuple(ops))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(tflite, 'read', lambda path: edited)
    with pytest.raises(CheckpointMismatch, match=rf'node {ops[i].index} \(CONV_2D .*fused None\) diverges .*expected '
                                                 r'CONV_2D at stride 2, fused RELU for full_range_sparse.backbone.0'):
      tflite_weights.convert_tflite('edited.tflite')


def test_convert_cli_writes_a_directory_that_loads_without_an_arch(tmp_path, real):
  """`python -m jaxface.convert` from a .pth and from a .tflite; the directories detect as the files do."""
  from jaxface.convert import main as convert_main
  assert convert_main(['--arch', 'blazeface_front', '--src', weights_path('blazeface_front'),
                       '--out', str(tmp_path / 'pth')]) == 0
  assert convert_main(['--arch', 'blazeface_front', '--src', tflite_path('face_detection_short_range'),
                       '--out', str(tmp_path / 'tflite')]) == 0
  img = image('3faces.png')
  from_dir = load_detector(str(tmp_path / 'pth')).detect(img)
  np.testing.assert_allclose(from_dir.boxes, real['blazeface_front'][1].detect(img).boxes, atol=1e-4)
  mediapipe = load_detector(str(tmp_path / 'tflite'), protocol='mediapipe').detect(img)
  np.testing.assert_allclose(mediapipe.scores, load_detector(tflite_path('face_detection_short_range')).detect(img).scores,
                             atol=1e-6)


def test_cli_reads_a_tflite_file_without_an_arch(tmp_path):
  out = tmp_path / 'out.jsonl'
  assert detect.main(['--weights', tflite_path('face_detection_short_range'), '--json', str(out),
                      str(shared_file('data', 'images', '3faces.png'))]) == 0
  record = json.loads(out.read_text().splitlines()[0])
  assert len(record['faces']) == 3 and all(len(f['landmarks']) == 6 for f in record['faces'])
