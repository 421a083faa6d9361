"""Numba CPU training ops, re-exported by ``cpu.py`` (which imports this module;
this module imports nothing of ``cpu.py``).

    mse_loss_grad                     one compiled pass (at a thousand samples the
                                      reference's five NumPy calls cost more than the pass)
    adam_step                         elementwise over small arrays: the
                                      reference's vectorised NumPy is the kernel
    edge_moments_forward/_backward    the sparsity regulariser's batch sums,
                                      compiled (reference:
                                      ``reference.edge_moments_forward/_backward``)
    finish_input                      raw sums -> parameter gradients of one input,
                                      shared with the layer's backward in ``cpu.py``

Parallelism without data races: ``prange`` over (batch chunk, input) tasks.
Task (c, i) owns its slice of the per-chunk partial sums and the rows of dx in
its chunk for input i; partial sums are added up afterwards. No (B, I, O)
array is built: each task keeps one length-O row of edge values.

Names: W = coef * scale_sp * mask (I, K, O), Wb = scale_base * mask (I, O),
spm = scale_sp * mask (I, O); inv the knot reciprocals (``_scalar.knot_reciprocals``);
N, dN the k+1 local bases and their derivatives; P, PB the raw sums of the
backward (P[c, i, m, o] = sum over chunk c of g * B[m], PB[c, i, o] of g * b(x)).
"""
import numpy as np
from numba import njit, prange

from . import _scalar
from ._parallel import batch_chunks, threads_for
from ._scalar import BASE_CODES
from .reference import adam_step  # noqa: F401  (re-exported)

_jit = dict(nogil=True, cache=True)
_base_value = njit(**_jit)(_scalar.base_value)
_base_pair = njit(**_jit)(_scalar.base_pair)
_find_span = njit(**_jit)(_scalar.find_span)
_local_basis = njit(**_jit)(_scalar.local_basis)
_knot_reciprocals = njit(**_jit)(_scalar.knot_reciprocals)


@njit(inline="always")
def _existing_rows(j, k, K):
    """The local bases s in range(lo, hi) of span j >= 0 whose coefficient row j-k+s
    exists (0 <= j-k+s < K): all k+1 of an interior span, fewer near the ends."""
    return max(0, k - j), min(k + 1, K + k - j)


@njit(inline="always")
def _edge_row(phi, N, dN, work, xv, bv, knots, inv, W, Wb, i, k, deriv):
    """phi[o] = phi_io(xv) for every output o: b(x) * Wb[i, o] (bv = b(x)) plus the
    local spline terms N[s] * W[i, j-k+s, o] whose rows exist. Fills N (and dN when
    ``deriv``) with the local bases at x's span j, and returns j (-1 outside the
    knots, where only the base term remains)."""
    O = W.shape[2]
    K = W.shape[1]
    j = _find_span(knots, i, xv)
    for o in range(O):
        phi[o] = bv * Wb[i, o]
    if j >= 0:
        _local_basis(knots, inv, i, j, xv, k, N, dN, work, deriv)
        s0, s1 = _existing_rows(j, k, K)
        for s in range(s0, s1):
            ns = N[s]
            for o in range(O):
                phi[o] += ns * W[i, j - k + s, o]
    return j


@njit(inline="always")
def _task(task, B, I, nchunk):
    """Task number -> (batch chunk c, input i, the chunk's samples b0:b1)."""
    c = task // I
    return c, task - c * I, c * B // nchunk, (c + 1) * B // nchunk


@njit(inline="always")
def _basis_scratch(k, dtype):
    """N, dN (k+1,) and the work array (2(k+1),) of ``_scalar.local_basis``."""
    return np.empty(k + 1, dtype=dtype), np.empty(k + 1, dtype=dtype), np.empty(2 * (k + 1), dtype=dtype)


@njit(parallel=True, **_jit)
def _moments_forward_kernel(S1, S2, XS1, XS2, x, knots, inv, W, Wb, k, code, nchunk):
    # S1, S2 (nchunk, I, O) and XS1, XS2 (nchunk, I): float64 partial sums.
    B, I = x.shape
    O = W.shape[2]
    for task in prange(nchunk * I):
        c, i, b0, b1 = _task(task, B, I, nchunk)
        N, dN, work = _basis_scratch(k, W.dtype)
        phi = np.empty(O, dtype=np.float64)
        a1 = 0.0
        a2 = 0.0
        for b in range(b0, b1):
            xv = x[b, i]
            a1 += xv
            a2 += xv * xv
            _edge_row(phi, N, dN, work, xv, _base_value(xv, code), knots, inv, W, Wb, i, k, False)
            for o in range(O):
                S1[c, i, o] += phi[o]
                S2[c, i, o] += phi[o] * phi[o]
        XS1[c, i] = a1
        XS2[c, i] = a2


