"""Start-up: the random init of a detector, as flax runs it eagerly vs `train_step.init_variables`.

    python bench/bench_startup.py [--archs retinaface_mnet retinaface_r50] [--rounds 2]

Eagerly, `model.init` compiles each op of a forward pass as its own program (and each kernel's
threefry draw takes ~1 s of LLVM time); `init_variables` compiles one program, unoptimised on CPU.
Each measurement runs in a fresh interpreter (JAX's per-op compile caches live in the process), the
two ways alternating, and counts import-free seconds: from the model's construction to its variables
on the host. The eager run traces at 64 px, as `init_variables` does (the eager cost grows with the
number of ops, not the pixels). For scale: the torch re-statement builds and initialises mnet in
0.02 s and R50 in 0.22 s on the same VM (`reference_torch.build_reference`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

import common

CHILD = r'''
import json, sys, time
import jax, jax.numpy as jnp
from jaxface.retinaface import retinaface
from jaxface.training import train_step as ts
arch, how = sys.argv[1], sys.argv[2]
t = time.perf_counter()
model = retinaface(arch)
rng = jax.random.PRNGKey(0)
if how == 'eager':
  variables = model.init(rng, jnp.zeros((1, 64, 64, 3), jnp.float32), train=False)
else:
  variables = ts.init_variables(model, rng)
variables = jax.device_get(variables)
print(json.dumps({'seconds': time.perf_counter() - t}))
'''


def once(arch: str, how: str) -> float:
  proc = subprocess.run([sys.executable, '-c', CHILD, arch, how], capture_output=True, text=True, check=True,
                        cwd=common.REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(common.REPO_ROOT)))
  return json.loads(proc.stdout.strip().splitlines()[-1])['seconds']


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--archs', nargs='+', default=['retinaface_mnet', 'retinaface_r50'])
  parser.add_argument('--rounds', type=int, default=2)
  args = parser.parse_args()
  print(common.machine())
  for arch in args.archs:
    times = {'eager': [], 'jitted': []}
    for _ in range(args.rounds):
      for how in times:
        times[how].append(once(arch, how))
    eager, jitted = np.median(times['eager']), np.median(times['jitted'])
    print(f'{arch}: eager model.init {eager:.1f} s (runs {", ".join(f"{t:.1f}" for t in times["eager"])}), '
          f'init_variables {jitted:.1f} s (runs {", ".join(f"{t:.1f}" for t in times["jitted"])}): '
          f'{eager / jitted:.1f}x faster', flush=True)


if __name__ == '__main__':
  main()
