"""SCRFD detection through `load_detector`'s machinery against the re-statement's mmdet test protocol
(tests/reference_scrfd.py, REFERENCE.md §2.9): keep-ratio resize to 640, zero padding after
normalising, boxes clipped to the image, rescaled per axis, NMS 0.45 without the +1, scores > conf.

Random weights with the classifier's reference initialisation (bias -4.595) and damped weights, so a
photo gives a few hundred candidates rather than thousands; a confidence threshold keeps the
comparison to faces below `max_detections`.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

import reference_scrfd as ref
from conftest import shared_file
from jaxface import families, inference
from jaxface.detector import Detections, Detector
from jaxface.scrfd import DEPLOYMENT, FAMILY, weights

torch = pytest.importorskip('torch')


def _random_scrfd(arch: str):
  torch.set_num_threads(1)
  net = ref.damp_classifier_(ref.randomize_(ref.build_scrfd(arch), seed=3))
  variables = weights.convert_detector({k: v.numpy() for k, v in net.state_dict().items()}, FAMILY.spec(arch))
  return net, variables


@pytest.mark.parametrize('arch, image, conf', [('scrfd_500m_bnkps', 'crowd.jpg', 0.03), ('scrfd_2.5g', 'street.jpg', 0.05)])
def test_detections_equal_the_mmdet_protocol(arch, image, conf):
  net, variables = _random_scrfd(arch)
  img = cv2.imread(str(shared_file('data', 'images', image)))
  want = ref.mmdet_detect(img, ref.torch_runner(net), score_thr=conf)
  got = Detector(FAMILY, arch, variables).detect(img, conf_threshold=conf)
  assert 10 < len(want.scores)
  assert len(got) == len(want.scores)
  np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-5)  # both descending
  # Faces whose scores are a rounding apart may come in either order: compare them sorted by place.
  order = lambda boxes: np.lexsort(np.round(boxes, 1).T[::-1])
  mine, theirs = order(got.boxes), order(want.boxes)
  np.testing.assert_allclose(got.boxes[mine], want.boxes[theirs], rtol=0, atol=0.01)
  np.testing.assert_allclose(got.scores[mine], want.scores[theirs], rtol=0, atol=1e-5)
  if want.kps is None:
    assert got.landmarks.shape == (len(got), 0, 2)
  else:
    np.testing.assert_allclose(got.landmarks[mine], want.kps[theirs], rtol=0, atol=0.01)


def test_raw_outputs_are_the_export_convention_on_the_letterboxed_input():
  """`raw_outputs(img)` runs the default protocol's 640 x 640 input: the torch model's outputs on
  mmdet's blob, levels 8, 16, 32 concatenated."""
  arch = 'scrfd_500m_bnkps'
  net, variables = _random_scrfd(arch)
  img = cv2.imread(str(shared_file('data', 'images', 'street.jpg')))  # 450 x 302: 640 x 430, then padded
  blob, _ = ref.mmdet_preprocess(img)
  with torch.no_grad():
    want = ref.split_outputs(net(torch.from_numpy(blob)))
  got = Detector(FAMILY, arch, variables).raw_outputs(img)
  assert [g.shape for g in got] == [(16800, 1), (16800, 4), (16800, 10)]
  for g, w in zip(got, (want.scores, want.boxes, want.kps)):
    np.testing.assert_allclose(g, np.concatenate([np.asarray(x)[0] for x in w]), rtol=0, atol=1e-4)


def _insightface_rows(det: Detections) -> np.ndarray:
  return np.concatenate([det.boxes, det.scores[:, None]], axis=1)


@pytest.mark.parametrize('arch, image, conf, max_num', [
    ('scrfd_500m_bnkps', 'crowd.jpg', 0.03, 0),    # landscape: the width binds
    ('scrfd_500m_bnkps', 'street.jpg', 0.05, 4),   # portrait: the height binds; max_num's selection
    ('scrfd_2.5g', 'crowd.jpg', 0.05, 0)])
