"""Numba CPU training ops, re-exported by ``cpu.py`` (kept apart so the layer
kernels there can be tuned on their own).

    mse_loss_grad, adam_step          elementwise over small arrays: the
                                      reference's vectorised NumPy is the kernel
    edge_moments_forward/_backward    the sparsity regulariser's batch sums,
                                      compiled (reference:
                                      ``reference.edge_moments_forward/_backward``)

Parallelism without data races: ``prange`` over (batch chunk, input) tasks.
Task (c, i) owns its slice of the per-chunk partial sums and the rows of dx in
its chunk for input i; partial sums are added up afterwards. No (B, I, O)
array is built: each task keeps one length-O row of edge values.
"""
import numpy as np
from numba import njit, prange

from . import _scalar
from ._parallel import batch_chunks, threads_for
from ._scalar import BASE_CODES
from .reference import adam_step, mse_loss_grad  # noqa: F401  (re-exported)

_jit = dict(nogil=True, cache=True)
_base_value = njit(**_jit)(_scalar.base_value)
# The span search, local bases, b and b', knot reciprocals and gradient finish are
# cpu.py's own (this module is imported at the end of cpu.py, after they exist).
from .cpu import _finish_backward, _reciprocals, base_pair as _base_pair  # noqa: E402
from .cpu import find_span as _find_span, local_basis as _local_basis  # noqa: E402


@njit(inline="always")
def _existing_rows(j, k, K):
    """The local bases s in range(lo, hi) of span j >= 0 whose coefficient row j-k+s
    exists (0 <= j-k+s < K): all k+1 of an interior span, fewer near the ends."""
    return max(0, k - j), min(k + 1, K + k - j)


@njit(inline="always")
def _edge_row(phi, bv, j, N, W, Wb, i, k):
    """phi[o] = phi_io(x) for every output o: b(x) * Wb[i, o] plus the local spline terms
    N[s] * W[i, j-k+s, o] whose rows exist (j: x's span, -1 outside the knots, where only
    the base term remains; N: its k+1 local bases)."""
    O = W.shape[2]
    K = W.shape[1]
    for o in range(O):
        phi[o] = bv * Wb[i, o]
    if j >= 0:
        s0, s1 = _existing_rows(j, k, K)
        for s in range(s0, s1):
            ns = N[s]
            for o in range(O):
                phi[o] += ns * W[i, j - k + s, o]


