"""Annotation readers (jaxface.data.readers, jaxface.data.tfds_wider).

Every test writes a small dataset in the real format into tmp_path (REFERENCE.md sections 1.6 and
2.8 give the formats) and checks each field numerically, then each malformed case for its error.
The TFDS conversion is tested on examples shaped like `tfds.as_numpy` output, without TensorFlow;
the one test that needs `tensorflow_datasets` is skipped where it is not installed.
"""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from jaxface.data import tfds_wider
from jaxface.data.readers import read_retinaface_labels, read_scrfd_labels, read_wider_val_list

# The example face line of REFERENCE.md section 1.6: x y w h, then 5 x (x y flag), then a score.
REFERENCE_LINE = ('449 330 122 149 488.906 373.643 0.0 542.089 376.442 0.0 515.031 412.83 0.0 '
                  '485.174 425.893 0.0 538.357 431.491 0.0 0.82')
REFERENCE_BOX = [449, 330, 449 + 122, 330 + 149]
REFERENCE_POINTS = [[488.906, 373.643], [542.089, 376.442], [515.031, 412.83], [485.174, 425.893],
                    [538.357, 431.491]]
NO_LANDMARKS = ' '.join(['-1.0'] * 15)


def _write(tmp_path, text, name='label.txt'):
  path = tmp_path / name
  path.write_text(text)
  return path


# ---------------------------------------------------------------------------------------- label.txt

def test_retinaface_reference_line_and_paths(tmp_path):
  path = _write(tmp_path, '# 0--Parade/0_Parade_marchingband_1_849.jpg\n'
                          f'{REFERENCE_LINE}\n'
                          f'10 20 30 40 {NO_LANDMARKS} -1.0\n'       # all -1: no landmarks
                          '# 1--Handshaking/1_Handshaking_1_2.jpg\n'
                          '5 6 7 8 11 12 1.0 13 14 0.0 15 16 -1.0 17 18 1.0 19 20 0.0 0.5\n')
  samples, stats = read_retinaface_labels(path)
  assert len(samples) == 2
  first, second = samples
  assert first.image_path == str(tmp_path / 'images' / '0--Parade/0_Parade_marchingband_1_849.jpg')
  assert first.source == f'{path}:1' and second.source == f'{path}:4'
  # Boxes are [x, y, x + w, y + h] (no -1).
  np.testing.assert_array_equal(first.boxes, np.float32([REFERENCE_BOX, [10, 20, 40, 60]]))
  np.testing.assert_array_equal(first.landmarks[0], np.float32(REFERENCE_POINTS))
  np.testing.assert_array_equal(first.landmarks[1], np.zeros((5, 2), np.float32))  # zeros where not valid
  np.testing.assert_array_equal(first.landmark_valid, [True, False])
  np.testing.assert_array_equal(first.ignore, [False, False])
  # Landmark order is the file order (x, y of each triple); the flags do not matter.
  np.testing.assert_array_equal(second.boxes, np.float32([[5, 6, 12, 14]]))
  np.testing.assert_array_equal(second.landmarks[0], np.float32([[11, 12], [13, 14], [15, 16], [17, 18], [19, 20]]))
  assert second.landmark_valid.tolist() == [True]
  assert first.boxes.dtype == np.float32 and first.landmarks.shape == (2, 5, 2)
  assert (stats.images, stats.faces, stats.faces_without_landmarks) == (2, 3, 1)
  assert stats.examples['faces_without_landmarks'] == [f'{path}:3']
  assert stats.partial_landmarks == stats.degenerate_boxes == stats.images_without_faces == 0


def test_retinaface_image_root_override_and_leading_slash(tmp_path):
  path = _write(tmp_path, f'# /a/b.jpg\n{REFERENCE_LINE}\n')
  samples, _ = read_retinaface_labels(path, image_root=tmp_path / 'elsewhere')
  assert samples[0].image_path == str(tmp_path / 'elsewhere' / 'a' / 'b.jpg')


