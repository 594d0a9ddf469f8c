"""SCRFD-34GF (ResNet, Bottleneck), no keypoints; lr 0.02: insightface's `configs/scrfd/scrfd_34g.py` recipe (see `scrfd_base.py`).

    python train.py --config configs/scrfd_34g.py --workdir runs/scrfd_34g \\
        --config.data.wider_root=/data/widerface   # <root>/train/labelv2.txt, train/images/
    python evaluate.py --ckpt runs/scrfd_34g
"""
from jaxface.training.config_files import sibling


def get_config(variant: str = ''):
  if variant:
    raise ValueError(f"configs/scrfd_34g.py has no variant {variant!r} (the synthetic demo is scrfd_500m_bnkps.py:demo)")
  c = sibling(__file__, 'scrfd_base.py').base_config('scrfd_34g', variant, 'scrfd_34g.py')
  c.learning_rate = 0.02
  return c
