"""Plain re-statements of the reference training augmentations, for the tests and the benchmark.

RetinaFace: biubug6 `data/data_augment.py` `preproc` (REFERENCE.md section 1.6), written the way the
reference writes it: one Python loop of up to 250 crop tries, the float `_convert` with in-place
clipping, the HSV round trip, `image[:, ::-1]`, a random interpolation, CHW output, and every draw
from Python's `random` module. Targets are the reference's [N, 15] rows (box, 10 landmark values,
label -1 / 1).

SCRFD: insightface's mmdet pipeline (REFERENCE.md section 2.8): `RandomSquareCrop` on the float image
with grey fill, `Resize` (bilinear, float), `RandomFlip`, `PhotoMetricDistortion` (float, no clipping)
and `Normalize` (RGB, (x - 127.5) / 128), with numpy's global random functions.

Both take the random source as an argument (`rnd`), defaulting to the module the reference uses, so
that a test can feed them scripted draws and compare them with jaxface's plans. Nothing here is fast
or fixed on purpose: it is the yardstick.
"""
from __future__ import annotations

import random

import cv2
import numpy as np

# --- RetinaFace ------------------------------------------------------------------------------------------------

RETINAFACE_SCALES = [0.3, 0.45, 0.6, 0.8, 1.0]
RETINAFACE_INTERPOLATIONS = [cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST,
                             cv2.INTER_LANCZOS4]


def matrix_iof(a, b):
  lt = np.maximum(a[:, np.newaxis, :2], b[:, :2])
  rb = np.minimum(a[:, np.newaxis, 2:], b[:, 2:])
  area_i = np.prod(rb - lt, axis=2) * (lt < rb).all(axis=2)
  area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
  return area_i / np.maximum(area_a[:, np.newaxis], 1)


def retinaface_crop(image, boxes, labels, landm, img_dim, rnd=random):
  height, width, _ = image.shape
  for _ in range(250):
    scale = rnd.choice(RETINAFACE_SCALES)
    w = h = int(scale * min(width, height))
    l = 0 if width == w else rnd.randrange(width - w)
    t = 0 if height == h else rnd.randrange(height - h)
    roi = np.array((l, t, l + w, t + h))

    if not (matrix_iof(boxes, roi[np.newaxis]) >= 1).any():
      continue
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = np.logical_and(roi[:2] < centers, centers < roi[2:]).all(axis=1)
    boxes_t = boxes[inside].copy()
    labels_t = labels[inside].copy()
    landms_t = landm[inside].copy().reshape([-1, 5, 2])
    if boxes_t.shape[0] == 0:
      continue
    image_t = image[roi[1]:roi[3], roi[0]:roi[2]]
    boxes_t[:, :2] = np.maximum(boxes_t[:, :2], roi[:2]) - roi[:2]
    boxes_t[:, 2:] = np.minimum(boxes_t[:, 2:], roi[2:]) - roi[:2]
    landms_t = landms_t - roi[:2]
    landms_t = np.maximum(landms_t, np.array([0, 0]))
    landms_t = np.minimum(landms_t, roi[2:] - roi[:2]).reshape([-1, 10])
    # The size filter as written (+1, then > 0): it removes nothing.
    b_w = (boxes_t[:, 2] - boxes_t[:, 0] + 1) / w * img_dim
    b_h = (boxes_t[:, 3] - boxes_t[:, 1] + 1) / h * img_dim
    big = np.minimum(b_w, b_h) > 0.0
    boxes_t, labels_t, landms_t = boxes_t[big], labels_t[big], landms_t[big]
    if boxes_t.shape[0] == 0:
      continue
    return image_t, boxes_t, labels_t, landms_t, False
  return image, boxes, labels, landm, True


def _convert(image, alpha=1, beta=0):
  tmp = image.astype(float) * alpha + beta
  tmp[tmp < 0] = 0
  tmp[tmp > 255] = 255
  image[:] = tmp


def retinaface_distort(image, rnd=random):
  image = image.copy()
  if rnd.randrange(2):
    if rnd.randrange(2):
      _convert(image, beta=rnd.uniform(-32, 32))
    if rnd.randrange(2):
      _convert(image, alpha=rnd.uniform(0.5, 1.5))
    image = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    if rnd.randrange(2):
      _convert(image[:, :, 1], alpha=rnd.uniform(0.5, 1.5))
    if rnd.randrange(2):
      tmp = image[:, :, 0].astype(int) + rnd.randint(-18, 18)
      tmp %= 180
      image[:, :, 0] = tmp
    image = cv2.cvtColor(image, cv2.COLOR_HSV2BGR)
  else:
    if rnd.randrange(2):
      _convert(image, beta=rnd.uniform(-32, 32))
    image = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    if rnd.randrange(2):
      _convert(image[:, :, 1], alpha=rnd.uniform(0.5, 1.5))
    if rnd.randrange(2):
      tmp = image[:, :, 0].astype(int) + rnd.randint(-18, 18)
      tmp %= 180
      image[:, :, 0] = tmp
    image = cv2.cvtColor(image, cv2.COLOR_HSV2BGR)
    if rnd.randrange(2):
      _convert(image, alpha=rnd.uniform(0.5, 1.5))
  return image


