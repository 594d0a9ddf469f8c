"""SCRFD-2.5GF with BatchNorm heads and five keypoints: insightface's `configs/scrfd/scrfd_2.5g_bnkps.py` recipe (see `scrfd_base.py`).

    python train.py --config configs/scrfd_2.5g_bnkps.py --workdir runs/scrfd_2.5g_bnkps \\
        --config.data.wider_root=/data/widerface   # <root>/train/labelv2.txt, train/images/
    python evaluate.py --ckpt runs/scrfd_2.5g_bnkps
"""
from jaxface.training.config_files import sibling


def get_config(variant: str = ''):
  if variant:
    raise ValueError(f"configs/scrfd_2.5g_bnkps.py has no variant {variant!r} (the synthetic demo is scrfd_500m_bnkps.py:demo)")
  c = sibling(__file__, 'scrfd_base.py').base_config('scrfd_2.5g_bnkps', variant, 'scrfd_2.5g_bnkps.py')
  return c
