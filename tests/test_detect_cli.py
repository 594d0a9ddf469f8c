"""`python -m jaxface.detect` on the released 2019 MobileNet-0.25 checkpoint, and `draw_detections`.

Most runs call `main(argv)` in-process with `load_detector` memoised, so each (batch, size)
program compiles once for the whole module; one subprocess checks the real entry point.
Golden numbers (1face box, 3 faces, 27 crowd faces at 0.5) come from this checkpoint through the
reference-equal pipeline (`--exact`); the CLI's default, bucketed sizes, keeps them within the
tolerances asserted (1face.png is 128 x 128, a bucket size).
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import REPO_ROOT, shared_file
from jaxface import Detections, detect
from jaxface.retinaface import SPECS
from jaxface.visualize import BOX_COLOR, LANDMARK_COLORS, draw_detections

ARCH = 'retinaface_mnet_relu'
ONE_FACE_BOX = [42.02, 29.61, 62.27, 56.34]


@pytest.fixture(scope='module')
def weights():
  return str(shared_file('data', 'weights', 'retinaface_mnet025_relu_2019.pth'))


@pytest.fixture(scope='module')
def images():
  return {name: str(shared_file('data', 'images', name)) for name in ('1face.png', '3faces.png', 'crowd.jpg')}


@pytest.fixture(scope='module', autouse=True)
def shared_detector():
  """One Detector (and its compiled programs) per weights/arch for every in-process run."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(detect, 'load_detector', functools.lru_cache(maxsize=None)(detect.load_detector))
    yield


def run_cli(weights, inputs, tmp_path, *extra, arch=ARCH):
  """main() -> (exit code, records by image path, the records in file order)."""
  out = tmp_path / 'out.jsonl'
  code = detect.main(['--weights', weights, '--arch', arch, '--json', str(out), *extra, *map(str, inputs)])
  records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
  return code, {r['image']: r for r in records}, records


@pytest.fixture(scope='module')
def main_run(weights, images, tmp_path_factory):
  tmp = tmp_path_factory.mktemp('main')
  code, by_path, records = run_cli(weights, list(images.values()), tmp, '--save-vis', str(tmp / 'vis'))
  return code, by_path, records, tmp / 'vis'


def test_json_records(main_run, images):
  code, by_path, records, _ = main_run
  assert code == 0
  assert [r['image'] for r in records] == list(images.values())  # input order
  one = by_path[images['1face.png']]
  assert (one['height'], one['width']) == (128, 128)
  assert len(one['faces']) == 1
  face = one['faces'][0]
  np.testing.assert_allclose(face['box'], ONE_FACE_BOX, atol=0.05)
  assert face['score'] == pytest.approx(0.978, abs=1e-3)
  assert np.array(face['landmarks']).shape == (5, 2)
  assert len(by_path[images['3faces.png']]['faces']) == 3
  crowd = by_path[images['crowd.jpg']]
  assert (crowd['height'], crowd['width']) == (624, 1024)
  assert 25 <= len(crowd['faces']) <= 29
  scores = [f['score'] for r in records for f in r['faces']]
  assert min(scores) > 0.5
  for r in records:
    assert [f['score'] for f in r['faces']] == sorted((f['score'] for f in r['faces']), reverse=True)


