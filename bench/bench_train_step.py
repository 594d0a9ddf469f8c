"""The full RetinaFace train step: jaxface's one compiled program vs the reference's eager torch step.

    python bench/bench_train_step.py [--arch retinaface_mnet] [--size 640] [--batch 8] [--repeats 10]
                                     [--profile 3]

One step = forward (BN in train mode), prior matching, MultiBox loss (hard negatives 7:1, smooth-L1
box term weighted 2, landmarks), backward, SGD (lr 1e-3, momentum 0.9, weight decay 5e-4).

  * reference: tests/reference_torch.py's model (default torch init, train mode), eager; the
    reference's per-image Python `match` loop (tests/test_matching_loss.py's re-statement) and its
    `MultiBoxLoss.forward` re-stated below with autograd; `torch.optim.SGD`;
  * jaxface: `train_step.make_train_step(model, loss_fn, sgd(1e-3))`, compiled ahead of time, the state
    donated and threaded from call to call.
Both start from the same weights (the torch init converted by `jaxface.convert`) and take the same
synthetic batches (`pipeline.batches` over `SyntheticFaces('train')` with `retinaface_augment`),
built before any timing. The loader's ignore flags are cleared: the reference has no ignore
boxes, so both treat every box as a face (jaxface's cost does not depend on the flags' values).
Before timing, the first step's loss and positives are checked equal on both sides.

The breakdown times the parts of each step alone, interleaved with the full steps: the forward,
the network's forward + backward (fixed random cotangents on its outputs, no matching or loss),
matching alone, matching + loss + its gradient w.r.t. the outputs, and the optimizer update.
`--profile N` also runs N jaxface steps under `jax.profiler` and sums XLA:CPU's per-op times
by part of the step, by network block and by kind of op (see `profile_step`).
Threads: torch and XLA both at their defaults for the machine (printed).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import linecache
import re
import tempfile
import time

import common  # noqa: F401  (sets sys.path)
from jaxface import huge_pages

if __name__ == '__main__':
  huge_pages.restart_with_huge_pages()  # as train.py does; JAXFACE_HUGE_PAGES=0 to time without

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

import reference_torch as ref
import test_matching_loss as ref_loss
from jaxface.convert import convert_state_dict as convert_detector
from jaxface.data import pipeline, synthetic
from jaxface.retinaface import FAMILY, anchors, matching, retinaface
from jaxface.retinaface import augment as augment_retinaface
from jaxface.retinaface.loss import multibox_loss
from jaxface.training import train_step as ts

LR = 1e-3
MODEL_KEYS = ('image', 'boxes', 'landmarks', 'box_valid', 'landmark_valid', 'ignore')


def make_batches(num: int, batch: int, size: int, max_faces: int) -> list[dict[str, np.ndarray]]:
  """`num` loader batches, ignore flags cleared (every box a face, as the reference)."""
  source = synthetic.SyntheticFaces('train', num * batch, seed=0)
  cfg = pipeline.LoaderConfig(global_batch_size=batch, image_size=size, max_faces=max_faces, seed=0)
  out = []
  for b in pipeline.batches(source, augment_retinaface.retinaface_augment, cfg, num_steps=num):
    b = {k: b[k] for k in MODEL_KEYS}
    b['ignore'] = np.zeros_like(b['ignore'])
    out.append(b)
  return out


# ---------------------------------------------------------------------------------------------
# The reference step (torch, eager).

def torch_inputs(b: dict[str, np.ndarray]):
  """NCHW image tensor and per-image `(truths [n, 4], labels [n], landmarks [n, 5, 2])`, as the
  reference's loader delivers them (label -1: no landmarks)."""
  x = torch.from_numpy(b['image']).permute(0, 3, 1, 2).contiguous()
  targets = []
  for i in range(len(b['image'])):
    rows = np.flatnonzero(b['box_valid'][i] & matching.nondegenerate(b['boxes'][i]))
    labels = np.where(b['landmark_valid'][i][rows], 1.0, -1.0).astype(np.float32)
    targets.append((torch.from_numpy(b['boxes'][i][rows]), torch.from_numpy(labels),
                    torch.from_numpy(b['landmarks'][i][rows])))
  return x, targets


