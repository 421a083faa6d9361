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
  one partial buffer per batch chunk; with I >= ``TASKS`` there is a single
  chunk, so no extra buffer, and each input's rows are owned by one task.
- chunk counts depend on shapes only (results are the same for any number of
  threads), and small layers run on one thread (``_parallel.threads_for``).
- every division of the recursion is a multiplication by a knot reciprocal
  computed once per call (``_scalar.knot_reciprocals``), and the forward pass
  takes b(x) from one vectorised NumPy call instead of a scalar exp per input.
All scratch is allocated by the Python wrappers, in NumPy, except three
vectors of length <= 2(k+1) per task.
"""
from functools import lru_cache

import numpy as np
from numba import njit, prange

from . import _scalar
from ._parallel import TASKS, batch_chunks, threads_for
from ._scalar import BASE_CODES
from .reference import all_finite, asarray, copy_into, fill, to_host, zeros  # host storage, as in the reference
from .reference import base_value as base_value_array

name = "cpu"
TILE = 16  # samples per tile in the forward pass

_jit = dict(nogil=True, cache=True)
base_pair = njit(**_jit)(_scalar.base_pair)
find_span = njit(**_jit)(_scalar.find_span)
local_basis = njit(**_jit)(_scalar.local_basis)
knot_reciprocals = njit(**_jit)(_scalar.knot_reciprocals)
# 'contract' fuses a*b+c into FMA; 'reassoc' lets LLVM vectorise the
# dot products over outputs in the backward pass. No NaN/inf assumptions.
_FAST = {"contract", "reassoc"}


@njit(**_jit)
def _tile_basis(grid, inv, i, x, t0, nb, k, js, Nt, dNt, L, Rr, sv, deriv):
    """Local bases of input i for the samples t0..t0+nb-1 of x, across the tile.

    The same recursion as ``_scalar.local_basis``, with the loop over samples
    innermost so that LLVM vectorises it (the scalar form is a chain of
    dependent operations per sample; across a tile they are independent).
    Fills ``js[u]`` (span), ``Nt[s, u]`` and, when ``deriv``, ``dNt[s, u]``.

    Every sample is first assumed to sit on an interior span (all k+1 bases
    exist), guessed from a uniform grid and checked against the knots. A
    sample for which that fails (outside the knots, a boundary span, or a
    non-uniform grid the guess misses) is redone by the scalar
    ``find_span``/``local_basis`` and marked with ``js[u] = -1 - j`` so the
    caller takes the checked path for it.
    """
    n = grid.shape[1]
    lo = grid[i, 0]
    scale = (n - 1) / (grid[i, n - 1] - lo)
    jmin = k
    jmax = n - 2 - k
    miss = 0
    for u in range(nb):
        xv = x[t0 + u, i]
        g = (xv - lo) * scale
        g = min(max(g, jmin), jmax)  # NaN-free input, so the clamp is total
        js[u] = int(g)
    for u in range(nb):
        xv = x[t0 + u, i]
        g = js[u]
        ok = grid[i, g] <= xv and xv < grid[i, g + 1]
        miss += not ok
        Nt[0, u] = 1.0
    for r in range(1, k + 1):
        for u in range(nb):
            xv = x[t0 + u, i]
            g = js[u]
            L[r, u] = xv - grid[i, g + 1 - r]
            Rr[r, u] = grid[i, g + r] - xv
            sv[u] = 0.0
        for s in range(r):
            for u in range(nb):
                q = Nt[s, u] * inv[i, r, js[u] + 1 - r + s]
                if deriv and r == k:
                    # dB[a,k] = k (B[a,k-1]/(t[a+k]-t[a]) - B[a+1,k-1]/(t[a+k+1]-t[a+1]))
                    dNt[s, u] = (dNt[s, u] if s > 0 else 0.0) - k * q
                    dNt[s + 1, u] = k * q
                Nt[s, u] = sv[u] + Rr[s + 1, u] * q
                sv[u] = L[r - s, u] * q
        for u in range(nb):
            Nt[r, u] = sv[u]
    if miss:
        for u in range(nb):
            xv = x[t0 + u, i]
            g = js[u]
            if grid[i, g] <= xv and xv < grid[i, g + 1]:
                continue
            j = find_span(grid, i, xv)
            if j >= jmin and j <= jmax:  # interior after all (non-uniform knots)
                js[u] = j
            else:
                js[u] = -1 - j  # checked path; j = -1 (outside) gives 0
            for s in range(k + 1):
                Nt[s, u] = 0.0
                dNt[s, u] = 0.0
            if j >= 0:
                local_basis(grid, inv, i, j, xv, k, L[:, u], Rr[:, u], sv, deriv)
                for s in range(k + 1):
                    Nt[s, u] = L[s, u]
                    if deriv:
                        dNt[s, u] = Rr[s, u]


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
            js = np.empty(TILE, dtype=np.int64)
            Nt = np.empty((kp1, TILE), dtype=y.dtype)
            dNt = np.empty((kp1, TILE), dtype=y.dtype)
            L = np.empty((kp1, TILE), dtype=y.dtype)
            Rr = np.empty((kp1, TILE), dtype=y.dtype)
            sv = np.empty(max(TILE, 2 * kp1), dtype=y.dtype)
            b0 = c * B // nchunk
            b1 = (c + 1) * B // nchunk
            for b in range(b0, b1):
                for o in range(O):
                    y[b, o] = 0
            for t0 in range(b0, b1, TILE):
                nb = min(TILE, b1 - t0)
                for i in range(I):
                    _tile_basis(grid, inv, i, x, t0, nb, k, js, Nt, dNt, L, Rr, sv, False)
                    for u in range(nb):
                        b = t0 + u
                        bv = bx[b, i]
                        a = js[u] - k
                        if a >= 0:  # all k+1 bases exist: one fused pass over outputs
                            for o in range(O):
                                acc = bv * Wb[i, o]
                                for s in range(kp1):
                                    acc += Nt[s, u] * W[i, a + s, o]
                                y[b, o] += acc
                        else:  # outside the knots, or a boundary span
                            a = -1 - js[u] - k
                            for o in range(O):
                                y[b, o] += bv * Wb[i, o]
                            for s in range(kp1):
                                if a + s >= 0 and a + s < K:
                                    for o in range(O):
                                        y[b, o] += Nt[s, u] * W[i, a + s, o]

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
            js = np.empty(TILE, dtype=np.int64)
            Nt = np.empty((kp1, TILE), dtype=dy.dtype)
            dNt = np.empty((kp1, TILE), dtype=dy.dtype)
            L = np.empty((kp1, TILE), dtype=dy.dtype)
            Rr = np.empty((kp1, TILE), dtype=dy.dtype)
            sv = np.empty(max(TILE, 2 * kp1), dtype=dy.dtype)
            b0 = c * B // nchunk
            b1 = (c + 1) * B // nchunk
            for t0 in range(b0, b1, TILE):
                nb = min(TILE, b1 - t0)
                _tile_basis(grid, inv, i, x, t0, nb, k, js, Nt, dNt, L, Rr, sv, True)
                for u in range(nb):
                    b = t0 + u
                    bv, bd = base_pair(x[b, i], code)
                    bv = dy.dtype.type(bv)
                    acc_b = dy.dtype.type(0)  # sum_o g * scale_base * mask
                    acc_s = dy.dtype.type(0)  # sum_o g * scale_sp * mask * s'(x)
                    a = js[u] - k
                    if a >= 0:  # all k+1 bases exist: one fused pass over outputs
                        for o in range(O):
                            g = dy[b, o]
                            PB[c, i, o] += bv * g
                            acc_b += g * Wb[i, o]
                            ds = dy.dtype.type(0)
                            for s in range(kp1):
                                P[c, i, a + s, o] += Nt[s, u] * g
                                ds += dNt[s, u] * coef[i, a + s, o]
                            acc_s += g * spm[i, o] * ds
                    else:
                        a = -1 - js[u] - k
                        for o in range(O):
                            g = dy[b, o]
                            PB[c, i, o] += bv * g
                            acc_b += g * Wb[i, o]
                        for s in range(kp1):
                            if a + s >= 0 and a + s < K:
                                for o in range(O):
                                    g = dy[b, o]
                                    P[c, i, a + s, o] += Nt[s, u] * g
                                    acc_s += g * spm[i, o] * dNt[s, u] * coef[i, a + s, o]
                    dx[b, i] += acc_b * bd + acc_s

    return forward, backward


@njit(parallel=True, **_jit)
def _finish_backward(dcoef, dscale_base, dscale_sp, P, PB, coef, spm, mask):
    """Parameter gradients from the chunks' raw sums, in place, no temporaries:
    R = sum_c P[c]; dcoef += R * spm; dscale_sp += mask * sum_m coef * R;
    dscale_base += mask * sum_c PB[c]."""
    nchunk, I, K, O = P.shape
    for i in prange(I):
        for o in range(O):
            rb = PB[0, i, o]
            for c in range(1, nchunk):
                rb += PB[c, i, o]
            dscale_base[i, o] += mask[i, o] * rb
            acc = coef.dtype.type(0)
            for m in range(K):
                r = P[0, i, m, o]
                for c in range(1, nchunk):
                    r += P[c, i, m, o]
                dcoef[i, m, o] += r * spm[i, o]
                acc += coef[i, m, o] * r
            dscale_sp[i, o] += mask[i, o] * acc


def _base_values(x, base_fun):
    """b(x) for the whole batch, vectorised, in one (B, I) buffer. silu as
    x / (1 + exp(-x)): exp overflows to inf for very negative x, which gives
    the correct limit -0."""
    if base_fun != "silu":
        return base_value_array(x, base_fun)
    out = np.negative(x)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += 1
    np.divide(x, out, out=out)
    return out


def _reciprocals(grid, k):
    inv = np.zeros((grid.shape[0], k + 1, grid.shape[1]), dtype=grid.dtype)
    knot_reciprocals(inv, grid, k)
    return inv


def spline_forward(y, x, grid, coef, scale_base, scale_sp, mask, k, base_fun):
    """Compiled ``reference.spline_forward``: y (B, O) overwritten."""
    W = coef * (scale_sp * mask)[:, None, :]
    Wb = scale_base * mask
    bx = _base_values(x, base_fun)  # NumPy's vectorised exp beats a scalar one per sample
    B, I = x.shape
    nchunk = max(1, min(B, TASKS))  # each chunk owns its rows of y: any split gives the same y
    with threads_for(B * I * y.shape[1]):
        _kernels(k)[0](y, x, bx, grid, _reciprocals(grid, k), W, Wb, nchunk)
    return y


def spline_backward(dx, dcoef, dscale_base, dscale_sp, dy, x, grid, coef,
                    scale_base, scale_sp, mask, k, base_fun):
    """Compiled ``reference.spline_backward``: adds into dx, dcoef, dscale_base, dscale_sp.

    The kernel gathers raw sums R[i,m,o] = sum_b g[b,o] B[m,k](x[b,i]) and
    Rb[i,o] = sum_b g[b,o] b(x[b,i]); the parameter gradients follow in
    O(I*K*O):  dcoef += R * scale_sp * mask,  dscale_base += Rb * mask,
    dscale_sp += mask * sum_m coef * R  (since s = sum_m coef * B[m]).
    Extra memory: R, one coefficient-sized buffer per batch chunk (a single
    one when I >= ``_parallel.TASKS``).
    """
    B, I = x.shape
    nchunk = batch_chunks(B, I)  # one when the inputs alone give enough tasks: no partial buffers
    P = np.zeros((nchunk,) + coef.shape, dtype=coef.dtype)
    PB = np.zeros((nchunk,) + scale_base.shape, dtype=coef.dtype)
    spm = scale_sp * mask
    with threads_for(B * I * dy.shape[1]):
        _kernels(k)[1](dx, P, PB, dy, x, grid, _reciprocals(grid, k), coef, spm, scale_base * mask,
                       BASE_CODES[base_fun], nchunk)
        _finish_backward(dcoef, dscale_base, dscale_sp, P, PB, coef, spm, mask)


# ===========================================================================
# Training ops (loss, Adam step, regulariser moments) live in cpu_train.py.
from .cpu_train import (adam_step, edge_moments_backward, edge_moments_forward,  # noqa: E402,F401
                        mse_loss_grad)
