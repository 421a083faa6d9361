"""Numba CPU kernels: the reference's maths, compiled, parallel and local.

Same functions and signatures as ``reference.py`` (the definition these are
tested against); the training ops come from ``cpu_train.py``. Layers with few
outputs (``cpu_narrow.serves``: [2, 5, 1] and the like) run ``cpu_narrow.py``'s
kernels instead, which compile in a few seconds, so a narrow model never
compiles the wide kernels below (whose tiles are sized for 64 outputs). The scalar maths
(span search, Cox-de Boor on the local triangle) is ``_scalar.py``, compiled
here with ``njit``; what needs Numba's internals is ``_numba.py``.

Work per sample and input: one span search, the k+1 local bases, then k+2
coefficient rows (k+1 spline rows and the base row) added into the outputs.
Cost per edge does not depend on the grid size G.

Names in the kernels (T lanes per tile, a tile = ``tile(itemsize)`` samples):

    knots (I, n)        the knot array, n = G + 2k + 1 knots per input
    inv (I, k+1, n)     knot reciprocals 1 / (t[m+r] - t[m]) (``_scalar.knot_reciprocals``)
    lo, scale, span     span guess per input: first knot, buckets per unit, bucket -> span
    spm, Wb (I, O)      scale_sp * mask, scale_base * mask
    WL (IB, K, O)       the forward's scaled coefficient rows coef * spm of a block of inputs
    JT, NT, DT          per scratch row and lane: span code, k+1 bases, their derivatives
    BXT; BV, BD         per scratch row and lane: b(x); b(x) and b'(x)
    XS, KW, OK          per lane of a tile: x, the 2k knots around its span, guess hit
    N, dN, work         one sample's k+1 bases, their derivatives, and Cox-de Boor scratch
    P, PB               the backward's raw sums per batch chunk c: sum of g * B[m], of g * b(x)
    k, OB, T, FULL      a build's constants: order, outputs per block, lanes, O % OB == 0
    IB, SB, NTB         inputs per block, samples per block, tiles per block

How the work is laid out:
1. bases: for each input, the spans and k+1 local bases of a tile's samples,
   one SIMD lane per sample (``_tile_bases``: a span guess from a per-input
   table of buckets, checked against the knots; lanes where it missed are
   redone one by one with a binary search), kept in a small scratch (the
   forward's: a block of inputs times a block of tiles; the backward's: a
   block of inputs times one tile);
2. contraction: the forward holds a block of OB outputs of one sample in
   registers while it adds the terms of a block of IB inputs, whose scaled
   coefficient rows (WL, built once per block of SB samples) stay in cache
   across a block of NTB tiles; the backward holds dy's block in registers,
   reads the parameters for dx, then adds into the raw sums.

Why it is fast:
- the kernels are compiled once per (k, OB, T, FULL) (``_forward_kernel``,
  ``_backward_kernel``): constant trip counts, so the loops over the k+1 bases
  and over a block of outputs unroll and vectorise (FMAs);
- the local triangle and the block accumulators are stack arrays
  (``_numba.local_array``) used only by inlined helpers, which LLVM keeps in
  registers, and no loop that writes memory reads an array LLVM must assume it
  overlaps, so the loops carry no run-time overlap checks;
- the bases of a tile are vectorised across its samples: the only loads that
  differ between lanes are the 2k knots around each span, and b(x), b'(x) are
  computed in the same lanes with an exp LLVM vectorises (``_vexp``);
- all storage and scratch starts on a 64-byte boundary (``empty``,
  ``_empty_aligned``), so no vector load of a row straddles two cache lines;
- no array views in the inner loops (each costs reference-count traffic
  shared between threads).

Parallelism without data races:
- forward: ``prange`` over batch chunks (``forward_chunks``); each chunk owns
  its rows of y, and a sample's outputs are summed in the same order whatever
  the split;
- backward: ``prange`` over (batch chunk, block of inputs) tasks; dx[b, i] has
  one owner, and the raw sums go into one buffer per batch chunk (a single one
  when the input blocks alone give ``TASKS`` tasks);
- chunk counts depend on shapes only (the same results for any number of
  threads), and small layers run on one thread (``_parallel.threads_for``);
- Numba's caveat: the process that compiles a kernel can differ in the last
  bit from a later one that loads it from Numba's on-disk cache (each is
  repeatable; both agree with the reference).

One compiled call per pass: each kernel allocates its scratch, fills what its
main loop reads of every input in parallel (``_setup_input``), runs its main
loop and (the backward) turns the raw sums into the parameter gradients, so
Python's part of a call is one dispatch. Two levels of compiled code per
kernel: the parallel function and the serial part each iteration of its main
loop runs (``chunk``, ``task``; ``_numba.serial_part``), so that Numba's
parallel passes work on a few lines instead of the whole inlined pass.

Scratch, all allocated inside Numba, is bounded by ``kernel_scratch_bytes``.
benchmarks/RESULTS.md ("CPU kernel design notes") has the measurements behind
these choices.
"""
import math
from functools import lru_cache

import numpy as np
from numba import njit, prange

from . import _host, _scalar, cpu_narrow, reference
from ._host import all_finite, copy_into, fill, to_host, upload_into  # noqa: F401  (host storage, shared with the reference)
from ._numba import cache_key, local_array, serial_part, with_globals
from ._parallel import TASKS, batch_chunks, input_block, threads_for
from ._scalar import BASE_CODES, IDENTITY, SILU
from ._vexp import vexp
from .cpu_train import adam_step, edge_moments_backward, edge_moments_forward, mse_loss_grad  # noqa: F401
from .cpu_train import finish_input
from .cpu_pde import spline_jet_backward, spline_jet_forward  # noqa: F401  (input derivatives, numkan.pde)

name = "cpu"
OUTPUT_BLOCK = 64     # outputs per register block: 8 AVX2 registers of float32, 16 of float64
INPUTS_PER_BLOCK = 4  # forward: inputs whose coefficient rows a block of samples shares in cache
TILES_PER_BLOCK = 4   # forward: tiles of samples that share a block of inputs' coefficient rows
ALIGN = 64            # bytes: storage starts on a cache line (see ``empty``)
SPAN_BUCKETS = 4      # buckets of the span guess per knot interval (``_setup_input``)
Y_BLOCK_BYTES = 256 * 1024  # forward: the rows of y a block of samples keeps in cache