def test_retinaface_no_faces_box_only_lines_blank_lines_crlf(tmp_path):
  # The val label.txt holds boxes only (4 numbers); an image may have no face line at all.
  path = tmp_path / 'label.txt'
  path.write_bytes(b'# empty.jpg\r\n\r\n# val.jpg\r\n345 211 4 4\r\n  \r\n331 126 3 3\r\n# last_empty.jpg\r\n')
  samples, stats = read_retinaface_labels(path)
  assert [len(s) for s in samples] == [0, 2, 0]
  assert samples[0].boxes.shape == (0, 4) and samples[0].landmarks.shape == (0, 5, 2)
  np.testing.assert_array_equal(samples[1].boxes, np.float32([[345, 211, 349, 215], [331, 126, 334, 129]]))
  assert samples[1].landmark_valid.tolist() == [False, False]
  np.testing.assert_array_equal(samples[1].landmarks, np.zeros((2, 5, 2), np.float32))
  assert stats.images_without_faces == 2
  assert stats.examples['images_without_faces'] == [f'{path}:1', f'{path}:7']
  assert stats.faces_without_landmarks == 2 and stats.partial_landmarks == 0


def test_retinaface_landmark_rule_all_coordinates_non_negative(tmp_path):
  # Face 1: lx0 valid, a later point missing -> the reference (lx0 < 0 test) would keep it; here not.
  # Face 2: lx0 = -1 only -> both rules drop it. Both are partial. Face 3: a point at 0 is valid.
  path = _write(tmp_path, '# img.jpg\n'
                          '0 0 10 10 1 2 0 3 4 0 -1 -1 -1 7 8 0 9 10 0 0.9\n'
                          '0 0 10 10 -1 -1 -1 3 4 0 5 6 0 7 8 0 9 10 0 0.9\n'
                          '0 0 10 10 0 0 0 3 4 0 5 6 0 7 8 0 9 10 0 0.9\n')
  (sample,), stats = read_retinaface_labels(path)
  assert sample.landmark_valid.tolist() == [False, False, True]
  np.testing.assert_array_equal(sample.landmarks[:2], np.zeros((2, 5, 2), np.float32))
  np.testing.assert_array_equal(sample.landmarks[2, 0], [0, 0])
  assert stats.partial_landmarks == 2 and stats.faces_without_landmarks == 2
  assert stats.examples['partial_landmarks'] == [f'{path}:2', f'{path}:3']


def test_retinaface_questionable_boxes_are_kept_and_counted(tmp_path):
  path = _write(tmp_path, '# img.jpg\n'
                          '10 10 0 5\n'        # zero width
                          '10 10 5 -3\n'       # negative height
                          '-4 10 8 8\n'        # starts left of the image
                          '10 10 5 5\n')
  (sample,), stats = read_retinaface_labels(path)
  np.testing.assert_array_equal(sample.boxes, np.float32([[10, 10, 10, 15], [10, 10, 15, 7], [-4, 10, 4, 18],
                                                          [10, 10, 15, 15]]))
  assert stats.degenerate_boxes == 2 and stats.examples['degenerate_boxes'] == [f'{path}:2', f'{path}:3']
  assert stats.boxes_outside_image == 1 and stats.examples['boxes_outside_image'] == [f'{path}:4']
  summary = stats.summary()
  assert summary.startswith('1 images, 4 faces') and f'2 degenerate boxes (e.g. {path}:2)' in summary


@pytest.mark.parametrize('text, line, match', [
    # (file contents, line the error must name, what the message must say)
    (f'# a.jpg\n{REFERENCE_LINE}\n1 2 3 4 5\n', 3, r'expected 20 numbers .*got 5 fields'),
    (f'# a.jpg\n{REFERENCE_LINE} 7\n', 2, 'got 21 fields'),
    ('# a.jpg\n\n1 2 x 4\n', 3, r"field 3 is 'x', not a number"),
    ('# a.jpg\n1 2 nan 4\n', 2, 'not a finite number'),
    ('# a.jpg\n1 2 3 inf\n', 2, 'not a finite number'),
    (f'\n{REFERENCE_LINE}\n# a.jpg\n', 2, 'face line before the first'),
    (f'# a.jpg\n#\n{REFERENCE_LINE}\n', 2, 'without an image path'),
    (f'# a.jpg\n{REFERENCE_LINE}\n# a.jpg\n', 3, r'listed twice \(first at .*label.txt:1\)'),
    (f'# a.jpg 640 480\n{REFERENCE_LINE}\n', 1, 'labelv2.txt header'),
])
def test_retinaface_syntax_errors_name_file_and_line(tmp_path, text, line, match):
  path = _write(tmp_path, text)
  with pytest.raises(ValueError, match=match) as error:
    read_retinaface_labels(path)
  assert f'label.txt:{line}:' in str(error.value)


