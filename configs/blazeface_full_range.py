"""BlazeFace full-range (192 px) from scratch, jaxface's recipe (see `blazeface_base.py`, docs/training.md).

    python train.py --config configs/blazeface_full_range.py --workdir runs/blazeface_full_range \\
        --config.data.wider_root=/data/widerface   # <root>/train/label.txt, train/images/
    python evaluate.py --ckpt runs/blazeface_full_range
    python train.py --config configs/blazeface_full_range.py:demo --workdir runs/blazeface_full_range_demo   # synthetic, no download
    python evaluate.py --ckpt runs/blazeface_full_range_demo
"""
from jaxface.training.config_files import sibling


def get_config(variant: str = ''):
  base = sibling(__file__, 'blazeface_base.py')
  return base.base_config('blazeface_full_range', variant, 'blazeface_full_range.py', 192)
