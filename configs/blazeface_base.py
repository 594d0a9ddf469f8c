"""What the BlazeFace configs share: jaxface's training recipe (BlazeFace's own was never published;
docs/training.md says what was chosen and why). Not an experiment itself: `configs/blazeface_front.py`
and `configs/blazeface_full_range.py` load it with `base_config(arch, variant, config_file)`.

From scratch; SGD lr 0.01 (momentum 0.9, weight decay 5e-4, gradients clipped to norm 5) after a
500-step linear warmup from 0.001 x lr, x0.1 at 80 % and 90 % of training; images at the model's input side through the
face-size crops of `jaxface.blazeface.augment`; WIDER FACE `label.txt` (five landmarks: the ears
are not trained).

`:demo` trains on the built-in synthetic faces (no download) and scores a synthetic val set of
images at the model's input side, letterboxed as any input is.
"""
import os

import ml_collections


def base_config(arch: str, variant: str, config_file: str, input_size: int) -> ml_collections.ConfigDict:
  if variant not in ('', 'demo'):
    raise ValueError(f"unknown variant {variant!r} of configs/{config_file}; known: 'demo'")
  c = ml_collections.ConfigDict()
  c.arch = arch
  c.seed = 0
  c.batch_size = 128
  c.num_epochs = 300
  c.num_steps = 0                  # > 0 overrides num_epochs
  c.learning_rate = 0.01
  c.decay_epochs = (240, 270)
  c.lr_gamma = 0.1
  c.warmup_epochs = 0.0
  c.warmup_steps = 500
  c.warmup_ratio = 0.001
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.grad_clip_norm = 5.0           # no BatchNorm: without clipping the early steps diverge
  c.loss = ml_collections.ConfigDict()   # the loss's weights are constants (blazeface/loss.py)
  c.pretrained_backbone = ''       # from scratch
  c.parallel = 'jit'

  c.data = ml_collections.ConfigDict()
  c.data.dataset = 'wider'
  c.data.annotations = 'retinaface'  # <wider_root>/train/label.txt: five landmarks
  c.data.wider_root = os.environ.get('WIDER_ROOT', '')
  c.data.image_size = input_size
  c.data.max_faces = 64
  c.data.min_face = 0.0
  c.data.num_workers = 8
  c.data.val_test_scale = ''       # the family's: every image letterboxed into the input
  c.data.synthetic_train_images = 20_000
  c.data.synthetic_seed = 0
  c.data.synthetic_max_faces = 32
  c.data.synthetic_val_images = 500
  c.data.synthetic_val_seed = 1
  c.data.synthetic_val_image_size = ()

  c.log_every_steps = 50
  c.checkpoint_every_steps = 2000
  c.checkpoint_keep = 3
  c.eval_every_steps = 5000
  c.skip_nonfinite = False
  # Scored with MediaPipe's post-processing (a cluster keeps its top score): at the evaluation's
  # conf 0.02, hollance's mean would average in every low-scoring member.
  c.eval_protocol = 'mediapipe'

  if variant == 'demo':
    c.batch_size = 32
    c.num_steps = 4000
    c.warmup_steps = 300
    c.decay_epochs = (10.24, 11.52)  # steps 3,200 and 3,600 of 4,000 (312.5 steps per epoch)
    c.data.dataset = 'synthetic'
    c.data.max_faces = 32
    c.data.num_workers = 1
    c.data.synthetic_train_images = 10_000
    c.data.synthetic_val_images = 300
    c.data.synthetic_val_image_size = (input_size, input_size)
    c.log_every_steps = 25
    c.checkpoint_every_steps = 250
    c.eval_every_steps = 1000
  return c