@pytest.mark.parametrize('text', ['', '\n  \n'])
def test_empty_label_files_are_errors(tmp_path, text):
  path = _write(tmp_path, text)
  for read in (read_retinaface_labels, read_scrfd_labels):
    with pytest.raises(ValueError, match=r'label.txt: no "# <image path>" line \(empty file\?\)'):
      read(path)


def test_missing_files_raise_file_not_found(tmp_path):
  for read in (read_retinaface_labels, read_scrfd_labels, read_wider_val_list):
    with pytest.raises(FileNotFoundError, match='nowhere.txt'):
      read(tmp_path / 'nowhere.txt')


# -------------------------------------------------------------------------------------- labelv2.txt

def test_scrfd_faces_keypoints_and_ignore_boxes(tmp_path):
  path = _write(tmp_path, '# 0--Parade/0_Parade_marchingband_1_849.jpg 1024 682\n'
                          '449 330 571 479 488.906 373.643 0.0 542.089 376.442 1.0 515.031 412.83 0.0 '
                          '485.174 425.893 0.0 538.357 431.491 0.0\n'
                          f'10 20 40 60 {NO_LANDMARKS}\n'   # all keypoints missing
                          '100 100 110 112 1\n'             # ignore box
                          '200 100 210 112 0\n'             # 5 fields, not ignored
                          '300 100 310 112\n'               # box only
                          '# 1--Handshaking/no_faces.jpg 640 480\n', name='labelv2.txt')
  samples, stats = read_scrfd_labels(path)
  sample, empty = samples
  assert sample.image_path == str(tmp_path / 'images' / '0--Parade/0_Parade_marchingband_1_849.jpg')
  assert sample.source == f'{path}:1' and empty.source == f'{path}:7'
  # Boxes are corners as written (xyxy, unlike label.txt's xywh).
  np.testing.assert_array_equal(sample.boxes, np.float32([REFERENCE_BOX, [10, 20, 40, 60], [100, 100, 110, 112],
                                                          [200, 100, 210, 112], [300, 100, 310, 112]]))
  np.testing.assert_array_equal(sample.landmarks[0], np.float32(REFERENCE_POINTS))
  np.testing.assert_array_equal(sample.landmarks[1:], np.zeros((4, 5, 2), np.float32))
  assert sample.landmark_valid.tolist() == [True, False, False, False, False]
  assert sample.ignore.tolist() == [False, False, True, False, False]
  assert len(empty) == 0 and empty.image_path.endswith('1--Handshaking/no_faces.jpg')
  assert (stats.images, stats.faces, stats.ignored_faces, stats.images_without_faces) == (2, 5, 1, 1)
  assert stats.examples['ignored_faces'] == [f'{path}:4']
  assert stats.faces_without_landmarks == 4 and stats.partial_landmarks == 0


def test_scrfd_partial_keypoints_and_boxes_outside_the_stated_size(tmp_path):
  path = _write(tmp_path, '# a.jpg 100 50\n'
                          '10 10 20 20 1 2 0 -1 -1 -1 5 6 0 7 8 0 9 10 0\n'   # one keypoint missing
                          '90 10 101 20\n'                                     # past the width
                          '10 40 20 51\n'                                      # past the height
                          '0 0 100 50\n'                                       # exactly the image: inside
                          '20 10 20 20\n', name='labelv2.txt')                 # zero width
  (sample,), stats = read_scrfd_labels(path, image_root='/data/wider/train/images')
  assert sample.image_path == '/data/wider/train/images/a.jpg'
  assert sample.landmark_valid.tolist() == [False] * 5
  assert stats.partial_landmarks == 1 and stats.examples['partial_landmarks'] == [f'{path}:2']
  assert stats.boxes_outside_image == 2 and stats.examples['boxes_outside_image'] == [f'{path}:3', f'{path}:4']
  assert stats.degenerate_boxes == 1 and stats.examples['degenerate_boxes'] == [f'{path}:6']
  np.testing.assert_array_equal(sample.boxes[1], [90, 10, 101, 20])  # kept as read


