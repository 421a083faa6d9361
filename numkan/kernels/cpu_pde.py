"""Numba CPU input-derivative ops (physics-informed training), re-exported by ``cpu.py``.

    spline_jet_forward / spline_jet_backward    reference: ``reference.spline_jet_forward``
                                                and ``reference.spline_jet_backward``; the
                                                maths is derived in ``numkan.pde``

One sample and one input at a time, as the reference's local form: find the
span, build the triangle of local bases of every order 0..k, and from it the
k+1 bases' derivatives up to order 3 (``_basis_derivs``), then meet the
coefficients. No (B, I, O) array is built.

Parallelism without data races: the forward runs ``prange`` over chunks of
samples (sample b owns its rows y[b], Jy[b], Hy[b]); the backward runs ``prange``
over inputs (input i owns dcoef[i], dscale_base[i], dscale_sp[i] and the
columns dx[:, i], dJ[:, i], dH[:, i]), and each task sums over the whole
batch in order, so results do not depend on the number of threads.
Small problems run on one thread (``_parallel.threads_for``).

Names: W = coef * scale_sp * mask (I, K, O), Wb = scale_base * mask (I, O),
spm = scale_sp * mask; T (k+1, k+1) the triangle T[r, s] = B[j-r+s, r](x);
Dq (4, k+1) the bases' derivatives Dq[q, s] = d^q/dx^q B[j-k+s, k](x).
"""
import math

import numpy as np
from numba import njit, prange

from . import _scalar
from ._parallel import TASKS, threads_for
from ._scalar import BASE_CODES, IDENTITY, SILU
from .cpu_train import _reciprocals

_jit = dict(nogil=True, cache=True)
_find_span = njit(**_jit)(_scalar.find_span)


@njit(inline="always")
def _base_derivs(bq, x, code):
    """bq[q] = b^(q)(x), q = 0..3 (``reference.base_derivs``, the same formulas)."""
    if code == SILU:
        e = math.exp(-abs(x))
        sig = 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)
        p = e / ((1.0 + e) * (1.0 + e))   # sigma (1 - sigma), without cancellation
        q = 1.0 - 2.0 * sig
        bq[0] = x * sig
        bq[1] = sig * (1.0 + x * (1.0 - sig))
        bq[2] = p * (2.0 + x * q)
        bq[3] = p * (3.0 * q + x * (q * q - 2.0 * p))
    elif code == IDENTITY:
        bq[0] = x
        bq[1] = 1.0 + 0.0 * x
        bq[2] = 0.0 * x
        bq[3] = 0.0 * x
    else:
        for q in range(4):
            bq[q] = 0.0 * x


@njit(inline="always")
def _basis_derivs(Dq, T, w, knots, inv, i, j, x, k, nder):
    """Dq[q, s] = d^q B[j-k+s, k](x) for q = 0..nder on span j >= 0 (0 where the basis
    does not exist), as ``reference.local_basis_derivs``: the triangle of values
    of every order, then q applications of the derivative rule from order k-q.
    ``inv[i, r, m] = 1 / (t[m+r] - t[m])`` (0 for coinciding knots) turns every
    division into a multiplication (``_scalar.knot_reciprocals``)."""
    nk = knots.shape[1]
    T[0, 0] = 1.0
    for r in range(1, k + 1):
        for s in range(r + 1):
            a = j - r + s
            v = 0.0
            if a >= 0 and a <= nk - 2 - r:
                if s >= 1:
                    v += (x - knots[i, a]) * inv[i, r, a] * T[r - 1, s - 1]
                if s <= r - 1:
                    v += (knots[i, a + r + 1] - x) * inv[i, r, a + 1] * T[r - 1, s]
            T[r, s] = v
    for s in range(k + 1):
        Dq[0, s] = T[k, s]
    for q in range(1, nder + 1):
        if q > k:
            for s in range(k + 1):
                Dq[q, s] = 0.0
            continue
        for s in range(k - q + 1):
            w[s] = T[k - q, s]
        for r in range(k - q + 1, k + 1):
            # in place, from the top slot down: slot s reads slots s-1 and s of order r-1
            for s in range(r, -1, -1):
                a = j - r + s
                v = 0.0
                if a >= 0 and a <= nk - 2 - r:
                    if s >= 1:
                        v += w[s - 1] * inv[i, r, a]
                    if s <= r - 1:
                        v -= w[s] * inv[i, r, a + 1]
                w[s] = r * v
        for s in range(k + 1):
            Dq[q, s] = w[s]


@njit(inline="always")
def _edge_derivs(phi, Dq, bq, j, W, Wb, i, k, o, nder):
    """phi[q] = phi^(q)[i, o] for q = 0..nder from the base derivatives bq and the local
    bases' derivatives Dq at span j (only the base terms when j < 0)."""
    K = W.shape[1]
    for q in range(nder + 1):
        phi[q] = Wb[i, o] * bq[q]
    if j >= 0:
        for s in range(max(0, k - j), min(k + 1, K + k - j)):
            wv = W[i, j - k + s, o]
            for q in range(nder + 1):
                phi[q] += wv * Dq[q, s]