def forward_chunks(B, K, T):
    """Forward: batch chunks, ``_parallel.TASKS`` at most, and none under max(T, 4K)
    samples. Each chunk builds its own scaled coefficient rows (K per input and
    output), which costs then at most 1/(4(k+2)) of the chunk's multiply-adds. Any
    split gives the same y: each chunk owns its rows, and sums a sample's terms in
    the same order."""
    return max(1, min(TASKS, B // max(T, 4 * K)))


def sample_block(O, itemsize):
    """Forward: samples per block whose rows of y stay in cache while the blocks of
    inputs pass over them (each block of inputs' scaled coefficient rows is built once
    per block of samples): about ``Y_BLOCK_BYTES`` of y, a whole number of blocks of
    tiles, at least one."""
    step = TILES_PER_BLOCK * tile(itemsize)
    return max(1, Y_BLOCK_BYTES // (O * itemsize) // step) * step


def tile(itemsize):
    """Samples whose local bases are computed together, then used: four AVX2 registers
    of lanes (32 float32, 16 float64), in both passes."""
    return 128 // itemsize


_jit = dict(nogil=True, cache=True)
_find_span = njit(**_jit)(_scalar.find_span)
# 'contract' fuses a*b+c into FMA; 'reassoc' lets LLVM vectorise the
# dot products over outputs in the backward pass. No NaN/inf assumptions.
_FAST = {"contract", "reassoc"}
# Helpers inlined into the kernels (Numba IR inlining): their scratch is the
# caller's stack arrays, which LLVM then keeps in registers, and the caller's
# constants (k, the block width) become theirs, so their loops unroll.
_inline = dict(inline="always", fastmath=_FAST)
_local_basis = njit(**_inline)(_scalar.local_basis)
_knot_reciprocals = njit(**_inline)(_scalar.knot_reciprocals)


@njit(inline="always")
def _u(i):
    """i as an unsigned index, for indices that are never negative. Numba indexes with a
    signed integer as Python does, -1 being the last element: a compare and a select
    per index wherever LLVM cannot prove the index non-negative. An unsigned index has
    no such code. Used where it pays: the forward's loads of knots, x, spans, bases and
    coefficient rows, and the backward's partial block (``_grad_block``); not for y's
    block or the output index, where LLVM then no longer keeps the block in registers."""
    return np.uint64(i)


@njit(inline="always")
def _signed(i):
    """i unchanged: a signed index (see ``_u``)."""
    return i


# ---------------------------------------------------------------------------
# storage: host ndarrays, as in the reference, whose data start on a cache line.
# The kernels read and write rows of coefficients, outputs and gradients with
# 32-byte AVX2 or 64-byte AVX-512 loads and stores; numpy's default allocation
# is only 16-byte aligned, so on a misaligned row every other AVX2 load, and
# every AVX-512 load, spans two cache lines. The kernels' own scratch is aligned
# the same way (``_empty_aligned``).
def empty(shape, dtype):
    """An uninitialised C-contiguous ndarray whose data start on an ``ALIGN``-byte boundary."""
    # (plain Python arithmetic: np.prod and np.isscalar alone cost more than the allocation)
    dtype = np.dtype(dtype)
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(n) for n in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def zeros(shape, dtype):
    a = empty(shape, dtype)
    a.fill(0)
    return a


def asarray(a, dtype):
    """Host or device array -> a C-contiguous ndarray of ``dtype`` on an ``ALIGN``-byte
    boundary (``_host.asarray``, copied once more when it is not aligned)."""
    a = _host.asarray(a, dtype)
    if a.ctypes.data % ALIGN == 0:
        return a
    out = empty(a.shape, a.dtype)
    out[...] = a
    return out


SLACK = 16  # elements over-allocated by ``_empty_aligned`` (at least ALIGN bytes of 4-byte items)


@njit(inline="always")
def _empty_aligned(shape, dtype):
    """np.empty(shape, dtype) inside the kernels, but starting on an ``ALIGN``-byte
    boundary: a view into ``SLACK`` more elements. Numba's own allocations are only
    32-byte aligned, so with AVX-512 every 64-byte load of a row of the scratch
    would span two cache lines."""
    n = 1
    for s in shape:
        n *= s
    raw = np.empty(n + SLACK, dtype=dtype)
    off = (-raw.ctypes.data % ALIGN) // raw.itemsize
    return raw[off:off + n].reshape(shape)


@njit(**_inline)
def _bases_at(N, dN, work, knots, inv, i, xv, k, deriv):
    """N (and dN) = the k+1 local bases of input i at xv (``_scalar.local_basis``);
    returns a span code: j >= k for an interior span (all k+1 bases exist), else
    -1 - j <= 0 (a boundary span; 0 outside the knots, where N = dN = 0).
    One sample at a time, from a binary search (``find_span``): the path of
    the samples that ``_tile_bases`` leaves over."""
    n = knots.shape[1]
    j = _find_span(knots, i, xv)
    if j < 0:
        for s in range(k + 1):
            N[s] = 0.0
            dN[s] = 0.0
        return 0
    _local_basis(knots, inv, i, j, xv, k, N, dN, work, deriv)
    return j if j >= k and j <= n - 2 - k else -1 - j


@njit(**_inline)
def _tile_bases(NT, DT, JT, r, XS, KW, OK, N, dN, work, x, t0, nb, knots, inv, lo, scale, span, i, k, deriv, T):
    """Span codes and local bases of input i for the T samples t0, t0+1, ...
    (lanes u < nb are real): JT[r, u], NT[r, s, u] and, when ``deriv``, DT[r, s, u].

    Vectorised across the samples (one lane per sample) for the common case,
    an interior span:
    1. the span guess: x's bucket among M equal buckets between the first and
       the last knot, int((x - t[0]) * scale), and the span at the bucket's
       middle, ``span[i, bucket]`` (clamped to the interior spans k .. n-2-k;
       on a uniform grid bucket // SPAN_BUCKETS, without the table load);
       ``lo``, ``scale``, ``span`` come from ``_setup_input``;
    2. the 2k knots t[j-k+1 .. j+k] of each lane into KW (one row per knot:
       the only loads that differ between lanes);
    3. Cox-de Boor on the local triangle (``_scalar.local_basis``, with the
       reciprocals of the knot differences computed here), and OK[u] = 1
       where t[j] <= x < t[j+1], i.e. the guess was the span;
    4. the lanes where it was not (non-uniform knots, a boundary span, outside
       the knots, a non-finite x) are redone one by one by ``_bases_at``.
    A NaN or infinite x, or knots whose guess is NaN, get a clamped guess (the
    float is clamped before it becomes an index) and fail step 3's check.
    XS, KW, OK (T, 2k*T, T) and N, dN, work are the caller's stack scratch; T, the
    tile's size, is a constant of the caller's compiled code.
    """
    n = knots.shape[1]
    one = XS.dtype.type(1)  # typed constants: a bare 1 would promote float32 to float64
    zero = XS.dtype.type(0)
    kk = XS.dtype.type(k)
    M = span.shape[1] - 1  # buckets; span[i, M] = 1 when the table is that of a uniform grid
    if span[i, M] == 1:  # uniform: the span is the bucket's index / SPAN_BUCKETS, no table load
        sc = scale[i] * XS.dtype.type(1 / SPAN_BUCKETS)  # exact: a power of two
        last = XS.dtype.type(n - 2 - k)
        for u in range(T):  # vectorised
            xv = x[_u(t0 + u), i] if u < nb else x[_u(t0), i]  # idle lanes repeat the first sample
            XS[u] = xv
            g = (xv - lo[i]) * sc
            # clamped as a float, NaN to kk (g >= kk is false for NaN): an int32 of NaN or
            # inf is undefined, and the knot loads below would index with it
            g = (g if g <= last else last) if g >= kk else kk
            JT[r, u] = np.int32(g)
    else:
        mlast = XS.dtype.type(M - 1)
        for u in range(T):
            xv = x[_u(t0 + u), i] if u < nb else x[_u(t0), i]
            XS[u] = xv
            g = (xv - lo[i]) * scale[i]
            g = (g if g <= mlast else mlast) if g >= zero else zero  # NaN to 0, as above
            JT[r, u] = span[i, _u(np.int32(g))]
    for u in range(T):  # the knots around the spans (one load per lane and knot)
        a = JT[r, u] - k + 1
        for m in range(2 * k):
            KW[m * T + u] = knots[i, _u(a + m)]
    for u in range(T):
        xv = XS[u]
        N[0] = one
        for rr in range(1, k + 1):
            saved = zero
            for s in range(rr):
                right = KW[(k + s) * T + u]      # t[j+1+s]
                left = KW[(k - rr + s) * T + u]  # t[j+1-rr+s]
                d = right - left
                q = N[s] / d if d > zero else zero
                if deriv and rr == k:
                    dN[s] = -kk * q if s == 0 else dN[s] - kk * q
                    dN[s + 1] = kk * q
                N[s] = saved + (right - xv) * q
                saved = (xv - left) * q
            N[rr] = saved
        for s in range(k + 1):
            NT[r, s, u] = N[s]
            if deriv:
                DT[r, s, u] = dN[s]
        OK[u] = np.int32(KW[(k - 1) * T + u] <= xv) & np.int32(xv < KW[k * T + u])
    for u in range(nb):
        if OK[u] == 0:
            JT[r, u] = _bases_at(N, dN, work, knots, inv, i, XS[u], k, deriv)
            for s in range(k + 1):
                NT[r, s, u] = N[s]
                if deriv:
                    DT[r, s, u] = dN[s]


@njit(**_inline)
def _base_lanes(BV, BD, r, XS, code, deriv, T):
    """b(x) into BV[r, u] and, when ``deriv``, b'(x) into BD[r, u] for the tile's lanes
    x = XS[u]; vectorised across the lanes. silu: b = x s, b' = s (1 + x (1 - s)) with
    s = sigmoid(x) = 1 / (1 + exp(-x)), exp from ``_vexp`` (compiled apart, without
    reassociation, and inlined by LLVM). At a non-finite x these are what
    ``reference.base_value`` / ``base_deriv`` give (the products with 0 * x carry it)."""
    one = XS.dtype.type(1)  # typed constants: a bare 1 would promote float32 to float64
    zero = XS.dtype.type(0)
    for u in range(T):
        xv = XS[u]
        if code == SILU:
            sg = one / (one + vexp(-xv))
            BV[r, u] = xv * sg
            if deriv:
                BD[r, u] = sg * (one + xv * (one - sg))
        elif code == IDENTITY:
            BV[r, u] = xv
            if deriv:
                BD[r, u] = one + zero * xv  # NaN at a non-finite x, as in the reference
        else:
            BV[r, u] = zero * xv
            if deriv:
                BD[r, u] = zero * xv


@njit(**_inline)
def _input_arrays(knots, O, k, dtype):
    """Room for what the set-up fills per input (``_setup_input``): the knot
    reciprocals (zeroed: the entries no knot difference fills are never read but
    defined), lo and scale (I,), the span guess's table (SPAN_BUCKETS buckets per
    knot interval and a last column that flags a uniform grid's), and
    spm = scale_sp * mask, Wb = scale_base * mask (I, O)."""
    I, n = knots.shape
    return (np.zeros((I, k + 1, n), dtype=knots.dtype), np.empty(I, dtype=dtype), np.empty(I, dtype=dtype),
            np.empty((I, SPAN_BUCKETS * (n - 1) + 1), dtype=np.int32), _empty_aligned((I, O), dtype),
            _empty_aligned((I, O), dtype))


@njit(**_inline)
def _setup_input(inv, lo, scale, span, spm, Wb, knots, scale_base, scale_sp, mask, i, k):
    """What both kernels need of input i, computed before their main loop (in
    parallel over the inputs, in the kernel's set-up loop): its knot
    reciprocals (``_scalar.knot_reciprocals``, for ``_bases_at``), the span guess
    of ``_tile_bases``, spm[i] = scale_sp[i] * mask[i] and Wb[i] = scale_base[i] * mask[i].

    The span guess: M = span.shape[1] - 1 = SPAN_BUCKETS * (n-1) equal buckets
    between the first and the last knot; x's bucket is int((x - lo[i]) * scale[i])
    with lo[i] = t[0] and scale[i] = M / (t[-1] - t[0]) (float64, rounded to the
    kernel's dtype); span[i, b] is the span that holds the bucket's middle
    t[0] + (b + 1/2) * step, step = (t[-1] - t[0]) / M (float64), clamped to
    the interior spans k .. n-2-k, and span[i, M] is 1 when the table is a
    uniform grid's (span[i, b] = b // SPAN_BUCKETS, clamped). On a uniform
    grid no bucket holds a knot; on knots placed at sample quantiles
    (``update_grid``) few do, and the samples of a bucket on the wrong side of
    its knot go to ``_bases_at``."""
    n = knots.shape[1]
    M = span.shape[1] - 1
    _knot_reciprocals(inv, knots, i, k)
    for o in range(mask.shape[1]):
        spm[i, o] = scale_sp[i, o] * mask[i, o]
        Wb[i, o] = scale_base[i, o] * mask[i, o]
    t0 = np.float64(knots[i, 0])
    width = np.float64(knots[i, n - 1]) - t0
    lo[i] = t0
    if not (width > 0.0 and width < np.inf and M / width < np.inf):
        # knots the boundary checks reject (a non-finite or empty span, written into
        # a live knot array): every guess is span k, checked against the knots and
        # redone by binary search when wrong, so the results stay those of the
        # search and no NaN reaches an int conversion below
        scale[i] = 0.0
        for b in range(M):
            span[i, b] = k
        span[i, M] = 0
        return
    rs = M / width
    scale[i] = rs
    # The table is filled knot by knot: span j >= k+1 begins at the first bucket whose
    # middle t0 + (b + 1/2) * step is at or after t[j] (found by arithmetic, then
    # checked against that same expression); O(n + M) work, and no division per
    # bucket or knot (the divisions cost more than the rest of the set-up).
    step = width / M
    b0 = 0
    for j in range(k + 1, n - 1 - k):
        tj = np.float64(knots[i, j])
        f = (tj - t0) * rs - 0.5
        f = (f if f <= M else M) if f >= b0 else b0  # clamped as a float: tj may be NaN
        b1 = int(math.ceil(f))
        while b1 > b0 and t0 + (b1 - 0.5) * step >= tj:
            b1 -= 1
        while b1 < M and t0 + (b1 + 0.5) * step < tj:
            b1 += 1
        for b in range(b0, b1):
            span[i, b] = j - 1
        b0 = b1
    for b in range(b0, M):
        span[i, b] = n - 2 - k
    uniform = 1
    for b in range(M):
        uniform &= np.int32(span[i, b] == min(max(b // SPAN_BUCKETS, k), n - 2 - k))
    span[i, M] = uniform


def _contract(y, acc, width, b, t, u, ob, i0, i1, nt, JT, NT, BXT, W, Wb, k):
    """y[b, ob:ob+width] += sum over inputs i0..i1-1 of phi[i, o](x[b, i]), from the
    span codes JT[r, u], bases NT[r, :, u] and b(x) BXT[r, u] of tile t, lane u, in the
    scratch row r = (i - i0) * nt + t (``nt`` tiles per input); y's block is
    overwritten when i0 == 0.
    Accumulates in ``acc``; W[i - i0] = coef[i] * scale_sp[i] * mask[i] (the block
    of inputs' rows), Wb = scale_base * mask."""
    K = W.shape[1]
    for o in range(width):
        acc[o] = 0.0 if i0 == 0 else y[b, ob + o]
    for i in range(i0, i1):
        ui = _u(i)
        wi = _u(i - i0)
        r = _u((i - i0) * nt + t)
        j = JT[r, _u(u)]
        bv = BXT[r, _u(u)]
        if j >= k:  # interior span (j >= k tells LLVM the rows a + s are not negative)
            a = j - k
            for o in range(width):
                v = bv * Wb[ui, ob + o]  # the base term, then the k+1 spline terms, then one
                for s in range(k + 1):   # addition to the accumulator (see _forward_kernel)
                    v += NT[r, s, _u(u)] * W[wi, _u(a + s), ob + o]
                acc[o] += v
        else:  # boundary span or outside the knots: only the bases that exist
            a = -1 - j - k
            for o in range(width):
                acc[o] += bv * Wb[i, ob + o]
            for s in range(k + 1):
                if a + s >= 0 and a + s < K:
                    w = NT[r, s, _u(u)]
                    for o in range(width):
                        acc[o] += w * W[i - i0, a + s, ob + o]
    for o in range(width):
        y[b, ob + o] = acc[o]


def _grad_block(dx, P, pb, gl, width, c, b, i, ob, N, dN, bv, bd, code, dy, coef, spm, Wb, k):
    """One sample b, input i (span code ``code``), outputs ob:ob+width: adds
    dx[b, i], the raw sums P[c, i] (sum of g * B), and g * b into ``pb`` (the
    caller's accumulator of PB[c, i, ob:ob+width], added to PB once per tile).

    dy's block is first copied into ``gl``, and every read of the parameters
    comes before the first write to P: LLVM then vectorises both loops without
    overlap checks between P and the arrays it reads. The interior span's
    indices go through ``_ix``: unsigned (``_u``) in the partial block's build,
    where with a width known only at run time LLVM otherwise kept each load
    and store scalar, behind negative-index code; signed in the full block's,
    where unsigned indices were slower.
    """
    K = coef.shape[1]
    zero = dy.dtype.type(0)
    ub = _ix(b)
    ui = _ix(i)
    uc = _ix(c)
    for o in range(width):
        gl[o] = dy[ub, _ix(ob + o)]
    d = zero
    if code >= k:  # interior span (code >= k tells LLVM the rows a + s are not negative)
        a = code - k
        for o in range(width):
            t = zero
            for s in range(k + 1):
                t += dN[s] * coef[ui, _ix(a + s), _ix(ob + o)]
            d += gl[o] * (bd * Wb[ui, _ix(ob + o)] + spm[ui, _ix(ob + o)] * t)
        for o in range(width):
            pb[o] += bv * gl[o]
        for s in range(k + 1):
            for o in range(width):
                P[uc, ui, _ix(a + s), _ix(ob + o)] += N[s] * gl[o]
    else:  # boundary span or outside the knots: only the bases that exist
        a = -1 - code - k
        for o in range(width):
            d += gl[o] * bd * Wb[i, ob + o]
        for s in range(k + 1):
            if a + s >= 0 and a + s < K:
                for o in range(width):
                    d += gl[o] * spm[i, ob + o] * dN[s] * coef[i, a + s, ob + o]
        for o in range(width):
            pb[o] += bv * gl[o]
        for s in range(k + 1):
            if a + s >= 0 and a + s < K:
                for o in range(width):
                    P[c, i, a + s, ob + o] += N[s] * gl[o]
    dx[b, i] += d


# Each helper inlined twice (one plain function, two builds): for a full block
# of OB outputs (constant width: unrolled, in registers), and for the last,
# partial block (a width known at run time; its scratch is separate stack
# arrays, so the full block's stay in registers). Layers with fewer than OB
# outputs (most hidden and output layers) run only the partial block. Inlined,
# not called: a call per sample and input costs more than its work.
_contract_block = njit(**_inline)(_contract)
_contract_any = njit(**_inline)(_contract)
_grad_block_full = njit(**_inline)(with_globals(_grad_block, {"_ix": _signed}))
_grad_block_any = njit(**_inline)(with_globals(_grad_block, {"_ix": _u}))


@njit(inline="always")
def _tile_scratch(T, KW2, kp1, W2, dtype):
    """The stack scratch of ``_tile_bases`` for a tile of T lanes: XS (T,), KW (KW2 =
    2kT,), OK (T,) int32, N and dN (kp1 = k+1,), work (W2 = 2(k+1),). The sizes are
    constants of the caller's build, and the arrays live in its stack frame (inlined)."""
    return (local_array(T, dtype), local_array(KW2, dtype), local_array(T, np.int32),
            local_array(kp1, dtype), local_array(kp1, dtype), local_array(W2, dtype))


# The build's constants, held in the closures of every kernel and of the serial
# part it calls (``_numba.cache_key``; tests/test_cpu_support.py checks both).
_CACHE_KEY = ("k", "OB", "T", "FULL")


@lru_cache(maxsize=None)
def _forward_kernel(k, OB, T, FULL):
    """The forward kernel compiled for spline order ``k``, output block ``OB``, a tile
    of ``T`` samples (``tile``), and ``FULL``: whether it is for layers whose outputs
    are whole blocks (O a multiple of OB).

    All are constants of the compiled code: the loops over the k+1 local
    bases and over a block of OB outputs have constant trip counts, so LLVM
    unrolls them and keeps the local triangle and the OB accumulators in
    registers (``_numba.local_array``). The FULL kernel has no code for a
    partial block, which even unused slows the full blocks.

    The parallel kernel runs the set-up, allocates each batch chunk's scratch and
    hands the chunk to ``chunk``: a serial function compiled on its own and
    inlined by LLVM (``_numba.serial_part``), so that Numba's parallel passes
    (loop fusion, outlining the loop body) see a few lines, not the whole
    inlined pass: a much shorter compile at the same speed.
    """
    kp1 = k + 1
    W2 = 2 * kp1
    KW2 = 2 * k * T  # the knots around each lane's span
    NTB = TILES_PER_BLOCK

    # fastmath without 'reassoc' (the serial part vectorises over outputs and lanes,
    # never a reduction): each input's terms are summed apart, then added to the
    # accumulators in one addition, as written in _contract. With 'reassoc' LLVM chains
    # all k+2 multiply-adds of an input through the accumulator; that costs nothing
    # on a full block (its accumulator registers hide the latency) but slows the
    # partial block, whose run-time width leaves it few vector accumulators, or none.
    @serial_part(fastmath={"contract"}, error_model="numpy", **_jit)
    def chunk(y, x, knots, coef, inv, lo, scale, span, spm, Wb, code, b0, b1, SB, WL, JT, NT, BXT):
        # rows b0:b1 of y, from the inputs' set-up (_setup_input); SB samples per
        # block (sample_block); scratch: WL (IB, K, O), coef * scale_sp * mask of a
        # block of IB inputs; JT (IB * NTB, T) span codes, row (i - i0) * nt + tile;
        # NT (IB * NTB, k+1, T) local bases; BXT (IB * NTB, T) b(x)
        I = x.shape[1]
        K = coef.shape[1]
        O = y.shape[1]
        IB = WL.shape[0]
        acc_any = local_array(OB, y.dtype)  # the partial block's accumulators
        XS, KW, OK, N, dN, work = _tile_scratch(T, KW2, kp1, W2, y.dtype)
        acc = local_array(OB, y.dtype)
        for S0 in range(b0, b1, SB):  # blocks of SB samples, whose rows of y stay in cache
            S1 = min(S0 + SB, b1)
            for i0 in range(0, I, IB):  # blocks of IB inputs
                i1 = min(i0 + IB, I)
                for r in range(i1 - i0):  # their coefficient rows, scaled, into WL
                    for m in range(K):
                        for o in range(O):
                            WL[r, m, o] = coef[i0 + r, m, o] * spm[i0 + r, o]
                for s0 in range(S0, S1, NTB * T):  # blocks of NTB tiles of samples
                    s1 = min(s0 + NTB * T, S1)
                    nt = -(-(s1 - s0) // T)  # tiles in this block (NTB but in the last block)
                    for r in range(i1 - i0):
                        for t in range(nt):
                            t0 = s0 + t * T
                            row = r * nt + t
                            _tile_bases(NT, NT, JT, row, XS, KW, OK, N, dN, work, x, t0, min(T, s1 - t0),
                                        knots, inv, lo, scale, span, i0 + r, k, False, T)
                            _base_lanes(BXT, BXT, row, XS, code, False, T)
                    # A sample's block of OB outputs stays in registers across the block of
                    # inputs, whose rows of WL stay in cache across the block of samples.
                    # (A while loop: with 'for ob in range(0, O, OB)' LLVM no longer keeps
                    # the block in registers.)
                    ob = 0
                    while ob < O:
                        for t in range(nt):
                            t0 = s0 + t * T
                            for u in range(min(T, s1 - t0)):
                                if FULL or ob + OB <= O:
                                    _contract_block(y, acc, OB, t0 + u, t, u, ob, i0, i1, nt, JT, NT, BXT,
                                                    WL, Wb, k)
                                else:
                                    _contract_any(y, acc_any, O - ob, t0 + u, t, u, ob, i0, i1, nt, JT, NT,
                                                  BXT, WL, Wb, k)
                        ob += OB

    def forward(y, x, knots, coef, scale_base, scale_sp, mask, code, nchunk, IB, SB):
        # y (B, O) out; x (B, I); knots (I, n); coef (I, K, O); code: base_fun; nchunk batch
        # chunks (forward_chunks), IB inputs per block, SB samples per block (sample_block).
        cache_key((k, OB, T, FULL))
        B, I = x.shape
        K = coef.shape[1]
        O = y.shape[1]
        inv, lo, scale, span, spm, Wb = _input_arrays(knots, O, k, y.dtype)
        for i in prange(I):  # the set-up, in parallel over the inputs
            _setup_input(inv, lo, scale, span, spm, Wb, knots, scale_base, scale_sp, mask, i, k)
        for c in prange(nchunk):  # batch chunks: each owns its rows of y, and its scratch
            WL = _empty_aligned((IB, K, O), y.dtype)
            JT = _empty_aligned((IB * NTB, T), np.int32)
            NT = _empty_aligned((IB * NTB, kp1, T), y.dtype)
            BXT = _empty_aligned((IB * NTB, T), y.dtype)
            _chunk(y, x, knots, coef, inv, lo, scale, span, spm, Wb, code, c * B // nchunk, (c + 1) * B // nchunk,
                   SB, WL, JT, NT, BXT)

    return njit(parallel=True, fastmath=_FAST, **_jit)(with_globals(forward, {"_chunk": chunk}, _CACHE_KEY))


@lru_cache(maxsize=None)
def _backward_kernel(k, OB, T, FULL):
    """The backward kernel compiled for spline order ``k``, output block ``OB``, a tile
    of ``T`` samples and ``FULL`` (O a multiple of OB), constants of its code as in
    ``_forward_kernel`` (the FULL kernel has no code for a partial block). Each task
    is ``task``, a serial part compiled on its own, its scratch allocated by the
    kernel (as ``chunk`` in ``_forward_kernel``)."""
    kp1 = k + 1
    W2 = 2 * kp1
    KW2 = 2 * k * T  # the knots around each lane's span

    @serial_part(fastmath=_FAST, error_model="numpy", **_jit)
    def task(dx, P, PB, dy, x, knots, coef, inv, lo, scale, span, spm, Wb, code, c, b0, b1, i0, i1,
             JT, NT, DT, BV, BD):
        # samples b0:b1 of inputs i0:i1: dx[b0:b1, i0:i1], and the raw sums P[c, i0:i1], PB[c, i0:i1];
        # scratch (rows for IB >= i1 - i0 inputs): JT (IB, T) span codes, NT and DT (IB, k+1, T)
        # local bases and their derivatives, BV and BD (IB, T) b(x) and b'(x)
        ni = i1 - i0  # inputs in this task's block
        O = dy.shape[1]
        zero = dy.dtype.type(0)
        gl_any = local_array(OB, dy.dtype)  # the partial block's scratch
        pb_any = local_array(OB, dy.dtype)
        N_any = local_array(kp1, dy.dtype)
        dN_any = local_array(kp1, dy.dtype)
        XS, KW, OK, N, dN, work = _tile_scratch(T, KW2, kp1, W2, dy.dtype)
        gl = local_array(OB, dy.dtype)
        pb = local_array(OB, dy.dtype)
        for t0 in range(b0, b1, T):
            nb = min(T, b1 - t0)
            # r counts from 0 (not i - i0): LLVM then knows the scratch rows are not
            # negative, and vectorises the tile's stores without index wrap-around
            for r in range(ni):
                _tile_bases(NT, DT, JT, r, XS, KW, OK, N, dN, work, x, t0, nb, knots, inv, lo, scale, span,
                            i0 + r, k, True, T)
                _base_lanes(BV, BD, r, XS, code, True, T)
            for r in range(ni):
                i = i0 + r
                # each block of outputs: the tile's samples, with the base raw sum
                # of the block in pb (registers), added to PB once
                ob = 0
                while ob + OB <= O:
                    for o in range(OB):
                        pb[o] = zero
                    for u in range(nb):
                        for s in range(kp1):
                            N[s] = NT[r, s, u]
                            dN[s] = DT[r, s, u]
                        _grad_block_full(dx, P, pb, gl, OB, c, t0 + u, i, ob, N, dN, BV[r, u], BD[r, u],
                                         JT[r, u], dy, coef, spm, Wb, k)
                    for o in range(OB):
                        PB[c, i, ob + o] += pb[o]
                    ob += OB
                if not FULL and ob < O:  # the last, partial block
                    for o in range(O - ob):
                        pb_any[o] = zero
                    for u in range(nb):
                        for s in range(kp1):
                            N_any[s] = NT[r, s, u]
                            dN_any[s] = DT[r, s, u]
                        _grad_block_any(dx, P, pb_any, gl_any, O - ob, c, t0 + u, i, ob, N_any, dN_any,
                                        BV[r, u], BD[r, u], JT[r, u], dy, coef, spm, Wb, k)
                    for o in range(O - ob):
                        PB[c, i, ob + o] += pb_any[o]

    def backward(dx, dcoef, dscale_base, dscale_sp, dy, x, knots, coef, scale_base, scale_sp, mask, code,
                 nchunk, IB):
        # dx (B, I), dcoef, dscale_base, dscale_sp +=; code: base_fun; nchunk batch chunks
        # and IB inputs per block (_parallel.batch_chunks, input_block).
        # Raw sums: P (nchunk, I, K, O) = sum_b g * B[m](x), PB (nchunk, I, O) = sum_b g * b(x).
        # Tasks: (batch chunk, block of IB inputs). A task owns dx[chunk, block] and
        # P[c, block]; its tile of dy rows is reused by the IB inputs, and each input's
        # rows of P by the tile's samples.
        cache_key((k, OB, T, FULL))
        B, I = x.shape
        K = coef.shape[1]
        O = dy.shape[1]
        zero = dy.dtype.type(0)
        inv, lo, scale, span, spm, Wb = _input_arrays(knots, O, k, dy.dtype)
        P = _empty_aligned((nchunk, I, K, O), dy.dtype)
        PB = _empty_aligned((nchunk, I, O), dy.dtype)
        for i in prange(I):  # the set-up, in parallel over the inputs
            _setup_input(inv, lo, scale, span, spm, Wb, knots, scale_base, scale_sp, mask, i, k)
            for c in range(nchunk):
                for o in range(O):
                    PB[c, i, o] = zero
                for m in range(K):
                    for o in range(O):
                        P[c, i, m, o] = zero
        nblk = -(-I // IB)
        for t in prange(nchunk * nblk):
            c = t // nblk
            i0 = (t - c * nblk) * IB
            JT = _empty_aligned((IB, T), np.int32)
            NT = _empty_aligned((IB, kp1, T), dy.dtype)
            DT = _empty_aligned((IB, kp1, T), dy.dtype)
            BV = _empty_aligned((IB, T), dy.dtype)
            BD = _empty_aligned((IB, T), dy.dtype)
            _task(dx, P, PB, dy, x, knots, coef, inv, lo, scale, span, spm, Wb, code,
                  c, c * B // nchunk, (c + 1) * B // nchunk, i0, min(i0 + IB, I), JT, NT, DT, BV, BD)
        for i in prange(I):  # the parameter gradients from the raw sums
            finish_input(dcoef, dscale_base, dscale_sp, P, PB, coef, spm, mask, i)

    return njit(parallel=True, fastmath=_FAST, **_jit)(with_globals(backward, {"_task": task}, _CACHE_KEY))


def kernel_scratch_bytes(B, I, O, G, k, itemsize, threads):
    """Upper bound on the bytes a call allocates at once (all inside Numba, whose
    runtime allocates through Python's raw allocator, so tracemalloc sees them;
    ``tests/test_kernels.py`` checks the bound that way), for a layer of grid size G: the
    per-input scratch of the set-up pass (knot reciprocals, span guess, scale_sp *
    mask, scale_base * mask), the backward's raw sums (one coefficient-sized buffer
    per batch chunk), and per running task the span codes, bases and b(x) of its
    scratch rows (forward: ``INPUTS_PER_BLOCK`` inputs times ``TILES_PER_BLOCK``
    tiles, and those inputs' scaled coefficient rows; backward: its block of inputs
    times one tile, with the derivatives), at most ``threads`` tasks at a time; the
    larger of the two passes. (The block accumulators are stack arrays, not counted.)
    Each aligned allocation (``_empty_aligned``) adds ``SLACK`` elements."""
    kp1 = k + 1
    K = G + k
    n = G + 2 * k + 1
    slack = SLACK * max(itemsize, 4)
    per_input = I * (kp1 * n + 2 + 2 * O) * itemsize + I * (SPAN_BUCKETS * (n - 1) + 1) * 4 + 2 * slack
    T = tile(itemsize)
    fwd_tasks = min(forward_chunks(B, K, T), threads)
    R = INPUTS_PER_BLOCK * TILES_PER_BLOCK  # the forward's scratch rows
    fwd = R * T * 4 + (R * kp1 * T + R * T + INPUTS_PER_BLOCK * K * O) * itemsize + 4 * slack
    IB = input_block(I)
    nblk = -(-I // IB)
    nchunk = batch_chunks(B, nblk)
    bwd_tasks = nchunk * nblk
    bwd = IB * T * 4 + (2 * IB * kp1 * T + 2 * IB * T) * itemsize + 5 * slack
    raw_sums = nchunk * I * (K + 1) * O * itemsize + 2 * slack
    return per_input + max(fwd_tasks * fwd, raw_sums + min(bwd_tasks, threads) * bwd)


def spline_forward(y, x, knots, coef, scale_base, scale_sp, mask, k, base_fun):
    """Compiled ``reference.spline_forward``: y (B, O) overwritten. y must not
    overlap any input array (the compiled code assumes its arrays do not;
    the layers always pass buffers of their own)."""
    B, I = x.shape
    O = y.shape[1]
    if cpu_narrow.serves(O, k):  # few outputs: the bases are the work
        return cpu_narrow.spline_forward(y, x, knots, coef, scale_base, scale_sp, mask, k, BASE_CODES[base_fun])
    itemsize = coef.dtype.itemsize
    T = tile(itemsize)
    forward = _forward_kernel(k, OUTPUT_BLOCK, T, O % OUTPUT_BLOCK == 0)
    with threads_for(B * I * O):
        forward(y, x, knots, coef, scale_base, scale_sp, mask, BASE_CODES[base_fun],
                forward_chunks(B, coef.shape[1], T), INPUTS_PER_BLOCK, sample_block(O, itemsize))
    return y


def spline_backward(dx, dcoef, dscale_base, dscale_sp, dy, x, knots, coef,
                    scale_base, scale_sp, mask, k, base_fun):
    """Compiled ``reference.spline_backward``: adds into dx (None: not wanted), dcoef,
    dscale_base, dscale_sp, which must not overlap one another or the inputs (as in
    ``spline_forward``). Only the narrow kernels skip the work of dx when it is None.

    The kernel gathers raw sums R[i,m,o] = sum_b g[b,o] B[m,k](x[b,i]) and
    Rb[i,o] = sum_b g[b,o] b(x[b,i]); the parameter gradients follow in
    O(I*K*O):  dcoef += R * scale_sp * mask,  dscale_base += Rb * mask,
    dscale_sp += mask * sum_m coef * R  (since s = sum_m coef * B[m]).
    Extra memory: R, one coefficient-sized buffer per batch chunk (a single
    one when the input blocks alone give ``_parallel.TASKS`` tasks).
    """
    B, I = x.shape
    O = dy.shape[1]
    if cpu_narrow.serves(O, k):  # few outputs: the bases are the work
        cpu_narrow.spline_backward(dx, dcoef, dscale_base, dscale_sp, dy, x, knots, coef, scale_base, scale_sp,
                                   mask, k, BASE_CODES[base_fun])
        return
    if dx is None:  # the wide kernel always computes dx: into scratch
        dx = np.zeros(x.shape, dy.dtype)
    IB = input_block(I)
    nchunk = batch_chunks(B, -(-I // IB))  # one when the input blocks give enough tasks
    backward = _backward_kernel(k, OUTPUT_BLOCK, tile(coef.dtype.itemsize), O % OUTPUT_BLOCK == 0)
    with threads_for(B * I * O):
        backward(dx, dcoef, dscale_base, dscale_sp, dy, x, knots, coef, scale_base, scale_sp, mask,
                 BASE_CODES[base_fun], nchunk, IB)



def spline_mse(y, dx, dcoef, dscale_base, dscale_sp, target, x, knots, coef, scale_base, scale_sp, mask,
               k, base_fun):
    """``reference.spline_mse``: a narrow layer on a batch of one chunk in one pass that
    keeps each sample's spans and bases between its forward and its backward
    (``cpu_narrow.mse_rows``, the same values as the three calls); every other layer
    through ``spline_forward``, ``mse_loss_grad`` and ``spline_backward``."""
    s = cpu_narrow.spline_mse(y, dx, dcoef, dscale_base, dscale_sp, target, x, knots, coef, scale_base,
                              scale_sp, mask, k, BASE_CODES[base_fun])
    if s is not None:
        return s / y.size
    spline_forward(y, x, knots, coef, scale_base, scale_sp, mask, k, base_fun)
    dy = empty(y.shape, y.dtype)
    loss = mse_loss_grad(dy, y, target)
    spline_backward(dx, dcoef, dscale_base, dscale_sp, dy, x, knots, coef, scale_base, scale_sp, mask, k, base_fun)
    return loss


# ---------------------------------------------------------------------------
# a fixed input (fit's batch through the first layer): see cpu_narrow's FixedInput
def fixed_input(x):
    """x (B, I), a batch the caller will not change, for repeated passes."""
    return cpu_narrow.FixedInput(x)


def fixed_forward(y, F, knots, coef, scale_base, scale_sp, mask, k, base_fun):
    """``spline_forward(y, F.x, ...)``; a narrow layer of a batch of one chunk runs from
    what F keeps (``cpu_narrow.fixed_forward``), every other through ``spline_forward``."""
    if not (cpu_narrow.serves(y.shape[1], k) and
            cpu_narrow.fixed_forward(y, F, knots, coef, scale_base, scale_sp, mask, k, BASE_CODES[base_fun])):
        spline_forward(y, F.x, knots, coef, scale_base, scale_sp, mask, k, base_fun)
    return y


def fixed_backward(dcoef, dscale_base, dscale_sp, dy, F, knots, coef, scale_base, scale_sp, mask, k, base_fun):
    """``spline_backward(None, ..., dy, F.x, ...)`` (no input gradient), as ``fixed_forward``."""
    if not (cpu_narrow.serves(dy.shape[1], k) and
            cpu_narrow.fixed_backward(dcoef, dscale_base, dscale_sp, dy, F, knots, coef, scale_sp, mask, k,
                                      BASE_CODES[base_fun])):
        spline_backward(None, dcoef, dscale_base, dscale_sp, dy, F.x, knots, coef, scale_base, scale_sp, mask, k,
                        base_fun)


def local_bases(x, knots, k):
    """Compiled ``reference.local_bases`` (host float64 arrays; the values to a few ulps,
    from the bases in power form on each span, ``cpu_narrow.span_bases``; above the
    orders the narrow kernels serve, whose power form grows up to 2^k, the reference)."""
    if k > cpu_narrow.MAX_ORDER:
        return reference.local_bases(x, knots, k)
    x = np.ascontiguousarray(x, dtype=np.float64)
    knots = np.ascontiguousarray(knots, dtype=np.float64)
    M = np.empty((knots.shape[0], knots.shape[1] - 1, k + 1, k + 1))
    cpu_narrow.span_bases(M, knots, k)
    span = np.empty(x.shape, np.int64)
    N = np.empty(x.shape + (k + 1,))
    cpu_narrow.local_bases(span, N, x, knots, M, k)
    return span, N


def normal_sums(x, t_old, coef_old, t_new, k):
    """Compiled ``reference.normal_sums`` (host float64; from the bases in power form, as
    ``local_bases``, accumulated sample by sample without the design matrices; above
    ``cpu_narrow.MAX_ORDER``, the reference)."""
    if k > cpu_narrow.MAX_ORDER:
        return reference.normal_sums(x, t_old, coef_old, t_new, k)
    x = np.ascontiguousarray(x, dtype=np.float64)
    t_old = np.ascontiguousarray(t_old, dtype=np.float64)
    t_new = np.ascontiguousarray(t_new, dtype=np.float64)
    coef_old = np.ascontiguousarray(coef_old, dtype=np.float64)
    I = x.shape[1]
    M_old = np.empty((I, t_old.shape[1] - 1, k + 1, k + 1))
    M_new = np.empty((I, t_new.shape[1] - 1, k + 1, k + 1))
    cpu_narrow.span_bases(M_old, t_old, k)
    cpu_narrow.span_bases(M_new, t_new, k)
    K = t_new.shape[1] - k - 1
    gram = np.empty((I, K, K))
    rhs = np.empty((I, K, coef_old.shape[2]))
    cpu_narrow.normal_sums(gram, rhs, x, t_old, M_old, coef_old, t_new, M_new, k)
    return gram, rhs


# ---------------------------------------------------------------------------
# multiplication nodes: reference.group_product_*, the same products in the same order
_group_product = njit(inline="always")(_scalar.group_product)  # no fastmath: the reference's order
_group_product_grad = njit(inline="always")(_scalar.group_product_grad)


@njit(parallel=True, cache=True)
def _group_product_forward(z, y, offsets):
    for b in prange(z.shape[0]):
        for n in range(z.shape[1]):
            z[b, n] = _group_product(y, b, offsets[n], offsets[n + 1])


@njit(parallel=True, cache=True)
def _group_product_backward(dy, dz, y, offsets):
    for b in prange(dz.shape[0]):
        for n in range(dz.shape[1]):
            _group_product_grad(dy, dz[b, n], y, b, offsets[n], offsets[n + 1])


def group_product_forward(z, y, offsets):
    """Compiled ``reference.group_product_forward``: z[b, n] = product of y[b, group n]."""
    with threads_for(y.size):
        _group_product_forward(z, y, offsets)


def group_product_backward(dy, dz, y, offsets):
    """Compiled ``reference.group_product_backward``: dy[b, s] = dz[b, n] * the other factors."""
    with threads_for(y.size):
        _group_product_backward(dy, dz, y, offsets)
