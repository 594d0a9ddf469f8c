"""evaluate.py: test-time scale protocols, scoring a folder, and a checkpoint end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import REPO_ROOT, shared_file
from jaxface.data import synthetic
from jaxface.evaluation import load_wider_mat_ground_truth, write_predictions
from jaxface.evaluation import cli, run


@pytest.mark.parametrize('hw, scale, want', [
    ((768, 1024), 'original', 1.0),
    ((768, 1024), 'mxnet', 1600 / 768),      # long side 2133 <= 2150: the short side goes to 1600
    ((683, 1024), 'mxnet', 2150 / 1024),     # 1600/683*1024 = 2399 > 2150: the long side goes to 2150
    ((768, 1024), 'vga', 640 / 1024),
    ((1024, 300), 'vga', 640 / 1024),
])
def test_test_scale_factor(hw, scale, want):
  assert run.test_scale_factor(*hw, scale) == pytest.approx(want, rel=1e-12)


def test_vga_letterbox_pads_with_the_mean():
  img = np.full((300, 500, 3), 7, np.uint8)
  out, s = run.prepare(img, 'vga', (104, 117, 123))
  assert out.shape == (640, 640, 3) and s == 640 / 500
  assert (out[:384, :640] == 7).all()  # int(300 * 1.28 + 0.5) = 384 rows of image
  np.testing.assert_array_equal(out[384:, 0], np.tile([104, 117, 123], (256, 1)))
  with pytest.raises(ValueError, match='valid: original, mxnet, vga'):
    run.test_scale_factor(10, 10, 'huge')


def _perfect_predictions(gt, out):
  for event, names, boxes in zip(gt.events, gt.files, gt.boxes):
    for name, b in zip(names, boxes):
      write_predictions(out, event, name, b.astype(float), np.linspace(0.9, 0.5, len(b)))


def test_preds_folder_on_synthetic_gt(tmp_path, capsys):
  gt = synthetic.val_ground_truth(12, seed=3)
  _perfect_predictions(gt, tmp_path / 'p')
  rc = cli.main(['--preds', str(tmp_path / 'p'), '--dataset', 'synthetic', '--synthetic-images', '12',
                    '--synthetic-seed', '3', '--json', str(tmp_path / 'r.json')])
  assert rc == 0
  record = json.loads((tmp_path / 'r.json').read_text())
  assert record['protocol'] == 'official' and record['ap'] == {'easy': 1.0, 'medium': 1.0, 'hard': 1.0}
  assert record['face_counts'] == gt.face_counts()
  assert 'protocol=official' in capsys.readouterr().out
  assert (tmp_path / 'p' / 'pr_curves.png').is_file()


def test_preds_folder_on_real_gt_subset(tmp_path):
  gt_dir = shared_file('data', 'widerface_val_gt')
  gt = load_wider_mat_ground_truth(gt_dir).select_events(['0--Parade'])
  _perfect_predictions(gt, tmp_path / 'p')
  os.remove(next((tmp_path / 'p' / '0--Parade').iterdir()))  # one image without predictions
  for protocol in ('official', 'python'):
    assert cli.main(['--preds', str(tmp_path / 'p'), '--gt', str(gt_dir), '--events', '0--Parade',
                        '--protocol', protocol, '--json', str(tmp_path / f'{protocol}.json')]) == 0
    record = json.loads((tmp_path / f'{protocol}.json').read_text())
    assert record['protocol'] == protocol and record['warnings'] == (1 if protocol == 'official' else 1)
    assert 0.9 < record['ap']['hard'] < 1.0  # the missing file's faces are still counted


def test_missing_wider_data_is_a_clear_error(tmp_path, capsys):
  assert cli.main(['--preds', str(tmp_path)]) == 2
  assert '--gt' in capsys.readouterr().err


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
  weights = shared_file('data', 'weights', 'retinaface_mnet025_relu_2019.pth')
  out = tmp_path_factory.mktemp('ckpt') / 'mnet'
  from jaxface import saved_models, convert
  saved_models.save_variables(str(out), convert.convert_file(str(weights), 'retinaface_mnet_relu'),
                               {'arch': 'retinaface_mnet_relu', 'dataset': {'name': 'synthetic', 'val_images': 3,
                                                                           'val_seed': 5}})
  return out


def test_ckpt_on_the_synthetic_val_set(ckpt, tmp_path):
  """The whole loop: the checkpoint's own val set (from its metadata), predictions, AP, plot."""
  rc = cli.main(['--ckpt', str(ckpt), '--test-scale', 'vga', '--json', str(tmp_path / 'r.json'),
                    '--out', str(tmp_path / 'preds')])
  assert rc == 0
  record = json.loads((tmp_path / 'r.json').read_text())
  gt = synthetic.val_ground_truth(3, seed=5)
  assert record['dataset'] == 'synthetic' and record['face_counts'] == gt.face_counts()
  written = sorted(p.name for p in (tmp_path / 'preds').rglob('*.txt'))
  assert written == sorted(f'{n}.txt' for names in gt.files for n in names)
  assert all(0.0 <= v <= 1.0 for v in record['ap'].values())


def test_ckpt_on_a_wider_root(ckpt, tmp_path):
  """A WIDER layout written by the test: real GT for one event, images of the right names."""
  gt_dir = shared_file('data', 'widerface_val_gt')
  gt = load_wider_mat_ground_truth(gt_dir).select_events(['10--People_Marching'])
  crowd = cv2.imread(str(shared_file('data', 'images', 'street.jpg')))
  for name in gt.files[0][:3]:
    folder = tmp_path / 'root' / 'WIDER_val' / 'images' / '10--People_Marching'
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / f'{name}.jpg'), crowd)
  (tmp_path / 'root' / 'WIDER_val' / 'images' / '10--People_Marching' / f'{gt.files[0][3]}.jpg').write_text('broken')
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  proc = subprocess.run([sys.executable, 'evaluate.py', '--ckpt', str(ckpt), '--dataset', 'wider', '--wider-root',
                         str(tmp_path / 'root'), '--gt', str(gt_dir), '--events', '10--People_Marching',
                         '--out', str(tmp_path / 'p')], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
  # The 4th image is corrupt: the run stops with its name (an evaluation must not silently drop images).
  assert proc.returncode == 1
  assert f'error: ' in proc.stderr and f'{gt.files[0][3]}.jpg: not a decodable image' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_synthetic_val_loader_gives_each_file_its_own_image():
  """The ground truth groups images by event, so a file's position is not its image index: the
  loader must return the image the file's boxes were drawn on."""
  from jaxface.data import synthetic
  from jaxface.evaluation import cli, run
  gt, load = run.synthetic_val(12, seed=3, image_size=(64, 80))
  faces = synthetic.SyntheticFaces('val', 12, seed=3, image_size=(64, 80))
  keys = [(e, n) for e, names in zip(gt.events, gt.files) for n in names]
  assert len(gt.events) > 1 and [n for _, n in keys] != [f'synthetic_{i}' for i in range(12)]
  for (event, name), boxes in zip(keys, (b for per_event in gt.boxes for b in per_event)):
    i = int(name.split('_')[1])
    np.testing.assert_array_equal(load(event, name), faces[i][0])
    np.testing.assert_array_equal(boxes, synthetic.wider_boxes(faces.render(i, pixels=False).sample.boxes))
