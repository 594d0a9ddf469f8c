"""Transparent huge pages for XLA:CPU's step buffers: the launchers restart once with glibc's
`glibc.malloc.hugetlb=1` tunable.

XLA:CPU allocates each run's temporaries afresh (1.7 GB for a RetinaFace-mnet train step at 640 px,
batch 8). glibc serves blocks that large with a new `mmap`, so the kernel faults them in 4 KiB at a
time: ~420k page faults and ~0.9 s of system time per step on a 2-core machine. With the tunable,
glibc asks for transparent huge pages (`madvise(MADV_HUGEPAGE)`) and the same step takes ~1.5k
faults; the train step runs 1.1-1.2x faster (BENCHMARKS.md, "Train step"). glibc reads tunables
only when a process starts, hence the restart. (Torch's tensors, smaller, come from glibc's heap and
fault rarely; the tunable changes little for them.)

Nothing happens off Linux/glibc, when the kernel's THP mode is `never` (nothing to ask for) or
`always` (already used), when the tunable is already set, or with `JAXFACE_HUGE_PAGES=0`.
"""
from __future__ import annotations

import os
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
OPT_OUT = 'JAXFACE_HUGE_PAGES'
THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's THP mode, the bracketed word of e.g. `always [madvise] never`; None if unknown."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


def on_glibc() -> bool:
  """Whether this Python runs on glibc (the tunable is glibc's), asked of the C library itself."""
  try:
    return (os.confstr('CS_GNU_LIBC_VERSION') or '').startswith('glibc')
  except (AttributeError, ValueError, OSError):  # no confstr, or no such name: not glibc
    return False


def restart_needed(environ, mode: str | None) -> bool:
  """Whether restarting with the tunable would change how large blocks are backed (`mode`: `thp_mode()`)."""
  if environ.get(OPT_OUT, '1') == '0' or not sys.platform.startswith('linux'):
    return False
  if not on_glibc():
    return False
  if 'glibc.malloc.hugetlb' in environ.get('GLIBC_TUNABLES', ''):
    return False
  return mode == 'madvise'


def with_tunable(environ) -> dict[str, str]:
  """`environ` with the tunable appended to `GLIBC_TUNABLES` (':'-separated); seeing it there, the
  restarted process does not restart again."""
  env = dict(environ)
  current = env.get('GLIBC_TUNABLES', '')
  env['GLIBC_TUNABLES'] = f'{current}:{TUNABLE}' if current else TUNABLE
  return env


def restart_with_huge_pages() -> None:
  """Re-executes this Python command with the tunable if that helps (see the module docstring).

  Call first thing in a launcher's `__main__`: the process is replaced (same pid, same arguments).
  """
  if restart_needed(os.environ, thp_mode()):
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], with_tunable(os.environ))