@njit(parallel=True, **_jit)
def _jet_forward_kernel(y, Jy, Hy, x, J, H, knots, inv, W, Wb, k, code):
    B, I = x.shape
    O = W.shape[2]
    D = J.shape[2]
    nchunk = min(B, TASKS)
    for c in prange(nchunk):
        # scratch once per chunk of samples, not per sample
        Dq = np.zeros((4, k + 1), dtype=W.dtype)
        T = np.zeros((k + 1, k + 1), dtype=W.dtype)
        w = np.zeros(k + 1, dtype=W.dtype)
        bq = np.zeros(4, dtype=W.dtype)
        phi = np.zeros(4, dtype=W.dtype)
        for b in range(c * B // nchunk, (c + 1) * B // nchunk):
            for o in range(O):
                y[b, o] = 0.0
                for d in range(D):
                    Jy[b, o, d] = 0.0
                    Hy[b, o, d] = 0.0
            for i in range(I):
                xv = x[b, i]
                _base_derivs(bq, xv, code)
                j = _find_span(knots, i, xv)
                if j >= 0:
                    _basis_derivs(Dq, T, w, knots, inv, i, j, xv, k, 2)
                for o in range(O):
                    _edge_derivs(phi, Dq, bq, j, W, Wb, i, k, o, 2)
                    y[b, o] += phi[0]
                    for d in range(D):
                        jd = J[b, i, d]
                        Jy[b, o, d] += phi[1] * jd
                        Hy[b, o, d] += phi[2] * jd * jd + phi[1] * H[b, i, d]


@njit(parallel=True, **_jit)
def _jet_backward_kernel(dx, dJ, dH, dcoef, dscale_base, dscale_sp, gy, gJ, gH, x, J, H, knots,
                         inv, coef, W, Wb, spm, mask, k, code):
    B, I = x.shape
    K = W.shape[1]
    O = W.shape[2]
    D = J.shape[2]
    for i in prange(I):
        Dq = np.zeros((4, k + 1), dtype=W.dtype)
        T = np.zeros((k + 1, k + 1), dtype=W.dtype)
        w = np.zeros(k + 1, dtype=W.dtype)
        bq = np.zeros(4, dtype=W.dtype)
        phi = np.zeros(4, dtype=W.dtype)
        R = np.zeros((K, O), dtype=W.dtype)      # sum_b (a0 B + a1 B' + a2 B'')[m] per output
        RB = np.zeros(O, dtype=W.dtype)          # sum_b (a0 b + a1 b' + a2 b'')
        for b in range(B):
            xv = x[b, i]
            _base_derivs(bq, xv, code)
            j = _find_span(knots, i, xv)
            if j >= 0:
                _basis_derivs(Dq, T, w, knots, inv, i, j, xv, k, 3)
            dxb = 0.0
            for o in range(O):
                a1 = 0.0
                a2 = 0.0
                for d in range(D):
                    jd = J[b, i, d]
                    a1 += gJ[b, o, d] * jd + gH[b, o, d] * H[b, i, d]
                    a2 += gH[b, o, d] * jd * jd
                a0 = gy[b, o]
                _edge_derivs(phi, Dq, bq, j, W, Wb, i, k, o, 3)
                dxb += a0 * phi[1] + a1 * phi[2] + a2 * phi[3]
                RB[o] += a0 * bq[0] + a1 * bq[1] + a2 * bq[2]
                if j >= 0:
                    for s in range(max(0, k - j), min(k + 1, K + k - j)):
                        R[j - k + s, o] += a0 * Dq[0, s] + a1 * Dq[1, s] + a2 * Dq[2, s]
                for d in range(D):
                    dJ[b, i, d] += gJ[b, o, d] * phi[1] + 2.0 * gH[b, o, d] * phi[2] * J[b, i, d]
                    dH[b, i, d] += gH[b, o, d] * phi[1]
            dx[b, i] += dxb
        # R holds the spline's raw sums: dcoef = R * spm, dscale_sp = mask * sum_m coef R
        for o in range(O):
            dscale_base[i, o] += mask[i, o] * RB[o]
            acc = 0.0
            for m in range(K):
                dcoef[i, m, o] += R[m, o] * spm[i, o]
                acc += coef[i, m, o] * R[m, o]
            dscale_sp[i, o] += mask[i, o] * acc


def spline_jet_forward(y, Jy, Hy, x, J, H, knots, coef, scale_base, scale_sp, mask, k, base_fun):
    """Compiled ``reference.spline_jet_forward``: y (B, O), Jy, Hy (B, O, D) overwritten."""
    W = coef * (scale_sp * mask)[:, None, :]
    with threads_for(x.shape[0] * coef.shape[0] * coef.shape[2] * J.shape[2]):
        _jet_forward_kernel(y, Jy, Hy, x, J, H, knots, _reciprocals(knots, k), W, scale_base * mask, k, BASE_CODES[base_fun])


def spline_jet_backward(dx, dJ, dH, dcoef, dscale_base, dscale_sp, gy, gJ, gH, x, J, H, knots,
                        coef, scale_base, scale_sp, mask, k, base_fun):
    """Compiled ``reference.spline_jet_backward``: adds into dx, dJ, dH and the parameter gradients."""
    spm = scale_sp * mask
    W = coef * spm[:, None, :]
    dt = coef.dtype
    with threads_for(x.shape[0] * coef.shape[0] * coef.shape[2] * J.shape[2]):
        _jet_backward_kernel(dx, dJ, dH, dcoef, dscale_base, dscale_sp, gy.astype(dt), gJ.astype(dt),
                             gH.astype(dt), x, J, H, knots, _reciprocals(knots, k), coef, W, scale_base * mask, spm, mask, k,
                             BASE_CODES[base_fun])
