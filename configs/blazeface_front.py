"""BlazeFace front (128 px) from scratch, jaxface's recipe (see `blazeface_base.py`, docs/training.md).

    python train.py --config configs/blazeface_front.py --workdir runs/blazeface_front \\
        --config.data.wider_root=/data/widerface   # <root>/train/label.txt, train/images/
    python evaluate.py --ckpt runs/blazeface_front
    python train.py --config configs/blazeface_front.py:demo --workdir runs/blazeface_front_demo   # synthetic, no download
    python evaluate.py --ckpt runs/blazeface_front_demo
"""
from jaxface.training.config_files import sibling


def get_config(variant: str = ''):
  base = sibling(__file__, 'blazeface_base.py')
  return base.base_config('blazeface_front', variant, 'blazeface_front.py', 128)