@njit(parallel=True, **_jit)
def _moments_backward_kernel(dx, P, PB, ds1, ds2, dxs1, dxs2, x, knots, inv, W, Wb, k, code, nchunk):
    # dx (B, I) +=; P (nchunk, I, K, O) and PB (nchunk, I, O): raw sums with g = dL/dphi.
    B, I = x.shape
    O = W.shape[2]
    K = W.shape[1]
    for task in prange(nchunk * I):
        c, i, b0, b1 = _task(task, B, I, nchunk)
        N, dN, work = _basis_scratch(k, W.dtype)
        g = np.empty(O, dtype=W.dtype)
        for b in range(b0, b1):
            xv = x[b, i]
            bv, bd = _base_pair(xv, code)
            j = _edge_row(g, N, dN, work, xv, bv, knots, inv, W, Wb, i, k, True)  # phi; g below
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


@njit(inline="always", fastmath={"contract", "reassoc"})
def finish_input(dcoef, dscale_base, dscale_sp, P, PB, coef, spm, mask, i):
    """Input i's parameter gradients from the chunks' raw sums, in place:
    R = sum_c P[c, i]; dcoef[i] += R * spm[i]; dscale_sp[i] += mask[i] * sum_m coef[i] * R;
    dscale_base[i] += mask[i] * sum_c PB[c, i].
    Row by row (m outside, o inside: contiguous, vectorised; the sum over m of each
    output is added in the same order as one output at a time would be), with
    one row of O partial sums."""
    nchunk, I, K, O = P.shape
    acc = np.zeros(O, dtype=coef.dtype)
    for o in range(O):
        rb = PB[0, i, o]
        for c in range(1, nchunk):
            rb += PB[c, i, o]
        dscale_base[i, o] += mask[i, o] * rb
    for m in range(K):
        for o in range(O):
            r = P[0, i, m, o]
            for c in range(1, nchunk):
                r += P[c, i, m, o]
            dcoef[i, m, o] += r * spm[i, o]
            acc[o] += coef[i, m, o] * r
    for o in range(O):
        dscale_sp[i, o] += mask[i, o] * acc[o]


@njit(parallel=True, **_jit)
def _finish_backward(dcoef, dscale_base, dscale_sp, P, PB, coef, spm, mask):
    for i in prange(P.shape[1]):
        finish_input(dcoef, dscale_base, dscale_sp, P, PB, coef, spm, mask, i)


@njit(**_jit)
def _fill_reciprocals(inv, knots, k):
    for i in range(knots.shape[0]):
        _knot_reciprocals(inv, knots, i, k)


def _reciprocals(knots, k):
    """The knot reciprocals of every input (``_scalar.knot_reciprocals``); zeroed first,
    so that the entries no knot difference fills (never read) are defined."""
    inv = np.zeros((knots.shape[0], k + 1, knots.shape[1]), knots.dtype)
    _fill_reciprocals(inv, knots, k)
    return inv


def edge_moments_forward(s1, s2, xs1, xs2, x, knots, coef, scale_base, scale_sp, mask, k, base_fun):
    """Compiled ``reference.edge_moments_forward``: s1, s2 (I, O), xs1, xs2 (I,) overwritten (float64)."""
    B, I = x.shape
    nchunk = batch_chunks(B, I)
    S1 = np.zeros((nchunk,) + s1.shape)
    S2 = np.zeros((nchunk,) + s1.shape)
    XS1 = np.zeros((nchunk, I))
    XS2 = np.zeros((nchunk, I))
    W = coef * (scale_sp * mask)[:, None, :]
    with threads_for(B * I * coef.shape[2]):
        _moments_forward_kernel(S1, S2, XS1, XS2, x, knots, _reciprocals(knots, k), W, scale_base * mask, k,
                                BASE_CODES[base_fun], nchunk)
    s1[...] = S1.sum(axis=0)
    s2[...] = S2.sum(axis=0)
    xs1[...] = XS1.sum(axis=0)
    xs2[...] = XS2.sum(axis=0)


def edge_moments_backward(dx, dcoef, dscale_base, dscale_sp, ds1, ds2, dxs1, dxs2, x, knots,
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
                                 dxs2.astype(dt), x, knots, _reciprocals(knots, k), W, scale_base * mask, k,
                                 BASE_CODES[base_fun], nchunk)
        _finish_backward(dcoef, dscale_base, dscale_sp, P, PB, coef, spm, mask)


@njit(nogil=True, cache=True)
def _mse(dy, y, target):
    """dy = 2 (y - target) / y.size (in y's dtype, as the reference); returns the sum
    of the squared differences in float64, added in sample order (serial)."""
    c = dy.dtype.type(2.0 / y.size)
    acc = 0.0
    for b in range(y.shape[0]):
        for o in range(y.shape[1]):
            d = y[b, o] - target[b, o]
            dy[b, o] = c * d
            d64 = np.float64(d)
            acc += d64 * d64
    return acc


def mse_loss_grad(dy, y, target):
    """Compiled ``reference.mse_loss_grad``: loss = mean((y - target)**2) (a Python
    float, summed in float64 in sample order, where the reference sums pairwise:
    the two agree to rounding), dy = 2 (y - target) / y.size overwritten."""
    return _mse(dy, y, target) / y.size
