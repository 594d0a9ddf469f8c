"""Run in a subprocess with 4 fake CPU devices: single-device vs jit-sharded vs pmap train steps."""
import sys

import jax

jax.config.update('jax_num_cpu_devices', 4)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxface.data import augment_retinaface, pipeline, synthetic  # noqa: E402
from jaxface.models import retinaface  # noqa: E402
from jaxface.training import train_step as ts  # noqa: E402


def main():
  assert jax.device_count() == 4, jax.devices()
  s = 64
  source = synthetic.SyntheticFaces('train', 16, seed=0)
  cfg = pipeline.LoaderConfig(global_batch_size=8, image_size=s, max_faces=16, seed=0)
  batches = list(pipeline.batches(source, augment_retinaface.retinaface_augment, cfg, num_steps=2))
  model = retinaface('retinaface_mnet')
  # A small step: the comparison is between programs, not a test of float32 noise amplified by large updates.
  tx = ts.sgd(1e-4)
  init = lambda: ts.init_state(model, tx, jax.random.PRNGKey(0), s)

  single = jax.jit(lambda st, b: ts.train_step(st, b, model=model, tx=tx), device=jax.devices()[0])
  st1 = init()
  for b in batches:
    st1, m1 = single(st1, b)

  mesh = jax.make_mesh((4,), ('data',))
  sharded = ts.make_sharded_train_step(model, tx, mesh)
  st2 = init()
  for b in batches:
    st2, m2 = sharded(st2, b)

  pmodel = retinaface('retinaface_mnet', bn_axis_name='batch')
  pstep = ts.make_pmap_train_step(pmodel, tx)
  st3 = jax.tree_util.tree_map(lambda x: jnp.stack([x] * 4), init())  # one replica per device
  for b in batches:
    st3, m3 = pstep(st3, jax.tree_util.tree_map(lambda x: x.reshape(4, -1, *x.shape[1:]), b))
  st3 = jax.tree_util.tree_map(lambda x: x[0], st3)
  m3 = jax.tree_util.tree_map(lambda x: x[0], m3)

  ok = True
  for name, st, m in (('sharded', st2, m2), ('pmap', st3, m3)):
    leaves = lambda t: [np.asarray(x) for x in jax.tree_util.tree_leaves(t)]
    worst = max(float(np.abs(a - c).max()) for a, c in zip(leaves(st1.params), leaves(st.params)))
    # BN running variances reach ~1e3 here: compare statistics relative to their size.
    worst_bn = max(float((np.abs(a - c) / np.maximum(1.0, np.abs(a))).max())
                   for a, c in zip(leaves(st1.batch_stats), leaves(st.batch_stats)))
    rel = {k: abs(float(m1[k]) - float(m[k])) / max(1.0, abs(float(m1[k]))) for k in ('loss', 'num_pos', 'loss_landm')}
    print(f'{name}: params max abs difference {worst:.3g}, BN statistics max relative difference {worst_bn:.3g}, '
          f'relative metric differences {rel}')
    ok &= worst <= 1e-5 and worst_bn <= 1e-5 and max(rel.values()) <= 1e-5
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