def retinaface_mirror(image, boxes, landms, rnd=random):
  _, width, _ = image.shape
  if rnd.randrange(2):
    image = image[:, ::-1]
    boxes = boxes.copy()
    boxes[:, 0::2] = width - boxes[:, 2::-2]
    landms = landms.copy().reshape([-1, 5, 2])
    landms[:, :, 0] = width - landms[:, :, 0]
    landms[:, [0, 1]] = landms[:, [1, 0]]
    landms[:, [3, 4]] = landms[:, [4, 3]]
    landms = landms.reshape([-1, 10])
  return image, boxes, landms


def retinaface_pad_to_square(image, rgb_mean, pad_image_flag):
  if not pad_image_flag:
    return image
  height, width, _ = image.shape
  long_side = max(width, height)
  image_t = np.empty((long_side, long_side, 3), dtype=image.dtype)
  image_t[:, :] = rgb_mean
  image_t[0:height, 0:width] = image
  return image_t


def retinaface_resize_subtract_mean(image, insize, rgb_mean, rnd=random):
  interp = RETINAFACE_INTERPOLATIONS[rnd.randrange(5)]
  image = cv2.resize(image, (insize, insize), interpolation=interp)
  image = image.astype(np.float32)
  image -= rgb_mean
  return image.transpose(2, 0, 1)


def retinaface_preproc(image, targets, img_dim, rgb_means=(104, 117, 123), rnd=random):
  """(image [3, S, S] float32, targets [N, 15]) like the reference's `preproc(img_dim, rgb_means)`."""
  assert targets.shape[0] > 0, 'this image does not have gt'
  boxes = targets[:, :4].copy()
  labels = targets[:, -1].copy()
  landm = targets[:, 4:-1].copy()
  image_t, boxes_t, labels_t, landm_t, pad = retinaface_crop(image, boxes, labels, landm, img_dim, rnd)
  image_t = retinaface_distort(image_t, rnd)
  image_t = retinaface_pad_to_square(image_t, rgb_means, pad)
  image_t, boxes_t, landm_t = retinaface_mirror(image_t, boxes_t, landm_t, rnd)
  height, width, _ = image_t.shape
  image_t = retinaface_resize_subtract_mean(image_t, img_dim, rgb_means, rnd)
  boxes_t[:, 0::2] /= width
  boxes_t[:, 1::2] /= height
  landm_t[:, 0::2] /= width
  landm_t[:, 1::2] /= height
  return image_t, np.hstack((boxes_t, landm_t, labels_t[:, None]))


def retinaface_targets(boxes, landmarks, landmark_valid):
  """The reference's [N, 15] annotation rows: missing landmarks are -1 and make the label -1."""
  n = len(boxes)
  landm = np.where(np.asarray(landmark_valid)[:, None], np.asarray(landmarks, np.float64).reshape(n, 10), -1.0)
  labels = np.where(landmark_valid, 1.0, -1.0)
  return np.hstack([np.asarray(boxes, np.float64).reshape(n, 4), landm, labels[:, None]])


# --- SCRFD -----------------------------------------------------------------------------------------------------

SCRFD_SCALES = [0.3, 0.45, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0]


def _centres_in_patch(boxes, patch):
  center = (boxes[:, :2] + boxes[:, 2:]) / 2
  return ((center[:, 0] > patch[0]) * (center[:, 1] > patch[1]) *
          (center[:, 0] < patch[2]) * (center[:, 1] < patch[3]))


