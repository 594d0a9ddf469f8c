"""RetinaFace-mnet on crowd.jpg, end to end: jaxface against biubug6's own code, side by side.

    git clone https://github.com/biubug6/Pytorch_Retinaface   # or any git directory holding it
    python bench/bench_biubug6.py --repo Pytorch_Retinaface [--repeats 30] [--threads 2]

The reference is biubug6/Pytorch_Retinaface at its first commit, `3c31dcd`, the code that matches the
2019 checkpoint (`retinaface_mnet025_relu_2019.pth`, jaxface's `retinaface_mnet_relu`). Its modules
are imported from a checkout of that commit (`--repo` may also be a git directory: the commit is
exported to a temporary folder) and nothing of it is copied here. Its test script's per-image path
is timed as written there: float32 copy, mean subtraction, eager forward, `PriorBox` in Python
loops, `decode` / `decode_landm`, threshold, argsort, `py_cpu_nms`. The thresholds are its later
`detect.py`'s (conf 0.02, top-k 5000, NMS 0.4, keep 750), which are jaxface's RetinaFace defaults;
the first commit's test script used 0.05 and 0.3.

Its model file imports torchvision only for `IntermediateLayerGetter` (and the ResNet backbone this
benchmark does not build); when torchvision is not installed, a stand-in written here provides it.
Its constructor loads the ImageNet backbone `model_best.pth.tar` from the working directory, so it
is built inside the checkout; the 2019 checkpoint then replaces every weight (strictly).

Also timed: both forwards alone, and ONNX Runtime running biubug6's network exported to ONNX.
Each timed call follows `--lead-in` untimed calls of the same contender (and more until `--lead-in-ms`
have passed), so no library is timed while the previous one's worker threads still spin
(`common.interleaved`).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import common  # noqa: F401  (sets sys.path)
import cv2
import jax
import numpy as np
import torch
from torch import nn

from jaxface import inference, load_detector

ARCH = 'retinaface_mnet_relu'
COMMIT = '3c31dcd'
DETECT_PY = dict(conf=0.02, top_k=5000, nms=0.4, keep_top_k=750)


def checkout(repo: Path, commit: str, tmp: Path) -> Path:
  """A folder holding biubug6's code at `commit`: `repo` itself when it is a checkout (its HEAD
  must be `commit`), else `commit` exported from the git directory `repo`."""
  git = ['git', '--git-dir', str(repo / '.git') if (repo / '.git').exists() else str(repo)]
  head = subprocess.run(git + ['rev-parse', 'HEAD'], capture_output=True, text=True).stdout.strip()
  want = subprocess.run(git + ['rev-parse', commit], capture_output=True, text=True)
  if want.returncode != 0:
    raise SystemExit(f'{repo}: not a git directory holding biubug6/Pytorch_Retinaface commit {commit}')
  if (repo / 'models' / 'retinaface.py').exists() and head == want.stdout.strip():
    return repo
  archive = subprocess.run(git + ['archive', commit], capture_output=True, check=True).stdout
  subprocess.run(['tar', '-x', '-C', str(tmp)], input=archive, check=True)
  return tmp


class IntermediateLayerGetter(nn.ModuleDict):
  """Stand-in for torchvision's: the model's children up to the last one named in `return_layers`,
  run in order; `forward` returns `{new name: output}` of the named ones."""

  def __init__(self, model: nn.Module, return_layers: dict[str, object]):
    wanted, kept = dict(return_layers), collections.OrderedDict()
    for name, child in model.named_children():
      kept[name] = child
      if set(wanted) <= set(kept):
        break
    super().__init__(kept)
    self.return_layers = wanted

  def forward(self, x):
    out = collections.OrderedDict()
    for name, child in self.items():
      x = child(x)
      if name in self.return_layers:
        out[self.return_layers[name]] = x
    return out


def stand_in_torchvision():
  """Registers the torchvision modules biubug6's model file imports, if torchvision is absent."""
  try:
    import torchvision  # noqa: F401
    return
  except ImportError:
    pass
  names = ['torchvision', 'torchvision.models', 'torchvision.models.detection',
           'torchvision.models.detection.backbone_utils', 'torchvision.models.resnet', 'torchvision.models._utils']
  for name in names:
    sys.modules[name] = types.ModuleType(name)
  sys.modules['torchvision.models._utils'].IntermediateLayerGetter = IntermediateLayerGetter


