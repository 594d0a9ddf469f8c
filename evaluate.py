"""WIDER FACE evaluation launcher (see `jaxface/evaluation/cli.py`).

    python evaluate.py --ckpt DIR [--test-scale original|mxnet|vga] [--json OUT.json]
    python evaluate.py --preds DIR --gt DIR [--protocol official|python] [--json OUT.json]
"""
import sys

from jaxface import huge_pages

if __name__ == '__main__':
  huge_pages.restart_with_huge_pages()
  from jaxface.evaluation.cli import main
  sys.exit(main())