@pytest.mark.parametrize('text, line, match', [
    ('# a.jpg 64 64\n1 2 3 4 5 6\n', 2, r'expected 4 numbers .* or 19 .*got 6 fields'),
    ('# a.jpg 64 64\n1 2 3 4 1 2 0 3 4 0 5 6 0 7 8 0 9 10 0 1\n', 2, 'got 20 fields'),
    ('# a.jpg 64 64\n1 2 3 4 2\n', 2, 'ignore flag, 0 or 1'),
    ('# a.jpg 64 64\n1 2 3 four\n', 2, "field 4 is 'four', not a number"),
    ('# a.jpg\n1 2 3 4\n', 1, r'expected "# <relative image path> <width> <height>", got 1 fields'),
    ('# a.jpg 64.5 64\n', 1, 'positive integer width and height'),
    ('# a.jpg 0 64\n', 1, 'positive integer width and height'),
    ('1 2 3 4\n# a.jpg 64 64\n', 1, 'face line before the first'),
    ('# a.jpg 64 64\n# b.jpg 64 64\n# a.jpg 64 64\n', 3, 'listed twice'),
])
def test_scrfd_syntax_errors_name_file_and_line(tmp_path, text, line, match):
  path = _write(tmp_path, text, name='labelv2.txt')
  with pytest.raises(ValueError, match=match) as error:
    read_scrfd_labels(path)
  assert f'labelv2.txt:{line}:' in str(error.value)


# ------------------------------------------------------------------------------------ wider_val.txt

def test_wider_val_list(tmp_path):
  path = _write(tmp_path, '/0--Parade/0_Parade_marchingband_1_20.jpg\n\n'
                          '0--Parade/0_Parade_Parade_0_102.jpg\r\n  \n/1--Handshaking/1_Handshaking_1_3.JPG',
                name='wider_val.txt')
  assert read_wider_val_list(path) == ['0--Parade/0_Parade_marchingband_1_20.jpg', '0--Parade/0_Parade_Parade_0_102.jpg',
                                       '1--Handshaking/1_Handshaking_1_3.JPG']


@pytest.mark.parametrize('text, line, match', [
    ('/a/b.jpg\n/a/c.jpg 3\n', 2, 'expected one image path per line'),
    ('# a/b.jpg\n', 1, 'expected one image path per line'),
    ('a/b.jpg\n126\n', 2, 'expected an image path ending in'),     # a wider_face_val_bbx_gt.txt
    ('/a/b.jpg\na/b.jpg\n', 2, r'listed twice \(first at .*wider_val.txt:1\)'),
])
def test_wider_val_list_errors(tmp_path, text, line, match):
  path = _write(tmp_path, text, name='wider_val.txt')
  with pytest.raises(ValueError, match=match) as error:
    read_wider_val_list(path)
  assert f'wider_val.txt:{line}:' in str(error.value)


def test_wider_val_list_empty(tmp_path):
  with pytest.raises(ValueError, match='no image paths'):
    read_wider_val_list(_write(tmp_path, '\n\n', name='wider_val.txt'))


# ---------------------------------------------------------------------------------------------- TFDS

def _rgb_image(height=40, width=64):
  """A small RGB image whose three channels differ, so a missed RGB -> BGR swap shows."""
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  image[..., 0] = 255  # red
  image[..., 2] = 0    # blue
  return image


def _example(image, bbox, invalid, flat=False):
  """An example as `tfds.as_numpy` yields `wider_face`: attributes beside bbox and invalid included."""
  n = len(bbox)
  faces = {'bbox': np.asarray(bbox, np.float32).reshape(n, 4), 'invalid': np.asarray(invalid, bool),
           'blur': np.zeros(n, np.uint8), 'expression': np.zeros(n, bool), 'illumination': np.zeros(n, bool),
           'occlusion': np.zeros(n, np.uint8), 'pose': np.zeros(n, bool)}
  example = {'image': image, 'image/filename': b'0--Parade/0_Parade_marchingband_1_5.jpg'}
  if flat:
    example.update({f'faces/{k}': v for k, v in faces.items()})
  else:
    example['faces'] = faces
  return example


