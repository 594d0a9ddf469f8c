"""The name table: architecture names -> their family. The one shared module that imports family
packages; CLIs and checkpoint metadata (`jaxface.json`'s `arch`) resolve names here.

A new family is a package with a `FAMILY` (see `jaxface.family`) and one entry in `FAMILIES`.
"""
from __future__ import annotations

from jaxface import blazeface, retinaface, scrfd
from jaxface.family import Family

FAMILIES: tuple[Family, ...] = (retinaface.FAMILY, scrfd.FAMILY, blazeface.FAMILY)

ARCHS: tuple[str, ...] = tuple(sorted(a for f in FAMILIES for a in f.specs))
if len(set(ARCHS)) != len(ARCHS):
  raise ImportError(f'two families name the same arch: {sorted(a for a in ARCHS if ARCHS.count(a) > 1)}')
# What `load_detector()` and `python -m jaxface.detect` without --weights run: a saved-model directory
# shipped as package data.
DEFAULT_MODEL: str = retinaface.DEFAULT_MODEL
# What `python -m jaxface.convert` takes: every detector, and the ImageNet backbones training starts from.
WEIGHT_NAMES: tuple[str, ...] = ARCHS + tuple(sorted(b for f in FAMILIES for b in f.backbones))


# Test protocols beyond each family's own (`Family.protocol`): family name -> variants of its `Family`.
PROTOCOLS: dict[str, tuple[Family, ...]] = {
    'scrfd': (scrfd.DEPLOYMENT,),  # insightface's scrfd.py, the ONNX deployment path
    'blazeface': (blazeface.MEDIAPIPE,),  # MediaPipe's own graphs (hollance's port is the family's)
}


def protocols(family: Family) -> tuple[str, ...]:
  """The protocol names a family runs under, its own first."""
  return (family.protocol,) + tuple(v.protocol for v in PROTOCOLS.get(family.name, ()))


def family_of(arch: str, protocol: str | None = None) -> Family:
  """The family of a detector arch, under `protocol` (None: the family's own); an unknown name
  lists the valid ones."""
  for family in FAMILIES:
    if arch in family.specs:
      if protocol is None or protocol == family.protocol:
        return family
      for variant in PROTOCOLS.get(family.name, ()):
        if variant.protocol == protocol:
          return variant
      raise ValueError(f'{arch} ({family.name}) has no test protocol {protocol!r}; '
                       f'valid: {", ".join(protocols(family))}')
  raise ValueError(f'unknown arch {arch!r}; valid: {", ".join(ARCHS)}')


def weights_family(name: str) -> Family:
  """The family whose converter takes `name`: a detector arch or an ImageNet backbone."""
  for family in FAMILIES:
    if name in family.specs or name in family.backbones:
      return family
  raise ValueError(f'unknown arch {name!r}; valid: {", ".join(WEIGHT_NAMES)}')
