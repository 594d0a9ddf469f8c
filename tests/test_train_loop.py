"""train.py's loop: exact resume after a kill, non-finite losses, the files a run leaves.

Tiny runs (retinaface_mnet at 64 px, batch 4, the synthetic set). The programs are shared through
conftest's persistent compilation cache, so the killed subprocess, the resumed run and the runs fed
non-finite batches reuse the straight run's compile.
"""
import functools
import gc
import json
import os
import signal
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from jaxface import saved_models, load_detector
from jaxface.retinaface import FAMILY
from jaxface.training import checkpointing, loop
from jaxface.training import train_step as ts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4

TINY = [
    '--config.data.image_size=64', '--config.batch_size=4', f'--config.num_steps={STEPS}',
    '--config.data.num_workers=0', '--config.data.synthetic_train_images=10', '--config.data.max_faces=16',
    '--config.checkpoint_every_steps=1', '--config.log_every_steps=2', '--config.eval_every_steps=0',
]


# The straight run also evaluates at its end, on a tiny val set.
WITH_EVAL = {'eval_every_steps': STEPS, 'data.synthetic_val_images': 4, 'data.synthetic_val_image_size': (64, 96)}


def tiny_config(config_file='retinaface_mnet.py', **overrides):
  import importlib.util
  spec = importlib.util.spec_from_file_location('demo_config', os.path.join(ROOT, 'configs', config_file))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config('demo')
  for flag in TINY:
    key, value = flag[len('--config.'):].split('=')
    *path, leaf = key.split('.')
    node = c
    for p in path:
      node = node[p]
    node[leaf] = type(node[leaf])(value)
  for key, value in overrides.items():
    *path, leaf = key.split('.')
    node = c
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


def _watch_steps(monkeypatch):
  """Counts the loop's step traces (a retrace is a recompile: the train step's ~20 s) and keeps
  every step's metrics as floats, read where the loop reads them for its log lines."""
  watch = types.SimpleNamespace(traces=[], steps=[])
  step, log = ts.guarded_step, loop._log

  @functools.wraps(step)
  def counted(*args, **kwargs):
    watch.traces.append(1)
    return step(*args, **kwargs)

  @functools.wraps(log)
  def recorded(pending, *args, **kwargs):
    # pmap metrics keep their device axis ([1]); every device holds the same global values.
    watch.steps += [{k: np.ravel(loop.host_copy(v))[0].item() for k, v in m.items()} for m in pending]
    return log(pending, *args, **kwargs)

  monkeypatch.setattr(ts, 'guarded_step', counted)
  monkeypatch.setattr(loop, '_log', recorded)
  return watch


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('straight'))
  with pytest.MonkeyPatch.context() as monkeypatch:
    watch = _watch_steps(monkeypatch)
    state = loop.train(tiny_config(**WITH_EVAL), workdir)
  return workdir, state, watch


def test_one_trace_per_run(straight_run):
  assert len(straight_run[2].traces) == 1


