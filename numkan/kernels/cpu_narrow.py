"""Numba CPU kernels for narrow layers: few outputs, where the bases are the work.

``cpu.spline_forward`` / ``cpu.spline_backward`` send a layer here when it has
few outputs and an order up to ``MAX_ORDER`` (``serves``): the [2, 5, 1],
[4, 4, 2, 1] and [100, 1, 1] models scientists train. Same maths, same non-finite
semantics as ``reference.spline_forward`` / ``spline_backward`` (tested against
them in tests/test_narrow.py and tests/test_kernels.py), to rounding. At a few
outputs per input the coefficient contraction is almost free; what costs is the
k+1 local bases of every (sample, input), and Python around the calls.

The splines in power form. On a knot span [t[j], t[j+1]) every B-spline of
order k is a polynomial of degree k, so with the span variable

    u = (x - t[j]) / (t[j+1] - t[j])  in [0, 1)

local basis s of span j (B[j-k+s, k]) is sum_p M[j, s, p] u^p, and the spline
of edge (i, o) is sum_p C[j, p] u^p with C[j, p] = sum_s coef[j-k+s] M[j, s, p].
M depends on the knots alone: ``span_bases`` runs Cox-de Boor once per span on
polynomials in u, and it is kept, with the span table, while the knots keep
their values (``_spans``). C is formed at every call (O(I O G k^2), ``span_splines``).
A sample then costs a span search, one division (u), and per output k+1
coefficient gathers in a Horner loop: no triangle, no knot gathers, no
divisions by knot differences. The backward needs no bases either: it sums the
powers, Q[j, p, o] += dy[b, o] u^p over the samples on span j, and maps them to
the basis sums R[m, o] = sum_b dy B[m](x) with M once per call (``finish``).
In u the coefficients stay small: every denominator of a basis that is non-zero
on span j covers the span, so each step of the recursion multiplies them by at
most 2 (at most 2^k for order k), and the results agree with the reference's
recursion to a few ulps times that (tests/test_kernels.py's tolerances).

How the work is laid out: a tile of T samples at a time, one input at a time,
everything stored "structure of arrays" (one lane per sample), and every loop
that computes has the lanes innermost, so LLVM vectorises it (it vectorises
innermost loops only):

    XS, J, IN     (T,)   x, its span, 1 if x is inside the knots
    TL, TH, U, H  (T,)   t[j], t[j+1], the span variable u, the span width
    BX, BD        (T,)   b(x), b'(x)
    TMP, DX       (T,)   one output's s(x) (or ds/du); the tile's dx
    ACC (O, T)           the forward's outputs of the tile, summed over inputs
    GT (O, T)            the backward's dy of the tile, transposed
    Q (I, G+2k, k+1, O), PB (I, O, T)   the backward's raw sums

The order k is a run-time argument (its loops are outside the lane loops, so
nothing needs unrolling): each function compiles once per dtype. The scratch
is on the stack, sized for ``MAX_OUTPUTS``.

The span: on uniform knots the guess int((x - t[0]) (n-1) / (t[-1] - t[0])), on
others the span of x's bin in a table of 8 bins per span (``span_table``), the
bin clamped as a float (a NaN or inf never becomes an index); checked against
the knots in the lanes; the lanes where it missed (a knot inside the bin,
outside the knots, non-finite x) get a binary search (``_scalar.find_span``),
one by one.
An x outside the knots gets no spline term (a select after the product with
scale_sp, not a multiplication by 0: a NaN or inf in coef, scale_sp or dy
reaches no such term), and adds nothing to Q.

Threads and determinism: a batch is cut into chunks whose number depends on
the shape only (``chunks``); one chunk (every batch up to a few thousand
samples) runs in the calling thread, with no thread pool at all. Several
chunks run in parallel (``prange``), each owning its rows of y and dx and its
own raw sums, which are then added chunk by chunk in order: the same bits for
any number of threads.

Two more uses of the power form live here: ``FixedInput``, fit's batch through
the first layer, whose spans, u and b(x) are kept between grid updates and
whose raw sums are taken span by span (its section below); and ``local_bases``,
the bases grid updates fit their least squares on.
"""
import numpy as np
from numba import njit, prange

from . import _scalar
from ._numba import local_array, serial_part
from ._parallel import SERIAL_EDGES, TASKS, threads_for
from ._scalar import IDENTITY, SILU
from ._vexp import vexp

TILE = 64             # samples per tile (lanes): 8 AVX-512 registers of float64
MAX_ORDER = 7         # the largest k served here (in u, the power form's coefficients grow up to 2^k)
MAX_OUTPUTS = 5       # the most outputs served here: above, the wide kernels are faster (RESULTS.md)
CHUNK_SAMPLES = 8192  # samples per parallel chunk, at least (RESULTS.md: launches cost on a busy machine)
_OROWS = MAX_OUTPUTS * TILE  # stack scratch of (O, T) rows
_POWERS = MAX_ORDER + 1       # stack scratch of one span's raw sums, u^0 .. u^k

# 'contract' fuses a*b+c into FMA; no reassociation (the lane loops vectorise without
# it, and sums keep one order). error_model="numpy": a division by 0 gives inf, not a
# Python exception, and has no check that would keep the loops scalar.
_jit = dict(nogil=True, cache=True, fastmath={"contract"}, error_model="numpy")
_find_span = njit(**_jit)(_scalar.find_span)
# The helpers are inlined into the two kernels (Numba IR inlining: one compiled function
# per pass, optimised once; a chain of separately compiled functions is optimised again at
# every level that links it, which doubled the cold start). The kernels are serial parts
# (``_numba.serial_part``: arguments that do not overlap, no reference counting, so they
# allocate nothing: their callers hand them the raw sums and the splines). Their
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


