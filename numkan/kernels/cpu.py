"""Numba CPU kernels: the reference's maths, compiled, parallel and local.

Same functions and signatures as ``reference.py`` (the definition these are
tested against). The scalar maths (span search, Cox-de Boor on the local
triangle, silu) comes from ``_scalar.py`` and is compiled here with ``njit``.

Work per sample and input: one binary search, the k+1 local bases, then k+2
rows of length O (k+1 coefficient rows and the base row) are added into the
output row. Cost per edge is independent of the grid size G.

Parallelism without data races:
- forward: ``prange`` over chunks of the batch; each chunk owns its rows of y.
- backward: ``prange`` over (batch chunk, input) tasks. dx[b, i] has exactly one
  owner. The coefficient-gradient reduction over the batch goes into one
  partial buffer per batch chunk; with I >= threads there is a single chunk, so
  no extra buffer, and each input's rows are owned by one task.
"""
import numba
import numpy as np
from numba import njit, prange

from . import _scalar
from ._scalar import BASE_CODES
from .reference import asarray, fill, to_host, zeros  # host storage, as in the reference

name = "cpu"

_jit = dict(nogil=True, cache=True)
base_value = njit(**_jit)(_scalar.base_value)
base_deriv = njit(**_jit)(_scalar.base_deriv)
find_span = njit(**_jit)(_scalar.find_span)
local_basis = njit(**_jit)(_scalar.local_basis)


def _chunks(B, tasks_wanted):
    """Number of batch chunks: enough for the threads, never more than B."""
    return max(1, min(B, tasks_wanted))


@njit(parallel=True, **_jit)
def _forward_kernel(y, x, grid, W, Wb, k, code, nchunk):
    # y (B, O) out; x (B, I); grid (I, n); W = coef * scale_sp * mask (I, K, O);
    # Wb = scale_base * mask (I, O)
    B, I = x.shape
    O = y.shape[1]
    K = W.shape[1]
    for c in prange(nchunk):
        N = np.empty(k + 1, dtype=y.dtype)
        dN = np.empty(k + 1, dtype=y.dtype)
        b0 = c * B // nchunk
        b1 = (c + 1) * B // nchunk
        for b in range(b0, b1):
            yb = y[b]
            for o in range(O):
                yb[o] = 0
            for i in range(I):
                xv = x[b, i]
                bv = y.dtype.type(base_value(xv, code))
                wb = Wb[i]
                for o in range(O):
                    yb[o] += bv * wb[o]
                j = find_span(grid[i], xv)
                if j < 0:
                    continue
                local_basis(grid[i], j, xv, k, N, dN, False)
                for s in range(k + 1):
                    a = j - k + s
                    if a < 0 or a >= K:
                        continue
                    ns = N[s]
                    w = W[i, a]
                    for o in range(O):
                        yb[o] += ns * w[o]


@njit(parallel=True, **_jit)
def _backward_kernel(dx, P, PB, dy, x, grid, coef, spm, Wb, k, code, nchunk):
    # dx (B, I) += ; P (nchunk, I, K, O) raw coefficient gradient sum_b g * B[m];
    # PB (nchunk, I, O) raw base gradient sum_b g * b(x); spm = scale_sp * mask (I, O)
    B, I = x.shape
    O = dy.shape[1]
    K = coef.shape[1]
    for task in prange(nchunk * I):
        c = task // I
        i = task - c * I
        N = np.empty(k + 1, dtype=dy.dtype)
        dN = np.empty(k + 1, dtype=dy.dtype)
        gs = np.empty(O, dtype=dy.dtype)
        b0 = c * B // nchunk
        b1 = (c + 1) * B // nchunk
        t = grid[i]
        wb = Wb[i]
        sp = spm[i]
        pb = PB[c, i]
        for b in range(b0, b1):
            xv = x[b, i]
            g = dy[b]
            bv = dy.dtype.type(base_value(xv, code))
            acc_b = dy.dtype.type(0)
            for o in range(O):
                pb[o] += bv * g[o]
                acc_b += g[o] * wb[o]
            d = acc_b * base_deriv(xv, code)
            j = find_span(t, xv)
            if j >= 0:
                local_basis(t, j, xv, k, N, dN, True)
                for o in range(O):
                    gs[o] = g[o] * sp[o]
                for s in range(k + 1):
                    a = j - k + s
                    if a < 0 or a >= K:
                        continue
                    ns = N[s]
                    pc = P[c, i, a]
                    cr = coef[i, a]
                    acc = dy.dtype.type(0)
                    for o in range(O):
                        pc[o] += ns * g[o]
                        acc += gs[o] * cr[o]
                    d += dN[s] * acc
            dx[b, i] += d


def spline_forward(y, x, grid, coef, scale_base, scale_sp, mask, k, base_fun):
    """Compiled ``reference.spline_forward``: y (B, O) overwritten."""
    W = coef * (scale_sp * mask)[:, None, :]
    Wb = scale_base * mask
    nchunk = _chunks(x.shape[0], 4 * numba.get_num_threads())
    _forward_kernel(y, x, grid, W, Wb, k, BASE_CODES[base_fun], nchunk)
    return y


def spline_backward(dx, dcoef, dscale_base, dscale_sp, dy, x, grid, coef,
                    scale_base, scale_sp, mask, k, base_fun):
    """Compiled ``reference.spline_backward``: adds into dx, dcoef, dscale_base, dscale_sp.

    The kernel gathers raw sums R[i,m,o] = sum_b g[b,o] B[m,k](x[b,i]) and
    Rb[i,o] = sum_b g[b,o] b(x[b,i]); the parameter gradients follow in
    O(I*K*O):  dcoef += R * scale_sp * mask,  dscale_base += Rb * mask,
    dscale_sp += mask * sum_m coef * R  (since s = sum_m coef * B[m]).
    """
    B, I = x.shape
    threads = numba.get_num_threads()
    # one chunk when the inputs alone keep the threads busy: no partial buffers
    nchunk = 1 if I >= 2 * threads else _chunks(B, -(-4 * threads // I))
    P = np.zeros((nchunk,) + coef.shape, dtype=coef.dtype)
    PB = np.zeros((nchunk,) + scale_base.shape, dtype=coef.dtype)
    spm = scale_sp * mask
    _backward_kernel(dx, P, PB, dy, x, grid, coef, spm, scale_base * mask, k,
                     BASE_CODES[base_fun], nchunk)
    R = P[0] if nchunk == 1 else P.sum(axis=0)
    Rb = PB[0] if nchunk == 1 else PB.sum(axis=0)
    dcoef += R * spm[:, None, :]
    dscale_base += Rb * mask
    dscale_sp += mask * np.einsum("imo,imo->io", coef, R)
