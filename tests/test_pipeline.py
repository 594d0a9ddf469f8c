"""The loader: fixed shapes, determinism across workers and hosts, resume, skip-and-count."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

import loader_fakes as fakes
from jaxface.data import pipeline

CFG = pipeline.LoaderConfig(global_batch_size=4, image_size=8, max_faces=2, seed=0)


def _take(cfg, **kwargs):
  return list(pipeline.batches(fakes.Source(), fakes.augment, cfg, **kwargs))


@pytest.fixture(scope='module')
def straight():
  return _take(CFG, num_steps=6)


def test_shapes_and_counters(straight):
  b = straight[0]
  assert b['image'].shape == (4, 8, 8, 3) and b['image'].dtype == np.float32
  assert b['boxes'].shape == (4, 2, 4) and b['landmarks'].shape == (4, 2, 5, 2)
  assert b['box_valid'].dtype == bool and b['landmark_valid'].shape == (4, 2)
  # 6 steps x 4 = 24 examples = 2.4 epochs of 10: each time a position of an epoch's permutation
  # holds the unreadable image it is replaced by the next one and counted.
  want = sum(pipeline.epoch_permutation(0, k // 10, 10)[k % 10] == fakes.BAD for k in range(24))
  assert want >= 2
  assert sum(int(x['skipped_images'].sum()) for x in straight) == want
  assert all(int(x['dropped_degenerate'].sum()) == 4 for x in straight)  # the fake drops 1 per image


def test_max_faces_keeps_the_largest_and_counts_the_rest():
  faces, dropped = pipeline.pad_faces(np.array([[0, 0, 1, 1], [0, 0, 5, 5], [0, 0, 3, 3]], np.float32),
                                      np.zeros((3, 5, 2)), np.array([True, False, True]), np.zeros(3, bool), 2)
  assert dropped == 1
  np.testing.assert_array_equal(faces['boxes'], [[0, 0, 5, 5], [0, 0, 3, 3]])  # original order kept
  np.testing.assert_array_equal(faces['landmark_valid'], [False, True])
  faces, dropped = pipeline.pad_faces(np.zeros((1, 4)), np.zeros((1, 5, 2)), np.ones(1, bool), np.zeros(1, bool), 3)
  assert dropped == 0 and faces['box_valid'].tolist() == [True, False, False]


def test_every_example_is_a_pure_function_of_its_position(straight):
  # epoch 0 is a permutation of the 9 readable images plus one repeat (the skip's replacement).
  k = 5
  ex = pipeline.make_example(fakes.Source(), fakes.augment, CFG, k)
  np.testing.assert_array_equal(ex['image'], straight[1]['image'][1])
  epoch0 = np.concatenate([b['image'][:, 0, 0, 0] for b in straight[:3]])[:10]
  assert len(set(epoch0.tolist())) == 9


def test_resume_at_a_step_sees_the_same_batches(straight):
  resumed = _take(CFG, start_step=3, num_steps=3)
  for a, b in zip(resumed, straight[3:]):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_hosts_split_the_global_batch(straight):
  hosts = [_take(dataclasses.replace(CFG, process_index=i, process_count=2), num_steps=6) for i in range(2)]
  for step in range(6):
    np.testing.assert_array_equal(np.concatenate([hosts[0][step]['image'], hosts[1][step]['image']]),
                                  straight[step]['image'])
  with pytest.raises(ValueError, match='divisible'):
    _ = dataclasses.replace(CFG, process_count=3).host_batch_size


def test_worker_processes_give_the_same_batches(straight):
  """Grain workers (spawned processes) build the same stream in the same order."""
  workers = _take(dataclasses.replace(CFG, num_workers=2), num_steps=6)
  assert len(workers) == 6
  for a, b in zip(workers, straight):
    np.testing.assert_array_equal(a['image'], b['image'])


def test_a_dataset_of_only_bad_images_fails_loudly():
  class AllBad(fakes.Source):
    def __getitem__(self, i):
      raise pipeline.ImageReadError(f'image {i}: broken')
  with pytest.raises(pipeline.ImageReadError, match='broken'):
    pipeline.make_example(AllBad(), fakes.augment, CFG, 0)


def test_read_image_formats_and_errors(tmp_path):
  rng = np.random.default_rng(0)
  bgr = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
  cv2.imwrite(str(tmp_path / 'c.png'), bgr)
  np.testing.assert_array_equal(pipeline.read_image(str(tmp_path / 'c.png')), bgr)
  cv2.imwrite(str(tmp_path / 'g.png'), bgr[:, :, 0])
  assert pipeline.read_image(str(tmp_path / 'g.png')).shape == (6, 5, 3)
  cv2.imwrite(str(tmp_path / 'a.png'), np.concatenate([bgr, bgr[:, :, :1]], axis=2))
  np.testing.assert_array_equal(pipeline.read_image(str(tmp_path / 'a.png')), bgr)
  cv2.imwrite(str(tmp_path / 'w.png'), bgr.astype(np.uint16) * 257)
  np.testing.assert_array_equal(pipeline.read_image(str(tmp_path / 'w.png')), bgr)
  (tmp_path / 'bad.jpg').write_text('not an image')
  with pytest.raises(pipeline.ImageReadError, match='bad.jpg'):
    pipeline.read_image(str(tmp_path / 'bad.jpg'))
  with pytest.raises(pipeline.ImageReadError, match='missing.jpg'):
    pipeline.read_image(str(tmp_path / 'missing.jpg'))


def test_drops_are_logged_not_silent(caplog):
  with caplog.at_level('WARNING'):
    _take(CFG, num_steps=6)
  text = caplog.text
  assert 'unreadable images skipped' in text and 'zero-size boxes dropped' in text
  assert 'faces dropped beyond max_faces=2' in text  # images with 3 faces, max_faces 2
  assert text.count('loader: step') == 3  # one first-occurrence line per kind, no flood


@pytest.mark.parametrize('num_workers', [0, 1])
def test_a_crashing_worker_surfaces_its_error(num_workers):
  """A bug in a worker stops the loader with that bug's message (not a hang, not a silent skip)."""
  cfg = dataclasses.replace(CFG, num_workers=num_workers)
  with pytest.raises(Exception, match='bug in the source at image 6'):
    list(pipeline.batches(fakes.CrashingSource(), fakes.augment, cfg, num_steps=6))