@pytest.mark.parametrize('flat', [False, True])
def test_tfds_example_conversion(flat):
  rgb = _rgb_image(height=40, width=64)
  # Normalised ymin xmin ymax xmax; the second face is flagged invalid.
  example = _example(rgb, [[0.25, 0.125, 0.75, 0.5], [0.0, 0.5, 0.1, 1.0]], [False, True], flat)
  image, sample = tfds_wider.convert_example(example, source='src')
  np.testing.assert_array_equal(image, rgb[:, :, ::-1])
  assert image.flags['C_CONTIGUOUS'] and image[0, 0, 2] == 255 and image[0, 0, 0] == 0  # BGR: red is last
  # x1 = xmin * W, y1 = ymin * H, x2 = xmax * W, y2 = ymax * H with W = 64, H = 40.
  np.testing.assert_allclose(sample.boxes, [[8, 10, 32, 30], [32, 0, 64, 4]], atol=1e-4)
  assert sample.ignore.tolist() == [False, True]
  assert sample.landmark_valid.tolist() == [False, False]
  np.testing.assert_array_equal(sample.landmarks, np.zeros((2, 5, 2), np.float32))
  assert sample.image_path == '' and sample.source == 'src'


def test_tfds_example_without_faces_and_errors():
  for bbox in (np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)):  # either empty shape
    example = _example(_rgb_image(), np.zeros((0, 4)), [])
    example['faces']['bbox'] = bbox
    image, sample = tfds_wider.convert_example(example)
    assert image.shape == (40, 64, 3) and len(sample) == 0 and sample.boxes.shape == (0, 4)
  with pytest.raises(ValueError, match=r'faces/bbox must be \[N, 4\] and faces/invalid \[N\]'):
    tfds_wider.convert_example(_example(_rgb_image(), [[0, 0, 1, 1]], [False, False]), source='ex7')
  no_invalid = _example(_rgb_image(), [[0, 0, 1, 1]], [False])
  del no_invalid['faces']['invalid']
  with pytest.raises(ValueError, match='needs faces/bbox and faces/invalid'):
    tfds_wider.convert_example(no_invalid)
  with pytest.raises(ValueError, match=r'expected an \[H, W, 3\] uint8 RGB image'):
    tfds_wider.convert_example(_example(np.zeros((4, 4), np.uint8), [], []))


def test_tfds_source_with_encoded_images():
  rgb = _rgb_image(height=30, width=50)
  png = cv2.imencode('.png', rgb[:, :, ::-1])[1].tobytes()  # encoders take BGR; PNG is lossless
  examples = [_example(png, [[0.1, 0.2, 0.5, 0.6]], [False]),
              _example(b'not an image', [[0.1, 0.2, 0.5, 0.6], [0.3, 0.3, 0.3, 0.4]], [True, False]),
              _example(b'', [], []),
              _example(png, [[-0.1, 0.0, 0.5, 1.2]], [False])]
  source = tfds_wider.TfdsWiderFace(examples, 'wider_face/train')
  assert len(source) == 4
  image, sample = source[0]
  np.testing.assert_array_equal(image, rgb[:, :, ::-1])
  np.testing.assert_allclose(sample.boxes, [[0.2 * 50, 0.1 * 30, 0.6 * 50, 0.5 * 30]], rtol=1e-6)
  assert sample.source == 'wider_face/train[0] 0--Parade/0_Parade_marchingband_1_5.jpg'
  np.testing.assert_allclose(source[3][1].boxes, [[0, -3, 60, 15]], atol=1e-4)  # kept as given, outside the image
  from jaxface.data.pipeline import ImageReadError
  for index in (1, 2):  # undecodable bytes: the loader's skip-and-count error, naming the example
    with pytest.raises(ImageReadError, match=rf'wider_face/train\[{index}\] 0--Parade/.*not a decodable image'):
      source[index]
    image, sample = tfds_wider.convert_example(examples[index])  # the pure function reports None
    assert image is None and len(sample) == 0
  stats = source.stats
  assert (stats.images, stats.faces, stats.ignored_faces, stats.images_without_faces) == (4, 4, 1, 1)
  assert stats.degenerate_boxes == 1 and stats.examples['degenerate_boxes'][0].startswith('wider_face/train[1]')
  assert stats.boxes_outside_image == 1 and stats.examples['boxes_outside_image'][0].startswith('wider_face/train[3]')
  assert stats.faces_without_landmarks == 4


def test_tfds_missing_gives_install_hint(monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)  # makes the import fail even where installed
  with pytest.raises(ImportError, match='pip install tensorflow-datasets tensorflow'):
    tfds_wider.read_tfds_wider_face('train')


