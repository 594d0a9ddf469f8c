"""Loading one experiment config from another: `train.py` loads a config file by path (configs/ is
not a package), so a config that builds on a sibling (a family's base recipe, the MobileNet one)
loads that file the same way."""
from __future__ import annotations

import importlib.util
import os
import types


def sibling(config_file: str, name: str) -> types.ModuleType:
  """The module of `name` (e.g. 'scrfd_base.py') in the folder of `config_file` (a config's `__file__`)."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
  spec = importlib.util.spec_from_file_location(f'jaxface_config_{os.path.splitext(name)[0]}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
