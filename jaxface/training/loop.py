"""The training loop behind `train.py`: state, loader, compiled step, checkpoints, logs, evaluation.

    state = train(config, workdir)   # resumes from the workdir's latest checkpoint if there is one

The host only feeds batches, reads metrics one step behind (so the device never waits for the
host), and decides: log, evaluate, checkpoint, stop. Every batch is a pure function of
(seed, step), so resuming from a checkpoint's step continues the run exactly.
"""
from __future__ import annotations

import functools
import gc
import json
import logging
import math
import os
import time
from typing import Any, Callable

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxface import families, saved_models
from jaxface.data import pipeline
from jaxface.family import Family
from jaxface.progress import clock
from jaxface.torch_pickle import load_torch_file
from jaxface.training import checkpointing, datasets, parallel
from jaxface.training import train_step as ts
from jaxface.training.metric_writers import MetricWriters
from jaxface.training.preemption import Preemption


class NonFiniteLoss(RuntimeError):
  """The loss or the gradient became NaN/inf (the update was not applied)."""


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  return math.ceil(num_examples / global_batch)  # the reference's epoch_size


def initial_variables(family: Family, model, config, rng) -> dict[str, Any]:
  """Random init, with the ImageNet backbone (through the family's converter) when the config names one."""
  variables = jax.device_get(ts.init_variables(model, rng))
  if config.pretrained_backbone:
    path = config.pretrained_backbone
    if not os.path.isfile(path):
      raise FileNotFoundError(f'config.pretrained_backbone: no such file {path!r} (the ImageNet weights; set '
                              f"--config.pretrained_backbone='' to train from scratch)")
    backbone = family.convert_torch(load_torch_file(path), family.training.backbone(model.spec), path)
    for col, subtrees in backbone.items():  # the backbone's top-level modules replace the random ones
      variables[col] = dict(variables[col], **subtrees)
    print(f'backbone initialised from {path}', flush=True)
  return variables