def reference_match(targets, priors):
  """The reference's `for idx in range(num): match(...)` loop -> conf_t [B, P], loc_t, landm_t."""
  num_priors = priors.shape[0]
  conf, loc, landm = [], [], []
  for truths, labels, points in targets:
    c, _, l, m = ref_loss.ref_match(truths, labels, points, priors)
    if l is None:  # no face above the forcing threshold: all background
      l, m = torch.zeros(num_priors, 4), torch.zeros(num_priors, 10)
    conf.append(c)
    loc.append(l)
    landm.append(m)
  return torch.stack(conf), torch.stack(loc), torch.stack(landm)


def reference_multibox(loc_data, conf_data, landm_data, conf_t, loc_t, landm_t, neg_pos=7, loc_weight=2.0):
  """The reference's `MultiBoxLoss.forward` after matching, with autograd, as it runs in training
  (the mining loss is computed on the graph, then only its sort order is used)."""
  pos1 = conf_t > 0
  n1 = max(float(pos1.sum()), 1.0)
  loss_landm = F.smooth_l1_loss(landm_data[pos1], landm_t[pos1], reduction='sum')
  pos = conf_t != 0
  target = pos.long()
  loss_l = F.smooth_l1_loss(loc_data[pos], loc_t[pos], reduction='sum')
  batch_conf = conf_data.reshape(-1, 2)
  x_max = batch_conf.detach().max()
  lse = torch.log(torch.sum(torch.exp(batch_conf - x_max), 1, keepdim=True)) + x_max
  loss_c = lse - batch_conf.gather(1, target.reshape(-1, 1))
  loss_c[pos.reshape(-1, 1)] = 0
  loss_c = loss_c.reshape(conf_t.shape[0], -1)
  _, loss_idx = loss_c.sort(1, descending=True)
  _, idx_rank = loss_idx.sort(1)
  num_pos = pos.long().sum(1, keepdim=True)
  num_neg = torch.clamp(neg_pos * num_pos, max=pos.shape[1] - 1)
  neg = idx_rank < num_neg
  chosen = pos | neg
  loss_c = F.cross_entropy(conf_data[chosen], target[chosen], reduction='sum')
  n = max(float(num_pos.sum()), 1.0)
  loss = loc_weight * loss_l / n + loss_c / n + loss_landm / n1
  return loss, int(num_pos.sum())


# ---------------------------------------------------------------------------------------------
# Profile of the compiled jaxface step.

def _frames(hlo_text: str) -> dict[int, list[tuple[str, str, int]]]:
  """stack_frame_id -> its (file, function, line) chain, innermost first, from the module's tables."""
  tables, section = collections.defaultdict(dict), None
  for line in hlo_text.splitlines():
    if line in ('FileNames', 'FunctionNames', 'FileLocations', 'StackFrames'):
      section = line
    elif not line.strip() or not line[0].isdigit():
      section = None if not line.strip() else section
    elif section:
      key, _, rest = line.partition(' ')
      fields = dict(re.findall(r'(\w+)=(\d+)', rest)) or rest.strip('"')
      tables[section][int(key)] = fields
  locs = {k: (tables['FileNames'].get(int(v['file_name_id']), '?'),
              tables['FunctionNames'].get(int(v['function_name_id']), '?'), int(v['line']))
          for k, v in tables['FileLocations'].items()}
  # A frame's parent is printed as its id + 1 (so a root prints its own id, 1 meaning none).
  chains = {}
  for k in tables['StackFrames']:
    chain, f = [], k
    while f in tables['StackFrames'] and len(chain) < 64:
      chain.append(locs.get(int(tables['StackFrames'][f]['file_location_id']), ('?', '?', 0)))
      f = int(tables['StackFrames'][f]['parent_frame_id']) - 1
    chains[k] = chain
  return chains