def test_deployment_protocol_equals_insightface_scrfd_py(arch, image, conf, max_num):
  """`protocol='insightface'`: truncating letterbox on a black uint8 canvas, scores >= thresh,
  unclipped boxes divided by det_scale, then NMS 0.4 with +1 areas in image pixels, and `max_num`."""
  net, variables = _random_scrfd(arch)
  img = cv2.imread(str(shared_file('data', 'images', image)))
  det, kps = ref.insightface_detect(img, ref.torch_runner(net), thresh=conf, max_num=max_num)
  got = Detector(DEPLOYMENT, arch, variables).detect(img, conf_threshold=conf, max_num=max_num)
  assert len(got) == len(det) > (3 if max_num else 10)
  if max_num:  # in max_num's order (area minus twice the squared centre offset), which no tie blurs
    np.testing.assert_allclose(_insightface_rows(got), det, rtol=0, atol=0.01)
    return
  np.testing.assert_allclose(got.scores, det[:, 4], rtol=0, atol=1e-5)  # both descending
  order = lambda boxes: np.lexsort(np.round(boxes, 1).T[::-1])
  mine, theirs = order(got.boxes), order(det[:, :4])
  np.testing.assert_allclose(_insightface_rows(got)[mine], det[theirs], rtol=0, atol=0.01)
  # Unclipped: the protocol keeps boxes that cross the image's edge (the mmdet path clips them).
  h, w = img.shape[:2]
  outside = (got.boxes[:, :2] < 0).any(1) | (got.boxes[:, 2] > w) | (got.boxes[:, 3] > h)
  assert outside.any() == ((det[:, :2] < 0).any(1) | (det[:, 2] > w) | (det[:, 3] > h)).any()
  if kps is None:
    assert got.landmarks.shape == (len(got), 0, 2)
  else:
    np.testing.assert_allclose(got.landmarks[mine], kps[theirs], rtol=0, atol=0.01)


def test_deployment_defaults_and_raw_outputs_on_the_black_canvas():
  """The protocol's defaults (thresh 0.5 inclusive, NMS 0.4) with no arguments, and `raw_outputs`
  on scrfd.py's own blob: the black padding normalised with the image, not zeros."""
  arch = 'scrfd_500m_bnkps'
  net, variables = _random_scrfd(arch)
  # Undamped scores reach 0.5: a classifier bias that puts a few hundred anchors above it.
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.Conv2d) and m.out_channels == 2 and m.bias is not None:
        m.bias.add_(4.4)
  variables = weights.convert_detector({k: v.numpy() for k, v in net.state_dict().items()}, FAMILY.spec(arch))
  img = cv2.imread(str(shared_file('data', 'images', 'street.jpg')))
  detector = Detector(DEPLOYMENT, arch, variables)
  det, _ = ref.insightface_detect(img, ref.torch_runner(net))
  got = detector.detect(img)
  assert len(got) == len(det) > 0 and got.scores.min() >= 0.5
  np.testing.assert_allclose(np.sort(got.scores), np.sort(det[:, 4]), rtol=0, atol=1e-5)
  blob, _ = ref.insightface_preprocess(img)
  with torch.no_grad():
    want = ref.split_outputs(net(torch.from_numpy(blob)))
  for g, w in zip(detector.raw_outputs(img), (want.scores, want.boxes, want.kps)):
    np.testing.assert_allclose(g, np.concatenate([np.asarray(x)[0] for x in w]), rtol=0, atol=1e-4)


@pytest.mark.parametrize('h, w', [(450, 302), (302, 450), (640, 640), (1, 1000), (1000, 1), (333, 777), (777, 333)])
def test_insightface_letterbox_truncates_and_scales_by_height(h, w):
  nh, nw, scale = DEPLOYMENT.letterbox(h, w, 640)
  want_h, want_w, det_scale = ref.letterbox_size(h, w)
  assert (nh, nw) == (want_h, want_w) and scale.tolist() == [np.float32(det_scale)] * 2