def train(config, workdir: str, *, family: Family | None = None,
          after_step: Callable[[int], None] | None = None) -> ts.TrainState:
  """Trains `config.arch` (of `family`, default: the name table's) into `workdir`, resuming from its
  latest checkpoint; returns the final state (this host's numpy copy). `after_step(step)` runs after
  each step's checkpoint decision (tests inject faults there)."""
  family = family or families.family_of(config.arch)
  if family.training is None:
    raise ValueError(f'{config.arch}: the {family.name} family has no training parts yet')
  parallel.initialize_distributed()
  if not flags.FLAGS.is_parsed():  # Grain's loader workers read absl flags; a caller without absl has none
    flags.FLAGS.mark_as_parsed()
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  say = (lambda msg: print(msg, flush=True)) if is_main else (lambda msg: None)

  source = datasets.train_source(config.data)
  batch_size = config.batch_size
  per_epoch = steps_per_epoch(len(source), batch_size)
  total_steps = config.num_steps or config.num_epochs * per_epoch
  schedule = ts.step_decay(config.learning_rate, per_epoch, tuple(config.decay_epochs), gamma=config.lr_gamma,
                           warmup_epochs=config.warmup_epochs, warmup_steps=config.get('warmup_steps', 0),
                           warmup_ratio=config.get('warmup_ratio', 0.0))
  tx = ts.sgd(schedule, momentum=config.momentum, weight_decay=config.weight_decay,
              clip_norm=config.get('grad_clip_norm', 0.0) or 0.0)
  use_pmap = config.parallel == 'pmap'
  if config.parallel not in ('jit', 'pmap'):
    raise ValueError(f"config.parallel must be 'jit' or 'pmap', got {config.parallel!r}")
  spec = family.spec(config.arch)
  model = family.build(spec, bn_axis_name=ts.PMAP_AXIS if use_pmap else None)
  loss_fn = ts.loss_fn_for(family, spec, **config.loss)
  mesh = parallel.data_mesh()
  if batch_size % jax.device_count():
    raise ValueError(f'config.batch_size={batch_size} must be divisible by the {jax.device_count()} devices')

  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = ts.init_state(tx, initial_variables(family, model, config, jax.random.PRNGKey(config.seed)))
  state = parallel.replicate(state, mesh)
  mgr = checkpointing.manager(workdir, keep=config.checkpoint_keep)
  progress = dict(seed=config.seed, batch_size=batch_size, nonfinite_steps=0, train_seconds=0.0)
  restored = checkpointing.restore(mgr, state)
  if restored is not None:
    state, saved = restored
    for key in ('seed', 'batch_size'):
      if saved.get(key) != progress[key]:
        raise ValueError(f'{workdir} was trained with {key}={saved.get(key)}, the config says {progress[key]}: '
                         'resuming would not continue the same run (use a new --workdir)')
    progress.update(saved)
  start = int(host_copy(state.step))
  if restored is not None:
    say(f'resumed from {workdir} at step {start}')
  if is_main:
    _write_run_files(workdir, config)

  if use_pmap:
    step_fn = ts.make_pmap_train_step(model, loss_fn, tx)
    run_state = parallel.pmap_replicate(jax.tree_util.tree_map(host_copy, state), ts.PMAP_AXIS)
    to_device = parallel.pmap_batch
  else:
    step_fn = ts.make_sharded_train_step(model, loss_fn, tx, mesh)
    run_state = state
    to_device = functools.partial(parallel.global_batch, mesh=mesh)

  def host_state(st):  # this host's numpy copy of a replicated tree (pmap: device 0's replica)
    return jax.tree_util.tree_map(lambda x: host_copy(x[0]) if use_pmap else host_copy(x), st)

  def global_state(st):  # what is checkpointed: the state replicated over the mesh, in either mode
    return parallel.replicate(host_state(st), mesh) if use_pmap else st

  loader_cfg = pipeline.LoaderConfig(global_batch_size=batch_size, image_size=config.data.image_size,
                                     max_faces=config.data.max_faces, num_keypoints=len(family.keypoints),
                                     seed=config.seed,
                                     num_workers=config.data.num_workers, process_index=jax.process_index(),
                                     process_count=jax.process_count())
  augment = functools.partial(family.training.augment, min_face=config.data.min_face)
  val = datasets.val_set(config.data, family) if (config.eval_every_steps and is_main) else None
  # The periodic evaluation's test protocol: the family's own, or the config's `eval_protocol` (a
  # recipe may score with another protocol of its family; its config says why); `evaluate.py --ckpt`
  # reads it from jaxface.json.
  eval_protocol = config.get('eval_protocol', '') or None
  eval_family = families.family_of(config.arch, eval_protocol) if eval_protocol else family
  evaluator = _Evaluator(eval_family, config.arch, val) if val is not None else None
  writers = MetricWriters(workdir) if is_main else None
  guard = _NonFiniteGuard(config.skip_nonfinite, mgr, progress)

  pending = []  # device metrics since the last log line
  window_start, window_images = time.time(), 0
  step = start
  batches = None
  try:
    batches = pipeline.batches(source, augment, loader_cfg, start_step=start, num_steps=total_steps - start)
    with Preemption() as preempt:
      for batch in batches:
        try:
          run_state, metrics = step_fn(run_state, to_device(batch))
        except Exception as e:  # noqa: BLE001  out of device memory: say what to try
          hint = _oom_hint(e, batch_size, jax.device_count())
          if hint is None:
            raise
          raise hint from e
        step += 1
        pending.append(metrics)
        window_images += batch_size
        guard.add(step, metrics)
        guard.check(keep_last=1)  # step s-1's flag, read while step s runs: the device never waits
        if step % config.log_every_steps == 0 or step == total_steps:
          now = time.time()
          progress['train_seconds'] += now - window_start
          _log(pending, family.training.loss_terms, step, total_steps, per_epoch, schedule,
               window_images / max(now - window_start, 1e-9), progress, batch, writers, say)
          pending, window_start, window_images = [], time.time(), 0
        stop = preempt.should_stop(step)  # collective: every process stops at the same step
        if step % config.checkpoint_every_steps == 0 or step == total_steps or stop:
          guard.check(keep_last=0)  # a checkpoint never claims a step whose update failed unnoticed
          checkpointing.save(mgr, step, global_state(run_state), progress)
          guard.last_saved = step
        if after_step is not None:
          after_step(step)
        if evaluator is not None and (step % config.eval_every_steps == 0 or step == total_steps):
          ap = evaluator(host_state((run_state.params, run_state.batch_stats)), step, say)
          writers.write_scalars(step, {f'val/ap_{k}': v for k, v in ap.items()})
        if stop:
          mgr.wait_until_finished()
          say(f'stopped at step {step} on request; checkpoint saved in {workdir} (run the same command to resume)')
          break
  finally:
    mgr.wait_until_finished()
    mgr.close()
    if writers is not None:
      writers.close()
    # The loader workers' batches arrive in shared memory that Grain unlinks when the arrays are
    # freed, and some sit in reference cycles: collected only at exit, the resource tracker
    # reports them as leaked. Free them now.
    if batches is not None:
      batches.close()
    batch = None  # the last batch's arrays too
    gc.collect()
  return host_state(run_state)


def host_copy(x: jax.Array) -> np.ndarray:
  """This host's copy of a replicated array (works across hosts, where `device_get` of a global
  array would not). A pmap output's first shard keeps its device axis (`[1, ...]`)."""
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


class _NonFiniteGuard:
  """Reads the steps' `nonfinite` flags (the updates were already withheld on device) and stops
  the run, naming the step and the last good checkpoint, or counts and goes on."""

  def __init__(self, skip: bool, mgr, progress: dict[str, Any]):
    self.skip, self.mgr, self.progress = skip, mgr, progress
    self.unchecked: list[tuple[int, Any]] = []
    self.last_saved = mgr.latest_step()

  def add(self, step: int, metrics) -> None:
    self.unchecked.append((step, metrics['nonfinite']))

  def check(self, keep_last: int) -> None:
    while len(self.unchecked) > keep_last:
      step, flag = self.unchecked.pop(0)
      if not bool(np.any(host_copy(flag))):
        continue
      self.progress['nonfinite_steps'] = self.progress.get('nonfinite_steps', 0) + 1
      if self.skip:
        logging.warning('step %d: non-finite loss or gradient; update skipped (%d so far)', step,
                        self.progress['nonfinite_steps'])
        continue
      self.mgr.wait_until_finished()
      where = (f'the last good checkpoint is step {self.last_saved} in {self.mgr.directory}' if self.last_saved
               else 'no checkpoint was saved yet')
      raise NonFiniteLoss(f'step {step}: the loss or the gradient is not finite (the update was not applied); '
                          f'{where}. Lower the learning rate, check the data, or set --config.skip_nonfinite=True '
                          'to skip such steps and count them.')


