"""The default model shipped as package data: what `load_detector()` and `python -m jaxface.detect`
without --weights run.

It must be exactly the 2019 checkpoint through the converter (every array's bits), detect what the
reference detects, and work from an installed package with nothing else beside it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import cv2
import flax
import jax
import numpy as np
import pytest

from conftest import REPO_ROOT, shared_file
from test_detector import assert_reference_detections
from jaxface import detect, families, load_detector, saved_models
from jaxface.convert import convert_file

ARCH = 'retinaface_mnet_relu'
ONE_FACE_BOX = [42.02, 29.61, 62.27, 56.34]  # test_detect_cli.py's golden box, same checkpoint


def _tool():
  """tools/make_default_model.py as a module (tools/ is not a package)."""
  spec = importlib.util.spec_from_file_location('make_default_model', REPO_ROOT / 'tools' / 'make_default_model.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def weights():
  return str(shared_file('data', 'weights', 'retinaface_mnet025_relu_2019.pth'))


@pytest.fixture(scope='module')
def shipped():
  return saved_models.load_variables(families.DEFAULT_MODEL)


@pytest.fixture(scope='module')
def det():
  return load_detector()


def assert_bit_equal(got, want):
  """Same keys, and every array the same dtype, shape and bytes (so -0.0 != 0.0, NaNs compared too)."""
  got_flat, want_flat = flax.traverse_util.flatten_dict(got), flax.traverse_util.flatten_dict(want)
  assert sorted(got_flat) == sorted(want_flat), 'different variable names'
  for path, w in want_flat.items():
    g = got_flat[path]
    assert (g.dtype, g.shape) == (w.dtype, w.shape), '/'.join(path)
    assert g.tobytes() == w.tobytes(), f'{"/".join(path)}: {int(np.sum(g != w))} values differ'


def test_shipped_variables_are_a_fresh_conversion(shipped, weights):
  variables, meta = shipped
  assert meta == _tool().meta(weights)  # arch, origin and the sha256 of this very .pth
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {np.dtype(np.float32)}
  assert_bit_equal(variables, convert_file(weights, ARCH))


def test_load_detector_needs_no_arguments(det, shipped):
  """Nothing from ../shared: the package data alone."""
  assert det.arch == ARCH
  assert_bit_equal(jax.device_get(det.variables), shipped[0])


def test_a_corrupted_file_fails_the_comparison(shipped, tmp_path):
  """The check above can fail: one flipped byte in the shipped file (the last array's last value)."""
  corrupt = tmp_path / 'corrupt'
  shutil.copytree(families.DEFAULT_MODEL, corrupt)
  data = bytearray((corrupt / saved_models.VARIABLES_FILE).read_bytes())
  data[-1] ^= 0x01
  (corrupt / saved_models.VARIABLES_FILE).write_bytes(bytes(data))
  with pytest.raises(AssertionError, match='1 values differ'):
    assert_bit_equal(saved_models.load_variables(str(corrupt))[0], shipped[0])
  fewer = flax.traverse_util.flatten_dict(shipped[0])
  fewer.pop(sorted(fewer)[0])
  with pytest.raises(AssertionError, match='different variable names'):
    assert_bit_equal(flax.traverse_util.unflatten_dict(fewer), shipped[0])


def test_both_weight_containers_is_an_error(tmp_path):
  both = tmp_path / 'both'
  shutil.copytree(families.DEFAULT_MODEL, both)
  (both / saved_models.VARIABLES_DIR).mkdir()
  with pytest.raises(ValueError, match='both'):
    load_detector(str(both))


def test_tool_writes_the_same_bytes_each_time(weights, tmp_path):
  """Regenerating changes nothing in git unless the conversion changed (orbax's files would)."""
  tool = _tool()
  tool.make(weights, str(tmp_path / 'a'))
  tool.make(weights, str(tmp_path / 'b'))
  assert sorted(os.listdir(tmp_path / 'a')) == sorted(tool.FILES)
  for name in tool.FILES:
    assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes(), name


def test_same_detections_as_reference_on_crowd(det, weights):
  assert det.arch == ARCH
  assert_reference_detections(det, weights, cv2.imread(str(shared_file('data', 'images', 'crowd.jpg'))), ARCH)


def test_cli_without_weights(tmp_path):
  out = tmp_path / 'out.jsonl'
  assert detect.main(['--json', str(out), str(shared_file('data', 'images', '1face.png'))]) == 0
  [record] = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(record['faces']) == 1
  np.testing.assert_allclose(record['faces'][0]['box'], ONE_FACE_BOX, atol=0.05)


def test_cli_help_names_the_default(capsys):
  with pytest.raises(SystemExit):
    detect.main(['--help'])
  assert 'default: the model shipped with jaxface' in ' '.join(capsys.readouterr().out.split())


def test_cli_arch_not_the_default_models_is_an_error(tmp_path, capsys):
  image = tmp_path / 'gray.png'
  cv2.imwrite(str(image), np.full((64, 64, 3), 128, np.uint8))
  assert detect.main(['--arch', 'retinaface_mnet', '--json', str(tmp_path / 'o.jsonl'), str(image)]) == 1
  err = capsys.readouterr().err
  assert 'retinaface_mnet_relu' in err and families.DEFAULT_MODEL in err


def test_installed_package_runs_without_shared(tmp_path):
  """A wheel built from the package alone, installed elsewhere, run where neither the checkout nor
  ../shared can be found: the package data must be in the wheel and be enough."""
  pytest.importorskip('setuptools')
  src = tmp_path / 'src'
  src.mkdir()
  shutil.copy(REPO_ROOT / 'pyproject.toml', src)
  shutil.copytree(REPO_ROOT / 'jaxface', src / 'jaxface', ignore=shutil.ignore_patterns('__pycache__'))
  pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check', '-q']
  subprocess.run(pip + ['wheel', str(src), '--no-deps', '--no-build-isolation', '--no-index', '-w', str(tmp_path)],
                 check=True, capture_output=True)
  [wheel] = tmp_path.glob('jaxface-*.whl')
  site = tmp_path / 'site'
  subprocess.run(pip + ['install', str(wheel), '--no-deps', '--no-index', '--target', str(site)],
                 check=True, capture_output=True)
  shipped = site / 'jaxface' / 'retinaface' / 'default_model' / saved_models.VARIABLES_FILE
  assert shipped.is_file(), 'the wheel lacks the default model (pyproject.toml: tool.setuptools.package-data)'
  run = tmp_path / 'run'
  run.mkdir()
  cv2.imwrite(str(run / 'gray.png'), np.full((96, 128, 3), 128, np.uint8))
  env = dict(os.environ, PYTHONPATH=str(site), JAXFACE_SHARED=str(tmp_path / 'no_shared'))
  proc = subprocess.run([sys.executable, '-m', 'jaxface.detect', 'gray.png', '--json', 'out.jsonl'],
                        cwd=run, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  [record] = [json.loads(line) for line in (run / 'out.jsonl').read_text().splitlines()]
  assert (record['image'], record['height'], record['width']) == ('gray.png', 96, 128)
  assert isinstance(record['faces'], list)


def test_the_first_command_needs_no_flags(capsys):
  """`python -m jaxface.detect photo.jpg`: the shipped model, the records on stdout."""
  from jaxface import detect
  image = shared_file('data', 'images', '1face.png')
  assert detect.main([str(image)]) == 0
  captured = capsys.readouterr()
  [record] = [json.loads(line) for line in captured.out.splitlines()]
  assert record['image'] == str(image) and len(record['faces']) == 1
  assert '1 image, 1 face' in captured.err
