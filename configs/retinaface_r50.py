"""RetinaFace with ResNet-50 on WIDER FACE: the reference recipe (biubug6 `cfg_re50`).

    python train.py --config configs/retinaface_r50.py --workdir runs/r50 \\
        --config.data.wider_root=/data/widerface
    python train.py --config configs/retinaface_r50.py:demo --workdir runs/r50_demo   # synthetic, no download
    python evaluate.py --ckpt runs/r50

The MobileNet config (`retinaface_mnet.py`) with what `cfg_re50` changes: batch 24 at 840 px, 100
epochs, lr 1e-3 x0.1 at epochs 70 and 90; the backbone starts from torchvision's ImageNet ResNet-50
(`resnet50-0676ba61.pth`, the weights `pretrained=True` downloads), read by the converter. One
deliberate difference: the reference ran batch 24 as 4 x 6 under DataParallel with per-GPU
BatchNorm statistics; here BN statistics are over the whole global batch, on any number of devices
(synchronised), which is what makes results independent of the device count.

`:demo` trains the ResNet-50 model from scratch on the synthetic faces (slow on a CPU: the
MobileNet demo is the one to try first).
"""
import os

import ml_collections

from jaxface.training.config_files import sibling


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  if variant not in ('', 'demo'):
    raise ValueError(f"unknown variant {variant!r} of configs/retinaface_r50.py; known: 'demo'")
  c = sibling(__file__, 'retinaface_mnet.py').get_config(variant)
  c.arch = 'retinaface_r50'
  c.num_epochs = 100
  if variant == 'demo':
    c.batch_size = 8
    c.warmup_epochs = 0.05
    c.decay_epochs = (4.5, 5.5)    # steps 2250 and 2750 of 3000 (500 steps per epoch)
    c.data.synthetic_train_images = 4000
    return c
  c.pretrained_backbone = os.environ.get('JAXFACE_R50_BACKBONE', 'weights/resnet50-0676ba61.pth')
  c.batch_size = 24                # global, over all devices and hosts
  c.decay_epochs = (70, 90)
  c.data.image_size = 840
  c.eval_every_steps = 5370        # 10 epochs of 537 steps; 0: never
  return c