def test_scrfd_demo_config_trains_with_one_compile(tmp_path, monkeypatch):
  """The SCRFD demo config, tiny: one compiled step (ATSS and the losses inside), finite losses with
  positives, a loss that falls over a few steps at the demo's learning rate, a checkpoint that
  loads as an SCRFD detector."""
  watch = _watch_steps(monkeypatch)
  c = tiny_config('scrfd_500m_bnkps.py', num_steps=8, warmup_steps=1, learning_rate=0.01,
                  **{'data.synthetic_train_images': 8})
  loop.train(c, str(tmp_path))
  assert len(watch.traces) == 1 and len(watch.steps) == 8
  assert all(np.isfinite(m['loss']) and m['num_pos'] > 0 for m in watch.steps)
  assert watch.steps[-1]['loss'] < watch.steps[0]['loss']
  assert load_detector(str(tmp_path)).arch == 'scrfd_500m_bnkps'


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_resume_after_kill_continues_exactly(straight_run, tmp_path):
  _, straight, _ = straight_run
  workdir = str(tmp_path / 'killed')
  env = dict(os.environ, PYTHONPATH=ROOT)  # with conftest's compile cache
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'crash_train.py'), workdir, str(STEPS // 2 + 1)],
                        capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  # The kill came right after step 3's save started: whatever made it to disk, the latest finished
  # checkpoint is whole and is step 2 or 3.
  mgr = checkpointing.manager(workdir, keep=3)
  resumed_from = mgr.latest_step()
  mgr.close()
  assert resumed_from in (STEPS // 2, STEPS // 2 + 1)

  resumed = loop.train(tiny_config(), workdir)
  assert int(resumed.step) == STEPS
  for name in ('params', 'batch_stats', 'opt_state'):
    for a, b in zip(_leaves(getattr(straight, name)), _leaves(getattr(resumed, name))):
      np.testing.assert_allclose(b, a, rtol=0, atol=1e-6, err_msg=name)
  # Not trivially equal: the run moved the weights.
  init = loop.initial_variables(FAMILY, FAMILY.model('retinaface_mnet'), tiny_config(), jax.random.PRNGKey(0))
  moved = max(float(np.abs(a - b).max()) for a, b in zip(_leaves(init['params']), _leaves(resumed.params)))
  assert moved > 1e-4


def test_sigterm_checkpoints_stops_and_resumes_exactly(straight_run, tmp_path, monkeypatch, capsys):
  """SIGTERM before step 2 (periodic saves off): the loop saves step 2, stops and returns; the
  same command resumes there and ends with the straight run's weights."""
  _, straight, _ = straight_run
  workdir = str(tmp_path / 'preempted')
  clean = loop.pipeline.batches

  def batches(*args, start_step=0, **kwargs):
    for step, batch in enumerate(clean(*args, start_step=start_step, **kwargs), start=start_step + 1):
      if step == 2:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  monkeypatch.setattr(loop.pipeline, 'batches', batches)
  handler = signal.getsignal(signal.SIGTERM)
  state = loop.train(tiny_config(checkpoint_every_steps=1000), workdir)
  assert signal.getsignal(signal.SIGTERM) == handler  # the loop's handler was removed
  assert int(state.step) == 2 and 'stopped at step 2 on request' in capsys.readouterr().out
  mgr = checkpointing.manager(workdir, keep=3)
  assert mgr.all_steps() == [2]
  mgr.close()

  monkeypatch.setattr(loop.pipeline, 'batches', clean)
  resumed = loop.train(tiny_config(), workdir)
  assert int(resumed.step) == STEPS
  for name in ('params', 'batch_stats', 'opt_state'):  # the same program in this process: equal
    for a, b in zip(_leaves(getattr(straight, name)), _leaves(getattr(resumed, name))):
      np.testing.assert_array_equal(b, a, err_msg=name)


def test_workdir_is_a_detector_checkpoint(straight_run):
  workdir, state, _ = straight_run
  meta = saved_models.read_meta(workdir)
  assert meta['arch'] == 'retinaface_mnet' and meta['dataset']['name'] == 'synthetic'
  variables, meta = saved_models.load_variables(workdir)
  assert meta['step'] == STEPS
  for a, b in zip(_leaves(state.params), _leaves(variables['params'])):
    np.testing.assert_array_equal(a, b)
  assert load_detector(workdir).arch == 'retinaface_mnet'
  older, _ = saved_models.load_variables(workdir, step=STEPS - 1)
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(older['params']), _leaves(state.params)))
  with pytest.raises(FileNotFoundError, match='no checkpoint for step 99'):
    saved_models.load_variables(workdir, step=99)
  config = json.load(open(os.path.join(workdir, 'config.json')))
  assert config['num_steps'] == STEPS and config['data']['image_size'] == 64
  lines = [json.loads(x) for x in open(os.path.join(workdir, 'metrics.jsonl'))]
  train_lines = [x for x in lines if 'train/loss' in x]
  assert [x['step'] for x in train_lines] == [2, 4]
  assert all(np.isfinite(x['train/loss']) and x['train/loss'] > 0 for x in train_lines)
  val = [x for x in lines if 'val/ap_easy' in x]  # the periodic evaluation ran at the end
  assert [x['step'] for x in val] == [STEPS] and all(0 <= val[0][f'val/ap_{s}'] <= 1 for s in ('easy', 'hard'))
  assert any(name.startswith('events.out.tfevents.') for name in os.listdir(workdir))


def test_finished_run_resumes_to_nothing(straight_run):
  workdir, state, _ = straight_run
  again = loop.train(tiny_config(**WITH_EVAL), workdir)
  for a, b in zip(_leaves(state.params), _leaves(again.params)):
    np.testing.assert_array_equal(a, b)


def test_resume_refuses_a_different_seed(straight_run):
  workdir, _, _ = straight_run
  with pytest.raises(ValueError, match='seed'):
    loop.train(tiny_config(seed=1), workdir)


def _poisoned_from_step_2(monkeypatch):
  """Batches for steps 2 on carry NaN pixels (a corrupt image): those steps' losses are not finite.
  The config is the straight run's, so the step's program comes from the compilation cache."""
  clean = loop.pipeline.batches

  def batches(*args, start_step=0, **kwargs):
    for step, batch in enumerate(clean(*args, start_step=start_step, **kwargs), start=start_step + 1):
      yield dict(batch, image=np.full_like(batch['image'], np.nan)) if step >= 2 else batch

  monkeypatch.setattr(loop.pipeline, 'batches', batches)