@serial_part(**_jit)
def span_bases(M, knots, k):
    """The local bases in power form on each knot span (see the module docstring):
    M[i, j, s, p] (float64) such that local basis s of span j, B[j-k+s, k](x), is
    sum_p M[i, j, s, p] u^p with u = (x - t[j]) / (t[j+1] - t[j]) in [0, 1); all zeros
    on an empty span (no x falls in it). Serial; allocates nothing."""
    I, n = knots.shape
    for i in range(I):
        for j in range(n - 1):
            for s in range(k + 1):
                for p in range(k + 1):
                    M[i, j, s, p] = 0.0
            tl = np.float64(knots[i, j])
            h = np.float64(knots[i, j + 1]) - tl
            if not h > 0.0:  # empty (or not a valid span): no x falls in it
                continue
            # Cox-de Boor on polynomials in u, in place: the new slot s (B[a, r], a = j-r+s)
            # from the old slots s-1 (B[a, r-1]) and s (B[a+1, r-1]), s descending so that both
            # are still old when read. x - t[a] = (t[j] - t[a]) + h u and t[a+r+1] - x =
            # (t[a+r+1] - t[j]) - h u; every denominator of a basis that is non-zero on span
            # j covers the span, so |coefficients| <= 1 and h / d <= 1: no growth beyond 2^k.
            # Knot reads are clamped (boundary spans): that changes only bases that do not
            # exist, whose terms are never used.
            M[i, j, 0, 0] = 1.0
            for r in range(1, k + 1):
                for s in range(r, -1, -1):
                    a = j - r + s
                    c0 = c1 = e0 = e1 = 0.0
                    if s >= 1:
                        ta = np.float64(knots[i, min(max(a, 0), n - 1)])
                        d = np.float64(knots[i, min(max(a + r, 0), n - 1)]) - ta
                        if d > 0.0:
                            c0 = (tl - ta) / d
                            c1 = h / d
                    if s <= r - 1:
                        tb = np.float64(knots[i, min(max(a + r + 1, 0), n - 1)])
                        d = tb - np.float64(knots[i, min(max(a + 1, 0), n - 1)])
                        if d > 0.0:
                            e0 = (tb - tl) / d
                            e1 = -h / d
                    for p in range(r, -1, -1):
                        v = 0.0
                        if s >= 1:
                            v += c0 * M[i, j, s - 1, p]
                            if p >= 1:
                                v += c1 * M[i, j, s - 1, p - 1]
                        if s <= r - 1:
                            v += e0 * M[i, j, s, p]
                            if p >= 1:
                                v += e1 * M[i, j, s, p - 1]
                        M[i, j, s, p] = v


SPAN_BINS = 8    # bins of the span table per knot span
UNIFORM = 1e-6   # knots this close to uniform (relative to the mean span) use the uniform guess


@njit(**_jit)
def span_table(TAB, knots):
    """TAB[i, g] for g < NB = TAB.shape[1] - 1: the span of the left end of bin g of input
    i's knots, [t[0], t[n-1]) cut into NB equal bins: the last j <= n-2 with
    t[j] <= t[0] + g w (w the bins' width); TAB[i, NB] = 1 where the knots are uniform
    (within ``UNIFORM``), else 0. ``_tile_spans`` takes a sample's span from its bin,
    right unless a knot falls inside the bin before the sample. The guess uniform knots
    give missed most samples on knots a grid update has adapted to the data (70-84% at
    G = 10 and 20 on hellokan's hidden layer), each a binary search, lane by lane; on
    uniform knots it is exact, and saves the table's gather. Either guess is checked
    against the knots: the table only saves time."""
    I, n = knots.shape
    NB = TAB.shape[1] - 1
    for i in range(I):
        t0 = np.float64(knots[i, 0])
        span = np.float64(knots[i, n - 1]) - t0
        w = span / NB
        j = 0
        for g in range(NB):
            e = t0 + g * w
            while j < n - 2 and knots[i, j + 1] <= e:
                j += 1
            TAB[i, g] = j
        uniform = 1
        for j in range(n):
            if not abs(np.float64(knots[i, j]) - (t0 + j * (span / (n - 1)))) <= UNIFORM * span / (n - 1):
                uniform = 0
        TAB[i, NB] = uniform


@serial_part(**_jit)
def span_splines(C, M, coef, k):
    """C[i, o, j, p] = sum_s coef[i, j-k+s, o] M[i, j, s, p] over the bases that exist
    (0 <= j-k+s < K): the spline s[i, o] on span j in power form (``span_bases``).
    Serial; allocates nothing."""
    I, O, S1, kp1 = C.shape
    K = coef.shape[1]
    for i in range(I):
        for o in range(O):
            for j in range(S1):
                for p in range(k + 1):
                    acc = 0.0
                    for s in range(max(0, k - j), min(k + 1, K + k - j)):
                        acc += np.float64(coef[i, j - k + s, o]) * M[i, j, s, p]
                    C[i, o, j, p] = acc


@_inline
def _tile_spans(J, IN, U, H, XS, TL, TH, x, b0, nb, knots, TAB, i):
    """Spans J, inside flags IN, the span variable U = (x - t[j]) / (t[j+1] - t[j]) and the
    span widths H of input i for the samples b0 .. b0+nb-1, one lane each (see the module
    docstring). A lane outside the knots (or with a non-finite x) gets IN = 0 and the
    placeholder j = 0, U = 0, H = 1, never used."""
    T = TILE
    n = knots.shape[1]
    NB = TAB.shape[1] - 1
    uniform = TAB[i, NB] != 0
    dt = XS.dtype.type
    zero = dt(0)
    one = dt(1)
    t0 = knots[i, 0]
    # 1. the guess, clamped as a float (NaN to 0), and its two knots: on uniform knots the
    # span x falls in if they were exactly uniform, else the span of x's bin in the span
    # table (``span_table``)
    sc = dt(n - 1 if uniform else NB) / (knots[i, n - 1] - t0)
    last = dt(n - 2 if uniform else NB - 1)
    for u in range(T):
        xv = x[b0 + min(u, nb - 1), i]  # idle lanes repeat the last sample
        g = (xv - t0) * sc
        g = (g if g <= last else last) if g >= zero else zero
        J[u] = np.int64(g)
        XS[u] = xv
    if not uniform:
        for u in range(T):
            J[u] = TAB[i, J[u]]
    for u in range(T):
        TL[u] = knots[i, J[u]]
        TH[u] = knots[i, J[u] + 1]
    # 2. its check: t[j] <= x < t[j+1]; the misses one by one, by binary search
    for u in range(T):
        IN[u] = np.int64(TL[u] <= XS[u]) & np.int64(XS[u] < TH[u])
    for u in range(T):
        if IN[u] == 0:
            j = _find_span(knots, i, XS[u])
            if j >= 0:
                IN[u] = 1
                J[u] = j
                TL[u] = knots[i, j]
                TH[u] = knots[i, j + 1]
            else:  # outside the knots: a placeholder, never used
                J[u] = 0
                XS[u] = zero
                TL[u] = zero
                TH[u] = one
    for u in range(T):
        H[u] = TH[u] - TL[u]
        U[u] = (XS[u] - TL[u]) / H[u]