def test_importing_jaxface_data_does_not_import_tensorflow():
  code = ('import sys, jaxface.data.tfds_wider, jaxface.data.readers; '
          'assert not {"tensorflow", "tensorflow_datasets"} & set(sys.modules), "TensorFlow imported"')
  subprocess.run([sys.executable, '-c', code], check=True)


def _fake_wider_download(root):
  """The four archives of the TFDS `wider_face` builder, extracted, with tiny JPEGs and the official
  `wider_face_*_bbx_gt.txt` syntax (10 integers and a trailing space per face; a zero line after a 0 count).

  Returns:
    The `download_and_extract` result, and per split the expected (file name, BGR image, pixel xyxy
    boxes after the builder's clipping, invalid flags).
  """
  rng = np.random.default_rng(1)
  dirs = {name: root / name for name in ('wider_train', 'wider_val', 'wider_test', 'wider_annot')}
  (dirs['wider_annot'] / 'wider_face_split').mkdir(parents=True)
  files = {  # split -> [(name, (height, width), faces as x y w h invalid)]
      'train': [('0--Parade/0_Parade_a.jpg', (80, 120), [(10, 20, 30, 40, 0), (50, 5, 100, 50, 1)]),
                ('1--Handshaking/1_Handshaking_b.jpg', (64, 48), [])],
      'val': [('2--Demonstration/2_Demonstration_c.jpg', (50, 70), [(0, 0, 70, 50, 0), (7, 9, 0, 4, 0)])],
      'test': [('3--Riot/3_Riot_d.jpg', (40, 40), [])],
  }
  expected = {}
  for split, images in files.items():
    lines, expected[split] = [], []
    for name, (height, width), faces in images:
      path = dirs[f'wider_{split}'] / f'WIDER_{split}' / 'images' / name
      path.parent.mkdir(parents=True, exist_ok=True)
      cv2.imwrite(str(path), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
      lines.append(name)
      if split != 'test':
        lines.append(str(len(faces)))
        lines += [f'{x} {y} {w} {h} 0 0 0 {invalid} 0 0 ' for x, y, w, h, invalid in faces] or ['0 0 0 0 0 0 0 0 0 0 ']
      boxes = np.array([[x, y, min(x + w, width), min(y + h, height)] for x, y, w, h, _ in faces]).reshape(-1, 4)
      expected[split].append((name, cv2.imread(str(path)), boxes, [bool(f[4]) for f in faces]))
    listing = 'wider_face_test_filelist.txt' if split == 'test' else f'wider_face_{split}_bbx_gt.txt'
    (dirs['wider_annot'] / 'wider_face_split' / listing).write_text('\n'.join(lines) + '\n')
  return {name: str(d) for name, d in dirs.items()}, expected


def test_real_tfds_wider_face(tmp_path, monkeypatch):
  """The real TFDS builder prepares a fake download; the reader must give back the pixels and boxes."""
  tfds = pytest.importorskip('tensorflow_datasets')
  pytest.importorskip('tensorflow')
  pytest.importorskip('PIL')  # the builder reads image sizes with PIL
  extracted, expected = _fake_wider_download(tmp_path / 'downloads')
  monkeypatch.setattr(tfds.download.DownloadManager, 'download_and_extract', lambda self, urls: extracted)
  tfds.builder('wider_face', data_dir=str(tmp_path / 'tfds')).download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  for split, tfds_split in (('train', 'train'), ('val', 'validation'), ('test', 'test')):
    source = tfds_wider.read_tfds_wider_face(tfds_split, data_dir=str(tmp_path / 'tfds'))
    assert len(source) == len(expected[split])
    got = {s.source.split(' ', 1)[1]: (image, s) for image, s in source}  # TFDS may reorder examples
    for name, image_bgr, boxes, invalid in expected[split]:
      image, sample = got[name]
      np.testing.assert_array_equal(image, image_bgr)  # the stored JPEG bytes, decoded to BGR
      np.testing.assert_allclose(sample.boxes, boxes, atol=1e-3)
      assert sample.ignore.tolist() == invalid and not sample.landmark_valid.any()
  assert source.stats.images == 1
  train = tfds_wider.read_tfds_wider_face('train', data_dir=str(tmp_path / 'tfds'))
  assert (train.stats.faces, train.stats.ignored_faces, train.stats.images_without_faces) == (2, 1, 1)