def test_save_vis(main_run, images):
  _, by_path, _, vis = main_run
  for name, path in images.items():
    original = cv2.imread(path)
    drawn = cv2.imread(str(vis / name))
    assert drawn is not None and drawn.shape == original.shape, name
    assert (drawn != original).any(axis=2).sum() > 100 * len(by_path[path]['faces']), name
  # 1face.png is written as PNG, so the box colour survives exactly: the middle of the bottom edge.
  x1, _, x2, y2 = (int(v) for v in by_path[images['1face.png']]['faces'][0]['box'])
  original = cv2.imread(images['1face.png'])
  drawn = cv2.imread(str(vis / '1face.png'))
  assert tuple(original[y2, (x1 + x2) // 2]) != BOX_COLOR
  assert tuple(drawn[y2, (x1 + x2) // 2]) == BOX_COLOR


def test_folder_input_to_stdout(weights, images, tmp_path, capsys):
  folder = tmp_path / 'in'
  (folder / 'nested').mkdir(parents=True)
  data = open(images['1face.png'], 'rb').read()
  (folder / 'b.PNG').write_bytes(data)  # extensions match in any case
  (folder / 'a.png').write_bytes(open(images['3faces.png'], 'rb').read())
  (folder / 'notes.txt').write_text('not an image')
  (folder / 'nested' / 'c.png').write_bytes(data)  # folders are not searched recursively
  code = detect.main(['--weights', weights, '--arch', ARCH, '--json', '-', str(folder)])
  out, err = capsys.readouterr()
  assert code == 0
  records = [json.loads(line) for line in out.splitlines()]
  assert [os.path.basename(r['image']) for r in records] == ['a.png', 'b.PNG']
  assert [len(r['faces']) for r in records] == [3, 1]
  assert 'b.PNG: 1 face' in err  # progress moves to stderr when the records go to stdout


def test_gray_bgra_16bit_inputs(weights, images, tmp_path):
  bgr = cv2.imread(images['1face.png'])
  gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
  variants = {
      'bgra.png': cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA),
      'bgr16.png': bgr.astype(np.uint16) * 257,
      'gray.png': gray,
      'gray16.png': gray.astype(np.uint16) * 257,
      'gray_as_bgr.png': cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR),
  }
  for name, image in variants.items():
    assert cv2.imwrite(str(tmp_path / name), image)
    assert cv2.imread(str(tmp_path / name), cv2.IMREAD_UNCHANGED).shape == image.shape  # stored as made
  code, by_path, _ = run_cli(weights, [images['1face.png']] + [tmp_path / n for n in variants], tmp_path)
  assert code == 0
  box = {os.path.basename(p): np.array(r['faces'][0]['box']) for p, r in by_path.items() if len(r['faces']) == 1}
  assert len(box) == len(variants) + 1
  for name in ('bgra.png', 'bgr16.png'):  # alpha dropped, 16 bits scaled back: the colour image
    np.testing.assert_allclose(box[name], box['1face.png'], atol=0.5, err_msg=name)
  for name in ('gray.png', 'gray16.png'):  # one channel replicated: exactly the gray BGR image
    np.testing.assert_allclose(box[name], box['gray_as_bgr.png'], atol=0.5, err_msg=name)
  # Losing colour moves this face's box by up to ~0.8 px; it is still the same face.
  np.testing.assert_allclose(box['gray.png'], box['1face.png'], atol=1.5)


def test_bad_inputs_are_named_and_skipped(weights, images, tmp_path, capsys):
  missing = tmp_path / 'missing.png'
  text = tmp_path / 'x.jpg'
  text.write_text('this is not a jpeg\n')
  truncated = tmp_path / 'truncated.jpg'
  truncated.write_bytes(open(images['crowd.jpg'], 'rb').read()[:20000])
  empty_dir = tmp_path / 'empty'
  empty_dir.mkdir()
  inputs = [images['1face.png'], missing, text, truncated, empty_dir, images['3faces.png']]
  code, by_path, records = run_cli(weights, inputs, tmp_path)
  err = capsys.readouterr().err
  assert code == 1
  assert [r['image'] for r in records] == [images['1face.png'], images['3faces.png']]
  assert [len(r['faces']) for r in records] == [1, 3]
  error_lines = [line for line in err.splitlines() if line.startswith('error: ')]
  for bad in (missing, text, truncated, empty_dir):
    assert any(str(bad) in line for line in error_lines), (bad, err)
  assert 'error: 4 inputs failed' in err


def test_unknown_arch_lists_valid_names(weights, images, tmp_path, capsys):
  with pytest.raises(SystemExit) as exc:
    detect.main(['--weights', weights, '--arch', 'retinaface_mnet_0.5', '--json', str(tmp_path / 'o.jsonl'),
                 images['1face.png']])
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert 'retinaface_mnet_0.5' in err
  assert all(name in err for name in SPECS)


def test_pth_without_arch_is_a_usage_error(weights, images, tmp_path, capsys):
  with pytest.raises(SystemExit) as exc:
    detect.main(['--weights', weights, '--json', str(tmp_path / 'o.jsonl'), images['1face.png']])
  assert exc.value.code == 2
  assert '--arch' in capsys.readouterr().err


def test_missing_weights(images, tmp_path, capsys):
  missing = tmp_path / 'nope.pth'
  assert detect.main(['--weights', str(missing), '--arch', ARCH, '--json', str(tmp_path / 'o.jsonl'),
                      images['1face.png']]) == 1
  assert f'no such checkpoint file or directory: {missing}' in capsys.readouterr().err
  assert not (tmp_path / 'o.jsonl').exists()


def test_draw_detections_colours():
  image = np.zeros((60, 80), np.uint8)  # gray input: drawn on a BGR copy
  points = [[20, 20], [40, 20], [30, 30], [22, 40], [38, 40]]
  det = Detections(np.array([[10.7, 8.2, 50.9, 50.1]]), np.array([0.9]), np.array([points], np.float64))
  drawn = draw_detections(image, det, show_scores=False)
  assert drawn.shape == (60, 80, 3) and drawn.dtype == np.uint8
  assert not image.any()  # the input is left alone
  assert tuple(drawn[50, 30]) == BOX_COLOR  # bottom edge at int(50.1)
  assert tuple(drawn[30, 10]) == BOX_COLOR  # left edge at int(10.7)
  for (x, y), colour in zip(points, LANDMARK_COLORS):
    assert tuple(drawn[y, x]) == colour
  none = Detections(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, 5, 2)))
  np.testing.assert_array_equal(draw_detections(image, none)[:, :, 0], image)