@_inline
def _poly_lanes(TMP, C, i, o, J, IN, U, k, deriv):
    """TMP[u] = s(x) on each lane's span (Horner on C[i, o, J[u]], ``span_splines``), or,
    when ``deriv``, ds/du. Where x is outside the knots a placeholder: the callers drop the
    term there with a select after the product with scale_sp (an inf or NaN written into
    scale_sp must not reach such a sample, as in the reference)."""
    dt = TMP.dtype.type
    if deriv:
        for u in range(TILE):
            TMP[u] = dt(k) * C[i, o, J[u], k]
        for p in range(k - 1, 0, -1):
            for u in range(TILE):
                TMP[u] = TMP[u] * U[u] + dt(p) * C[i, o, J[u], p]
    else:
        for u in range(TILE):
            TMP[u] = C[i, o, J[u], k]
        for p in range(k - 1, -1, -1):
            for u in range(TILE):
                TMP[u] = TMP[u] * U[u] + C[i, o, J[u], p]


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
def _add_input(ACC, TMP, C, mask, scale_base, scale_sp, i, J, IN, U, BX, O, k):
    """ACC[o * TILE + u] += phi[i, o] at each lane's x (input i), for every output o:
    mask * (scale_base * b(x) + scale_sp * s(x)), s by Horner on C (``_poly_lanes``); no
    spline term where x is outside the knots."""
    zero = TMP.dtype.type(0)
    for o in range(O):
        wb = mask[i, o] * scale_base[i, o]
        sp = mask[i, o] * scale_sp[i, o]
        _poly_lanes(TMP, C, i, o, J, IN, U, k, False)
        for u in range(TILE):
            ACC[o * TILE + u] += BX[u] * wb + (sp * TMP[u] if IN[u] != 0 else zero)


@_inline
def _input_backward(dx, PB, c, i, J, IN, U, H, BX, BD, GT, TMP, DX, C, mask, scale_base, scale_sp, t0, nb, O,
                    k, wantdx):
    """Input i's share of a tile's backward but for the raw sums Q (``_add_tile_powers``,
    which the caller runs): when ``wantdx``, dx[b, i] += sum_o g * (mask * scale_base * b'(x)
    + mask * scale_sp * s'(x)) with s'(x) = (ds/du) / h; and PB[c, i, o, u] += b(x) * g lane
    by lane (a sum over the lanes would be one chain of dependent additions)."""
    zero = DX.dtype.type(0)
    if wantdx:
        for u in range(TILE):
            DX[u] = zero
        for o in range(O):
            wb = mask[i, o] * scale_base[i, o]
            sp = mask[i, o] * scale_sp[i, o]
            _poly_lanes(TMP, C, i, o, J, IN, U, k, True)
            for u in range(TILE):
                DX[u] += GT[o * TILE + u] * (BD[u] * wb + (sp * (TMP[u] / H[u]) if IN[u] != 0 else zero))
        for u in range(nb):
            dx[t0 + u, i] += DX[u]
    for o in range(O):
        for u in range(TILE):  # not the idle lanes: b(x) * 0 is NaN at an infinite x
            PB[c, i, o, u] += BX[u] * GT[o * TILE + u] if u < nb else zero


@serial_part(**_jit)
def forward_rows(y, x, knots, TAB, M, C, coef, scale_base, scale_sp, mask, k, code, b0, b1, fill):
    """Rows b0:b1 of ``reference.spline_forward``: y[b, o] = sum_i phi[i, o](x[b, i]),
    overwritten, with the splines C of ``span_splines`` (formed here first when ``fill``:
    one compiled call for a batch of one chunk); serial."""
    if fill:
        span_splines(C, M, coef, k)
    I = x.shape[1]
    O = y.shape[1]
    dt = y.dtype
    zero = dt.type(0)
    ACC = local_array(_OROWS, dt)
    XS, TL, TH, U, H = (local_array(TILE, dt), local_array(TILE, dt), local_array(TILE, dt),
                        local_array(TILE, dt), local_array(TILE, dt))
    BX, TMP = local_array(TILE, dt), local_array(TILE, dt)
    J, IN = local_array(TILE, np.int64), local_array(TILE, np.int64)
    for t0 in range(b0, b1, TILE):
        nb = min(TILE, b1 - t0)
        for u in range(O * TILE):
            ACC[u] = zero
        for i in range(I):
            _tile_spans(J, IN, U, H, XS, TL, TH, x, t0, nb, knots, TAB, i)
            _base_lanes(BX, BX, x, t0, nb, i, code, False)
            _add_input(ACC, TMP, C, mask, scale_base, scale_sp, i, J, IN, U, BX, O, k)
        for u in range(nb):
            for o in range(O):
                y[t0 + u, o] = ACC[o * TILE + u]


@_inline
def finish(dcoef, dscale_base, dscale_sp, Q, PB, M, coef, scale_sp, mask, k):
    """The parameter gradients from the chunks' raw sums Q (C, I, n-1, k+1, O) and
    PB (C, I, O, TILE), added chunk by chunk and lane by lane in order. The raw sum of basis m,
    R[i, m, o] = sum_b g[b, o] B[m](x[b, i]), is sum over the spans j where m is local basis
    s = m - j + k of sum_p M[i, j, s, p] Q[i, j, p, o] (``span_splines``); then
    dcoef += R * scale_sp * mask, dscale_base += mask * Rb, dscale_sp += mask * sum_m coef * R."""
    NC, I, S1, kp1, O = Q.shape
    K = coef.shape[1]
    for i in range(I):
        for o in range(O):
            rb = PB[0, i, o, 0]
            for c in range(NC):
                for u in range(1 if c == 0 else 0, TILE):
                    rb += PB[c, i, o, u]
            dscale_base[i, o] += mask[i, o] * rb
            spm = mask[i, o] * scale_sp[i, o]
            acc = 0.0
            for m in range(K):
                r = 0.0
                for s in range(k + 1):
                    j = m + k - s
                    for p in range(k + 1):
                        q = Q[0, i, j, p, o]
                        for c in range(1, NC):
                            q += Q[c, i, j, p, o]
                        r += M[i, j, s, p] * q
                dcoef[i, m, o] += r * spm
                acc += coef[i, m, o] * r
            dscale_sp[i, o] += mask[i, o] * acc


@_inline
def _add_powers(Q, c, i, j, o, g, w, k):
    """Q[c, i, j, p, o] += g w^p for p = 0 .. k (k <= MAX_ORDER). The loop has a constant
    trip count, so LLVM unrolls it (and with k a constant, drops the guards): a loop of
    run-time length k+1 this short cost about three times as much in its control as in
    its additions."""
    Q[c, i, j, 0, o] += g
    for p in range(1, MAX_ORDER + 1):
        if p <= k:
            g *= w
            Q[c, i, j, p, o] += g


@_inline
def _add_tile_powers(Q, c, i, J, IN, GT, U, nb, O, k):
    """``_add_powers`` for the tile's samples inside the knots, in sample order (lanes may
    share a span), for every output."""
    if O == 1:  # the common case, without the loop over outputs
        for u in range(nb):
            if IN[u] != 0:
                _add_powers(Q, c, i, J[u], 0, GT[u], U[u], k)
    else:
        for u in range(nb):
            if IN[u] != 0:
                for o in range(O):
                    _add_powers(Q, c, i, J[u], o, GT[o * TILE + u], U[u], k)


