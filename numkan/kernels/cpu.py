"""Numba CPU kernels: the reference's maths, compiled, parallel and local.

Same functions and signatures as ``reference.py`` (the definition these are
tested against). The scalar maths (span search, Cox-de Boor on the local
triangle, silu) comes from ``_scalar.py`` and is compiled here with ``njit``.

Work per sample and input: one span search, the k+1 local bases, then one
fused pass over the O outputs that adds k+1 coefficient rows and the base row.
Cost per edge does not depend on the grid size G.

Why it is fast:
- the kernels are compiled once per spline order k (``_kernels(k)``), so the
  loops over the k+1 local bases have a constant trip count: LLVM unrolls them
  and vectorises the loop over outputs with all k+2 terms fused into one pass;
- the forward pass walks the batch in tiles of ``TILE`` samples per input, so
  that input's coefficient block (K, O) stays in L1 while the tile uses it;
- no array views are made in the inner loops (each view costs reference-count
  traffic shared between threads).

Parallelism without data races:
- forward: ``prange`` over chunks of the batch; each chunk owns its rows of y.
- backward: ``prange`` over (batch chunk, input) tasks. dx[b, i] has exactly one
  owner. The reduction over the batch for the coefficient gradient goes into
  one partial buffer per batch chunk; with I >= 2 * threads there is a single
  chunk, so no extra buffer, and each input's rows are owned by one task.
- every division of the recursion is a multiplication by a knot reciprocal
  computed once per call (``_scalar.knot_reciprocals``), and the forward pass
  takes b(x) from one vectorised NumPy call instead of a scalar exp per input.
All scratch is allocated by the Python wrappers, in NumPy, except three
vectors of length <= 2(k+1) per task.
"""
from functools import lru_cache

import numba
import numpy as np
from numba import njit, prange

from . import _scalar
from ._scalar import BASE_CODES
from .reference import all_finite, asarray, fill, to_host, zeros  # host storage, as in the reference
from .reference import base_value as base_value_array

name = "cpu"
TILE = 16  # samples per tile in the forward pass

_jit = dict(nogil=True, cache=True)
base_value = njit(inline="always", **_jit)(_scalar.base_value)
base_deriv = njit(inline="always", **_jit)(_scalar.base_deriv)
find_span = njit(inline="always", **_jit)(_scalar.find_span)
local_basis = njit(inline="always", **_jit)(_scalar.local_basis)
knot_reciprocals = njit(**_jit)(_scalar.knot_reciprocals)
# 'contract' fuses a*b+c into FMA; 'reassoc' lets LLVM vectorise the
# dot products over outputs in the backward pass. No NaN/inf assumptions.
_FAST = {"contract", "reassoc"}