def test_sizes_are_bucketed_by_default_and_exact_on_request(weights, images, tmp_path):
  seen = []
  cached = detect.load_detector

  def spy(*args, **kwargs):
    seen.append(kwargs['bucketed'])
    return cached(*args, **kwargs)

  (tmp_path / 'a').mkdir()
  (tmp_path / 'b').mkdir()
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(detect, 'load_detector', spy)
    _, default, _ = run_cli(weights, [images['crowd.jpg']], tmp_path / 'a')
    _, exact, _ = run_cli(weights, [images['crowd.jpg']], tmp_path / 'b', '--exact')
  assert seen == [True, False]
  exact_det = cached(weights, arch=ARCH, protocol=None, bucketed=False, batch_size=8)
  bucketed_det = cached(weights, arch=ARCH, protocol=None, bucketed=True, batch_size=8)
  assert (624, 1024) in {s[1:3] for s in exact_det.compiled_shapes}
  assert (640, 1024) in {s[1:3] for s in bucketed_det.compiled_shapes}   # 624 -> the 640 bucket
  # crowd.jpg's confident faces are the same in both modes (docs/inference.md: the measured effect).
  a, b = (np.array([f['box'] for f in r[images['crowd.jpg']]['faces'] if f['score'] > 0.7]) for r in (default, exact))
  assert a.shape == b.shape and np.abs(np.sort(a, axis=0) - np.sort(b, axis=0)).max() < 3.0


def test_entry_point(weights, images, tmp_path):
  """The real entry point, with its persistent compile cache in $JAXFACE_CACHE_DIR: the second
  run compiles nothing (it reads the programs the first wrote)."""
  out = tmp_path / 'out.jsonl'
  cache = tmp_path / 'cache'
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get('PYTHONPATH')])),
             JAXFACE_CACHE_DIR=str(cache))
  env.pop('JAX_COMPILATION_CACHE_DIR', None)  # the test session's own cache would take precedence
  command = [sys.executable, '-m', 'jaxface.detect', '--weights', weights, '--arch', ARCH,
             '--conf', '0.5', '--nms', '0.4', '--json', str(out), images['1face.png']]
  proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
  assert proc.returncode == 0, proc.stderr
  written = sorted(p.name for p in cache.iterdir())
  assert written, 'no compiled program was cached'
  again = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
  assert again.returncode == 0, again.stderr
  assert sorted(p.name for p in cache.iterdir()) == written  # every program came from the cache
  assert f'{images["1face.png"]}: 1 face' in proc.stdout
  assert '1 image, 1 face in' in proc.stdout
  [record] = [json.loads(line) for line in out.read_text().splitlines()]
  np.testing.assert_allclose(record['faces'][0]['box'], ONE_FACE_BOX, atol=0.05)