@njit(parallel=True, **_jit)
def _moments_forward_kernel(S1, S2, XS1, XS2, x, grid, inv, W, Wb, k, code, nchunk):
    # S1, S2 (nchunk, I, O) and XS1, XS2 (nchunk, I): float64 partial sums.
    # W = coef * scale_sp * mask (I, K, O), Wb = scale_base * mask (I, O).
    B, I = x.shape
    O = W.shape[2]
    for task in prange(nchunk * I):
        c = task // I
        i = task - c * I
        N = np.empty(k + 1, dtype=W.dtype)
        dN = np.empty(k + 1, dtype=W.dtype)
        work = np.empty(2 * (k + 1), dtype=W.dtype)
        phi = np.empty(O, dtype=np.float64)
        a1 = 0.0
        a2 = 0.0
        for b in range(c * B // nchunk, (c + 1) * B // nchunk):
            xv = x[b, i]
            a1 += xv
            a2 += xv * xv
            j = _find_span(grid, i, xv)
            if j >= 0:
                _local_basis(grid, inv, i, j, xv, k, N, dN, work, False)
            _edge_row(phi, _base_value(xv, code), j, N, W, Wb, i, k)
            for o in range(O):
                S1[c, i, o] += phi[o]
                S2[c, i, o] += phi[o] * phi[o]
        XS1[c, i] = a1
        XS2[c, i] = a2


@njit(parallel=True, **_jit)
def _moments_backward_kernel(dx, P, PB, ds1, ds2, dxs1, dxs2, x, grid, inv, W, Wb, k, code, nchunk):
    # P (nchunk, I, K, O): raw sums sum_b gphi * B[m]; PB (nchunk, I, O): sum_b gphi * b(x).
    B, I = x.shape
    O = W.shape[2]
    K = W.shape[1]
    for task in prange(nchunk * I):
        c = task // I
        i = task - c * I
        N = np.empty(k + 1, dtype=W.dtype)
        dN = np.empty(k + 1, dtype=W.dtype)
        work = np.empty(2 * (k + 1), dtype=W.dtype)
        g = np.empty(O, dtype=W.dtype)
        for b in range(c * B // nchunk, (c + 1) * B // nchunk):
            xv = x[b, i]
            bv, bd = _base_pair(xv, code)
            j = _find_span(grid, i, xv)
            if j >= 0:
                _local_basis(grid, inv, i, j, xv, k, N, dN, work, True)
            _edge_row(g, bv, j, N, W, Wb, i, k)  # phi first; turned into gphi below
            acc_b = 0.0
            for o in range(O):
                g[o] = ds1[i, o] + 2.0 * ds2[i, o] * g[o]
                PB[c, i, o] += bv * g[o]
                acc_b += g[o] * Wb[i, o]
            d = acc_b * bd + dxs1[i] + 2.0 * xv * dxs2[i]
            if j >= 0:
                s0, s1 = _existing_rows(j, k, K)
                for s in range(s0, s1):
                    a = j - k + s
                    ns = N[s]
                    acc = 0.0
                    for o in range(O):
                        P[c, i, a, o] += ns * g[o]
                        acc += g[o] * W[i, a, o]
                    d += dN[s] * acc
            dx[b, i] += d


def edge_moments_forward(s1, s2, xs1, xs2, x, grid, coef, scale_base, scale_sp, mask, k, base_fun):
    """Compiled ``reference.edge_moments_forward``: s1, s2 (I, O), xs1, xs2 (I,) overwritten (float64)."""
    B, I = x.shape
    nchunk = batch_chunks(B, I)
    S1 = np.zeros((nchunk,) + s1.shape)
    S2 = np.zeros((nchunk,) + s1.shape)
    XS1 = np.zeros((nchunk, I))
    XS2 = np.zeros((nchunk, I))
    W = coef * (scale_sp * mask)[:, None, :]
    with threads_for(B * I * coef.shape[2]):
        _moments_forward_kernel(S1, S2, XS1, XS2, x, grid, _reciprocals(grid, k), W, scale_base * mask, k,
                                BASE_CODES[base_fun], nchunk)
    s1[...] = S1.sum(axis=0)
    s2[...] = S2.sum(axis=0)
    xs1[...] = XS1.sum(axis=0)
    xs2[...] = XS2.sum(axis=0)


def edge_moments_backward(dx, dcoef, dscale_base, dscale_sp, ds1, ds2, dxs1, dxs2, x, grid,
                          coef, scale_base, scale_sp, mask, k, base_fun):
    """Compiled ``reference.edge_moments_backward``: adds into dx, dcoef, dscale_base, dscale_sp.

    The kernel gathers raw sums R[i,m,o] = sum_b gphi B[m] and Rb[i,o] =
    sum_b gphi b(x); then dcoef += R * scale_sp * mask, dscale_base += Rb * mask,
    dscale_sp += mask * sum_m coef * R (since s = sum_m coef B[m]).
    """
    B, I = x.shape
    nchunk = batch_chunks(B, I)
    P = np.zeros((nchunk,) + coef.shape, dtype=coef.dtype)
    PB = np.zeros((nchunk,) + scale_base.shape, dtype=coef.dtype)
    spm = scale_sp * mask
    W = coef * spm[:, None, :]
    dt = coef.dtype
    with threads_for(B * I * coef.shape[2]):
        _moments_backward_kernel(dx, P, PB, ds1.astype(dt), ds2.astype(dt), dxs1.astype(dt),
                                 dxs2.astype(dt), x, grid, _reciprocals(grid, k), W, scale_base * mask, k,
                                 BASE_CODES[base_fun], nchunk)
        _finish_backward(dcoef, dscale_base, dscale_sp, P, PB, coef, spm, mask)