@contextlib.contextmanager
def inside(folder: Path):
  """cwd = `folder`, and torch.load reading full pickles (biubug6's own trusted files)."""
  old_cwd, old_load = os.getcwd(), torch.load
  os.chdir(folder)
  torch.load = functools.partial(old_load, weights_only=False)
  try:
    yield
  finally:
    os.chdir(old_cwd)
    torch.load = old_load


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--repo', required=True, type=Path, help='a checkout or git directory of biubug6/Pytorch_Retinaface')
  p.add_argument('--commit', default=COMMIT)
  p.add_argument('--repeats', type=int, default=30)
  p.add_argument('--image', default='crowd.jpg')
  p.add_argument('--threads', type=int, default=2, help='torch / ONNX Runtime intra-op threads')
  p.add_argument('--lead-in', type=int, default=2,
                 help='untimed calls of a contender before each timed one (common.interleaved)')
  p.add_argument('--lead-in-ms', type=float, default=60.0,
                 help='and untimed calls until this long has passed (ONNX Runtime\'s workers spin for 20-40 ms)')
  args = p.parse_args()
  torch.set_num_threads(args.threads)
  torch.set_grad_enabled(False)
  shared = common.shared_dir()
  weights = shared / 'data' / 'weights' / 'retinaface_mnet025_relu_2019.pth'
  img_raw = cv2.imread(str(shared / 'data' / 'images' / args.image))

  with tempfile.TemporaryDirectory() as tmp:
    code = checkout(args.repo.resolve(), args.commit, Path(tmp))
    stand_in_torchvision()
    sys.path.insert(0, str(code))
    with inside(code):
      from data import cfg
      from layers.functions.prior_box import PriorBox
      from models.retinaface import RetinaFace
      from utils.box_utils import decode, decode_landm
      from utils.nms.py_cpu_nms import py_cpu_nms
      net = RetinaFace(phase='test')
      state = torch.load(str(weights), map_location='cpu')
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    net.load_state_dict(state, strict=True)
    net.eval()

  def biubug6(img_raw):
    """test.py's per-image body (3c31dcd), calling its functions, with detect.py's thresholds."""
    img = np.float32(img_raw)
    im_height, im_width, _ = img.shape
    scale = torch.Tensor([img.shape[1], img.shape[0], img.shape[1], img.shape[0]])
    img -= (104, 117, 123)
    img = torch.from_numpy(img.transpose(2, 0, 1)).unsqueeze(0)
    loc, conf, landms = net(img)
    priors = PriorBox(cfg, image_size=(im_height, im_width)).forward().data
    boxes = (decode(loc.data.squeeze(0), priors, cfg['variance']) * scale).cpu().numpy()
    scores = conf.squeeze(0).data.cpu().numpy()[:, 1]
    landms = decode_landm(landms.data.squeeze(0), priors, cfg['variance'])
    landms = (landms * torch.Tensor([im_width, im_height] * 5)).cpu().numpy()
    inds = np.where(scores > DETECT_PY['conf'])[0]
    boxes, landms, scores = boxes[inds], landms[inds], scores[inds]
    order = scores.argsort()[::-1][:DETECT_PY['top_k']]
    boxes, landms, scores = boxes[order], landms[order], scores[order]
    dets = np.hstack((boxes, scores[:, np.newaxis])).astype(np.float32, copy=False)
    keep = py_cpu_nms(dets, DETECT_PY['nms'])
    return dets[keep][:DETECT_PY['keep_top_k']], landms[keep][:DETECT_PY['keep_top_k']]

  h, w = img_raw.shape[:2]
  print(common.machine())
  print(f'image {args.image} {w}x{h}; biubug6/Pytorch_Retinaface {args.commit} with {weights.name}; '
        f'torch {torch.__version__} ({args.threads} threads)')
  det = load_detector(str(weights), arch=ARCH)
  dets, _ = biubug6(img_raw)
  got = det.detect(img_raw)  # compiles
  # Same detections, or the timing means nothing.
  assert len(got) == len(dets), f'jaxface found {len(got)} faces, biubug6 {len(dets)}'
  np.testing.assert_allclose(got.scores, dets[:, 4], atol=1e-4)
  np.testing.assert_allclose(got.boxes, dets[:, :4], atol=0.05)

  x_torch = torch.from_numpy((np.float32(img_raw) - (104, 117, 123)).astype(np.float32).transpose(2, 0, 1))[None]
  x_dev = jax.device_put(img_raw[None])
  sizes_dev = jax.device_put(np.asarray([img_raw.shape[:2]], np.int32))
  forward = inference.make_forward_fn(det.family, det.model)
  fns = {
      'biubug6 end to end': lambda: biubug6(img_raw),
      'jaxface end to end': lambda: det.detect(img_raw),
      'biubug6 forward (eager torch)': lambda: net(x_torch),
      'jaxface forward': lambda: jax.block_until_ready(forward(det.variables, x_dev, sizes_dev)),
  }
  ort_forward = common.onnxruntime_forward(net, x_torch, args.threads)
  if ort_forward is not None:
    fns['onnxruntime forward'] = ort_forward

  times = common.interleaved(fns, args.repeats, lead_in=args.lead_in, lead_in_ms=args.lead_in_ms)
  print(f'{len(dets)} detections on both sides')
  print(common.report(times, 'biubug6 end to end'))
  med = {k: np.median(v) for k, v in times.items()}
  print(f'end to end: jaxface {med["biubug6 end to end"] / med["jaxface end to end"]:.2f}x faster than biubug6 '
        '(target >= 3)')
  print(f'forward: jaxface {med["biubug6 forward (eager torch)"] / med["jaxface forward"]:.2f}x faster than eager torch')
  if 'onnxruntime forward' in med:
    print(f'forward: jaxface / onnxruntime = {med["jaxface forward"] / med["onnxruntime forward"]:.2f} (target <= 1.5)')


if __name__ == '__main__':
  main()