def test_protocols_by_name(tmp_path):
  from jaxface import saved_models
  from jaxface.detector import load_detector
  assert families.family_of('scrfd_500m', 'insightface') is DEPLOYMENT
  assert families.family_of('scrfd_500m', 'mmdet') is FAMILY
  assert families.protocols(FAMILY) == ('mmdet', 'insightface')
  with pytest.raises(ValueError, match=r"retinaface_mnet \(retinaface\) has no test protocol 'insightface'; valid: biubug6"):
    families.family_of('retinaface_mnet', 'insightface')
  _, variables = _random_scrfd('scrfd_500m')
  saved_models.save_variables(str(tmp_path / 'm'), variables, {'arch': 'scrfd_500m', 'source': 'random'})
  assert load_detector(str(tmp_path / 'm'), protocol='insightface').family is DEPLOYMENT
  assert load_detector(str(tmp_path / 'm')).family is FAMILY


def test_scrfd_archs_are_in_the_name_table():
  assert families.family_of('scrfd_10g_bnkps') is FAMILY
  assert {'scrfd_500m', 'scrfd_34g', 'retinaface_mnet'} <= set(families.ARCHS)


def test_cli_reads_an_mmcv_checkpoint(tmp_path):
  """`python -m jaxface.detect --weights FILE.pth --arch scrfd_...` on an mmcv checkpoint as the
  released files are (`{'meta', 'state_dict'}`, written by torch.save), read without torch."""
  import collections
  import json
  from jaxface import detect
  arch = 'scrfd_500m_bnkps'
  net, _ = _random_scrfd(arch)
  path = tmp_path / f'{arch}.pth'
  torch.save({'meta': {'CLASSES': ('FG',), 'epoch': 640, 'mmdet_version': '2.7.0', 'config': 'model = dict()'},
              'state_dict': collections.OrderedDict(net.state_dict())}, path)
  out = tmp_path / 'out.jsonl'
  image = shared_file('data', 'images', 'street.jpg')
  assert detect.main(['--weights', str(path), '--arch', arch, '--conf', '0.05', '--json', str(out), str(image)]) == 0
  [record] = [json.loads(line) for line in out.read_text().splitlines()]
  want = ref.mmdet_detect(cv2.imread(str(image)), ref.torch_runner(net), score_thr=0.05)
  assert len(record['faces']) == len(want.scores) > 0
  np.testing.assert_allclose(sorted(f['score'] for f in record['faces']), sorted(want.scores), atol=1e-4)
  # scrfd.py's protocol and max_num from the command line.
  args = ['--weights', str(path), '--arch', arch, '--protocol', 'insightface', '--conf', '0.05', '--max-num', '3']
  assert detect.main(args + ['--json', str(out), str(image)]) == 0
  [record] = [json.loads(line) for line in out.read_text().splitlines()]
  det, _ = ref.insightface_detect(cv2.imread(str(image)), ref.torch_runner(net), thresh=0.05, max_num=3)
  np.testing.assert_allclose([f['box'] + [f['score']] for f in record['faces']], det, atol=0.01)
  with pytest.raises(SystemExit) as e:
    detect.main(args[:-6] + ['--protocol', 'no-such-protocol', str(image)])
  assert e.value.code == 2
  # Another family's protocol: refused when the weights load, naming SCRFD's.
  assert detect.main(args[:-6] + ['--protocol', 'mediapipe', str(image)]) == 1


