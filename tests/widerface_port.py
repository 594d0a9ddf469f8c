"""A plain re-statement of the common Python WIDER FACE evaluator, and a seeded prediction generator.

The evaluator re-states the algorithm of the port that biubug6 and insightface copy from
wondervictor/WiderFace-Evaluation (REFERENCE.md section 1.9), with its loops kept as they are:
one Python loop over detections per image, one over the 1000 thresholds per image and setting,
one over the precision envelope. Only the IoU matrix (compiled Cython in the port) is written
as one numpy broadcast, in the Cython's operation order. It reads the folder and the
`.mat` files itself, so it shares no code with `jaxface.evaluation`.

Quirks kept on purpose: images are keyed by the name line of their file; the count line is
ignored; a file's lines are used in file order (no sort); a missing file raises KeyError.
"""
from __future__ import annotations

import os

import numpy as np
import scipy.io

THRESH_NUM = 1000
IOU_THRESH = 0.5


# --- reading -------------------------------------------------------------------------------------------------

def read_pred_file(path):
  """(image name from the first line, [P, 5] array of the lines after the count line)."""
  with open(path) as f:
    lines = f.readlines()
  name = lines[0].rstrip('\r\n').split('/')[-1]
  rows = []
  for line in lines[2:]:
    parts = line.rstrip('\r\n').split(' ')
    if parts[0] == '':
      continue
    rows.append([float(parts[0]), float(parts[1]), float(parts[2]), float(parts[3]), float(parts[4])])
  return name, np.array(rows)


def get_preds(pred_dir):
  """{event: {image name: [P, 5]}} for every file of every folder of `pred_dir`."""
  preds = {}
  for event in os.listdir(pred_dir):
    per_image = {}
    for fname in os.listdir(os.path.join(pred_dir, event)):
      name, boxes = read_pred_file(os.path.join(pred_dir, event, fname))
      per_image[name.rstrip('.jpg')] = boxes
    preds[event] = per_image
  return preds


def norm_score(preds):
  """In place: scores (last column) min-max normalised over everything, from max 0 and min 1."""
  hi, lo = 0, 1
  for per_image in preds.values():
    for boxes in per_image.values():
      if len(boxes) == 0:
        continue
      hi = max(np.max(boxes[:, -1]), hi)
      lo = min(np.min(boxes[:, -1]), lo)
  span = hi - lo
  for per_image in preds.values():
    for boxes in per_image.values():
      if len(boxes) == 0:
        continue
      boxes[:, -1] = (boxes[:, -1] - lo) / span


def load_gt_lists(gt_dir, events=None):
  """The four `.mat` files as the port holds them, optionally only some events (by name).

  Returns:
    dict with `face_bbx_list`, `event_list`, `file_list` and `easy`/`medium`/`hard` gt_lists,
    each the `(E, 1)` object array scipy gives (restricted to `events`, in their `.mat` order).
  """
  load = lambda name: scipy.io.loadmat(os.path.join(gt_dir, name))
  main = load('wider_face_val.mat')
  out = {'face_bbx_list': main['face_bbx_list'], 'event_list': main['event_list'], 'file_list': main['file_list']}
  for setting in ('easy', 'medium', 'hard'):
    out[setting] = load(f'wider_{setting}_val.mat')['gt_list']
  if events is not None:
    names = [str(e[0][0]) for e in main['event_list']]
    rows = [i for i, n in enumerate(names) if n in set(events)]
    out = {k: v[rows] for k, v in out.items()}
  return out


# --- scoring -------------------------------------------------------------------------------------------------

def bbox_overlaps(boxes, query_boxes):
  """[N, K] IoU of xyxy `boxes` with xyxy `query_boxes`, +1 convention, 0 unless iw > 0 and ih > 0.

  The port's compiled Cython double loop, as one broadcast computation in the same operation order.
  """
  b, q = boxes[:, None, :], query_boxes[None, :, :]
  iw = np.minimum(b[..., 2], q[..., 2]) - np.maximum(b[..., 0], q[..., 0]) + 1
  ih = np.minimum(b[..., 3], q[..., 3]) - np.maximum(b[..., 1], q[..., 1]) + 1
  q_area = (q[..., 2] - q[..., 0] + 1) * (q[..., 3] - q[..., 1] + 1)
  ua = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1) + q_area - iw * ih
  return np.where((iw > 0) & (ih > 0), iw * ih / np.where((iw > 0) & (ih > 0), ua, 1), 0.0)


