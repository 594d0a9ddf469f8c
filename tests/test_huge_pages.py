"""The launchers' restart with glibc's huge-page tunable (`jaxface/huge_pages.py`)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from jaxface import huge_pages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('text, mode', [('always [madvise] never\n', 'madvise'), ('[always] madvise never', 'always'),
                                        ('always madvise [never]', 'never'), ('garbage', None)])
def test_thp_mode_reads_the_bracketed_word(tmp_path, text, mode):
  path = tmp_path / 'enabled'
  path.write_text(text)
  assert huge_pages.thp_mode(str(path)) == mode


def test_thp_mode_without_the_file_is_unknown(tmp_path):
  assert huge_pages.thp_mode(str(tmp_path / 'absent')) is None


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='the tunable is a Linux/glibc feature')
def test_restart_only_when_it_changes_something():
  needed = lambda env, mode='madvise': huge_pages.restart_needed(env, mode)  # noqa: E731
  assert needed({}) == huge_pages.on_glibc()
  assert not needed({}, 'always')  # the kernel already backs large mappings with huge pages
  assert not needed({}, 'never')  # nothing to ask for
  assert not needed({}, None)
  assert not needed({'JAXFACE_HUGE_PAGES': '0'})
  assert not needed({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'})  # the user's choice stands
  assert not needed(huge_pages.with_tunable({}))  # the restarted process does not restart again


def test_tunable_is_appended_to_the_users_tunables():
  assert huge_pages.with_tunable({'A': '1'}) == {'A': '1', 'GLIBC_TUNABLES': huge_pages.TUNABLE}
  env = huge_pages.with_tunable({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'})
  assert env['GLIBC_TUNABLES'] == f'glibc.malloc.arena_max=2:{huge_pages.TUNABLE}'


CHILD = textwrap.dedent('''
  import json, os, sys
  print('start', os.getpid(), flush=True)
  from jaxface import huge_pages
  huge_pages.restart_with_huge_pages()
  import ctypes
  libc = ctypes.CDLL(None)
  libc.malloc.restype = ctypes.c_void_p
  block = libc.malloc(64 << 20)  # mmap'd by glibc (numpy would madvise its own arrays)
  ctypes.memset(block, 1, 64 << 20)
  with open('/proc/self/smaps_rollup') as f:
    huge = [int(line.split()[1]) for line in f if line.startswith('AnonHugePages:')][0]
  print('end', json.dumps([os.getpid(), os.environ.get('GLIBC_TUNABLES'), sys.argv[1:], huge]), flush=True)
''')


@pytest.mark.skipif(huge_pages.thp_mode() != 'madvise' or not huge_pages.restart_needed(os.environ, 'madvise'),
                    reason='needs Linux/glibc with THP in madvise mode and the tunable not already set')
def test_restart_keeps_pid_and_arguments_and_gets_huge_pages(tmp_path):
  script = tmp_path / 'child.py'
  script.write_text(CHILD)
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', huge_pages.OPT_OUT)}
  env['PYTHONPATH'] = ROOT
  def run(*args):
    lines = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True,
                           timeout=120, check=True).stdout.splitlines()
    starts = [int(line.split()[1]) for line in lines if line.startswith('start')]
    (end,) = [json.loads(line[4:]) for line in lines if line.startswith('end ')]
    return starts, end

  starts, (pid, tunables, args, huge_kib) = run('--flag', 'value')
  assert starts == [pid, pid]  # ran twice, in the same process
  assert tunables == huge_pages.TUNABLE and args == ['--flag', 'value']
  assert huge_kib >= 32 << 10  # at least half of the 64 MiB block is on 2 MiB pages

  env[huge_pages.OPT_OUT] = '0'  # opted out: one run, default pages
  starts, (pid, tunables, _, huge_kib) = run()
  assert starts == [pid] and tunables is None and huge_kib < 32 << 10
