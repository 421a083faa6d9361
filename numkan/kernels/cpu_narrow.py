"""Numba CPU kernels for narrow layers: few outputs, where the bases are the work.

``cpu.spline_forward`` / ``cpu.spline_backward`` send a layer here when it has
few outputs and an order up to ``MAX_ORDER`` (``serves``): the [2, 5, 1],
[4, 4, 2, 1] and [100, 1, 1] models scientists train. Same maths, same non-finite semantics as
``reference.spline_forward`` / ``spline_backward`` (tested against them in
tests/test_narrow.py and tests/test_kernels.py). At a few outputs per input,
the coefficient contraction is almost free; what costs is the span search and
the k+1 local bases of every (sample, input), and Python around the calls.

How the work is laid out: a tile of T samples at a time, one input at a time,
everything stored "structure of arrays" (one row per basis, one lane per
sample), and every loop that computes has the lanes innermost, so LLVM
vectorises it (it vectorises innermost loops only):

    XS, J, IN   (T,)       x, its span, 1 if x is inside the knots
    KW (2k, T)             the 2k knots t[j-k+1 .. j+k] around each lane's span
    NB, DB (k+1, T)        the local bases B[j-k+s, k](x) and their derivatives
    SV (T,)                Cox-de Boor's left term of a slot, carried to the next
    BX, BD (T,)            b(x), b'(x)
    CW (K + 2k,)           coef[i, :, o] with k zeros either side (``_coef_row``)
    TMP, DX (T,)           one output's spline term s(x) (or s'(x)); the tile's dx
    ACC (O, T)             the forward's outputs of the tile, summed over inputs
    GT (O, T)              the backward's dy of the tile, transposed
    P (I, K, O), PB (I, O) the backward's raw sums: sum_b dy * B[m](x), sum_b dy * b(x)

The order k is a run-time argument (its loops are outside the lane loops, so
nothing needs unrolling): ``forward_rows`` and ``backward_rows`` compile once
per dtype, about 2 s each, where the wide kernels of ``cpu.py`` take 10-15 s
per (k, dtype). The scratch is on the stack, sized for ``MAX_ORDER`` and
``MAX_OUTPUTS``.

Measured (benchmarks/RESULTS.md): at 1 to 5 outputs these kernels run as fast
as the wide ones per (sample, input), and above 5 outputs slower (each output
gathers its own coefficients lane by lane), hence ``MAX_OUTPUTS``. What the
time goes to: the span guess and the 2k knot gathers, the k(k+1)/2 divisions of
the triangle (about half of the bases), then per output k+1 coefficient
gathers; the backward recomputes the bases, with their derivatives.

The span: the guess uniform knots give, int((x - t[0]) (n-1) / (t[-1] - t[0])),
clamped as a float (a NaN or inf never becomes an index), checked against the
knots in the lanes; the lanes where it missed (non-uniform knots, outside the
knots, non-finite x) get a binary search (``_scalar.find_span``), one by one.

The local triangle on a boundary span reads knots before the first or past
the last; the reads are clamped to the knot array. That changes only bases
that do not exist (each existing B[a, r] depends on t[a .. a+r+1] alone), and
their terms are dropped, as are all spline terms of an x outside the knots,
whose triangle runs on a placeholder x = t[0] and is never used (a select,
not a multiplication by 0: a NaN or inf in coef or dy reaches no such term).

Threads and determinism: a batch is cut into chunks whose number depends on
the shape only (``chunks``); one chunk (every batch up to a few thousand
samples) runs in the calling thread, with no thread pool at all. Several
chunks run in parallel (``prange``), each owning its rows of y and dx and its
own raw sums, which are then added chunk by chunk in order: the same bits for
any number of threads.
"""
import numpy as np
from numba import njit, prange

from . import _scalar
from ._numba import local_array, serial_part
from ._parallel import SERIAL_EDGES, TASKS, threads_for
from ._scalar import IDENTITY, SILU
from ._vexp import vexp

TILE = 64             # samples per tile (lanes): 8 AVX-512 registers of float64
MAX_ORDER = 7         # the largest k served here (the scratch is on the stack, sized for it)
MAX_OUTPUTS = 5       # the most outputs served here: above, the wide kernels are faster (RESULTS.md)
CHUNK_SAMPLES = 8192  # samples per parallel chunk, at least (RESULTS.md: launches cost on a busy machine)
# stack scratch sizes (rows of TILE lanes): bases, knots around the spans, outputs
_NROWS = (MAX_ORDER + 1) * TILE
_KWROWS = 2 * MAX_ORDER * TILE
_OROWS = MAX_OUTPUTS * TILE

