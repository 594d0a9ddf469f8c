"""SCRFD-1GF (MobileNet), no keypoints: insightface's `configs/scrfd/scrfd_1g.py` recipe (see `scrfd_base.py`).

    python train.py --config configs/scrfd_1g.py --workdir runs/scrfd_1g \\
        --config.data.wider_root=/data/widerface   # <root>/train/labelv2.txt, train/images/
    python evaluate.py --ckpt runs/scrfd_1g
"""
from jaxface.training.config_files import sibling


def get_config(variant: str = ''):
  if variant:
    raise ValueError(f"configs/scrfd_1g.py has no variant {variant!r} (the synthetic demo is scrfd_500m_bnkps.py:demo)")
  c = sibling(__file__, 'scrfd_base.py').base_config('scrfd_1g', variant, 'scrfd_1g.py')
  return c