def scrfd_square_crop(img, boxes, keypoints, ignore_boxes, rnd=np.random):
  """RandomSquareCrop(crop_choice=SCRFD_SCALES) on a float image. Loops until a crop keeps a face."""
  h, w, _ = img.shape
  while True:
    scale = rnd.choice(SCRFD_SCALES)  # max scale > 1: a new scale every round
    for _ in range(250):
      cw = ch = int(scale * min(w, h))
      if w == cw:
        left = 0
      elif w > cw:
        left = rnd.randint(0, w - cw)
      else:
        left = rnd.randint(w - cw, 0)
      if h == ch:
        top = 0
      elif h > ch:
        top = rnd.randint(0, h - ch)
      else:
        top = rnd.randint(h - ch, 0)
      patch = np.array((int(left), int(top), int(left + cw), int(top + ch)), dtype=int)
      if not _centres_in_patch(boxes, patch).any():
        continue
      out = []
      for field in (boxes, ignore_boxes):
        m = _centres_in_patch(field, patch)
        b = field[m].copy()
        b[:, 2:] = b[:, 2:].clip(max=patch[2:])
        b[:, :2] = b[:, :2].clip(min=patch[:2])
        b -= np.tile(patch[:2], 2)
        out.append((b, m))
      (boxes_t, m), (ignore_t, _) = out
      kps = keypoints[m].copy()
      kps[:, :, :2] = kps[:, :, :2].clip(max=patch[2:])
      kps[:, :, :2] = kps[:, :, :2].clip(min=patch[:2])
      kps[:, :, 0] -= patch[0]
      kps[:, :, 1] -= patch[1]
      rimg = np.ones((ch, cw, 3), dtype=img.dtype) * 128
      src = [max(0, patch[0]), max(0, patch[1]), min(img.shape[1], patch[2]), min(img.shape[0], patch[3])]
      dst_x, dst_y = max(0, -patch[0]), max(0, -patch[1])
      rimg[dst_y:dst_y + src[3] - src[1], dst_x:dst_x + src[2] - src[0]] = img[src[1]:src[3], src[0]:src[2]]
      return rimg, boxes_t, kps, ignore_t, m


def scrfd_resize(img, boxes, kps, ignore_boxes, size):
  """mmcv `imresize` (cv2 bilinear, float) without keeping the ratio; boxes scaled and clipped."""
  h, w = img.shape[:2]
  img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
  factor = np.array([size / w, size / h, size / w, size / h], dtype=np.float32)
  out = []
  for b in (boxes, ignore_boxes):
    b = b * factor
    b[:, 0::2] = np.clip(b[:, 0::2], 0, size)
    b[:, 1::2] = np.clip(b[:, 1::2], 0, size)
    out.append(b)
  kps = kps.copy()
  kps[:, :, 0] *= factor[0]
  kps[:, :, 1] *= factor[1]
  kps[:, :, 0] = np.clip(kps[:, :, 0], 0, size)
  kps[:, :, 1] = np.clip(kps[:, :, 1], 0, size)
  return img, out[0], kps, out[1]


def scrfd_flip(img, boxes, kps, ignore_boxes, rnd=np.random):
  if rnd.choice([True, False], p=[0.5, 0.5]):
    w = img.shape[1]
    img = np.flip(img, axis=1)
    out = []
    for b in (boxes, ignore_boxes):
      f = b.copy()
      f[:, 0] = w - b[:, 2]
      f[:, 2] = w - b[:, 0]
      out.append(f)
    flipped = kps[:, [1, 0, 2, 4, 3], :].copy()
    flipped[..., 0] = w - flipped[..., 0]
    return img, out[0], flipped, out[1]
  return img, boxes, kps, ignore_boxes


def scrfd_photometric(img, rnd=np.random):
  """PhotoMetricDistortion(32, (0.5, 1.5), (0.5, 1.5), 18) on float32 BGR, in place where it can."""
  if rnd.randint(2):
    img += rnd.uniform(-32, 32)
  mode = rnd.randint(2)
  if mode == 1 and rnd.randint(2):
    img *= rnd.uniform(0.5, 1.5)
  img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
  if rnd.randint(2):
    img[..., 1] *= rnd.uniform(0.5, 1.5)
  if rnd.randint(2):
    img[..., 0] += rnd.uniform(-18, 18)
    img[..., 0][img[..., 0] > 360] -= 360
    img[..., 0][img[..., 0] < 0] += 360
  img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
  if mode == 0 and rnd.randint(2):
    img *= rnd.uniform(0.5, 1.5)
  if rnd.randint(2):
    img = img[..., rnd.permutation(3)]
  return img


def scrfd_normalize(img):
  img = img.copy().astype(np.float32)
  img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
  img = (img - np.float32(127.5)) * np.float32(1 / 128)
  return img


def scrfd_pipeline(image_bgr_uint8, boxes, keypoints, ignore_boxes, size=640, rnd=np.random):
  """(image [S, S, 3] float32 RGB normalised, boxes, keypoints [N, 5, 2], ignore boxes, kept mask) in pixels."""
  img = image_bgr_uint8.astype(np.float32)
  img, boxes, kps, ign, kept = scrfd_square_crop(img, boxes, keypoints, ignore_boxes, rnd)
  img, boxes, kps, ign = scrfd_resize(img, boxes, kps, ign, size)
  img, boxes, kps, ign = scrfd_flip(img, boxes, kps, ign, rnd)
  img = scrfd_photometric(np.ascontiguousarray(img), rnd)
  return scrfd_normalize(img), boxes, kps, ign, kept
