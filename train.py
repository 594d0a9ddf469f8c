"""Trains a face detector: `python train.py --config configs/retinaface_mnet.py --workdir DIR`.

Config fields are overridden on the command line (`--config.batch_size=16`); a field the config
does not have is an error. Running the same command again resumes from DIR's latest checkpoint.
"""
from jaxface import huge_pages

if __name__ == '__main__':
  huge_pages.restart_with_huge_pages()  # before jax is imported, so the restart costs little

from absl import app, flags, logging
from ml_collections import config_flags

from jaxface.training import loop

_CONFIG = config_flags.DEFINE_config_file('config', None, 'experiment config: configs/<name>.py[:variant]',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'checkpoints, logs (JSONL, TensorBoard) and the resolved config')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.WARNING)  # progress is printed; orbax's per-save INFO lines are noise
  try:
    loop.train(_CONFIG.value, _WORKDIR.value)
  except (FileNotFoundError, ValueError, MemoryError, loop.NonFiniteLoss) as e:
    raise SystemExit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