def _instructions(hlo_text: str) -> dict[str, tuple[str, str, list]]:
  """HLO instruction name -> (opcode, op_name, frames); a fusion's opcode becomes 'fusion[convolution]',
  'fusion[dot]', ... when it wraps such an op."""
  frames = _frames(hlo_text)
  computations, current, body = {}, None, {}
  for line in hlo_text.splitlines():
    m = re.match(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$', line)
    if m:
      current = m.group(1)
      computations[current] = []
      continue
    m = re.match(r'^\s+(?:ROOT )?%?([\w.\-]+) = .*?\s([a-z][\w\-]*)\(', line)
    if m and current is not None:
      computations[current].append(m.group(2))
      name_m = re.search(r'op_name="([^"]*)"', line)
      frame_m = re.search(r'stack_frame_id=(\d+)', line)
      calls = re.search(r'calls=%?([\w.\-]+)', line)
      body[m.group(1)] = (m.group(2), name_m.group(1) if name_m else '',
                          frames.get(int(frame_m.group(1)), []) if frame_m else [], calls.group(1) if calls else None)
  out = {}
  for name, (op, op_name, chain, calls) in body.items():
    inner = set(computations.get(calls, ()))
    for kind in ('convolution', 'dot', 'custom-call', 'reduce-window', 'sort', 'scatter', 'reduce'):
      if kind in inner:
        op = f'{op}[{kind}]'
        break
    out[name] = (op, op_name, chain)
  return out


def _part(op_name: str, chain) -> str:
  """Which part of the train step an op belongs to, from its source frames and op_name."""
  files = ' '.join(f for f, _, _ in chain)
  if 'matching.py' in files:
    return 'matching'
  if 'retinaface/loss.py' in files or 'box_coding.py' in files:
    return 'loss (fwd+bwd)'
  if any(f in files for f in ('layers.py', 'cpu_kernels.py', 'retinaface/model.py', 'mobilenet.py', 'resnet.py')):
    return 'network backward' if 'transpose(' in op_name else 'network forward'
  if 'train_step.py' in files:
    return 'optimizer, grad norm'
  return 'other'


def _block(op_name: str) -> str:
  """The network block (`body/stage1`, `fpn`, `ssh2`, a head) named in a Flax op_name."""
  m = re.search(r'body/(stage\d|layer\d|conv1|bn1)', op_name)
  if m:
    return 'body/' + m.group(1)
  m = re.search(r'(fpn|ssh\d|BboxHead|ClassHead|LandmarkHead)', op_name)
  return m.group(1) if m else '-'


def _lowering(chain) -> str:
  """The innermost jaxface function of an op and, in layers.py or cpu_kernels.py, its source line:
  which conv lowering (mul-adds, taps, matmul, library conv) or layer made it."""
  for f, fn, line in chain:
    if '/jaxface/' in f:
      shown = f.endswith(('/layers.py', '/cpu_kernels.py'))
      return f'{fn}: {linecache.getline(f, line).strip()[:40]}' if shown else fn
  return '?'


def profile_step(compiled, state, batches, steps: int):
  """Runs `steps` steps under the profiler; returns (state, per-op table) of XLA:CPU thunk times."""
  info = _instructions(compiled.as_text())
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for i in range(steps):
        state, metrics = compiled(state, batches[i % len(batches)])
        jax.block_until_ready((state, metrics))
    trace = json.load(gzip.open(glob.glob(f'{d}/**/perfetto_trace.json.gz', recursive=True)[0]))
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  per_op = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and e['name'] in info:
      per_op[e['name']] += e.get('dur', 0) / 1e3 / steps  # ms per step
  return state, per_op, info


def print_profile(per_op, info, top: int = 25):
  """Op time by part of the step, by network block and by the jaxface source line that made the op
  (which conv lowering), then the slowest ops: where a training-time lowering choice would pay."""
  total = sum(per_op.values())
  by = {k: collections.Counter() for k in ('part', 'part x kind', 'block x phase', 'network op source x phase')}
  for name, ms in per_op.items():
    op, op_name, chain = info[name]
    part = _part(op_name, chain)
    conv = any(k in op for k in ('convolution', 'dot', 'custom-call'))
    by['part'][part] += ms
    by['part x kind'][(part, 'conv/dot' if conv else op)] += ms
    if part.startswith('network'):
      by['block x phase'][(_block(op_name), part.split()[1])] += ms
      by['network op source x phase'][(_lowering(chain), part.split()[1])] += ms
  print(f'\nXLA:CPU profile: {total:.0f} ms of op time per step (summed over ops; XLA runs some side by side)')
  for key, counter in by.items():
    print(f'  by {key}:')
    for k, ms in counter.most_common(20 if key != 'part' else None):
      print(f'    {" / ".join(k) if isinstance(k, tuple) else k:48s} {ms:8.1f} ms {100 * ms / total:5.1f}%')
  print(f'  top {top} ops:')
  for name, ms in per_op.most_common(top):
    op, op_name, chain = info[name]
    print(f'    {ms:7.1f} ms {name:28s} {op:24s} {op_name[-70:]} [{_lowering(chain)}]')


# ---------------------------------------------------------------------------------------------

def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--arch', default='retinaface_mnet', choices=ref.ARCHS)
  p.add_argument('--size', type=int, default=640)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--max-faces', type=int, default=64)
  p.add_argument('--num-batches', type=int, default=4, help='pre-built batches, cycled')
  p.add_argument('--repeats', type=int, default=10)
  p.add_argument('--no-breakdown', action='store_true', help='time the full steps only')
  p.add_argument('--profile', type=int, default=0, help='jaxface steps to run under jax.profiler (0: none)')
  args = p.parse_args()

  print(common.machine())
  print(f'{args.arch} at {args.size}x{args.size}, batch {args.batch}, max_faces {args.max_faces}; '
        f'torch {torch.__version__} ({torch.get_num_threads()} threads, default); '
        f'XLA:CPU default threading ({jax.local_device_count()} device)')
  t = time.perf_counter()
  batches_np = make_batches(args.num_batches, args.batch, args.size, args.max_faces)
  faces = [int(b['box_valid'].sum()) for b in batches_np]
  print(f'{args.num_batches} batches built in {time.perf_counter() - t:.1f} s (not timed); faces per batch {faces}')

  # --- Same initial weights on both sides.
  torch.manual_seed(0)
  net = ref.build_reference(args.arch).train()
  variables = convert_detector(net.state_dict(), args.arch)
  optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
  priors_t = torch.from_numpy(ref.prior_box(args.size, args.size))
  torch_batches = [torch_inputs(b) for b in batches_np]

  model = retinaface(args.arch)
  tx = ts.sgd(LR)
  state = ts.init_state(tx, variables)
  batches = [jax.device_put(b) for b in batches_np]
  priors = anchors.prior_boxes(args.size, args.size)

  # --- Compile (ahead of time, so tracing and compiling are timed apart from running).
  step = ts.make_train_step(model, ts.loss_fn_for(FAMILY, model.spec), tx)
  t0 = time.perf_counter()
  lowered = step.lower(state, batches[0])
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  print(f'jaxface train step: trace + lower {t1 - t0:.2f} s, XLA compile {t2 - t1:.2f} s')
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', 0.0)) if cost else 0.0
  traffic = float(cost.get('bytes accessed', 0.0)) if cost else 0.0

  # --- First step on batch 0: same loss and positives, or the timing means nothing.
  counter = {'torch': 0, 'jax': 0}

  def reference_step():
    x, targets = torch_batches[counter['torch'] % len(torch_batches)]
    counter['torch'] += 1
    out = net(x)
    optimizer.zero_grad()
    conf_t, loc_t, landm_t = reference_match(targets, priors_t)
    loss, num_pos = reference_multibox(*out, conf_t, loc_t, landm_t)
    loss.backward()
    optimizer.step()
    return loss.item(), num_pos

  def jaxface_step():
    nonlocal state
    batch = batches[counter['jax'] % len(batches)]
    counter['jax'] += 1
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    return metrics

  t = time.perf_counter()
  metrics = jax.device_get(jaxface_step())
  first_s = time.perf_counter() - t
  ref_loss_value, ref_pos = reference_step()
  print(f'first step, batch 0: reference loss {ref_loss_value:.6f} ({ref_pos} positives), '
        f'jaxface loss {float(metrics["loss"]):.6f} ({int(metrics["num_pos"])} positives); '
        f'jaxface first run {first_s:.2f} s')
  assert int(metrics['num_pos']) == ref_pos, 'different positives'
  assert abs(float(metrics['loss']) - ref_loss_value) <= 1e-3 * abs(ref_loss_value), 'different losses'

  fns = {'reference train step': reference_step, 'jaxface train step': jaxface_step}

  if not args.no_breakdown:
    # Fixed inputs for the parts: batch 0, and copies of the weights that the steps do not donate.
    x0, targets0 = torch_batches[0]
    b0 = batches[0]
    params = jax.tree.map(jnp.array, variables['params'])
    bstats = jax.tree.map(jnp.array, variables['batch_stats'])
    with torch.no_grad():
      outs_t = [o.detach().clone() for o in net(x0)]
    cot_np = [np.random.default_rng(i).normal(0, 1e-3, o.shape).astype(np.float32) for i, o in enumerate(outs_t)]
    cot_t = [torch.from_numpy(c) for c in cot_np]
    cot = [jnp.asarray(c) for c in cot_np]

    def torch_forward():
      net(x0)  # autograd records, as in training; the graph is dropped

    def torch_forward_backward():
      optimizer.zero_grad()
      out = net(x0)
      sum((o * c).sum() for o, c in zip(out, cot_t)).backward()

    torch_forward_backward()
    saved_grads = [q.grad.clone() for q in net.parameters()]

    def torch_loss():
      preds = [o.clone().requires_grad_() for o in outs_t]
      loss, _ = reference_multibox(*preds, *reference_match(targets0, priors_t))
      loss.backward()

    def torch_optimizer():
      for q, g in zip(net.parameters(), saved_grads):
        q.grad = g
      optimizer.step()

    def apply(params, x):
      return model.apply({'params': params, 'batch_stats': bstats}, x, train=True, mutable=['batch_stats'])

    forward = jax.jit(apply)

    @jax.jit
    def forward_backward(params, x, cot):
      def f(p):
        outs, updates = apply(p, x)
        return sum(jnp.sum(o * c) for o, c in zip(outs, cot)), updates
      return jax.value_and_grad(f, has_aux=True)(params)

    outs = forward(params, b0['image'])[0]
    match = jax.jit(lambda b: matching.match_batch(b, priors))
    loss_grad = jax.jit(jax.value_and_grad(lambda l, c, m, b: multibox_loss(l, c, m, b, priors)[0], argnums=(0, 1, 2)))
    _, grads = forward_backward(params, b0['image'], cot)
    opt = {'params': jax.tree.map(jnp.array, params), 'opt_state': tx.init(params)}

    def update_fn(p, o, g):
      u, o = tx.update(g, o, p)
      return optax.apply_updates(p, u), o

    update = jax.jit(update_fn, donate_argnums=(0, 1))

    def jax_optimizer():
      opt['params'], opt['opt_state'] = update(opt['params'], opt['opt_state'], grads)
      jax.block_until_ready(opt['params'])

    fns.update({
        'reference forward (train mode)': torch_forward,
        'jaxface forward (train BN)': lambda: jax.block_until_ready(forward(params, b0['image'])),
        'reference network fwd+bwd': torch_forward_backward,
        'jaxface network fwd+bwd': lambda: jax.block_until_ready(forward_backward(params, b0['image'], cot)),
        'reference matching loop': lambda: reference_match(targets0, priors_t),
        'jaxface matching': lambda: jax.block_until_ready(match(b0)),
        'reference matching+loss+grad': torch_loss,
        'jaxface matching+loss+grad': lambda: jax.block_until_ready(loss_grad(*outs, b0)),
        'reference optimizer step': torch_optimizer,
        'jaxface optimizer update': jax_optimizer,
    })

  # One untimed call before each timed one, as bench_scrfd_train_step does: right after torch's step its
  # OpenMP workers still spin on both cores (jaxface's step 432-1680 ms without the lead-in, 2026-12-05).
  times = common.interleaved(fns, repeats=args.repeats, warmup=1, lead_in=1)
  print(common.report(times, 'reference train step'))
  med = {k: float(np.median(v)) for k, v in times.items()}
  ref_ips, jax_ips = args.batch / med['reference train step'], args.batch / med['jaxface train step']
  print(f'images/s: reference {ref_ips:.2f}, jaxface {jax_ips:.2f}; jaxface / reference = {jax_ips / ref_ips:.2f}')
  # On a loaded machine the medians of long steps can fall in different spells; the ratio within
  # each round (the two steps run back to back) and the ratio of the fastest steps are steadier.
  paired = times['reference train step'] / times['jaxface train step']
  fastest = times['reference train step'].min() / times['jaxface train step'].min()
  print(f'jaxface / reference: median of per-round ratios {np.median(paired):.2f} '
        f'(p10 {np.percentile(paired, 10):.2f}, p90 {np.percentile(paired, 90):.2f}); fastest steps {fastest:.2f} '
        f'(reference {args.batch / times["reference train step"].min():.2f}, '
        f'jaxface {args.batch / times["jaxface train step"].min():.2f} images/s)')
  if flops:
    print(f'jaxface step (XLA cost analysis): {flops / 1e9:.1f} GFLOP, {traffic / 1e9:.1f} GB accessed; '
          f'at the median step {flops / 1e9 / med["jaxface train step"]:.1f} GFLOP/s, '
          f'{traffic / 1e9 / med["jaxface train step"]:.1f} GB/s')
  if not args.no_breakdown:
    print('share of the full step (median of each part alone / median step):')
    for side, name in (('reference', 'reference train step'), ('jaxface', 'jaxface train step')):
      parts = [k for k in med if k.startswith(side) and k != name]
      print(f'  {side}: ' + ', '.join(f'{k[len(side) + 1:]} {100 * med[k] / med[name]:.0f}%' for k in parts))

  if args.profile:
    state, per_op, info = profile_step(compiled, state, batches, args.profile)
    print_profile(per_op, info)


if __name__ == '__main__':
  main()
