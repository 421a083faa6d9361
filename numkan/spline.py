"""Knots and least-squares spline fitting (NumPy, host side).

The kernels evaluate only the k+1 local bases; fitting needs the whole design
matrix of one input, (N, K), which is built here from those same local bases.
"""
import numpy as np

from .kernels import reference


def uniform_grid(grid_range, G, k, n_inputs, dtype=np.float64):
    """Knots (n_inputs, G + 2k + 1): t[m] = lo + (m - k) * h, h = (hi - lo) / G."""
    lo, hi = grid_range
    with np.errstate(over="ignore", invalid="ignore"):  # callers check the knots (check_knots)
        h = (hi - lo) / G
        row = lo + (np.arange(G + 2 * k + 1) - k) * h
    # a real copy: for n_inputs == 1 the broadcast view is already contiguous and read-only
    return np.array(np.broadcast_to(row, (n_inputs, row.size)), dtype=dtype, order="C")


def basis_matrix(x, t, k):
    """Design matrix (N, K) of all K = len(t) - k - 1 bases of order k at x (N,).

    Built from the local bases of ``reference.local_basis``: each row has at
    most k+1 non-zeros, scattered into their columns.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1, 1)
    t = np.asarray(t, dtype=np.float64).reshape(1, -1)
    K = t.shape[1] - k - 1
    span, N, _ = reference.local_basis(x, t, k)
    A = np.zeros((x.shape[0], K))
    for s in range(k + 1):
        a = span[:, 0] - k + s
        ok = (span[:, 0] >= 0) & (a >= 0) & (a < K)
        A[np.nonzero(ok)[0], a[ok]] += N[ok, 0, s]
    return A


def fit_coef(x, y, t, k, rcond=None):
    """Least-squares coefficients (K, O) with sum_m coef[m] B[m,k](x) ~ y.

    x (N,), y (N, O), t: one input's knots. One factorisation serves all O
    right-hand sides. Underdetermined systems (N < K) get the minimum-norm
    solution, as ``numpy.linalg.lstsq`` returns.
    """
    A = basis_matrix(x, t, k)
    coef, *_ = np.linalg.lstsq(A, np.asarray(y, dtype=np.float64), rcond=rcond)
    return coef