def test_nonfinite_loss_stops_or_skips(tmp_path, monkeypatch):
  _poisoned_from_step_2(monkeypatch)
  with pytest.raises(loop.NonFiniteLoss, match=r'step 2: .*last good checkpoint is step 1'):
    loop.train(tiny_config(num_steps=3), str(tmp_path / 'stop'))
  mgr = checkpointing.manager(str(tmp_path / 'stop'), keep=3)
  assert mgr.latest_step() == 1
  mgr.close()

  # skip_nonfinite is a host decision: the same compiled program.
  state = loop.train(tiny_config(skip_nonfinite=True, num_steps=3), str(tmp_path / 'skip'))
  after_step_1, _ = saved_models.load_variables(str(tmp_path / 'stop'))
  assert int(state.step) == 3
  for col in ('params', 'batch_stats'):
    for a, b in zip(_leaves(after_step_1[col]), _leaves(getattr(state, col))):
      np.testing.assert_array_equal(a, b)  # steps 2 and 3 were withheld
  assert all(np.isfinite(x).all() for x in _leaves(state.params))
  progress = saved_models.read_progress(str(tmp_path / 'skip'))
  assert progress['step'] == 3 and progress['nonfinite_steps'] == 2


def test_out_of_device_memory_names_the_batch_to_try(tmp_path, monkeypatch):
  def exhausted(*args, **kwargs):
    raise RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1073741824 bytes.')

  monkeypatch.setattr(ts, 'guarded_step', exhausted)
  with pytest.raises(MemoryError, match=r'at 4 images per device .*try --config\.batch_size=2 \(2 per device\)') as info:
    loop.train(tiny_config(), str(tmp_path / 'oom'))
  assert 'RESOURCE_EXHAUSTED' in str(info.value.__cause__)

  def broken(*args, **kwargs):
    raise RuntimeError('some other failure')

  monkeypatch.setattr(ts, 'guarded_step', broken)
  with pytest.raises(RuntimeError, match='some other failure'):  # anything else passes through as it is
    loop.train(tiny_config(), str(tmp_path / 'other'))


def test_missing_wider_root_is_a_clear_error(tmp_path):
  c = tiny_config(**{'data.dataset': 'wider', 'data.wider_root': str(tmp_path / 'nowhere')})
  with pytest.raises(FileNotFoundError, match=r'train/label\.txt'):
    loop.train(c, str(tmp_path / 'w'))
  c = tiny_config(**{'data.dataset': 'wider', 'data.wider_root': ''})
  with pytest.raises(FileNotFoundError, match='wider_root'):
    loop.train(c, str(tmp_path / 'w'))


def test_train_py_rejects_unknown_config_fields(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'),
                         '--config', os.path.join(ROOT, 'configs', 'retinaface_mnet.py') + ':demo',
                         '--workdir', str(tmp_path), '--config.no_such_field=1'],
                        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.returncode != 0
  assert 'no_such_field' in proc.stderr


def test_evaluate_py_reproduces_the_periodic_ap(straight_run, tmp_path):
  """`evaluate.py --ckpt WORKDIR` finds the val set in the workdir's metadata and prints the AP the
  run logged at its last evaluation."""
  from jaxface.evaluation import cli, run
  workdir, _, _ = straight_run
  out = str(tmp_path / 'ap.json')
  assert cli.main(['--ckpt', workdir, '--json', out, '--out', str(tmp_path / 'preds')]) == 0
  logged = [json.loads(x) for x in open(os.path.join(workdir, 'metrics.jsonl'))]
  logged = [x for x in logged if 'val/ap_easy' in x][-1]
  ap = json.load(open(out))['ap']
  for s in ('easy', 'medium', 'hard'):
    assert ap[s] == pytest.approx(logged[f'val/ap_{s}'], abs=1e-9)


# Step metrics that depend on the batch alone (the prior matching), not on the weights: equal at
# every step when both runs read the same batches in the same order.
BATCH_COUNTS = ('num_pos', 'num_pos_landm', 'num_ignored_priors', 'num_degenerate', 'num_low_iou_faces')


