"""SCRFD-0.5GF (MobileNet), no keypoints: insightface's `configs/scrfd/scrfd_500m.py` recipe (see `scrfd_base.py`).

    python train.py --config configs/scrfd_500m.py --workdir runs/scrfd_500m \\
        --config.data.wider_root=/data/widerface   # <root>/train/labelv2.txt, train/images/
    python evaluate.py --ckpt runs/scrfd_500m
"""
from jaxface.training.config_files import sibling


def get_config(variant: str = ''):
  if variant:
    raise ValueError(f"configs/scrfd_500m.py has no variant {variant!r} (the synthetic demo is scrfd_500m_bnkps.py:demo)")
  c = sibling(__file__, 'scrfd_base.py').base_config('scrfd_500m', variant, 'scrfd_500m.py')
  return c