@serial_part(**_jit)
def backward_rows(dx, dcoef, dscale_base, dscale_sp, Q, PB, c, dy, x, knots, TAB, M, C, coef, scale_base, scale_sp,
                  mask, k, code, b0, b1, last, wantdx, fill):
    """Rows b0:b1 of ``reference.spline_backward``: adds into dx[b0:b1] and into chunk c's
    raw sums Q[c] (I, n-1, k+1, O) += dy * u^p on each sample's span, PB[c] (I, O, TILE) +=
    dy * b(x) in the sample's lane; serial. When ``last``, then adds the parameter gradients of all chunks' sums
    (``finish``) into dcoef, dscale_base, dscale_sp (one compiled function for both uses:
    a shorter cold start). Without ``wantdx`` (the input gradient not wanted) dx is not
    touched, and neither b'(x) nor the splines' derivatives are computed (C is not read).
    Chunk c's raw sums are zeroed here, and C is formed here first when ``fill`` (as in
    ``forward_rows``)."""
    if fill:
        span_splines(C, M, coef, k)
    I = x.shape[1]
    O = dy.shape[1]
    dt = dy.dtype
    zero = dt.type(0)
    GT = local_array(_OROWS, dt)
    XS, TL, TH, U, H = (local_array(TILE, dt), local_array(TILE, dt), local_array(TILE, dt),
                        local_array(TILE, dt), local_array(TILE, dt))
    BX, BD, TMP, DX = local_array(TILE, dt), local_array(TILE, dt), local_array(TILE, dt), local_array(TILE, dt)
    J, IN = local_array(TILE, np.int64), local_array(TILE, np.int64)
    Qc = Q[c]
    PBc = PB[c]
    Qc[...] = zero
    PBc[...] = zero
    for t0 in range(b0, b1, TILE):
        nb = min(TILE, b1 - t0)
        for u in range(TILE):  # idle lanes get g = 0
            for o in range(O):
                GT[o * TILE + u] = dy[t0 + u, o] if u < nb else zero
        for i in range(I):
            _tile_spans(J, IN, U, H, XS, TL, TH, x, t0, nb, knots, TAB, i)
            _base_lanes(BX, BD, x, t0, nb, i, code, wantdx)
            _input_backward(dx, PB, c, i, J, IN, U, H, BX, BD, GT, TMP, DX, C, mask, scale_base, scale_sp, t0,
                            nb, O, k, wantdx)
            # Q sample by sample (lanes may share a span)
            if k == 3:  # the common order: a constant, and _add_powers is straight-line code
                _add_tile_powers(Q, c, i, J, IN, GT, U, nb, O, 3)
            else:
                _add_tile_powers(Q, c, i, J, IN, GT, U, nb, O, k)
    if last:
        finish(dcoef, dscale_base, dscale_sp, Q, PB, M, coef, scale_sp, mask, k)


FUSED_INPUTS = 16  # the most inputs of a layer fused with its loss (``mse_rows``)
_FROWS = FUSED_INPUTS * TILE  # stack scratch of (I, T) rows


@serial_part(**_jit)
def mse_rows(y, dx, dcoef, dscale_base, dscale_sp, Q, PB, target, x, knots, TAB, M, C, coef, scale_base,
             scale_sp, mask, k, code, wantdx):
    """``forward_rows``, ``cpu_train.mse_loss_grad`` and ``backward_rows`` of one chunk (all
    B rows) in one pass, for a network's last layer (I <= ``FUSED_INPUTS``): y (B, O)
    overwritten with the outputs; dy = 2 (y - target) / (B O) taken tile by tile and never
    stored; dx (when ``wantdx``) and the parameter gradients added into, Q (1, I, n-1, k+1, O)
    and PB (1, I, O, TILE) the raw sums' room. Returns the sum of the squared differences
    (float64, in sample order).

    Separate calls compute every sample's span, u and b(x) twice, once per pass; here the
    tile's values of every input stay on the stack between its forward and its backward.
    The arithmetic and its order are those of the three separate calls, so the results
    are theirs bit for bit where LLVM contracts the same products into FMAs (as at k = 3
    in float64: tests/test_narrow.py)."""
    span_splines(C, M, coef, k)
    B, I = x.shape
    O = y.shape[1]
    dt = y.dtype
    zero = dt.type(0)
    c2 = dt.type(2.0 / (B * O))  # as mse_loss_grad: 2 / y.size in y's dtype
    ACC, GT = local_array(_OROWS, dt), local_array(_OROWS, dt)
    XS, TL, TH = local_array(TILE, dt), local_array(TILE, dt), local_array(TILE, dt)
    TMP, DX = local_array(TILE, dt), local_array(TILE, dt)
    JJ, INN = local_array(_FROWS, np.int64), local_array(_FROWS, np.int64)
    UU, HH, BXX, BDD = (local_array(_FROWS, dt), local_array(_FROWS, dt), local_array(_FROWS, dt),
                        local_array(_FROWS, dt))
    Q[...] = zero
    PB[...] = zero
    acc = 0.0
    for t0 in range(0, B, TILE):
        nb = min(TILE, B - t0)
        # the forward (forward_rows), keeping each input's spans, u and b(x)
        for u in range(O * TILE):
            ACC[u] = zero
        for i in range(I):
            r0 = i * TILE
            J, IN, U, H = JJ[r0:r0 + TILE], INN[r0:r0 + TILE], UU[r0:r0 + TILE], HH[r0:r0 + TILE]
            BX, BD = BXX[r0:r0 + TILE], BDD[r0:r0 + TILE]
            _tile_spans(J, IN, U, H, XS, TL, TH, x, t0, nb, knots, TAB, i)
            _base_lanes(BX, BD, x, t0, nb, i, code, wantdx)
            _add_input(ACC, TMP, C, mask, scale_base, scale_sp, i, J, IN, U, BX, O, k)
        # the loss and dy, in sample order (cpu_train's _mse); idle lanes get dy = 0
        for u in range(nb):
            for o in range(O):
                v = ACC[o * TILE + u]
                y[t0 + u, o] = v
                d = v - target[t0 + u, o]
                GT[o * TILE + u] = c2 * d
                d64 = np.float64(d)
                acc += d64 * d64
        for u in range(nb, TILE):
            for o in range(O):
                GT[o * TILE + u] = zero
        # the backward (backward_rows) from the kept values
        for i in range(I):
            r0 = i * TILE
            J, IN, U, H = JJ[r0:r0 + TILE], INN[r0:r0 + TILE], UU[r0:r0 + TILE], HH[r0:r0 + TILE]
            BX, BD = BXX[r0:r0 + TILE], BDD[r0:r0 + TILE]
            _input_backward(dx, PB, 0, i, J, IN, U, H, BX, BD, GT, TMP, DX, C, mask, scale_base, scale_sp, t0,
                            nb, O, k, wantdx)
            if k == 3:  # as backward_rows (the same sums: its gradients bit for bit)
                _add_tile_powers(Q, 0, i, J, IN, GT, U, nb, O, 3)
            else:
                _add_tile_powers(Q, 0, i, J, IN, GT, U, nb, O, k)
    finish(dcoef, dscale_base, dscale_sp, Q, PB, M, coef, scale_sp, mask, k)
    return acc


