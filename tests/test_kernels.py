"""Numba kernels against their NumPy twins, on random inputs including odd sizes."""

import numpy as np
import pytest

from minillm.kernels.linear import MAX_ROWS, linear_rows, linear_rows_reference


@pytest.mark.parametrize("rows", range(1, MAX_ROWS + 1))
@pytest.mark.parametrize("out_dim, in_dim", [(1, 1), (7, 13), (128, 256), (4096, 256), (33, 768)])
def test_linear_rows_equals_numpy(rows, out_dim, in_dim):
    rng = np.random.default_rng(rows * 1000 + out_dim)
    x = rng.standard_normal((rows, in_dim)).astype(np.float32)
    w = rng.standard_normal((out_dim, in_dim)).astype(np.float32)
    # fastmath reorders the float32 sum: errors grow like sqrt(in_dim) * eps * |terms|, about 1e-5
    # relative to outputs of size sqrt(in_dim) here
    np.testing.assert_allclose(linear_rows(x, w), linear_rows_reference(x, w), rtol=1e-4, atol=1e-4)


def test_linear_rows_same_row_same_result():
    """A row's result does not depend on the other rows: decode and speculative verify agree."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    w = rng.standard_normal((512, 256)).astype(np.float32)
    together = linear_rows(x, w)
    for row in range(3):
        np.testing.assert_array_equal(linear_rows(x[row : row + 1], w)[0], together[row])


def test_linear_rows_rejects_wrong_dtype():
    with pytest.raises(ValueError, match="float32"):
        linear_rows(np.ones((1, 4)), np.ones((2, 4), dtype=np.float32))