def test_evaluate_py_runs_a_converted_scrfd_directory(tmp_path):
  """`evaluate.py --ckpt DIR` on an SCRFD directory: the family's protocol (the detector letterboxes),
  and each prediction file holds the detector's faces for that image, in its pixels."""
  import json
  from jaxface import saved_models
  from jaxface.evaluation import cli, run
  from jaxface.evaluation.predictions import read_prediction_file
  arch = 'scrfd_2.5g'
  _, variables = _random_scrfd(arch)
  ckpt = tmp_path / 'ckpt'
  saved_models.save_variables(str(ckpt), variables, {'arch': arch, 'source': 'random'})
  out = tmp_path / 'preds'
  args = ['--ckpt', str(ckpt), '--dataset', 'synthetic', '--synthetic-images', '3', '--conf', '0.05',
          '--out', str(out), '--json', str(tmp_path / 'r.json')]
  assert cli.main(args) == 0
  assert set(json.loads((tmp_path / 'r.json').read_text())['ap']) == {'easy', 'medium', 'hard'}
  gt, load = run.synthetic_val(3, 1)
  event, name = gt.events[0], gt.files[0][0]
  rows = read_prediction_file(out / event / f'{name}.txt')
  for family, flags in ((FAMILY, []), (DEPLOYMENT, ['--detector-protocol', 'insightface'])):
    if flags:  # scrfd.py's protocol over the same set
      assert cli.main(args[:-2] + flags + ['--out', str(tmp_path / 'preds2')]) == 0
      rows = read_prediction_file(tmp_path / 'preds2' / event / f'{name}.txt')
    got = Detector(family, arch, variables).detect(load(event, name), conf_threshold=0.05)
    assert len(rows) == len(got) > 0
    np.testing.assert_allclose(rows[:, :2], got.boxes[:, :2], atol=1e-3)
    np.testing.assert_allclose(rows[:, 4], got.scores, atol=1e-6)


@pytest.mark.parametrize('arch, layout', [('scrfd_500m_bnkps', 'single'), ('scrfd_10g_bnkps', 'batched')])
def test_onnx_files_load_by_structure_and_match_onnxruntime(arch, layout, tmp_path):
  """insightface's kind of file (BN folded into the convs, opset 11; batch-1 rank-2 outputs in older
  files, batched rank-3 in newer): `load_detector(FILE)` recognises the architecture from the graph, and
  its raw outputs on the letterboxed input equal ONNX Runtime running the same file."""
  ort = pytest.importorskip('onnxruntime')
  pytest.importorskip('onnx')
  from jaxface import load_detector
  net, _ = _random_scrfd(arch)
  path = str(tmp_path / 'det.onnx')
  ref.export_onnx(net, path, layout=layout)
  det = load_detector(path)
  assert det.arch == arch
  img = cv2.imread(str(shared_file('data', 'images', 'street.jpg')))
  blob, _ = ref.mmdet_preprocess(img)
  options = ort.SessionOptions()
  options.intra_op_num_threads = 1
  want = ref.split_outputs(ref.onnx_runner(ort.InferenceSession(path, options))(blob))
  got = det.raw_outputs(img)
  for g, w in zip(got, (want.scores, want.boxes, want.kps)):
    np.testing.assert_allclose(g, np.concatenate([np.asarray(x).reshape(-1, g.shape[-1]) for x in w]), atol=1e-4)


def test_an_onnx_file_of_another_architecture_fails_naming_the_node(tmp_path):
  pytest.importorskip('onnx')
  from jaxface.convert import convert_onnx_file
  from jaxface.state_dicts import CheckpointMismatch
  net, _ = _random_scrfd('scrfd_2.5g_bnkps')
  path = str(tmp_path / 'det.onnx')
  ref.export_onnx(net, path, layout='single')
  with pytest.raises(CheckpointMismatch, match=r'Conv node \d+ \(.*\): weight \[.*expected weight \['):
    convert_onnx_file(path, 'scrfd_10g_bnkps')
  assert convert_onnx_file(path)[0] == 'scrfd_2.5g_bnkps'
  not_onnx = tmp_path / 'det_10g.onnx'
  not_onnx.write_bytes(b'\x00not a protobuf at all' * 10)
  with pytest.raises(CheckpointMismatch, match=r'det_10g\.onnx: not a readable ONNX model'):
    convert_onnx_file(str(not_onnx))
