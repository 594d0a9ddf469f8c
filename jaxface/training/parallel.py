"""Multi-device and multi-process plumbing for the train loop: start-up, the mesh, the batch.

One process per host (multi-controller JAX). Each host's loader (`pipeline.LoaderConfig(
process_index, process_count)`) yields the host's contiguous slice `[h*B_host, (h+1)*B_host)` of
the global batch; `data_mesh` orders devices so that host h's devices hold exactly that slice,
and `global_batch` assembles the slices into global arrays for `make_sharded_train_step`.
`pmap_batch` is the same host slice split over the local devices for `make_pmap_train_step`.

Launching several processes: set on every process
  JAX_COORDINATOR_ADDRESS=host0:port  JAX_NUM_PROCESSES=n  JAX_PROCESS_ID=i
(on TPU pods, Slurm or Open MPI, `initialize_distributed(auto_detect=True)` finds them itself).
On CPU, collectives between processes go through gloo (`jax_cpu_collectives_implementation`,
the default in JAX 0.10).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

P = jax.sharding.PartitionSpec
DATA = 'data'  # the mesh axis the batch is split along (`make_sharded_train_step`)


def initialize_distributed(*, auto_detect: bool = False, timeout_s: int = 300) -> bool:
  """Joins the processes of a multi-process run; returns whether there is more than one.

  Multi-process when `JAX_NUM_PROCESSES` > 1 (with `JAX_COORDINATOR_ADDRESS` and
  `JAX_PROCESS_ID`), or with `auto_detect` on a cluster JAX recognises. One process (no such
  variables): a no-op, so the same launcher runs on a laptop. Safe to call twice. Must run
  before anything touches a device: JAX fixes the device list on first use.
  """
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  n = int(os.environ.get('JAX_NUM_PROCESSES', '1'))
  if n > 1:
    missing = [k for k in ('JAX_COORDINATOR_ADDRESS', 'JAX_PROCESS_ID') if k not in os.environ]
    if missing:
      raise ValueError(f'JAX_NUM_PROCESSES={n} needs {" and ".join(missing)} set too')
    jax.distributed.initialize(os.environ['JAX_COORDINATOR_ADDRESS'], num_processes=n,
                               process_id=int(os.environ['JAX_PROCESS_ID']), initialization_timeout=timeout_s)
  elif auto_detect:  # arguments from the cluster's environment (TPU metadata, Slurm, Open MPI)
    jax.distributed.initialize(initialization_timeout=timeout_s)
  else:
    return False
  return jax.process_count() > 1


def data_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh (axis 'data') over all global devices, process by process in `process_index`
  order: process h's devices are the h-th contiguous block, the block its loader reads.

  The axis is `Auto` (XLA propagates the batch split). `jax.make_mesh` makes `Explicit` axes in
  JAX 0.10, and a state placed on such a mesh types every intermediate the step computes from a
  numpy batch as replicated: each device then runs the whole batch (right numbers, no speed-up).
  """
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return jax.sharding.Mesh(np.array(devices), (DATA,), axis_types=(jax.sharding.AxisType.Auto,))


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """This host's `[B_host, ...]` numpy batch -> global `[B_host * processes, ...]` arrays split on
  'data'. Every process calls it in the same step with its own slice."""
  sharding = jax.sharding.NamedSharding(mesh, P(DATA))
  n = len(mesh.local_devices)
  for key, x in local_batch.items():
    if x.shape[0] % n:
      raise ValueError(f'{key}: host batch {x.shape[0]} does not split over {n} local devices')
  out = {k: jax.make_array_from_process_local_data(sharding, np.asarray(x)) for k, x in local_batch.items()}
  # The loader gives host h rows [h*B_host, (h+1)*B_host): the mesh must put them there too.
  some = next(iter(out.values()))
  first = min(s.index[0].start or 0 for s in some.addressable_shards)
  if first != jax.process_index() * (some.shape[0] // jax.process_count()):
    raise ValueError(f'process {jax.process_index()} holds rows from {first} of the global batch, not its '
                     'loader slice: build the mesh with data_mesh()')
  return out


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """A pytree (the same values on every process, e.g. the initial state) as global arrays
  replicated over `mesh`: what `make_sharded_train_step` takes as its state."""
  sharding = jax.sharding.NamedSharding(mesh, P())

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree_util.tree_map(put, tree)


def pmap_replicate(tree: Any, axis_name: str) -> Any:
  """A pytree (e.g. the initial state) copied to every local device as `[local devices, ...]`,
  placed as a `pmap` over `axis_name` places its outputs. Fed anything else (numpy, or the output
  of a `pmap` with another axis name: pmap's mesh is named after its axis), the first step would
  compile a second program for the second step, whose state comes back in that placement."""
  n = jax.local_device_count()
  stacked = jax.tree_util.tree_map(lambda x: np.stack([np.asarray(x)] * n), tree)
  return jax.pmap(lambda x: x, axis_name=axis_name)(stacked)


def pmap_batch(local_batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This host's `[B_host, ...]` batch -> `[local devices, B_host / local devices, ...]` for
  `make_pmap_train_step` (device d takes the d-th contiguous slice)."""
  n = jax.local_device_count()
  out = {}
  for key, x in local_batch.items():
    if x.shape[0] % n:
      raise ValueError(f'{key}: host batch {x.shape[0]} does not split over {n} local devices')
    out[key] = np.asarray(x).reshape(n, x.shape[0] // n, *x.shape[1:])
  return out