def image_eval(pred, gt, ignore, iou_thresh):
  """(running true-positive count per detection, proposal flag per detection: 1 or -1 if dropped)."""
  pred = pred.copy()
  gt = gt.copy()
  pred_recall = np.zeros(pred.shape[0])
  recall_list = np.zeros(gt.shape[0])
  proposal_list = np.ones(pred.shape[0])
  pred[:, 2] = pred[:, 2] + pred[:, 0]
  pred[:, 3] = pred[:, 3] + pred[:, 1]
  gt[:, 2] = gt[:, 2] + gt[:, 0]
  gt[:, 3] = gt[:, 3] + gt[:, 1]
  overlaps = bbox_overlaps(pred[:, :4], gt)
  for h in range(pred.shape[0]):
    row = overlaps[h]
    best, best_idx = row.max(), row.argmax()
    if best >= iou_thresh:
      if ignore[best_idx] == 0:
        recall_list[best_idx] = -1
        proposal_list[h] = -1
      elif recall_list[best_idx] == 0:
        recall_list[best_idx] = 1
    pred_recall[h] = len(np.where(recall_list == 1)[0])
  return pred_recall, proposal_list


def img_pr_info(thresh_num, pred_info, proposal_list, pred_recall):
  """[T, 2]: (proposals, true positives) up to the last detection passing each threshold."""
  pr_info = np.zeros((thresh_num, 2))
  for t in range(thresh_num):
    thresh = 1 - (t + 1) / thresh_num
    passing = np.where(pred_info[:, 4] >= thresh)[0]
    if len(passing) == 0:
      continue
    last = passing[-1]
    pr_info[t, 0] = len(np.where(proposal_list[:last + 1] == 1)[0])
    pr_info[t, 1] = pred_recall[last]
  return pr_info


def dataset_pr_info(thresh_num, pr_curve, count_face):
  """[T, 2]: (precision, recall)."""
  out = np.zeros((thresh_num, 2))
  for i in range(thresh_num):
    out[i, 0] = pr_curve[i, 1] / pr_curve[i, 0]
    out[i, 1] = pr_curve[i, 1] / count_face
  return out


def voc_ap(rec, prec):
  mrec = np.concatenate(([0.0], rec, [1.0]))
  mpre = np.concatenate(([0.0], prec, [0.0]))
  for i in range(mpre.size - 1, 0, -1):
    mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
  i = np.where(mrec[1:] != mrec[:-1])[0]
  return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def evaluation(pred_dir, gt_lists):
  """The port's `evaluation`: {'easy'|'medium'|'hard': (ap, [T, 2] precision/recall, face count)}."""
  preds = get_preds(pred_dir)
  norm_score(preds)
  results = {}
  with np.errstate(divide='ignore', invalid='ignore'):
    for setting in ('easy', 'medium', 'hard'):
      keep_lists = gt_lists[setting]
      count_face = 0
      pr_curve = np.zeros((THRESH_NUM, 2))
      for i in range(len(gt_lists['event_list'])):
        event = str(gt_lists['event_list'][i][0][0])
        images = gt_lists['file_list'][i][0]
        event_preds = preds[event]
        event_keep = keep_lists[i][0]
        event_boxes = gt_lists['face_bbx_list'][i][0]
        for j in range(len(images)):
          pred_info = event_preds[str(images[j][0][0])]
          gt_boxes = event_boxes[j][0].astype('float')
          keep_index = event_keep[j][0]
          count_face += len(keep_index)
          if len(gt_boxes) == 0 or len(pred_info) == 0:
            continue
          ignore = np.zeros(gt_boxes.shape[0])
          if len(keep_index) != 0:
            ignore[keep_index - 1] = 1
          pred_recall, proposal_list = image_eval(pred_info, gt_boxes, ignore, IOU_THRESH)
          pr_curve += img_pr_info(THRESH_NUM, pred_info, proposal_list, pred_recall)
      pr_curve = dataset_pr_info(THRESH_NUM, pr_curve, count_face)
      results[setting] = (voc_ap(pr_curve[:, 1], pr_curve[:, 0]), pr_curve, count_face)
  return results


