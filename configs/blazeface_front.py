"""BlazeFace front (128 px) from scratch, jaxface's recipe (see `blazeface_base.py`, docs/training.md).

    python train.py --config configs/blazeface_front.py --workdir runs/blazeface_front \\
        --config.data.wider_root=/data/widerface   # <root>/train/label.txt, train/images/
    python evaluate.py --ckpt runs/blazeface_front
    python train.py --config configs/blazeface_front.py:demo --workdir runs/blazeface_front_demo   # synthetic, no download
    python evaluate.py --ckpt runs/blazeface_front_demo
"""
import importlib.util
import os


def _base():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'blazeface_base.py')
  spec = importlib.util.spec_from_file_location('blazeface_base_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(variant: str = ''):
  return _base().base_config('blazeface_front', variant, 'blazeface_front.py', 128)
