"""SCRFD-2.5GF (ResNet, BasicBlock), no keypoints: insightface's `configs/scrfd/scrfd_2.5g.py` recipe (see `scrfd_base.py`).

    python train.py --config configs/scrfd_2.5g.py --workdir runs/scrfd_2.5g \\
        --config.data.wider_root=/data/widerface   # <root>/train/labelv2.txt, train/images/
    python evaluate.py --ckpt runs/scrfd_2.5g
"""
from jaxface.training.config_files import sibling


def get_config(variant: str = ''):
  if variant:
    raise ValueError(f"configs/scrfd_2.5g.py has no variant {variant!r} (the synthetic demo is scrfd_500m_bnkps.py:demo)")
  c = sibling(__file__, 'scrfd_base.py').base_config('scrfd_2.5g', variant, 'scrfd_2.5g.py')
  return c