def _log(pending, loss_terms, step, total, per_epoch, schedule, images_per_s, progress, batch, writers,
         say) -> None:
  host = jax.tree_util.tree_map(host_copy, pending)
  mean = {k: float(np.mean([np.mean(m[k]) for m in host])) for k in (*loss_terms, 'grad_norm')}
  mean['num_pos'] = float(np.mean([np.mean(m['num_pos']) for m in host]))  # global count (psum'd under pmap)
  lr = float(schedule(step - 1))
  eta = (total - step) * (progress['train_seconds'] / max(step, 1))
  total_term, *parts = loss_terms
  detail = ' '.join(f'{k.removeprefix("loss_")} {mean[k]:.4f}' for k in parts)
  say(f'step {step}/{total} epoch {step / per_epoch:.2f} | {images_per_s:.1f} img/s | loss {mean[total_term]:.4f} '
      f'({detail}) pos {mean["num_pos"]:.0f} | lr {lr:.2e} | ETA {clock(eta)}')
  # What the loader dropped from this step's batch: each process loaded a slice, so the counts are
  # summed over the processes (a collective: every process gets here at the same steps).
  dropped = np.array([int(batch[k].sum()) for k in pipeline.COUNTERS])
  if jax.process_count() > 1:
    dropped = np.asarray(multihost_utils.process_allgather(dropped)).sum(0)
  dropped = dict(zip(pipeline.COUNTERS, dropped.tolist()))
  if writers is None:  # not the main process of a multi-process run: the main one writes
    return
  writers.write_scalars(step, {**{f'train/{k}': v for k, v in mean.items()}, 'train/lr': lr,
                               'train/images_per_s': images_per_s, 'train/epoch': step / per_epoch,
                               'train/nonfinite_steps': progress.get('nonfinite_steps', 0),
                               **{f'data/{k}': v for k, v in dropped.items()}})


def _oom_hint(e: Exception, batch_size: int, devices: int) -> MemoryError | None:
  """For an out-of-device-memory error, one that names the per-device batch to try; else None."""
  text = str(e)
  if 'RESOURCE_EXHAUSTED' not in text and 'out of memory' not in text.lower():
    return None
  per_device = batch_size // devices
  return MemoryError(f'out of device memory at {per_device} images per device (batch_size {batch_size} over '
                     f'{devices} devices): try --config.batch_size={max(devices, (per_device // 2) * devices)} '
                     f'({max(1, per_device // 2)} per device), or a smaller --config.data.image_size')


def _write_run_files(workdir: str, config) -> None:
  """`config.json` (the resolved config) and `jaxface.json` (what `load_detector` needs)."""
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  meta = dict(arch=config.arch, source='train.py', dataset=datasets.dataset_meta(config.data))
  if config.get('eval_protocol', ''):
    meta['eval_protocol'] = config.eval_protocol
  with open(os.path.join(workdir, saved_models.META_FILE), 'w') as f:
    json.dump(meta, f, indent=2, sort_keys=True)


class _Evaluator:
  """AP on the val set with the current weights, as `evaluate.py --ckpt` computes it (bucketed
  sizes, confidence 0.02, the model's NMS); one `Detector`, so its programs compile once."""

  def __init__(self, family: Family, arch: str, val: datasets.ValSet):
    self.family, self.arch, self.val = family, arch, val
    self.detector = None

  def __call__(self, params_and_stats, step: int, say) -> dict[str, float]:
    from jaxface.detector import Detector
    from jaxface.evaluation import protocol, run
    variables = dict(zip(('params', 'batch_stats'), params_and_stats))
    if self.detector is None:
      self.detector = Detector(self.family, self.arch, variables, bucketed=True, batch_size=8)
    else:
      self.detector.variables = jax.tree_util.tree_map(jnp.asarray, variables)
    t = time.time()
    keys = [(e, n) for e, names in zip(self.val.gt.events, self.val.gt.files) for n in names]
    preds = dict(run.detect_all(self.detector, keys, self.val.load, test_scale=self.val.test_scale,
                                   conf_threshold=0.02, nms_threshold=None))
    result = protocol.evaluate(preds, self.val.gt)
    say(f'step {step}: val AP easy {result.ap["easy"]:.4f} medium {result.ap["medium"]:.4f} '
        f'hard {result.ap["hard"]:.4f} ({len(keys)} images, {time.time() - t:.0f} s)')
    return dict(result.ap)

