"""RetinaFace with MobileNet-0.25 on WIDER FACE: the reference recipe (biubug6 `cfg_mnet`).

    python train.py --config configs/retinaface_mnet.py --workdir runs/mnet \\
        --config.data.wider_root=/data/widerface
    python train.py --config configs/retinaface_mnet.py:demo --workdir runs/demo   # synthetic, no download
    python evaluate.py --ckpt runs/demo

Batch 32 at 640 px, 250 epochs, SGD lr 1e-3 (x0.1 at epochs 190 and 220), momentum 0.9, weight
decay 5e-4 on every parameter, no warmup, loc_weight 2, BN in train mode throughout; the backbone
starts from the ImageNet MobileNet-0.25 (`mobilenetV1X0.25_pretrain.tar`, read by the converter).
WIDER FACE is read from `data.wider_root` (default `$WIDER_ROOT`) in RetinaFace's layout:
`train/label.txt` + `train/images/`, and for the periodic evaluation `WIDER_val/images/` +
`ground_truth/*.mat`.

`:demo` trains the same model from scratch on the built-in synthetic faces at 256 px, evaluating
AP on the synthetic val set as it goes (docs/training.md: the time it takes and the AP it reaches).
"""
import os

import ml_collections


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.arch = 'retinaface_mnet'
  c.seed = 0
  c.batch_size = 32                # global, over all devices and hosts
  c.num_epochs = 250
  c.num_steps = 0                  # > 0 overrides num_epochs
  c.learning_rate = 1e-3
  c.decay_epochs = (190, 220)
  c.lr_gamma = 0.1
  c.warmup_epochs = 0.0
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.loss = ml_collections.ConfigDict()
  c.loss.loc_weight = 2.0          # the box term's weight (cfg['loc_weight'])
  c.pretrained_backbone = os.environ.get('JAXFACE_MNET_BACKBONE', 'weights/mobilenetV1X0.25_pretrain.tar')
  c.parallel = 'jit'               # 'jit' (sharded over a device mesh) or 'pmap'

  c.data = ml_collections.ConfigDict()
  c.data.dataset = 'wider'         # or 'synthetic'
  c.data.wider_root = os.environ.get('WIDER_ROOT', '')
  c.data.image_size = 640
  c.data.max_faces = 256           # GT slots per image; more faces in a crop are dropped and counted
  c.data.min_face = 0.0            # px after resizing; 0 keeps every face (the reference)
  c.data.num_workers = 8           # loader processes per host
  c.data.val_test_scale = ''       # WIDER val protocol; '' is the family's ('original' for RetinaFace)
  c.data.synthetic_train_images = 20_000
  c.data.synthetic_seed = 0
  c.data.synthetic_max_faces = 32
  c.data.synthetic_val_images = 500
  c.data.synthetic_val_seed = 1
  c.data.synthetic_val_image_size = ()   # (h, w); () draws sides in 320..640

  c.log_every_steps = 50
  c.checkpoint_every_steps = 2000
  c.checkpoint_keep = 3
  c.eval_every_steps = 4030        # 10 epochs of 403 steps; 0: never
  c.skip_nonfinite = False         # False: a NaN/inf loss stops the run; True: skip that update and count it

  if variant == 'demo':
    c.pretrained_backbone = ''
    c.batch_size = 16
    c.num_steps = 3000
    c.learning_rate = 1e-2         # from scratch, with BN: 10x the fine-tuning rate, after a short warmup
    c.warmup_epochs = 0.1
    c.decay_epochs = (3.8, 4.4)    # steps 2375 and 2750 of 3000 (625 steps per epoch)
    c.data.dataset = 'synthetic'
    c.data.image_size = 256
    c.data.max_faces = 64
    c.data.num_workers = 1
    c.data.synthetic_train_images = 10_000
    c.data.synthetic_val_images = 300
    c.data.synthetic_val_image_size = (480, 640)   # one size: the periodic evaluation compiles once
    c.log_every_steps = 25
    c.checkpoint_every_steps = 250
    c.eval_every_steps = 500
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of configs/retinaface_mnet.py; known: 'demo'")
  return c
