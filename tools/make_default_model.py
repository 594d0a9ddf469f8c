"""Regenerates the default model, the package data that `load_detector()` and
`python -m jaxface.detect` without --weights run (`jaxface/retinaface/default_model/`).

    python tools/make_default_model.py [--src FILE.pth] [--check]

The source is biubug6/Pytorch_Retinaface's first release (MIT license; the first commit's
`weights/Final_Retinaface.pth`), a MobileNet-0.25 RetinaFace trained with plain ReLU
(`retinaface_mnet_relu`); beside the project it is `../shared/data/weights/
retinaface_mnet025_relu_2019.pth` (or under $JAXFACE_SHARED). It goes through the real converter
(`jaxface.convert.convert_file`) into a saved-model directory whose weights are one
`variables.msgpack` (`jaxface.saved_models`): float32 as converted, and the same bytes on every run,
so regenerating leaves git clean unless the converter's output changed. `--check` writes nothing
and exits 1 when the shipped files are not what this script makes.
"""
from __future__ import annotations

import argparse
import filecmp
import hashlib
import os
import sys
import tempfile

# The checkout's own jaxface, not an installed one: the files written are this checkout's.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from jaxface import families, saved_models  # noqa: E402
from jaxface.convert import convert_file  # noqa: E402

ARCH = 'retinaface_mnet_relu'
SOURCE = 'biubug6/Pytorch_Retinaface, first commit, weights/Final_Retinaface.pth (MIT license)'
SHARED = os.environ.get('JAXFACE_SHARED', os.path.join(os.path.dirname(REPO_ROOT), 'shared'))
DEFAULT_SRC = os.path.join(SHARED, 'data', 'weights', 'retinaface_mnet025_relu_2019.pth')
FILES = (saved_models.META_FILE, saved_models.VARIABLES_FILE)  # all that is shipped


def meta(src: str) -> dict[str, str]:
  """What `jaxface.json` records: a fixed description, not the local path, so every machine writes
  the same bytes; the hash says which file it was."""
  with open(src, 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  return {'arch': ARCH, 'source': SOURCE, 'source_sha256': digest, 'converted_by': 'tools/make_default_model.py'}


def make(src: str, out: str) -> None:
  """Converts `src` and writes the default model's files to `out`."""
  saved_models.save_variables(out, convert_file(src, ARCH), meta(src), single_file=True)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--src', default=DEFAULT_SRC, help='the 2019 checkpoint (default: %(default)s)')
  parser.add_argument('--check', action='store_true', help='compare with the shipped files instead of writing')
  args = parser.parse_args(argv)
  if not os.path.isfile(args.src):
    print(f'error: no such file: {args.src} (pass --src or set JAXFACE_SHARED)', file=sys.stderr)
    return 1
  if not args.check:
    make(args.src, families.DEFAULT_MODEL)
    for name in FILES:
      path = os.path.join(families.DEFAULT_MODEL, name)
      print(f'wrote {os.path.relpath(path, REPO_ROOT)} ({os.path.getsize(path):,} bytes)')
    return 0
  with tempfile.TemporaryDirectory() as tmp:
    make(args.src, tmp)
    shipped = {name: os.path.join(families.DEFAULT_MODEL, name) for name in FILES}
    differ = [name for name, path in shipped.items()
              if not (os.path.isfile(path) and filecmp.cmp(os.path.join(tmp, name), path, shallow=False))]
  if differ:
    print(f'error: {", ".join(differ)} differ from a fresh conversion: run python tools/make_default_model.py',
          file=sys.stderr)
    return 1
  print(f'{families.DEFAULT_MODEL}: up to date')
  return 0


if __name__ == '__main__':
  sys.exit(main())
