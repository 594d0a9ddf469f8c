"""SCRFD-0.5GF with BatchNorm heads and five keypoints; 16 images per GPU (global 64): insightface's `configs/scrfd/scrfd_500m_bnkps.py` recipe (see `scrfd_base.py`).

    python train.py --config configs/scrfd_500m_bnkps.py --workdir runs/scrfd_500m_bnkps \\
        --config.data.wider_root=/data/widerface   # <root>/train/labelv2.txt, train/images/
    python evaluate.py --ckpt runs/scrfd_500m_bnkps
    python train.py --config configs/scrfd_500m_bnkps.py:demo --workdir runs/scrfd_demo   # synthetic, no download
    python evaluate.py --ckpt runs/scrfd_demo
"""
from jaxface.training.config_files import sibling


def get_config(variant: str = ''):
  c = sibling(__file__, 'scrfd_base.py').base_config('scrfd_500m_bnkps', variant, 'scrfd_500m_bnkps.py')
  if not variant:
    c.batch_size = 64
  return c