@lru_cache(maxsize=None)
def _kernels(k):
    """Forward and backward kernels compiled for spline order ``k`` (a constant)."""
    kp1 = k + 1

    @njit(parallel=True, fastmath=_FAST, **_jit)
    def forward(y, x, bx, grid, inv, W, Wb, nchunk):
        # y (B, O) out; x (B, I); bx = b(x) (B, I); grid (I, n); inv: knot reciprocals;
        # W = coef * scale_sp * mask (I, K, O); Wb = scale_base * mask (I, O)
        B, I = x.shape
        O = y.shape[1]
        K = W.shape[1]
        for c in prange(nchunk):
            N = np.empty(kp1, dtype=y.dtype)
            dN = np.empty(kp1, dtype=y.dtype)
            work = np.empty(2 * kp1, dtype=y.dtype)
            b0 = c * B // nchunk
            b1 = (c + 1) * B // nchunk
            for b in range(b0, b1):
                for o in range(O):
                    y[b, o] = 0
            for t0 in range(b0, b1, TILE):
                t1 = min(t0 + TILE, b1)
                for i in range(I):
                    for b in range(t0, t1):
                        xv = x[b, i]
                        bv = bx[b, i]
                        j = find_span(grid, i, xv)
                        a = j - k
                        if j >= 0:
                            local_basis(grid, inv, i, j, xv, k, N, dN, work, False)
                        if j >= 0 and a >= 0 and j < K:  # all k+1 bases exist: one fused pass
                            for o in range(O):
                                acc = bv * Wb[i, o]
                                for s in range(kp1):
                                    acc += N[s] * W[i, a + s, o]
                                y[b, o] += acc
                        else:  # outside the knots, or a boundary span
                            for o in range(O):
                                y[b, o] += bv * Wb[i, o]
                            if j >= 0:
                                for s in range(kp1):
                                    if a + s >= 0 and a + s < K:
                                        ns = N[s]
                                        for o in range(O):
                                            y[b, o] += ns * W[i, a + s, o]

    @njit(parallel=True, fastmath=_FAST, **_jit)
    def backward(dx, P, PB, dy, x, grid, inv, coef, spm, Wb, code, nchunk):
        # dx (B, I) +=; P (nchunk, I, K, O) += sum_b g * B[m](x);
        # PB (nchunk, I, O) += sum_b g * b(x); spm = scale_sp * mask (I, O)
        B, I = x.shape
        O = dy.shape[1]
        K = coef.shape[1]
        for task in prange(nchunk * I):
            c = task // I
            i = task - c * I
            N = np.empty(kp1, dtype=dy.dtype)
            dN = np.empty(kp1, dtype=dy.dtype)
            work = np.empty(2 * kp1, dtype=dy.dtype)
            b0 = c * B // nchunk
            b1 = (c + 1) * B // nchunk
            for b in range(b0, b1):
                xv = x[b, i]
                bv = dy.dtype.type(base_value(xv, code))
                j = find_span(grid, i, xv)
                a = j - k
                acc_b = dy.dtype.type(0)  # sum_o g * scale_base * mask
                acc_s = dy.dtype.type(0)  # sum_o g * scale_sp * mask * s'(x)
                if j >= 0:
                    local_basis(grid, inv, i, j, xv, k, N, dN, work, True)
                if j >= 0 and a >= 0 and j < K:  # all k+1 bases exist: one fused pass
                    for o in range(O):
                        g = dy[b, o]
                        PB[c, i, o] += bv * g
                        acc_b += g * Wb[i, o]
                        ds = dy.dtype.type(0)
                        for s in range(kp1):
                            P[c, i, a + s, o] += N[s] * g
                            ds += dN[s] * coef[i, a + s, o]
                        acc_s += g * spm[i, o] * ds
                else:
                    for o in range(O):
                        g = dy[b, o]
                        PB[c, i, o] += bv * g
                        acc_b += g * Wb[i, o]
                    if j >= 0:
                        for s in range(kp1):
                            if a + s >= 0 and a + s < K:
                                ns = N[s]
                                dns = dN[s]
                                for o in range(O):
                                    g = dy[b, o]
                                    P[c, i, a + s, o] += ns * g
                                    acc_s += g * spm[i, o] * dns * coef[i, a + s, o]
                dx[b, i] += acc_b * base_deriv(xv, code) + acc_s

    return forward, backward


def _reciprocals(grid, k):
    inv = np.zeros((grid.shape[0], k + 1, grid.shape[1]), dtype=grid.dtype)
    knot_reciprocals(inv, grid, k)
    return inv


def _chunks(B, tasks_wanted):
    """Number of batch chunks: enough for the threads, never more than B."""
    return max(1, min(B, tasks_wanted))


def spline_forward(y, x, grid, coef, scale_base, scale_sp, mask, k, base_fun):
    """Compiled ``reference.spline_forward``: y (B, O) overwritten."""
    W = coef * (scale_sp * mask)[:, None, :]
    Wb = scale_base * mask
    bx = base_value_array(x, base_fun)  # NumPy's vectorised exp beats a scalar one per call
    nchunk = _chunks(x.shape[0], 4 * numba.get_num_threads())
    _kernels(k)[0](y, x, bx, grid, _reciprocals(grid, k), W, Wb, nchunk)
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
    _kernels(k)[1](dx, P, PB, dy, x, grid, _reciprocals(grid, k), coef, spm, scale_base * mask,
                   BASE_CODES[base_fun], nchunk)
    R = P[0] if nchunk == 1 else P.sum(axis=0)
    Rb = PB[0] if nchunk == 1 else PB.sum(axis=0)
    dcoef += R * spm[:, None, :]
    dscale_base += Rb * mask
    dscale_sp += mask * np.einsum("imo,imo->io", coef, R)


# ===========================================================================
# Training ops (loss, Adam step, regulariser moments) live in cpu_train.py.
from .cpu_train import (adam_step, edge_moments_backward, edge_moments_forward,  # noqa: E402,F401
                        mse_loss_grad)