def test_pmap_mode_trains_the_same_run(straight_run, tmp_path, monkeypatch):
  """`--config.parallel=pmap` goes through the same loop as the jit run (the same batches,
  checkpoints, evaluation and log lines), and its first step computes the jit run's first step.

  Only step 1 is compared value by value: from the same weights the two programs' losses differ by
  float32 rounding alone (3e-7 relative measured). The gradient, and so every later step, is not
  comparable in float32 on every CPU: it jumps where a LeakyReLU's input crosses zero (slope 1 or
  0.1) or a mining cut ties, and the programs round differently. On an AMD EPYC (AVX2), one of
  step 1's 485,888 BN+activation inputs is 3e-7 above its channel mean (float64); the jit program
  computes +1.2e-7, the pmap one -2.4e-7. So the pmap step-1 gradient is 2.3% from the float64
  gradient (the jit one 1e-5), and the update at lr 1e-2 (norm 4) leaves the loss terms 1-5% apart
  at step 2 (the logged mean of steps 1-2 then differed by 7e-5). In float64 the two programs
  agree to 1e-12 after two steps; test_multidevice.py compares the steps' updates that way.
  """
  workdir, straight, jit_watch = straight_run
  pdir = str(tmp_path / 'pmap')
  watch = _watch_steps(monkeypatch)
  state = loop.train(tiny_config(parallel='pmap', **WITH_EVAL), pdir)
  assert len(watch.traces) == 1  # the replicated initial state is placed as the step's outputs are
  assert int(state.step) == STEPS and saved_models.load_variables(pdir)[1]['step'] == STEPS
  ours, theirs = watch.steps, jit_watch.steps
  assert len(ours) == len(theirs) == STEPS and ours[0].keys() == theirs[0].keys()
  for key in FAMILY.training.loss_terms:  # step 1: a wrong normaliser or loss weight is off by a factor
    np.testing.assert_allclose(ours[0][key], theirs[0][key], rtol=1e-5, err_msg=f'step 1 {key}')
  assert ours[0]['num_neg'] == theirs[0]['num_neg'] and not any(m['nonfinite'] for m in ours)
  for key in BATCH_COUNTS:
    assert [m[key] for m in ours] == [m[key] for m in theirs], key
  read = lambda d: [json.loads(x) for x in open(os.path.join(d, 'metrics.jsonl'))]
  # Each run's log lines are the means of its own steps' metrics (pmap: over the device axis too).
  for lines, steps in ((read(pdir), ours), (read(workdir), theirs)):
    train_lines = [x for x in lines if 'train/loss' in x]
    assert [x['step'] for x in train_lines] == [2, 4]
    for line, window in zip(train_lines, (steps[:2], steps[2:])):
      for key in (*FAMILY.training.loss_terms, 'grad_norm', 'num_pos'):
        assert line[f'train/{key}'] == pytest.approx(np.mean([m[key] for m in window]), rel=1e-6), key
  losses = [x['train/loss'] for x in read(pdir) if 'train/loss' in x]
  assert np.isfinite(losses).all() and losses[1] < losses[0]
  assert [x['step'] for x in read(pdir) if 'val/ap_easy' in x] == [STEPS]
  for a, b in zip(_leaves(straight.params), _leaves(state.params)):
    assert a.shape == b.shape  # one replica, not [devices, ...]


def test_evaluate_py_names_a_missing_step(straight_run, capsys):
  from jaxface.evaluation import cli, run
  workdir, _, _ = straight_run
  assert cli.main(['--ckpt', workdir, '--step', '99']) == 2
  assert 'no checkpoint for step 99' in capsys.readouterr().err


def _shared_memory_segments():
  return {name for name in os.listdir('/dev/shm') if name.startswith(('psm_', 'wnsm_'))}


@pytest.mark.skipif(not os.path.isdir('/dev/shm'), reason='needs /dev/shm (Linux) to see shared-memory segments')
def test_loader_workers_leave_no_shared_memory(tmp_path):
  """A run with loader processes releases their shared-memory batches before it returns (left to
  interpreter exit, the resource tracker would report them as leaked)."""
  before = _shared_memory_segments()
  gc.disable()  # as at interpreter exit: nothing collects the batches' reference cycles but the loop itself
  try:
    state = loop.train(tiny_config(**{'data.num_workers': 1, 'checkpoint_every_steps': STEPS}), str(tmp_path))
  finally:
    gc.enable()
  assert int(state.step) == STEPS
  assert _shared_memory_segments() - before == set()


def test_blazeface_demo_config_trains_with_one_compile(tmp_path, monkeypatch):
  """The BlazeFace front demo config, tiny: one compiled step (matching and losses inside), finite
  losses with positives, a falling loss, and a checkpoint (no batch statistics) that loads."""
  watch = _watch_steps(monkeypatch)
  c = tiny_config('blazeface_front.py', num_steps=8, warmup_steps=1, learning_rate=0.01,
                  **{'data.synthetic_train_images': 8, 'data.image_size': 128})
  loop.train(c, str(tmp_path))
  assert len(watch.traces) == 1 and len(watch.steps) == 8
  assert all(np.isfinite(m['loss']) and m['num_pos'] > 0 for m in watch.steps)
  assert watch.steps[-1]['loss'] < watch.steps[0]['loss']
  assert load_detector(str(tmp_path)).arch == 'blazeface_front'
