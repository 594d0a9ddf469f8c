"""`jaxface.tflite.densify` on hand-built sparse tensors in the schema's formats: CSR rows,
a permuted traversal order, and 2x2 blocks (the real `_sparse` file only uses the first)."""
import numpy as np
import pytest

from jaxface.tflite import Sparsity, TFLiteError, densify


def csr(segments, indices):
  return np.asarray(segments), np.asarray(indices)


def test_csr_rows():
  # [[0, 1, 0, 2], [0, 0, 0, 0], [3, 0, 0, 0]]: rows dense, columns CSR.
  sp = Sparsity(order=(0, 1), block_map=(), sizes=(3, 0), levels=(None, csr([0, 2, 2, 3], [1, 3, 0])))
  out = densify(np.array([1., 2., 3.], np.float32), (3, 4), sp, 'x')
  np.testing.assert_array_equal(out, [[0, 1, 0, 2], [0, 0, 0, 0], [3, 0, 0, 0]])


def test_a_permuted_traversal_order_stores_columns_first():
  # The same matrix stored column by column: columns dense, rows CSR, values in column order.
  sp = Sparsity(order=(1, 0), block_map=(), sizes=(4, 0), levels=(None, csr([0, 1, 2, 2, 3], [2, 0, 0])))
  out = densify(np.array([3., 1., 2.], np.float32), (3, 4), sp, 'x')
  np.testing.assert_array_equal(out, [[0, 1, 0, 2], [0, 0, 0, 0], [3, 0, 0, 0]])


def test_blocks():
  # A 4x4 matrix of 2x2 blocks, of which (0, 0) and (1, 1) are stored: block rows dense, block
  # columns CSR, then each block's rows and columns dense.
  sp = Sparsity(order=(0, 1, 2, 3), block_map=(0, 1), sizes=(2, 0, 2, 2),
                levels=(None, csr([0, 1, 2], [0, 1]), None, None))
  out = densify(np.arange(1., 9., dtype=np.float32), (4, 4), sp, 'x')
  np.testing.assert_array_equal(out, [[1, 2, 0, 0], [3, 4, 0, 0], [0, 0, 5, 6], [0, 0, 7, 8]])


def test_inconsistent_sparsity_fails_naming_the_tensor():
  sp = Sparsity(order=(0, 1), block_map=(), sizes=(3, 0), levels=(None, csr([0, 2, 2, 3], [1, 3, 0])))
  with pytest.raises(TFLiteError, match=r"conv2d_7.*describes 3 values, the buffer holds 2"):
    densify(np.array([1., 2.], np.float32), (3, 4), sp, "tensor 'conv2d_7'")
  bad = Sparsity(order=(0, 1), block_map=(), sizes=(3, 0), levels=(None, csr([0, 2, 2, 3], [1, 4, 0])))
  with pytest.raises(TFLiteError, match='outside the shape'):
    densify(np.array([1., 2., 3.], np.float32), (3, 4), bad, 'x')
