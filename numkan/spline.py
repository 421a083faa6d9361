"""Knots and least-squares spline fitting (NumPy, host side).

The kernels evaluate only the k+1 local bases; fitting needs the whole design
matrix of one input, (N, K), which is built here from those same local bases.
"""
import numpy as np
from scipy.linalg import lapack

from .kernels import reference


def uniform_grid(grid_range, G, k, n_inputs, dtype=np.float64):
    """Knots (n_inputs, G + 2k + 1): t[m] = lo + (m - k) * h, h = (hi - lo) / G."""
    lo, hi = grid_range
    with np.errstate(over="ignore", invalid="ignore"):  # callers check the knots (check_knots)
        h = (hi - lo) / G
        row = lo + (np.arange(G + 2 * k + 1) - k) * h
    # a real copy: for n_inputs == 1 the broadcast view is already contiguous and read-only
    return np.array(np.broadcast_to(row, (n_inputs, row.size)), dtype=dtype, order="C")


# the local bases of a group of inputs are built in one call of the NumPy
# recursion (its cost is mostly per call, in its few dozen small array
# operations, not per element), in groups of at most this many numbers
_GROUP_ELEMENTS = 1 << 20


def basis_matrices(x, t, k, local_bases=reference.local_bases):
    """Design matrices of several inputs: x (N, I) on knots t (I, n) -> (N, K) for each input.

    A generator of (i, A_i), in input order, so that only one matrix at a time
    need be held. Built from the local bases of ``local_bases`` (a backend's, the
    reference's by default: ``numkan.kernels``), for a group of inputs at a time:
    each row of A_i has at most k+1 non-zeros, scattered into their columns.
    """
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    N, I = x.shape
    K = t.shape[1] - k - 1
    group = max(1, _GROUP_ELEMENTS // max(1, N * (k + 1)))
    for g0 in range(0, I, group):
        span, B = local_bases(x[:, g0:g0 + group], t[g0:g0 + group], k)
        for gi in range(span.shape[1]):
            yield g0 + gi, reference.design_matrix(span[:, gi], B[:, gi, :], K, k)


def basis_matrix(x, t, k):
    """Design matrix (N, K) of all K = len(t) - k - 1 bases of order k at x (N,)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1, 1)
    t = np.asarray(t, dtype=np.float64).reshape(1, -1)
    return next(basis_matrices(x, t, k))[1]


def fit_coef(x, y, t, k, rcond=None):
    """Least-squares coefficients (K, O) with sum_m coef[m] B[m,k](x) ~ y.

    x (N,), y (N, O), t: one input's knots. One factorisation serves all O
    right-hand sides. Underdetermined systems (N < K) get the minimum-norm
    solution, as ``numpy.linalg.lstsq`` returns.
    """
    return lstsq_coef(basis_matrix(x, t, k), y, rcond)


def refit(x, t_old, coef_old, t_new, k, backend=reference):
    """Move splines to new knots: coefficients (I, K_new, O) on t_new (I, n_new) whose
    splines take, by least squares at the points x (N, I), the values of the splines
    coef_old (I, K_old, O) on t_old (I, n_old). What grid updates and ``refine`` do,
    with their model's backend's ``normal_sums`` (the normal equations, without the
    design matrices) and, where those are not accurate enough (``lstsq_coef``), its
    ``local_bases`` for the SVD."""
    x = np.asarray(x, dtype=np.float64)
    t_old = np.asarray(t_old, dtype=np.float64)
    t_new = np.asarray(t_new, dtype=np.float64)
    coef_old = np.asarray(coef_old, dtype=np.float64)
    K = t_new.shape[1] - k - 1
    coef = np.empty((x.shape[1], K, coef_old.shape[2]))
    if x.shape[0] >= K > 0:
        gram, rhs = backend.normal_sums(x, t_old, coef_old, t_new, k)
    for i in range(x.shape[1]):
        c = _solve_normal(gram[i], rhs[i]) if x.shape[0] >= K > 0 else None
        if c is None:
            A_new = next(basis_matrices(x[:, i:i + 1], t_new[i:i + 1], k, backend.local_bases))[1]
            A_old = next(basis_matrices(x[:, i:i + 1], t_old[i:i + 1], k, backend.local_bases))[1]
            c, *_ = np.linalg.lstsq(A_new, A_old @ coef_old[i], rcond=None)
        coef[i] = c
    return coef


# The normal equations serve where their reciprocal condition number (LAPACK's
# estimate) is at least this: their error, about eps / rcond relative, then stays
# below about 2e-10, where the SVD's is about eps * sqrt(1 / rcond).
NORMAL_RCOND = 1e-6


def lstsq_coef(A, y, rcond=None):
    """``fit_coef`` on a design matrix A (N, K) already built (``basis_matrices``).

    A B-spline design matrix whose every basis has enough samples under it is well
    conditioned, and its least-squares problem is solved by the normal equations
    A^T A c = A^T y with a Cholesky factorisation (as scipy's ``make_lsq_spline``
    does by default), several times faster than an SVD: a grid update's refit of
    1000 samples onto 23 bases takes 60 rather than 240 us. Where A^T A is singular
    or ill conditioned (a basis with no or few samples under it; ``NORMAL_RCOND``),
    where A has fewer rows than columns, when ``rcond`` is given, and when A or y is
    not finite, ``numpy.linalg.lstsq`` (SVD) gives the minimum-norm solution."""
    y = np.asarray(y, dtype=np.float64)
    if rcond is None and A.shape[0] >= A.shape[1] > 0:
        coef = _normal_equations(A, y)
        if coef is not None:
            return coef
    coef, *_ = np.linalg.lstsq(A, y, rcond=rcond)
    return coef


def _normal_equations(A, y):
    """The least-squares solution of A c = y by Cholesky on A^T A, or None where it would
    not be accurate (see ``lstsq_coef``)."""
    coef = _solve_normal(A.T @ A, A.T @ y.reshape(y.shape[0], -1))
    return None if coef is None else coef.reshape((A.shape[1],) + y.shape[1:])


def _solve_normal(gram, rhs):
    """c (K, O) with gram c = rhs by Cholesky (gram = A^T A, rhs = A^T y), or None where it
    would not be accurate: gram or rhs not finite, not positive definite, or a
    reciprocal condition estimate below ``NORMAL_RCOND``."""
    if not (np.isfinite(gram).all() and np.isfinite(rhs).all()):
        return None
    chol, info = lapack.dpotrf(gram, lower=0, clean=1)
    if info != 0:
        return None
    rc, info = lapack.dpocon(chol, np.abs(gram).sum(axis=0).max(), uplo="U")
    if info != 0 or not rc >= NORMAL_RCOND:
        return None
    coef, info = lapack.dpotrs(chol, rhs, lower=0)
    return coef if info == 0 else None