# --- a seeded, realistic prediction set ----------------------------------------------------------------------

def synthetic_predictions(gt, seed: int = 0, fp_per_image: float = 25.0):
  """Detections that look like a detector's over `gt` (a jaxface GroundTruth): `(event, name) -> [P, 5]`.

  Each face is found with a probability growing with its size, as a jittered box whose score
  grows with size; some found faces get a second, looser box (a duplicate); every image gets
  Poisson(`fp_per_image`) false positives with low scores. A third of the images have integer
  boxes (truncated, as RetinaFace writes them), the others one decimal (so that x.5 roundings
  occur). Rows are in random order; scores are in (0.02, 1] with 5 decimals.
  """
  rng = np.random.default_rng(seed)
  out = {}
  for (event, name), boxes in zip(gt.image_keys(), (b for eb in gt.boxes for b in eb)):
    b = boxes.astype(np.float64)
    size = np.sqrt(np.maximum(b[:, 2], 1) * np.maximum(b[:, 3], 1))
    found = rng.random(len(b)) < 0.97 * (1 - np.exp(-size / 9))
    f, fs = b[found], size[found]
    centre = f[:, :2] + f[:, 2:] / 2 + rng.normal(0, 0.08, (len(f), 2)) * fs[:, None]
    wh = np.maximum(f[:, 2:], 1) * np.exp(rng.normal(0, 0.1, (len(f), 2)))
    score = 1 / (1 + np.exp(-(np.log(fs) - 2.3 + rng.normal(0, 0.8, len(f)))))
    dup = rng.random(len(f)) < 0.08
    dup_centre = centre[dup] + rng.normal(0, 0.25, (dup.sum(), 2)) * fs[dup, None]
    dup_wh = wh[dup] * np.exp(rng.normal(0, 0.2, (dup.sum(), 2)))
    dup_score = score[dup] * rng.uniform(0.3, 0.9, dup.sum())
    extent = np.maximum(np.max(b[:, :2] + b[:, 2:], axis=0, initial=0) * 1.1, [1024, 768])
    num_fp = rng.poisson(fp_per_image)
    fp_wh = np.exp(rng.normal(np.log(18), 0.8, (num_fp, 1))) * np.exp(rng.normal(0, 0.15, (num_fp, 2)))
    fp_centre = rng.uniform(0, 1, (num_fp, 2)) * extent
    fp_score = 0.02 + 0.6 * rng.beta(1, 5, num_fp)
    centre = np.concatenate([centre, dup_centre, fp_centre])
    wh = np.concatenate([wh, dup_wh, fp_wh])
    score = np.concatenate([score, dup_score, fp_score])
    xywh = np.concatenate([centre - wh / 2, wh], axis=1)
    xywh = np.floor(xywh) if rng.random() < 1 / 3 else np.round(xywh, 1)
    score = np.round(np.clip(score, 0.02, 1.0), 5)
    order = rng.permutation(len(score))
    out[(event, name)] = np.concatenate([xywh, score[:, None]], axis=1)[order]
  return out


def write_unsorted(out_dir, preds):
  """Writes `preds` as WIDER txt files keeping the given row order (to test order handling)."""
  for (event, name), dets in preds.items():
    os.makedirs(os.path.join(out_dir, event), exist_ok=True)
    with open(os.path.join(out_dir, event, name + '.txt'), 'w') as f:
      f.write(f'{name}\n{len(dets)}\n')
      for row in np.asarray(dets).tolist():
        f.write(' '.join(repr(v) for v in row) + '\n')
