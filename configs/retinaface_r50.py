"""RetinaFace with ResNet-50 on WIDER FACE: the reference recipe (biubug6 `cfg_re50`).

    python train.py --config configs/retinaface_r50.py --workdir runs/r50 \\
        --config.data.wider_root=/data/widerface
    python train.py --config configs/retinaface_r50.py:demo --workdir runs/r50_demo   # synthetic, no download
    python evaluate.py --ckpt runs/r50

Batch 24 at 840 px, 100 epochs, SGD lr 1e-3 (x0.1 at epochs 70 and 90), momentum 0.9, weight
decay 5e-4 on every parameter, no warmup, loc_weight 2; the backbone starts from torchvision's
ImageNet ResNet-50 (`resnet50-0676ba61.pth`, the weights `pretrained=True` downloads), read by the
converter. One deliberate difference: the reference ran batch 24 as 4 x 6 under DataParallel with
per-GPU BatchNorm statistics; here BN statistics are over the whole global batch, on any number of
devices (synchronised), which is what makes results independent of the device count.

`:demo` trains the ResNet-50 model from scratch on the synthetic faces (slow on a CPU: the
MobileNet demo is the one to try first).
"""
import os

import ml_collections


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.arch = 'retinaface_r50'
  c.seed = 0
  c.batch_size = 24                # global, over all devices and hosts
  c.num_epochs = 100
  c.num_steps = 0                  # > 0 overrides num_epochs
  c.learning_rate = 1e-3
  c.decay_epochs = (70, 90)
  c.lr_gamma = 0.1
  c.warmup_epochs = 0.0
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.loc_weight = 2.0
  c.pretrained_backbone = os.environ.get('JAXFACE_R50_BACKBONE', 'weights/resnet50-0676ba61.pth')
  c.parallel = 'jit'               # 'jit' (sharded over a device mesh) or 'pmap'

  c.data = ml_collections.ConfigDict()
  c.data.dataset = 'wider'         # or 'synthetic'
  c.data.wider_root = os.environ.get('WIDER_ROOT', '')
  c.data.image_size = 840
  c.data.max_faces = 256           # GT slots per image; more faces in a crop are dropped and counted
  c.data.min_face = 0.0            # px after resizing; 0 keeps every face (the reference)
  c.data.num_workers = 8           # loader processes per host
  c.data.val_test_scale = 'original'
  c.data.synthetic_train_images = 20_000
  c.data.synthetic_seed = 0
  c.data.synthetic_max_faces = 32
  c.data.synthetic_val_images = 500
  c.data.synthetic_val_seed = 1
  c.data.synthetic_val_image_size = ()   # (h, w); () draws sides in 320..640

  c.log_every_steps = 50
  c.checkpoint_every_steps = 2000
  c.checkpoint_keep = 3
  c.eval_every_steps = 5370        # 10 epochs of 537 steps; 0: never
  c.skip_nonfinite = False         # False: a NaN/inf loss stops the run; True: skip that update and count it
  c.crash_after_step = 0           # fault injection for tests: SIGKILL the run after this step

  if variant == 'demo':
    c.pretrained_backbone = ''
    c.batch_size = 8
    c.num_steps = 3000
    c.learning_rate = 1e-2
    c.warmup_epochs = 0.05
    c.decay_epochs = (4.5, 5.5)
    c.data.dataset = 'synthetic'
    c.data.image_size = 256
    c.data.max_faces = 64
    c.data.num_workers = 1
    c.data.synthetic_train_images = 4000
    c.data.synthetic_val_images = 300
    c.data.synthetic_val_image_size = (480, 640)
    c.log_every_steps = 25
    c.checkpoint_every_steps = 250
    c.eval_every_steps = 500
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of configs/retinaface_r50.py; known: 'demo'")
  return c