# 'contract' fuses a*b+c into FMA; no reassociation (the lane loops vectorise without
# it, and sums keep one order). error_model="numpy": a division by 0 gives inf, not a
# Python exception, and has no check that would keep the loops scalar.
_jit = dict(nogil=True, cache=True, fastmath={"contract"}, error_model="numpy")
_find_span = njit(**_jit)(_scalar.find_span)
# The helpers are inlined into the two kernels (Numba IR inlining: one compiled function
# per pass, optimised once; a chain of separately compiled functions is optimised again at
# every level that links it, which doubled the cold start). The kernels are serial parts
# (``_numba.serial_part``: arguments that do not overlap, no reference counting, so they
# allocate nothing: their callers hand them the raw sums and a coefficient row). Their
# scratch is flat stack arrays (``_numba.local_array``), row r of lane u at r * TILE + u:
# a constant row stride, and arrays LLVM knows apart from every argument, so the lane
# loops vectorise.
_inline = njit(inline="always", fastmath={"contract"}, error_model="numpy")


def serves(O, k):
    """Whether a layer with O outputs and spline order k runs here."""
    return O <= MAX_OUTPUTS and k <= MAX_ORDER


def chunks(B, I, O):
    """Batch chunks: one (the calling thread, no thread pool) for fewer than
    ``_parallel.SERIAL_EDGES`` edges or ``2 * CHUNK_SAMPLES`` samples, else up to
    ``_parallel.TASKS``. Depends on the shape only (see the module docstring)."""
    if B * I * O < SERIAL_EDGES or B < 2 * CHUNK_SAMPLES:
        return 1
    return min(TASKS, B // CHUNK_SAMPLES)


@_inline
def _gather_knots(KW, knots, i, j, u, k):
    """KW[m, u] = t[j-k+1+m] for m = 0 .. 2k-1, the index clamped to the knots."""
    n = knots.shape[1]
    for m in range(2 * k):
        KW[m * TILE + u] = knots[i, min(max(j - k + 1 + m, 0), n - 1)]


@_inline
def _tile_bases(NB, DB, SV, J, IN, XS, KW, x, b0, nb, knots, i, k, deriv):
    """Spans J, inside flags IN and local bases NB (and DB when ``deriv``) of input i
    for the samples b0 .. b0+nb-1, one lane each (see the module docstring)."""
    T = TILE
    n = knots.shape[1]
    dt = XS.dtype.type
    zero = dt(0)
    one = dt(1)
    kk = dt(k)
    t0 = knots[i, 0]
    sc = dt(n - 1) / (knots[i, n - 1] - t0)
    last = dt(n - 2)
    # 1. the guess, clamped as a float (NaN to 0), and the knots around it
    for u in range(TILE):
        xv = x[b0 + min(u, nb - 1), i]  # idle lanes repeat the last sample
        g = (xv - t0) * sc
        g = (g if g <= last else last) if g >= zero else zero
        J[u] = np.int64(g)
        XS[u] = xv
    for m in range(2 * k):
        for u in range(TILE):
            KW[m * T + u] = knots[i, min(max(J[u] - k + 1 + m, 0), n - 1)]
    # 2. its check: t[j] <= x < t[j+1]; the misses one by one, by binary search
    for u in range(TILE):
        IN[u] = np.int64(KW[(k - 1) * T + u] <= XS[u]) & np.int64(XS[u] < KW[k * T + u])
    for u in range(TILE):
        if IN[u] == 0:
            j = _find_span(knots, i, XS[u])
            if j >= 0:
                IN[u] = 1
            else:  # outside the knots: a placeholder the triangle can run on, never used
                j = 0
                XS[u] = t0
            J[u] = j
            _gather_knots(KW, knots, i, j, u, k)
    # 3. Cox-de Boor on the local triangle (``_scalar.local_basis``'s interior case);
    # SV holds each slot's left term for the next slot
    for u in range(TILE):
        NB[u] = one
    for r in range(1, k + 1):
        for u in range(TILE):
            SV[u] = zero
        for s in range(r):
            R = (k + s) * T   # t[j+1+s]
            L = (k - r + s) * T  # t[j+1-r+s]
            S = s * T
            if deriv and r == k:  # dB[a,k] = k (B[a,k-1] / (t[a+k]-t[a]) - B[a+1,k-1] / (...)): the q's
                for u in range(TILE):
                    right = KW[R + u]
                    left = KW[L + u]
                    d = right - left
                    q = NB[S + u] / d if d > zero else zero
                    DB[S + u] = (-kk * q) if s == 0 else DB[S + u] - kk * q
                    DB[S + T + u] = kk * q
                    NB[S + u] = SV[u] + (right - XS[u]) * q
                    SV[u] = (XS[u] - left) * q
            else:
                for u in range(TILE):
                    right = KW[R + u]
                    left = KW[L + u]
                    d = right - left
                    q = NB[S + u] / d if d > zero else zero
                    NB[S + u] = SV[u] + (right - XS[u]) * q
                    SV[u] = (XS[u] - left) * q
        for u in range(TILE):
            NB[r * T + u] = SV[u]


@_inline
def _base_lanes(BX, BD, x, b0, nb, i, code, deriv):
    """BX[u] = b(x) and, when ``deriv``, BD[u] = b'(x) of input i for the tile's lanes
    (silu from ``_vexp``'s exp; at a non-finite x what the reference gives)."""
    dt = BX.dtype.type
    one = dt(1)
    zero = dt(0)
    if code == SILU:
        for u in range(TILE):
            xv = x[b0 + min(u, nb - 1), i]  # idle lanes repeat the last sample
            sg = one / (one + vexp(-xv))
            BX[u] = xv * sg
            if deriv:
                BD[u] = sg * (one + xv * (one - sg))
    elif code == IDENTITY:
        for u in range(TILE):
            xv = x[b0 + min(u, nb - 1), i]  # idle lanes repeat the last sample
            BX[u] = xv
            if deriv:
                BD[u] = one + zero * xv
    else:
        for u in range(TILE):
            xv = x[b0 + min(u, nb - 1), i]  # idle lanes repeat the last sample
            BX[u] = zero * xv
            if deriv:
                BD[u] = zero * xv


@_inline
def _coef_row(CW, coef, i, o, k):
    """CW = coef[i, :, o] with k zeros on either side: CW[j + s] is the coefficient of
    local basis s on span j (index j-k+s), 0 for a basis that does not exist."""
    K = coef.shape[1]
    zero = CW.dtype.type(0)
    for m in range(k):
        CW[m] = zero
        CW[K + k + m] = zero
    for m in range(K):
        CW[k + m] = coef[i, m, o]


@_inline
def _spline_lanes(TMP, W, J, IN, CW, k):
    """TMP[u] = sum_s W[s, u] * CW[J[u] + s] (``_coef_row``: the terms of bases that do
    not exist are 0 * a finite basis value), and 0 where x is outside the knots (those
    terms are dropped: a select, never a product with 0)."""
    zero = TMP.dtype.type(0)
    for u in range(TILE):
        TMP[u] = zero
    for s in range(k + 1):
        S = s * TILE
        for u in range(TILE):
            TMP[u] += W[S + u] * CW[J[u] + s]
    for u in range(TILE):
        TMP[u] = TMP[u] if IN[u] != 0 else zero


@serial_part(**_jit)
def forward_rows(y, x, knots, coef, scale_base, scale_sp, mask, k, code, CW, b0, b1):
    """Rows b0:b1 of ``reference.spline_forward``: y[b, o] = sum_i phi[i, o](x[b, i]),
    overwritten; serial."""
    I = x.shape[1]
    O = y.shape[1]
    dt = y.dtype
    zero = dt.type(0)
    NB = local_array(_NROWS, dt)
    KW = local_array(_KWROWS, dt)
    ACC = local_array(_OROWS, dt)
    SV, XS, BX, TMP = local_array(TILE, dt), local_array(TILE, dt), local_array(TILE, dt), local_array(TILE, dt)
    J, IN = local_array(TILE, np.int64), local_array(TILE, np.int64)
    for t0 in range(b0, b1, TILE):
        nb = min(TILE, b1 - t0)
        for u in range(O * TILE):
            ACC[u] = zero
        for i in range(I):
            _tile_bases(NB, NB, SV, J, IN, XS, KW, x, t0, nb, knots, i, k, False)
            _base_lanes(BX, BX, x, t0, nb, i, code, False)
            for o in range(O):
                wb = mask[i, o] * scale_base[i, o]
                sp = mask[i, o] * scale_sp[i, o]
                _coef_row(CW, coef, i, o, k)
                _spline_lanes(TMP, NB, J, IN, CW, k)
                for u in range(TILE):
                    ACC[o * TILE + u] += BX[u] * wb + sp * TMP[u]
        for u in range(nb):
            for o in range(O):
                y[t0 + u, o] = ACC[o * TILE + u]


@_inline
def finish(dcoef, dscale_base, dscale_sp, P, PB, coef, scale_sp, mask):
    """The parameter gradients from the chunks' raw sums P (C, I, K, O), PB (C, I, O),
    added chunk by chunk in order: dcoef += R * scale_sp * mask, dscale_base += mask * Rb,
    dscale_sp += mask * sum_m coef * R (R, Rb: the sums over the chunks)."""
    C, I, K, O = P.shape
    for i in range(I):
        for o in range(O):
            rb = PB[0, i, o]
            for c in range(1, C):
                rb += PB[c, i, o]
            dscale_base[i, o] += mask[i, o] * rb
            spm = mask[i, o] * scale_sp[i, o]
            acc = coef.dtype.type(0)
            for m in range(K):
                r = P[0, i, m, o]
                for c in range(1, C):
                    r += P[c, i, m, o]
                dcoef[i, m, o] += r * spm
                acc += coef[i, m, o] * r
            dscale_sp[i, o] += mask[i, o] * acc


@serial_part(**_jit)
def backward_rows(dx, dcoef, dscale_base, dscale_sp, P, PB, c, dy, x, knots, coef, scale_base, scale_sp, mask,
                  k, code, CW, b0, b1, last, wantdx):
    """Rows b0:b1 of ``reference.spline_backward``: adds into dx[b0:b1] and into chunk c's
    raw sums P[c] (I, K, O) += dy * B[m](x), PB[c] (I, O) += dy * b(x); serial. When
    ``last``, then adds the parameter gradients of all chunks' sums (``finish``) into
    dcoef, dscale_base, dscale_sp (one compiled function for both uses: a shorter cold start).
    Without ``wantdx`` (the input gradient not wanted) dx is not touched, and neither the
    bases' derivatives nor the per-output spline derivatives are computed."""
    I = x.shape[1]
    O = dy.shape[1]
    K = coef.shape[1]
    dt = dy.dtype
    zero = dt.type(0)
    NB = local_array(_NROWS, dt)
    DB = local_array(_NROWS, dt)
    KW = local_array(_KWROWS, dt)
    GT = local_array(_OROWS, dt)
    SV, XS, BX, BD = local_array(TILE, dt), local_array(TILE, dt), local_array(TILE, dt), local_array(TILE, dt)
    TMP, DX = local_array(TILE, dt), local_array(TILE, dt)
    J, IN = local_array(TILE, np.int64), local_array(TILE, np.int64)
    for t0 in range(b0, b1, TILE):
        nb = min(TILE, b1 - t0)
        for u in range(TILE):  # idle lanes get g = 0
            for o in range(O):
                GT[o * TILE + u] = dy[t0 + u, o] if u < nb else zero
        for i in range(I):
            _tile_bases(NB, DB, SV, J, IN, XS, KW, x, t0, nb, knots, i, k, wantdx)
            _base_lanes(BX, BD, x, t0, nb, i, code, wantdx)
            if wantdx:
                # dx[b, i] += sum_o g * (mask * scale_base * b'(x) + mask * scale_sp * s'(x))
                for u in range(TILE):
                    DX[u] = zero
                for o in range(O):
                    wb = mask[i, o] * scale_base[i, o]
                    sp = mask[i, o] * scale_sp[i, o]
                    _coef_row(CW, coef, i, o, k)
                    _spline_lanes(TMP, DB, J, IN, CW, k)
                    for u in range(TILE):
                        DX[u] += GT[o * TILE + u] * (BD[u] * wb + sp * TMP[u])
                for u in range(nb):
                    dx[t0 + u, i] += DX[u]
            # raw sums: PB over the lanes; P sample by sample (lanes may share a row of P)
            for o in range(O):
                acc = zero
                for u in range(nb):  # not the idle lanes: b(x) * 0 is NaN at an infinite x
                    acc += BX[u] * GT[o * TILE + u]
                PB[c, i, o] += acc
            for u in range(nb):
                if IN[u] != 0:
                    a = J[u] - k
                    for s in range(max(0, -a), min(k + 1, K - a)):
                        v = NB[s * TILE + u]
                        for o in range(O):
                            P[c, i, a + s, o] += v * GT[o * TILE + u]
    if last:
        finish(dcoef, dscale_base, dscale_sp, P, PB, coef, scale_sp, mask)


# The parallel versions (large batches only, compiled at their first use): a prange over
# the chunks, each a call of the serial function (a call, not inlined: the parallel
# function stays a few lines, quick to compile).
@njit(parallel=True, **_jit)
def forward_chunks(y, x, knots, coef, scale_base, scale_sp, mask, k, code, CW):
    B = x.shape[0]
    nchunk = CW.shape[0]
    for c in prange(nchunk):
        forward_rows(y, x, knots, coef, scale_base, scale_sp, mask, k, code, CW[c], c * B // nchunk,
                     (c + 1) * B // nchunk)


@njit(parallel=True, **_jit)
def backward_chunks(dx, dcoef, dscale_base, dscale_sp, P, PB, dy, x, knots, coef, scale_base, scale_sp, mask,
                    k, code, CW, wantdx):
    B = x.shape[0]
    nchunk = P.shape[0]
    for c in prange(nchunk):
        backward_rows(dx, dcoef, dscale_base, dscale_sp, P, PB, c, dy, x, knots, coef, scale_base, scale_sp, mask,
                      k, code, CW[c], c * B // nchunk, (c + 1) * B // nchunk, False, wantdx)
    finish(dcoef, dscale_base, dscale_sp, P, PB, coef, scale_sp, mask)


def _coef_rows(nchunk, coef, k):
    """Room for one padded coefficient row (``_coef_row``) per chunk: the serial parts
    allocate nothing (compiled without reference counting, ``_numba.serial_part``,
    whose calls would otherwise sit in the loops over inputs and outputs)."""
    return np.empty((nchunk, coef.shape[1] + 2 * k), coef.dtype)


def spline_forward(y, x, knots, coef, scale_base, scale_sp, mask, k, code):
    """``reference.spline_forward`` for a narrow layer (``code``: the base function's
    ``_scalar.BASE_CODES``); y (B, O) overwritten."""
    B, I = x.shape
    O = y.shape[1]
    nchunk = chunks(B, I, O)
    CW = _coef_rows(nchunk, coef, k)
    if nchunk == 1:
        forward_rows(y, x, knots, coef, scale_base, scale_sp, mask, k, code, CW[0], 0, B)
    else:
        with threads_for(B * I * O):
            forward_chunks(y, x, knots, coef, scale_base, scale_sp, mask, k, code, CW)
    return y


def spline_backward(dx, dcoef, dscale_base, dscale_sp, dy, x, knots, coef, scale_base, scale_sp, mask, k, code):
    """``reference.spline_backward`` for a narrow layer: adds into dx (None: not wanted),
    dcoef, dscale_base, dscale_sp."""
    B, I = x.shape
    O = dy.shape[1]
    nchunk = chunks(B, I, O)
    P = np.zeros((nchunk,) + coef.shape, coef.dtype)  # raw sums, one set per chunk
    PB = np.zeros((nchunk,) + scale_base.shape, coef.dtype)
    CW = _coef_rows(nchunk, coef, k)
    wantdx = dx is not None
    if not wantdx:  # an array of the same type, never touched: no second compilation
        dx = np.empty((1, 1), dy.dtype)
    if nchunk == 1:
        backward_rows(dx, dcoef, dscale_base, dscale_sp, P, PB, 0, dy, x, knots, coef, scale_base, scale_sp, mask,
                      k, code, CW[0], 0, B, True, wantdx)
        return
    with threads_for(B * I * O):
        backward_chunks(dx, dcoef, dscale_base, dscale_sp, P, PB, dy, x, knots, coef, scale_base, scale_sp, mask,
                        k, code, CW, wantdx)