# The parallel versions (large batches only, compiled at their first use): a prange over
# the chunks, each a call of the serial function (a call, not inlined: the parallel
# function stays a few lines, quick to compile).
@njit(parallel=True, **_jit)
def forward_chunks(y, x, knots, TAB, M, C, coef, scale_base, scale_sp, mask, k, code, nchunk):
    B = x.shape[0]
    span_splines(C, M, coef, k)
    for c in prange(nchunk):
        forward_rows(y, x, knots, TAB, M, C, coef, scale_base, scale_sp, mask, k, code, c * B // nchunk,
                     (c + 1) * B // nchunk, False)


@njit(parallel=True, **_jit)
def backward_chunks(dx, dcoef, dscale_base, dscale_sp, Q, PB, dy, x, knots, TAB, M, C, coef, scale_base, scale_sp, mask,
                    k, code, wantdx):
    B = x.shape[0]
    nchunk = Q.shape[0]
    if wantdx:
        span_splines(C, M, coef, k)
    for c in prange(nchunk):
        backward_rows(dx, dcoef, dscale_base, dscale_sp, Q, PB, c, dy, x, knots, TAB, M, C, coef, scale_base, scale_sp,
                      mask, k, code, c * B // nchunk, (c + 1) * B // nchunk, False, wantdx, False)
    finish(dcoef, dscale_base, dscale_sp, Q, PB, M, coef, scale_sp, mask, k)


# M depends on the knots alone, which change only when a grid does: it is kept for the
# knot arrays last seen, and used only while their values are still those it was computed
# from (compared in full at every call: a knot array written in place gets a new M).
_BASES = {}
_BASES_KEPT = 16        # entries, at most
_BASES_BYTES = 1 << 26  # and 64 MiB of M in all (each is I (G + 2k) (k+1)^2 float64 values)


@njit(**_jit)
def _same_values(a, b):
    """Whether the 2-D arrays a and b (of one shape) hold the same values (NaN never does)."""
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            if a[i, j] != b[i, j]:
                return False
    return True


def _span_bases(knots, k):
    """``span_bases`` of a layer's knots: M (I, n-1, k+1, k+1), float64."""
    return _spans(knots, k)[0]


def _spans(knots, k):
    """``span_bases``'s M and ``span_table``'s TAB (I, SPAN_BINS (n-1) + 1) of a layer's knots."""
    key = (id(knots), k)
    kept = _BASES.get(key)
    if (kept is not None and kept[0].shape == knots.shape and kept[0].dtype == knots.dtype
            and _same_values(kept[0], knots)):
        return kept[1], kept[2]
    I, n = knots.shape
    M = np.empty((I, n - 1, k + 1, k + 1))
    span_bases(M, knots, k)
    TAB = np.empty((I, SPAN_BINS * (n - 1) + 1), np.int64)
    span_table(TAB, knots)
    size = M.nbytes + TAB.nbytes
    if size > _BASES_BYTES:  # computed at every call rather than held
        return M, TAB
    if (len(_BASES) >= _BASES_KEPT
            or sum(v[1].nbytes + v[2].nbytes for v in _BASES.values()) + size > _BASES_BYTES):
        _BASES.clear()
    _BASES[key] = (knots.copy(), M, TAB)
    return M, TAB


def _splines_room(M, coef, k):
    """Room for ``span_splines``'s C (I, O, n-1, k+1), in coef's dtype."""
    return np.empty((coef.shape[0], coef.shape[2], M.shape[1], k + 1), coef.dtype)


def spline_forward(y, x, knots, coef, scale_base, scale_sp, mask, k, code):
    """``reference.spline_forward`` for a narrow layer (``code``: the base function's
    ``_scalar.BASE_CODES``); y (B, O) overwritten."""
    B, I = x.shape
    O = y.shape[1]
    nchunk = chunks(B, I, O)
    M, TAB = _spans(knots, k)
    C = _splines_room(M, coef, k)
    if nchunk == 1:
        forward_rows(y, x, knots, TAB, M, C, coef, scale_base, scale_sp, mask, k, code, 0, B, True)
    else:
        with threads_for(B * I * O):
            forward_chunks(y, x, knots, TAB, M, C, coef, scale_base, scale_sp, mask, k, code, nchunk)
    return y


def spline_backward(dx, dcoef, dscale_base, dscale_sp, dy, x, knots, coef, scale_base, scale_sp, mask, k, code):
    """``reference.spline_backward`` for a narrow layer: adds into dx (None: not wanted),
    dcoef, dscale_base, dscale_sp."""
    B, I = x.shape
    O = dy.shape[1]
    nchunk = chunks(B, I, O)
    wantdx = dx is not None
    M, TAB = _spans(knots, k)
    C = _splines_room(M, coef, k) if wantdx else np.empty((1, 1, 1, 1), coef.dtype)  # C: for dx only
    Q = np.empty((nchunk, I, knots.shape[1] - 1, k + 1, O), coef.dtype)  # raw sums, one set per chunk
    PB = np.empty((nchunk,) + scale_base.shape + (TILE,), coef.dtype)
    if not wantdx:  # an array of the same type, never touched: no second compilation
        dx = np.empty((1, 1), dy.dtype)
    if nchunk == 1:
        backward_rows(dx, dcoef, dscale_base, dscale_sp, Q, PB, 0, dy, x, knots, TAB, M, C, coef, scale_base, scale_sp,
                      mask, k, code, 0, B, True, wantdx, wantdx)
        return
    with threads_for(B * I * O):
        backward_chunks(dx, dcoef, dscale_base, dscale_sp, Q, PB, dy, x, knots, TAB, M, C, coef, scale_base, scale_sp,
                        mask, k, code, wantdx)


def spline_mse(y, dx, dcoef, dscale_base, dscale_sp, target, x, knots, coef, scale_base, scale_sp, mask, k,
               code):
    """``mse_rows`` for a layer and batch it serves (``fuses``); returns the sum of the
    squared differences, or None (nothing written) where it does not serve them."""
    B, I = x.shape
    O = y.shape[1]
    if not fuses(B, I, O, k):
        return None
    wantdx = dx is not None
    M, TAB = _spans(knots, k)
    C = _splines_room(M, coef, k)
    Q = np.empty((1, I, knots.shape[1] - 1, k + 1, O), coef.dtype)
    PB = np.empty((1, I, O, TILE), coef.dtype)
    if not wantdx:  # an array of the same type, never touched: no second compilation
        dx = np.empty((1, 1), y.dtype)
    return mse_rows(y, dx, dcoef, dscale_base, dscale_sp, Q, PB, target, x, knots, TAB, M, C, coef, scale_base,
                    scale_sp, mask, k, code, wantdx)


def fuses(B, I, O, k):
    """Whether ``mse_rows`` serves a layer of I inputs and O outputs at order k on B samples:
    a narrow layer, a batch of one chunk, inputs whose tile fits its stack scratch."""
    return serves(O, k) and I <= FUSED_INPUTS and chunks(B, I, O) == 1


# ---------------------------------------------------------------------------
# A fixed input: fit's batch through the first layer.
#
# L-BFGS evaluates the network hundreds of times on one batch, and between two grid
# updates the first layer's knots do not move either: every sample's span, its u and
# b(x) are then the same at every evaluation. ``FixedInput`` computes them once per
# set of knots and keeps them in sample order, and with the samples of each input
# sorted by span (a counting sort, stable: within a span the samples keep their
# order). The forward reads them into the lanes instead of computing them. The
# backward walks each span's samples together: its raw sums Q[i, j, :, o] are
# accumulated in registers and stored once per span, where the sample-by-sample
# additions into Q chain through memory (``_add_tile_powers``). The arithmetic is the
# same as ``forward_rows`` / ``backward_rows`` without dx, in the same order (Horner on
# C; Q's additions in sample order within each span; b(x) sums lane by lane), so the
# results are the per-call kernels' (bit for bit where LLVM contracts the same
# products into FMAs, as at k = 3 in float64; tests/test_narrow.py).
FIXED_MAX = 1 << 20  # samples x inputs kept at most (41 bytes each); above, the per-call kernels


@njit(**_jit)
def fixed_design(JF, INF, UO, perm, start, UF, BXF, x, knots, k, code):
    """For each input i, in sample order: JF[i, b] the span of x[b, i], INF[i, b] 1 if it
    is inside the knots, UO[i, b] its span variable u, BXF[i, b] = b(x[b, i]) (the values
    ``_tile_spans`` and ``_base_lanes`` give, computed one sample at a time: this runs
    once per set of knots, and a plain loop compiles in a fraction of their time); and
    sorted by span (stable): perm[i] the samples, those of span j at
    perm[i, start[i, j]:start[i, j+1]] and those outside the knots at perm[i, start[i, n-1]:],
    UF[i, q] the u of sample perm[i, q]."""
    B, I = x.shape
    n = knots.shape[1]
    dt = UF.dtype.type
    zero = dt(0)
    one = dt(1)
    js = np.empty(B, np.int64)  # each sample's span, n - 1 outside the knots
    count = np.empty(n, np.int64)
    for i in range(I):
        for b in range(B):
            xv = x[b, i]
            j = _find_span(knots, i, xv)
            if j >= 0:
                tl = knots[i, j]
                UO[i, b] = (xv - tl) / (knots[i, j + 1] - tl)
                JF[i, b] = j
                INF[i, b] = 1
                js[b] = j
            else:  # outside the knots: a placeholder, never used
                UO[i, b] = zero
                JF[i, b] = 0
                INF[i, b] = 0
                js[b] = n - 1
            if code == SILU:
                BXF[i, b] = xv * (one / (one + vexp(-xv)))
            elif code == IDENTITY:
                BXF[i, b] = xv
            else:
                BXF[i, b] = zero * xv
        count[:] = 0
        for b in range(B):
            count[js[b]] += 1
        pos = 0
        for j in range(n):
            start[i, j] = pos
            pos += count[j]
            count[j] = start[i, j]  # now the next free place of span j
        for b in range(B):
            q = count[js[b]]
            count[js[b]] = q + 1
            perm[i, q] = b
            UF[i, q] = UO[i, b]


@serial_part(**_jit)
def fixed_forward_rows(y, JF, INF, UO, BXF, M, C, coef, scale_base, scale_sp, mask, k):
    """``forward_rows`` on a fixed input (``fixed_design``): the same lanes and sums,
    with the spans, u and b(x) read instead of computed; y (B, O) overwritten."""
    span_splines(C, M, coef, k)
    B, O = y.shape
    I = JF.shape[0]
    dt = y.dtype
    zero = dt.type(0)
    ACC = local_array(_OROWS, dt)
    U, BX, TMP = local_array(TILE, dt), local_array(TILE, dt), local_array(TILE, dt)
    J, IN = local_array(TILE, np.int64), local_array(TILE, np.int64)
    for t0 in range(0, B, TILE):
        nb = min(TILE, B - t0)
        for u in range(O * TILE):
            ACC[u] = zero
        for i in range(I):
            if nb == TILE:  # plain copies (the clamped index below would make them gathers)
                for u in range(TILE):
                    J[u] = JF[i, t0 + u]
                for u in range(TILE):
                    IN[u] = INF[i, t0 + u]
                for u in range(TILE):
                    U[u] = UO[i, t0 + u]
                for u in range(TILE):
                    BX[u] = BXF[i, t0 + u]
            else:
                for u in range(TILE):
                    b = t0 + min(u, nb - 1)  # idle lanes repeat the last sample
                    J[u] = JF[i, b]
                    IN[u] = INF[i, b]
                    U[u] = UO[i, b]
                    BX[u] = BXF[i, b]
            _add_input(ACC, TMP, C, mask, scale_base, scale_sp, i, J, IN, U, BX, O, k)
        for u in range(nb):
            for o in range(O):
                y[t0 + u, o] = ACC[o * TILE + u]


@_inline
def _span_sums(Q, i, j, o, dy, perm, UF, q0, q1, k):
    """Q[0, i, j, p, o] = sum over span j's samples (sample order) of dy[b, o] u^p, in dy's
    dtype. The sums are a stack array indexed only by loops of constant trip count
    (k <= MAX_ORDER; with k a constant their guards vanish): unrolled, its entries live
    in registers, and each is stored once per span."""
    zero = dy.dtype.type(0)
    acc = local_array(_POWERS, dy.dtype)
    for p in range(MAX_ORDER + 1):
        acc[p] = zero
    for q in range(q0, q1):
        g = dy[perm[q], o]
        w = UF[q]
        acc[0] += g
        for p in range(1, MAX_ORDER + 1):
            if p <= k:
                g *= w
                acc[p] += g
    for p in range(MAX_ORDER + 1):
        if p <= k:
            Q[0, i, j, p, o] = acc[p]


@serial_part(**_jit)
def fixed_backward_rows(dcoef, dscale_base, dscale_sp, Q, PB, dy, perm, start, UF, BXF, M, coef, scale_sp,
                        mask, k):
    """``backward_rows`` without dx on a fixed input (``fixed_design``), one chunk: adds
    the parameter gradients into dcoef, dscale_base, dscale_sp (Q and PB: its raw sums'
    room, (1, I, n-1, k+1, O) and (1, I, O, TILE))."""
    B, O = dy.shape
    I, n = start.shape
    zero = dy.dtype.type(0)
    for i in range(I):
        for j in range(n - 1):
            for o in range(O):
                if k == 3:  # the common order, a constant
                    _span_sums(Q, i, j, o, dy, perm[i], UF[i], start[i, j], start[i, j + 1], 3)
                else:
                    _span_sums(Q, i, j, o, dy, perm[i], UF[i], start[i, j], start[i, j + 1], k)
        # b(x) sums lane by lane, in sample order (as backward_rows)
        for o in range(O):
            for u in range(TILE):
                PB[0, i, o, u] = zero
        for t0 in range(0, B, TILE):
            nb = min(TILE, B - t0)
            for o in range(O):
                for u in range(TILE):  # not the idle lanes: b(x) * 0 is NaN at an infinite x
                    PB[0, i, o, u] += BXF[i, t0 + u] * dy[t0 + u, o] if u < nb else zero
    finish(dcoef, dscale_base, dscale_sp, Q, PB, M, coef, scale_sp, mask, k)


# A dense design: when a fixed input's layer has few spline columns, I (K + 1) up to
# DENSE_COLUMNS (K = G + k bases and b(x) per input), the forward and the backward's raw
# sums are two small matrix products with the design matrix D (B, I K + I) of every
# basis value and b(x): y = D W, R = D^T dy (BLAS; fit runs it on one thread, so the sums
# have one order). Products with the zeros outside each sample's k+1 bases cost less
# there than the gathers of the power form ([2 -> 5] at G = 5, 1000 samples: the two
# passes 50 -> ~15 us; RESULTS.md). Only for finite values: a product with an exact 0
# would spread a NaN or inf in coef or dy to every sample, where the reference (and the
# per-call kernels) confine it to the samples on its bases; such a call, or a batch with
# a non-finite x, runs the power-form passes.
DENSE_COLUMNS = 64


@njit(**_jit)
def dense_design(D, JF, INF, UO, BXF, M, k):
    """D[b, i K + m] = B[m, k](x[b, i]) (0 off the sample's k+1 bases, and everywhere
    outside the knots) and D[b, I K + i] = b(x[b, i]), from ``fixed_design``'s spans, u
    and b(x), the bases by Horner on M (``span_bases``, as ``local_bases``)."""
    I, B = JF.shape
    K = (D.shape[1] - I) // I
    for b in range(B):
        for c in range(D.shape[1]):
            D[b, c] = 0.0
    for i in range(I):
        for b in range(B):
            D[b, I * K + i] = BXF[i, b]
            if INF[i, b] == 0:
                continue
            j = JF[i, b]
            u = np.float64(UO[i, b])
            for s in range(max(0, k - j), min(k + 1, K + k - j)):
                v = M[i, j, s, k]
                for p in range(k - 1, -1, -1):
                    v = v * u + M[i, j, s, p]
                D[b, i * K + j - k + s] = v


@njit(**_jit)
def dense_weights(W, coef, scale_base, scale_sp, mask):
    """W (I K + I, O), D's weights: W[i K + m, o] = coef * mask * scale_sp,
    W[I K + i, o] = mask * scale_base. Returns whether every one is finite."""
    I, K, O = coef.shape
    ok = True
    for i in range(I):
        for o in range(O):
            sp = mask[i, o] * scale_sp[i, o]
            for m in range(K):
                W[i * K + m, o] = coef[i, m, o] * sp
                ok &= np.isfinite(W[i * K + m, o])
            W[I * K + i, o] = mask[i, o] * scale_base[i, o]
            ok &= np.isfinite(W[I * K + i, o])
    return ok


@njit(**_jit)
def _finite(a):
    """Whether the 1-D array a has only finite values: v - v is 0 for a finite v and NaN
    for a NaN or inf. An integer OR over every value, with no early exit, so LLVM
    vectorises the loop (one that returns at the first non-finite value stays scalar,
    and this runs on the whole of dy at every dense backward)."""
    bad = 0
    for i in range(a.shape[0]):
        bad |= np.int64(not (a[i] - a[i]) == 0.0)
    return bad == 0


@njit(**_jit)
def dense_finish(dcoef, dscale_base, dscale_sp, R, coef, scale_sp, mask):
    """The parameter gradients from D^T dy (``finish``'s, with the raw sums R[i K + m, o]
    of the bases and R[I K + i, o] of b(x))."""
    I, K, O = coef.shape
    for i in range(I):
        for o in range(O):
            spm = mask[i, o] * scale_sp[i, o]
            acc = 0.0
            for m in range(K):
                r = R[i * K + m, o]
                dcoef[i, m, o] += r * spm
                acc += coef[i, m, o] * r
            dscale_sp[i, o] += mask[i, o] * acc
            dscale_base[i, o] += mask[i, o] * R[I * K + i, o]


class FixedInput:
    """An input batch x (B, I) that a training loop passes again and again (``fit``'s
    batch through the first layer): ``kernels``' ``fixed_input``. Keeps, for the knots,
    order and base function it was last used with, ``fixed_design``'s arrays and the
    bases M: built at the first call with those knots, used while the knots keep their
    values (compared in full at every call), rebuilt when they change. Building it
    costs about one and a half evaluations' saving ([2 -> 5], 1000 samples: 28 us, where
    the fixed passes save 19 us per evaluation), so an objective evaluated twice (a grid
    update's guard) already gains; and a narrow first layer in training then never
    needs the per-call backward, one compilation less before a fresh install's first
    fit step."""

    def __init__(self, x):
        self.x = x
        self._key = None     # (knots copy, k, code) of the last call
        self._design = None  # (JF, INF, UO, perm, start, UF, BXF, M) for that key
        self._dense = None   # D for that key (``DENSE_COLUMNS``), False where it has none

    def design(self, knots, k, code):
        """The design for these knots, order and base function (built now if it is not
        yet), or None for a batch too large to keep one (``FIXED_MAX``)."""
        B, I = self.x.shape
        if B * I > FIXED_MAX or knots.dtype != self.x.dtype:
            return None
        key = self._key
        if not (key is not None and key[1] == k and key[2] == code and key[0].shape == knots.shape
                and _same_values(key[0], knots)):
            self._key, self._design, self._dense = (knots.copy(), k, code), None, None
        if self._design is None:
            n = knots.shape[1]
            dt = self.x.dtype
            JF, INF, UO = np.empty((I, B), np.int64), np.empty((I, B), np.int8), np.empty((I, B), dt)
            perm, start = np.empty((I, B), np.int64), np.empty((I, n), np.int64)
            UF, BXF = np.empty((I, B), dt), np.empty((I, B), dt)
            fixed_design(JF, INF, UO, perm, start, UF, BXF, self.x, knots, k, code)
            M = np.empty((I, n - 1, k + 1, k + 1))
            span_bases(M, knots, k)
            self._design = (JF, INF, UO, perm, start, UF, BXF, M)
        return self._design


    def dense(self, d, knots, k):
        """The dense design D (``DENSE_COLUMNS``) that goes with the design d ``design``
        just returned for these knots, or None where the layer has too many columns or x
        a non-finite value."""
        if self._dense is None:
            B, I = self.x.shape
            K = knots.shape[1] - k - 1
            self._dense = False
            if I * (K + 1) <= DENSE_COLUMNS and _finite(self.x.reshape(-1)):
                JF, INF, UO, perm, start, UF, BXF, M = d
                D = np.empty((B, I * K + I), self.x.dtype)
                dense_design(D, JF, INF, UO, BXF, M, k)
                self._dense = D
        return self._dense if self._dense is not False else None


def fixed_forward(y, F, knots, coef, scale_base, scale_sp, mask, k, code):
    """``spline_forward`` on the fixed input F (``FixedInput``) from its kept design;
    False (nothing written) where it has none: the caller runs ``spline_forward``."""
    B, I = F.x.shape
    d = F.design(knots, k, code) if chunks(B, I, y.shape[1]) == 1 else None
    if d is None:
        return False
    D = F.dense(d, knots, k)
    if D is not None:
        W = np.empty((D.shape[1], y.shape[1]), y.dtype)
        if dense_weights(W, coef, scale_base, scale_sp, mask):
            np.matmul(D, W, out=y)
            return True
    JF, INF, UO, perm, start, UF, BXF, M = d
    fixed_forward_rows(y, JF, INF, UO, BXF, M, _splines_room(M, coef, k), coef, scale_base, scale_sp, mask, k)
    return True


def fixed_backward(dcoef, dscale_base, dscale_sp, dy, F, knots, coef, scale_sp, mask, k, code):
    """``spline_backward`` without dx on the fixed input F, as ``fixed_forward``."""
    B, I = F.x.shape
    O = dy.shape[1]
    d = F.design(knots, k, code) if chunks(B, I, O) == 1 else None
    if d is None:
        return False
    D = F.dense(d, knots, k)
    if D is not None and _finite(dy.reshape(-1)) and _finite(coef.reshape(-1)):
        R = np.empty((D.shape[1], O), dy.dtype)
        np.matmul(D.T, dy, out=R)
        dense_finish(dcoef, dscale_base, dscale_sp, R, coef, scale_sp, mask)
        return True
    JF, INF, UO, perm, start, UF, BXF, M = d
    Q = np.empty((1, I, knots.shape[1] - 1, k + 1, O), coef.dtype)
    PB = np.empty((1, I, O, TILE), coef.dtype)
    fixed_backward_rows(dcoef, dscale_base, dscale_sp, Q, PB, dy, perm, start, UF, BXF, M, coef, scale_sp, mask, k)
    return True


# ---------------------------------------------------------------------------
# the local bases for grid updates' least squares (host, float64): kernels' local_bases
@njit(**_jit)
def local_bases(span, N, x, knots, M, k):
    """span[b, i] (-1 outside the knots) and N[b, i, s] = B[span-k+s, k](x[b, i]) from the
    span polynomials M (``span_bases``); 0 for a basis that does not exist (index outside
    0..K-1) and everywhere outside the knots (``reference.local_basis``'s values)."""
    B, I = x.shape
    K = knots.shape[1] - k - 1
    for i in range(I):
        for b in range(B):
            xv = x[b, i]
            j = _find_span(knots, i, xv)
            span[b, i] = j
            for s in range(k + 1):
                N[b, i, s] = 0.0
            if j < 0:
                continue
            u = (xv - knots[i, j]) / (knots[i, j + 1] - knots[i, j])
            for s in range(max(0, k - j), min(k + 1, K + k - j)):
                v = M[i, j, s, k]
                for p in range(k - 1, -1, -1):
                    v = v * u + M[i, j, s, p]
                N[b, i, s] = v


@_inline
def _bases_at(Nv, knots, M, i, x, k):
    """The span j of x on input i's knots (-1 outside) and Nv[s] = B[j-k+s, k](x), 0 for
    a basis that does not exist (``local_bases``' values)."""
    K = knots.shape[1] - k - 1
    for s in range(k + 1):
        Nv[s] = 0.0
    j = _find_span(knots, i, x)
    if j >= 0:
        u = (x - knots[i, j]) / (knots[i, j + 1] - knots[i, j])
        for s in range(max(0, k - j), min(k + 1, K + k - j)):
            v = M[i, j, s, k]
            for p in range(k - 1, -1, -1):
                v = v * u + M[i, j, s, p]
            Nv[s] = v
    return j


@njit(**_jit)
def normal_sums(gram, rhs, x, t_old, M_old, coef_old, t_new, M_new, k):
    """``reference.normal_sums`` sample by sample: for each sample, the old splines' values
    from its k+1 old bases, then its k+1 new bases' products added into the band of
    gram and their products with those values into rhs; no design matrix (a grid
    update's were most of its time). gram (I, K, K) and rhs (I, K, O) overwritten."""
    B, I = x.shape
    O = coef_old.shape[2]
    K_old = t_old.shape[1] - k - 1
    K = gram.shape[1]
    No = np.empty(k + 1)
    Nn = np.empty(k + 1)
    yv = np.empty(O)
    gram[...] = 0.0
    rhs[...] = 0.0
    for i in range(I):
        for b in range(B):
            xv = x[b, i]
            jn = _bases_at(Nn, t_new, M_new, i, xv, k)
            if jn < 0:  # outside the new knots: a row of zeros
                continue
            for o in range(O):
                yv[o] = 0.0
            jo = _bases_at(No, t_old, M_old, i, xv, k)
            if jo >= 0:
                for s in range(max(0, k - jo), min(k + 1, K_old + k - jo)):
                    for o in range(O):
                        yv[o] += No[s] * coef_old[i, jo - k + s, o]
            # the bases that do not exist (rows m outside 0..K-1) are skipped
            for s in range(max(0, k - jn), min(k + 1, K + k - jn)):
                m = jn - k + s
                for s2 in range(max(0, k - jn), min(k + 1, K + k - jn)):
                    gram[i, m, jn - k + s2] += Nn[s] * Nn[s2]
                for o in range(O):
                    rhs[i, m, o] += Nn[s] * yv[o]
