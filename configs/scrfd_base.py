"""What every SCRFD config shares: insightface's recipe (`configs/scrfd/*.py`, REFERENCE.md §2.8).

Not an experiment itself: each `configs/scrfd_<model>.py` loads it with `base_config(arch, variant)`
and changes what its model's recipe changes.

SGD lr 0.01, momentum 0.9, weight decay 5e-4 on every parameter; linear warmup over 1,500 steps from
0.001 x lr; x0.1 at epochs 440 and 544 of 640; 8 images per GPU on 4 GPUs (a global batch of 32) at
640 px; from scratch; WIDER FACE with insightface's `train/labelv2.txt` annotations; the periodic
evaluation every 80 epochs with the VGA protocol. One deliberate difference: BatchNorm statistics
are over the whole global batch on any number of devices (the reference's were per GPU), so results
do not depend on the device count.

`:demo` trains on the built-in synthetic faces at 256 px (no download), as RetinaFace's demo does.
"""
import os

import ml_collections


def base_config(arch: str, variant: str, config_file: str) -> ml_collections.ConfigDict:
  if variant not in ('', 'demo'):
    raise ValueError(f"unknown variant {variant!r} of configs/{config_file}; known: 'demo'")
  c = ml_collections.ConfigDict()
  c.arch = arch
  c.seed = 0
  c.batch_size = 32                # global: 8 per GPU x 4 GPUs
  c.num_epochs = 640
  c.num_steps = 0                  # > 0 overrides num_epochs
  c.learning_rate = 0.01
  c.decay_epochs = (440, 544)
  c.lr_gamma = 0.1
  c.warmup_epochs = 0.0
  c.warmup_steps = 1500            # mmcv warmup='linear', warmup_iters 1500
  c.warmup_ratio = 0.001
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.loss = ml_collections.ConfigDict()   # SCRFD's loss weights are the reference's constants (scrfd/loss.py)
  c.pretrained_backbone = ''       # from scratch
  c.parallel = 'jit'               # 'jit' (sharded over a device mesh) or 'pmap'

  c.data = ml_collections.ConfigDict()
  c.data.dataset = 'wider'         # or 'synthetic'
  c.data.annotations = 'scrfd'     # <wider_root>/train/labelv2.txt
  c.data.wider_root = os.environ.get('WIDER_ROOT', '')
  c.data.image_size = 640
  c.data.max_faces = 256           # GT slots per image; more faces in a crop are dropped and counted
  c.data.min_face = 0.0
  c.data.num_workers = 8
  c.data.val_test_scale = ''       # the family's: vga
  c.data.synthetic_train_images = 20_000
  c.data.synthetic_seed = 0
  c.data.synthetic_max_faces = 32
  c.data.synthetic_val_images = 500
  c.data.synthetic_val_seed = 1
  c.data.synthetic_val_image_size = ()

  c.log_every_steps = 50
  c.checkpoint_every_steps = 2000
  c.checkpoint_keep = 3
  c.eval_every_steps = 80 * 403    # every 80 epochs (403 steps per epoch at batch 32)
  c.skip_nonfinite = False

  if variant == 'demo':
    c.batch_size = 16
    c.num_steps = 16_000
    c.warmup_steps = 300
    c.decay_epochs = (20.48, 23.04)  # steps 12,800 and 14,400 of 16,000 (625 steps per epoch)
    c.data.dataset = 'synthetic'
    c.data.image_size = 256
    c.data.max_faces = 64
    c.data.num_workers = 1
    c.data.synthetic_train_images = 10_000
    c.data.synthetic_val_images = 300
    c.data.synthetic_val_image_size = (480, 640)
    c.log_every_steps = 25
    c.checkpoint_every_steps = 250
    c.eval_every_steps = 4000
  return c

