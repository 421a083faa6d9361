"""Numba CPU kernels: the reference's maths, compiled, parallel and local.

Same functions and signatures as ``reference.py`` (the definition these are
tested against). The scalar maths (span search, Cox-de Boor on the local
triangle) comes from ``_scalar.py`` and is compiled here with ``njit``.

Work per sample and input: one span search, the k+1 local bases, then k+2
coefficient rows (k+1 spline rows and the base row) added into the outputs.
Cost per edge does not depend on the grid size G.

How the work is laid out (a tile = ``tile(itemsize)`` consecutive samples):
1. bases: for each input, the spans and k+1 local bases of a tile's
   samples, computed with one SIMD lane per sample (``_tile_bases``: a
   span guess from a per-input table of buckets, checked against the knots;
   the lanes where it missed are redone one by one with a binary search), kept in a small
   scratch (the forward's: a block of inputs times a block of tiles; the backward's:
   a block of inputs times one tile);
2. contraction: the forward pass holds one block of OB outputs of one sample
   in registers (``OUTPUT_BLOCK``) while it adds the terms of a block of
   ``INPUTS_PER_BLOCK`` inputs, whose coefficient rows, scaled by
   scale_sp * mask into a small buffer of the task's own once per block of
   samples (``sample_block``), stay in cache across a block of
   ``TILES_PER_BLOCK`` tiles of samples; the backward pass holds dy's
   block in registers, reads the parameters for dx, then adds into the raw sums
   of the coefficient gradient.

Why it is fast:
- the kernels are compiled once per spline order k, block width OB and
  tile T (``_forward_kernel``, ``_backward_kernel``); they are constants of
  the code, so the loops over the k+1 bases and over a block of outputs
  unroll and vectorise (AVX2 FMAs);
- the scratch of the local triangle and the block accumulators are stack
  arrays (``_stack.local_array``) used only inside inlined helpers, which LLVM
  keeps in registers, and no loop that writes memory reads an array that LLVM
  must assume it overlaps, so there are no run-time overlap checks in the loops;
- the bases of a tile are vectorised across its samples: the only loads that
  differ between lanes are the 2k knots around each span; the span guess
  is a bucket index from a per-input scale, then one table load (none on a
  uniform grid), both prepared once per call, and b(x) and b'(x)
  are computed in the same lanes, with an exp that is plain arithmetic LLVM
  vectorises (``_vexp``);
- all storage of this backend, and every buffer of the wrappers, starts on a
  64-byte boundary (``empty``), so no 32-byte load or store of a row of
  coefficients, outputs or raw sums straddles two cache lines;
- no array views are made in the inner loops (each view costs reference-count
  traffic shared between threads).

Parallelism without data races:
- forward: ``prange`` over chunks of the batch (``forward_chunks``); each chunk
  owns its rows of y, and a sample's outputs are summed in the same order
  whatever the split.
- backward: ``prange`` over (batch chunk, block of inputs) tasks; dx[b, i] has
  exactly one owner. The reduction over the batch for the coefficient gradient
  goes into one partial buffer per batch chunk; when the input blocks alone
  give ``TASKS`` tasks there is a single chunk, so no extra buffer.
- chunk counts depend on shapes only (results are the same for any number of
  threads), and small layers run on one thread (``_parallel.threads_for``).
- one caveat, from Numba: in the process that compiles a kernel, results can
  differ in the last bit from those of a later process that loads the same
  kernel from Numba's on-disk cache (seen 2026-11-29: float32 forward, 1 ulp in
  61% of the outputs; each mode is repeatable). Both agree with the reference.
One compiled call per pass: each kernel allocates its scratch, then, in
parallel over the inputs, fills what its main loop reads of every input (knot
reciprocals, the span guess, scale_sp * mask, scale_base * mask; the
backward's also zeroes its raw sums), runs its main loop, and (the backward)
turns the raw sums into the parameter gradients. Python's part of a call is
one dispatch (and, for a small layer, setting the thread count): allocating
the scratch from Python and launching the set-up apart cost 40-60 us a call
(2026-11-29, float32, (1024, 64, 64, 5) and (256, 2, 5, 5)).

Two levels of compiled code per kernel: the parallel function (its ``prange``
loops and their scratch) and the serial part each loop iteration of the main
loop runs (``chunk`` in the forward, ``task`` in the backward), compiled on
its own as Numba compiles a ``prange`` body, without reference counting and
with non-overlapping array arguments (``_SerialPartCompiler``), and inlined
by LLVM. Numba's parallel passes then work on a few lines instead of the whole
inlined pass: a forward and backward pair compiles in 38.6 s instead of 58.6 s
(k = 3, float64, cold cache), at the same speed.

Scratch, all allocated inside Numba: per input O(n + O) numbers (n knots per
input), the backward's raw sums (I*K*O numbers per batch chunk), and per task
the span codes, bases and b(x) of its scratch rows (forward: INPUTS_PER_BLOCK
inputs x TILES_PER_BLOCK tiles; backward: its block of inputs x one tile, with
b'(x)) and, in the forward, its block of inputs' scaled coefficient rows
(INPUTS_PER_BLOCK*K*O numbers); see ``kernel_scratch_bytes``.
"""
import math
import types
from functools import lru_cache

import numpy as np
from numba import njit, prange
from numba.core import compiler

from . import _scalar
from ._parallel import TASKS, batch_chunks, input_block, threads_for
from ._scalar import BASE_CODES, IDENTITY, SILU
from ._stack import local_array
from ._vexp import vexp
from . import reference
from . import _host
from ._host import all_finite, copy_into, fill, to_host  # host storage, shared with the reference

name = "cpu"
OUTPUT_BLOCK = 64  # outputs per register block: 8 AVX2 registers of float32 (16 of float64;
                   # 4 and 8 with AVX-512; measured: 32 float64 outputs per block made the
                   # backward 3x slower)
INPUTS_PER_BLOCK = 4  # forward: inputs whose coefficient rows a block of samples shares in cache
                      # (measured with the 32-sample float32 tile: 4 was 1.00-1.10x faster than 8
                      # on the benchmark's cases, float32 and float64; any value gives the same y;
                      # on an AVX-512 host, 8 was 0.95-1.04x as fast as 4, 2 was 0.92-0.99x)

TILES_PER_BLOCK = 4  # forward: tiles of samples that share a block of inputs' coefficient rows
                     # (measured against one tile, 2026-11-29, interleaved, 2 threads: float32
                     # 1.02-1.11x, float64 0.96-1.10x; the gain is where the rows outgrow L1,
                     # at G = 50 and on (4096, 128, 128, 10); 8 tiles: no further gain)

ALIGN = 64         # bytes: storage starts on a cache line (see ``empty``)
SPAN_BUCKETS = 4  # buckets of the span guess per knot interval (``_setup_input``)

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
    of lanes (32 float32, 16 float64), in both passes. Measured against 16 float32
    lanes (2026-11-29, interleaved): the forward 1.06-1.10x faster (2 threads; 1.10-1.19x
    on one), and the backward 1.03-1.18x once the bases' loads had lost their
    negative-index code (``_u``). A 32-sample float64 tile was 0.89-1.02x (forward) and
    0.95-1.11x (backward); 8 float32 samples, 1.2-1.6x slower. On an AVX-512 host
    (two registers of lanes), 64 float32 samples ran the forward 1.00-1.01x as fast,
    16 samples 0.88-0.90x."""
    return 128 // itemsize

_jit = dict(nogil=True, cache=True)
base_pair = njit(**_jit)(_scalar.base_pair)
find_span = njit(**_jit)(_scalar.find_span)
local_basis = njit(**_jit)(_scalar.local_basis)
# 'contract' fuses a*b+c into FMA; 'reassoc' lets LLVM vectorise the
# dot products over outputs in the backward pass. No NaN/inf assumptions.
_FAST = {"contract", "reassoc"}
# Helpers inlined into the kernels (Numba IR inlining): their scratch is the
# caller's stack arrays, which LLVM then keeps in registers, and the caller's
# constants (k, the block width) become theirs, so their loops unroll.
_inline = dict(inline="always", fastmath=_FAST)
_local_basis_inl = njit(**_inline)(_scalar.local_basis)
_knot_reciprocals = njit(**_inline)(_scalar.knot_reciprocals)


@njit(inline="always")
def _u(i):
    """i as an unsigned index, for indices that are never negative. Numba indexes with a
    signed integer as Python does, -1 being the last element: a compare and a select
    per index wherever LLVM cannot prove the index non-negative, and in the forward's
    hot loops it could not. An unsigned index has no such code. Measured (2026-11-29,
    float32, interleaved, 2 threads): the knot and x loads of ``_tile_bases`` unsigned,
    forward 1.15-1.27x; the spans, bases and coefficient rows of ``_contract`` as well,
    1.09-1.16x more. Not y's and not the output index: that made the forward 0.67-0.82x
    (LLVM no longer kept the output block in registers). In the backward's loads and
    stores (dy, coef, the raw sums) it gained nothing on a full block of outputs
    (0.96-1.03x float32, 0.84-0.91x float64) and 2-3x on the partial block
    (``_grad_block``, whose partial-block build alone uses it)."""
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
    spanned two cache lines. Measured (2026-11-29, an AMD EPYC with AVX-512, 2 threads,
    interleaved, the benchmark's first three cases, results bit-identical): the
    forward's scratch and set-up arrays aligned, forward 1.23-1.31x (float32) and
    1.21-1.35x (float64); the backward's as well, forward + backward 1.07-1.26x
    (float32) and 1.22-1.29x (float64)."""
    n = 1
    for s in shape:
        n *= s
    raw = np.empty(n + SLACK, dtype=dtype)
    off = (-raw.ctypes.data % ALIGN) // raw.itemsize
    return raw[off:off + n].reshape(shape)


@njit(**_inline)
def _bases_at(N, dN, work, grid, inv, i, xv, k, deriv):
    """N (and dN) = the k+1 local bases of input i at xv (``_scalar.local_basis``);
    returns a span code: j >= k for an interior span (all k+1 bases exist), else
    -1 - j <= 0 (a boundary span; 0 outside the knots, where N = dN = 0).
    One sample at a time, from a binary search (``find_span``): the path of
    the samples that ``_tile_bases`` leaves over."""
    n = grid.shape[1]
    j = find_span(grid, i, xv)
    if j < 0:
        for s in range(k + 1):
            N[s] = 0.0
            dN[s] = 0.0
        return 0
    _local_basis_inl(grid, inv, i, j, xv, k, N, dN, work, deriv)
    return j if j >= k and j <= n - 2 - k else -1 - j


@njit(**_inline)
def _tile_bases(NT, DT, JT, r, XS, KW, OK, N, dN, work, x, t0, nb, grid, inv, lo, scale, span, i, k, deriv, T):
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
    n = grid.shape[1]
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
            KW[m * T + u] = grid[i, _u(a + m)]
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
            JT[r, u] = _bases_at(N, dN, work, grid, inv, i, XS[u], k, deriv)
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
def _input_arrays(grid, O, k, dtype):
    """Room for what the set-up fills per input (``_setup_input``): the knot
    reciprocals (zeroed: the entries no knot difference fills are never read but
    defined), lo and scale (I,), the span guess's table (SPAN_BUCKETS buckets per
    knot interval and a last column that flags a uniform grid's), and
    spm = scale_sp * mask, Wb = scale_base * mask (I, O)."""
    I, n = grid.shape
    return (np.zeros((I, k + 1, n), dtype=grid.dtype), np.empty(I, dtype=dtype), np.empty(I, dtype=dtype),
            np.empty((I, SPAN_BUCKETS * (n - 1) + 1), dtype=np.int32), _empty_aligned((I, O), dtype),
            _empty_aligned((I, O), dtype))


@njit(**_inline)
def _setup_input(inv, lo, scale, span, spm, Wb, grid, scale_base, scale_sp, mask, i, k):
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
    n = grid.shape[1]
    M = span.shape[1] - 1
    _knot_reciprocals(inv, grid, i, k)
    for o in range(mask.shape[1]):
        spm[i, o] = scale_sp[i, o] * mask[i, o]
        Wb[i, o] = scale_base[i, o] * mask[i, o]
    t0 = np.float64(grid[i, 0])
    width = np.float64(grid[i, n - 1]) - t0
    lo[i] = t0
    if not (width > 0.0 and width < np.inf and M / width < np.inf):
        # knots the boundary checks reject (a non-finite or empty span, written
        # into a live grid): every guess is span k, checked against the knots and
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
    # bucket or knot (those divisions cost 60 us a call at G = 50, I = 64).
    step = width / M
    b0 = 0
    for j in range(k + 1, n - 1 - k):
        tj = np.float64(grid[i, j])
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
    and store scalar, behind negative-index code; signed in the full block's.
    Measured (2026-11-29, 2 threads, interleaved): unsigned, the partial
    block's backward 2.1x at O = 8, 2.0x at O = 10, 3.0x at O = 100 (float32);
    the full block's 0.84-0.91x in float64.
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


def _with_globals(f, **names):
    """A copy of the plain function f with ``names`` added to (or replacing) its
    globals, which Numba reads as constants when it compiles the copy. The other
    globals are a copy of the module's as they stand here: f may only use names
    defined above this point."""
    g = types.FunctionType(f.__code__, {**f.__globals__, **names}, f.__name__, f.__defaults__, f.__closure__)
    g.__doc__ = f.__doc__
    return g


# Each helper inlined twice (one plain function, two builds): for a full block
# of OB outputs (constant width: unrolled, in registers), and for the last,
# partial block (a width known at run time; its scratch is separate stack
# arrays, so the full block's stay in registers). Layers with fewer than OB
# outputs (most hidden and output layers) run only the partial block. Measured
# against the partial block as an ordinary compiled function with heap scratch
# (2026-11-29, float32, k = 3, G = 5, 2 threads, interleaved): forward 1.5-2.9x
# and backward 1.4-3.4x faster at O = 1, 8, 10 and 100; O = 64 unchanged; cold
# compile 52.5 -> 54.5 s. A call per sample and input cost more than the work.
_contract_block = njit(**_inline)(_contract)
_contract_any = njit(**_inline)(_contract)
_grad_block_full = njit(**_inline)(_with_globals(_grad_block, _ix=_signed))
_grad_block_any = njit(**_inline)(_with_globals(_grad_block, _ix=_u))


# Numba's on-disk cache tells two compiled functions with the same code and
# argument types apart only by the contents of their closures (and the kernel
# builders' functions share their code). Each kernel therefore names all of its
# build's constants, (k, OB, T, FULL), so that they are in its closure; the
# serial parts it calls are globals of its copy (``_with_globals``), and have
# the constants in their own closures. tests/test_cpu_support.py checks both.
_CACHE_KEY = ("k", "OB", "T", "FULL")


class _SerialPartCompiler(compiler.Compiler):
    """Numba's usual pipeline, compiling a kernel's serial part (``chunk``, ``task``)
    the way Numba compiles the body of a ``prange`` loop, which it outlines into a
    function of its own: array arguments marked as not overlapping one another
    (LLVM ``noalias``), and no reference counting. Such a part allocates nothing:
    every array it touches is its caller's (or on its stack), alive for the call.
    Measured (2026-11-29, float32, interleaved): with reference counting the
    backward ran 0.72-0.82x as fast (increments and decrements of the arrays
    handed to the inlined helpers, inside the innermost loops); without noalias
    the forward ran 0.70-0.88x as fast."""

    def __init__(self, typingctx, targetctx, library, args, return_type, flags, locals):
        flags = flags.copy()
        flags.noalias = True
        flags.nrt = False
        super().__init__(typingctx, targetctx, library, args, return_type, flags, locals)


@lru_cache(maxsize=None)
def _forward_kernel(k, OB, T, FULL):
    """The forward kernel compiled for spline order ``k``, output block ``OB``, a tile
    of ``T`` samples (``tile``), and ``FULL``: whether it is for layers whose outputs
    are whole blocks (O a multiple of OB).

    All are constants of the compiled code: the loops over the k+1 local
    bases and over a block of OB outputs have constant trip counts, so LLVM
    unrolls them and keeps the local triangle and the OB accumulators in
    registers (``_stack.local_array``). The FULL kernel has no code for a
    partial block: with it (inlined, and never run) the full blocks ran
    0.90-0.97x as fast (2026-11-29, float32, the benchmark's cases, interleaved).

    The parallel kernel runs the set-up, allocates each batch chunk's scratch and
    hands the chunk to ``chunk``: a serial function compiled on its own
    (``_SerialPartCompiler``), which LLVM then inlines (``forceinline``). Numba's
    parallel passes (loop fusion, outlining the loop body) see a few lines, not
    the whole inlined pass. Measured (2026-11-29, k = 3, float64, cold cache):
    forward and backward compiled in 38.6 s, against 58.6 s with the serial part
    written inside the ``prange`` loop; the same speed (float32 0.98-1.00x,
    float64 1.09-1.14x, interleaved). Without ``forceinline`` the compile took
    32.8 s but the float32 forward ran 0.93-0.96x as fast.
    """
    kp1 = k + 1
    W2 = 2 * kp1
    KW2 = 2 * k * T  # the knots around each lane's span
    NTB = TILES_PER_BLOCK

    # fastmath without 'reassoc' (the serial part vectorises over outputs and lanes,
    # never a reduction): each input's terms are summed apart, then added to the
    # accumulators in one addition, as written in _contract. With 'reassoc' LLVM chained
    # all k+2 multiply-adds of an input through the accumulator; that costs nothing
    # on a full block (8 AVX2 or 4 AVX-512 accumulator registers hide the latency)
    # but slows the partial block, whose run-time width leaves it few vector
    # accumulators, or none. Measured (2026-11-29, AVX-512 host, 2 threads,
    # interleaved): float32 1.11-1.40x at O = 1, 8, 24, 70 and float64 0.99-1.29x;
    # full blocks 0.99-1.01x.
    @njit(fastmath={"contract"}, error_model="numpy", pipeline_class=_SerialPartCompiler, forceinline=True,
          **_jit)
    def chunk(y, x, grid, coef, inv, lo, scale, span, spm, Wb, code, b0, b1, SB, WL, JT, NT, BXT):
        # rows b0:b1 of y, from the inputs' set-up (_setup_input); SB samples per
        # block (sample_block); scratch: WL (IB, K, O), coef * scale_sp * mask of a
        # block of IB inputs; JT (IB * NTB, T) span codes, row (i - i0) * nt + tile;
        # NT (IB * NTB, k+1, T) local bases; BXT (IB * NTB, T) b(x)
        I = x.shape[1]
        K = coef.shape[1]
        O = y.shape[1]
        IB = WL.shape[0]
        acc_any = local_array(OB, y.dtype)  # the partial block's accumulators
        XS = local_array(T, y.dtype)
        KW = local_array(KW2, y.dtype)
        OK = local_array(T, np.int32)
        N = local_array(kp1, y.dtype)
        dN = local_array(kp1, y.dtype)
        work = local_array(W2, y.dtype)
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
                                        grid, inv, lo, scale, span, i0 + r, k, False, T)
                            _base_lanes(BXT, BXT, row, XS, code, False, T)
                    # A sample's block of OB outputs stays in registers across the block of
                    # inputs, whose rows of WL stay in cache across the block of samples.
                    # (A while loop: with 'for ob in range(0, O, OB)' LLVM no longer keeps
                    # the block in registers, and the pass runs 3x slower.)
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

    def forward(y, x, grid, coef, scale_base, scale_sp, mask, code, nchunk, IB, SB):
        # y (B, O) out; x (B, I); grid (I, n); coef (I, K, O); code: base_fun; nchunk batch
        # chunks (forward_chunks), IB inputs per block, SB samples per block (sample_block).
        build = (k, OB, T, FULL)  # noqa: F841 (see _CACHE_KEY)
        B, I = x.shape
        K = coef.shape[1]
        O = y.shape[1]
        inv, lo, scale, span, spm, Wb = _input_arrays(grid, O, k, y.dtype)
        for i in prange(I):  # the set-up, in parallel over the inputs
            _setup_input(inv, lo, scale, span, spm, Wb, grid, scale_base, scale_sp, mask, i, k)
        for c in prange(nchunk):  # batch chunks: each owns its rows of y, and its scratch
            WL = _empty_aligned((IB, K, O), y.dtype)
            JT = _empty_aligned((IB * NTB, T), np.int32)
            NT = _empty_aligned((IB * NTB, kp1, T), y.dtype)
            BXT = _empty_aligned((IB * NTB, T), y.dtype)
            _chunk(y, x, grid, coef, inv, lo, scale, span, spm, Wb, code, c * B // nchunk, (c + 1) * B // nchunk,
                   SB, WL, JT, NT, BXT)

    return njit(parallel=True, fastmath=_FAST, **_jit)(_with_globals(forward, _chunk=chunk))


@lru_cache(maxsize=None)
def _backward_kernel(k, OB, T, FULL):
    """The backward kernel compiled for spline order ``k``, output block ``OB``, a tile
    of ``T`` samples and ``FULL`` (O a multiple of OB), constants of its code as in
    ``_forward_kernel``. Without the partial block's code the full blocks' float64
    backward ran 1.03-1.11x faster (2026-11-29, interleaved). Each task is ``task``,
    a serial function compiled on its own, its scratch allocated by the kernel
    (as ``chunk`` in ``_forward_kernel``)."""
    kp1 = k + 1
    W2 = 2 * kp1
    KW2 = 2 * k * T  # the knots around each lane's span

    @njit(fastmath=_FAST, error_model="numpy", pipeline_class=_SerialPartCompiler, forceinline=True, **_jit)
    def task(dx, P, PB, dy, x, grid, coef, inv, lo, scale, span, spm, Wb, code, c, b0, b1, i0, i1,
             JT, NT, DT, BV, BD):
        # samples b0:b1 of inputs i0:i1: dx[b0:b1, i0:i1], and the raw sums P[c, i0:i1], PB[c, i0:i1];
        # scratch (rows for IB >= i1 - i0 inputs): JT (IB, T) span codes, NT and DT (IB, k+1, T)
        # local bases and their derivatives, BV and BD (IB, T) b(x) and b'(x)
        ni = i1 - i0  # inputs in this task's block
        O = dy.shape[1]
        zero = dy.dtype.type(0)
        XS = local_array(T, dy.dtype)
        KW = local_array(KW2, dy.dtype)
        OK = local_array(T, np.int32)
        gl_any = local_array(OB, dy.dtype)  # the partial block's scratch
        pb_any = local_array(OB, dy.dtype)
        N_any = local_array(kp1, dy.dtype)
        dN_any = local_array(kp1, dy.dtype)
        N = local_array(kp1, dy.dtype)
        dN = local_array(kp1, dy.dtype)
        work = local_array(W2, dy.dtype)
        gl = local_array(OB, dy.dtype)
        pb = local_array(OB, dy.dtype)
        for t0 in range(b0, b1, T):
            nb = min(T, b1 - t0)
            # r counts from 0 (not i - i0): LLVM then knows the scratch rows are not
            # negative, and vectorises the tile's stores without index wrap-around
            for r in range(ni):
                _tile_bases(NT, DT, JT, r, XS, KW, OK, N, dN, work, x, t0, nb, grid, inv, lo, scale, span,
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

    def backward(dx, dcoef, dscale_base, dscale_sp, dy, x, grid, coef, scale_base, scale_sp, mask, code,
                 nchunk, IB):
        # dx (B, I), dcoef, dscale_base, dscale_sp +=; code: base_fun; nchunk batch chunks
        # and IB inputs per block (_parallel.batch_chunks, input_block).
        # Raw sums: P (nchunk, I, K, O) = sum_b g * B[m](x), PB (nchunk, I, O) = sum_b g * b(x).
        # Tasks: (batch chunk, block of IB inputs). A task owns dx[chunk, block] and
        # P[c, block]; its tile of dy rows is reused by the IB inputs, and each input's
        # rows of P by the tile's samples.
        build = (k, OB, T, FULL)  # noqa: F841 (see _CACHE_KEY)
        B, I = x.shape
        K = coef.shape[1]
        O = dy.shape[1]
        zero = dy.dtype.type(0)
        inv, lo, scale, span, spm, Wb = _input_arrays(grid, O, k, dy.dtype)
        P = _empty_aligned((nchunk, I, K, O), dy.dtype)
        PB = _empty_aligned((nchunk, I, O), dy.dtype)
        for i in prange(I):  # the set-up, in parallel over the inputs
            _setup_input(inv, lo, scale, span, spm, Wb, grid, scale_base, scale_sp, mask, i, k)
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
            _task(dx, P, PB, dy, x, grid, coef, inv, lo, scale, span, spm, Wb, code,
                  c, c * B // nchunk, (c + 1) * B // nchunk, i0, min(i0 + IB, I), JT, NT, DT, BV, BD)
        for i in prange(I):  # the parameter gradients from the raw sums
            _finish_input(dcoef, dscale_base, dscale_sp, P, PB, coef, spm, mask, i)

    return njit(parallel=True, fastmath=_FAST, **_jit)(_with_globals(backward, _task=task))


@njit(**_inline)
def _finish_input(dcoef, dscale_base, dscale_sp, P, PB, coef, spm, mask, i):
    """Input i's parameter gradients from the chunks' raw sums, in place:
    R = sum_c P[c, i]; dcoef[i] += R * spm[i]; dscale_sp[i] += mask[i] * sum_m coef[i] * R;
    dscale_base[i] += mask[i] * sum_c PB[c, i].
    Row by row (m outside, o inside: contiguous, vectorised; the sum over m of
    each output is added in the same order as one output at a time would be),
    with one row of O partial sums. Measured (2026-11-29, float32, (I, K, O) =
    (64, 53, 64), 2 threads): 58 us for all inputs, against 229 us with o outside."""
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
    """``_finish_input`` for every input, in parallel (the training kernels' finish)."""
    for i in prange(P.shape[1]):
        _finish_input(dcoef, dscale_base, dscale_sp, P, PB, coef, spm, mask, i)


@njit(**_jit)
def _fill_reciprocals(inv, grid, k):
    for i in range(grid.shape[0]):
        _knot_reciprocals(inv, grid, i, k)


def _reciprocals(grid, k):
    """The knot reciprocals of every input (``_scalar.knot_reciprocals``), for the
    training kernels (``cpu_train``)."""
    inv = _scratch_inv(grid, k)
    _fill_reciprocals(inv, grid, k)
    return inv


def _scratch_inv(grid, k):
    """Room for the knot reciprocals (``_scalar.knot_reciprocals``); zeroed, so that the
    entries no knot difference fills (never read) are defined."""
    return np.zeros((grid.shape[0], k + 1, grid.shape[1]), grid.dtype)


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


def spline_forward(y, x, grid, coef, scale_base, scale_sp, mask, k, base_fun):
    """Compiled ``reference.spline_forward``: y (B, O) overwritten. y must not
    overlap any input array (the compiled code assumes its arrays do not;
    the layers always pass buffers of their own)."""
    B, I = x.shape
    O = y.shape[1]
    itemsize = coef.dtype.itemsize
    T = tile(itemsize)
    forward = _forward_kernel(k, OUTPUT_BLOCK, T, O % OUTPUT_BLOCK == 0)
    with threads_for(B * I * O):
        forward(y, x, grid, coef, scale_base, scale_sp, mask, BASE_CODES[base_fun],
                forward_chunks(B, coef.shape[1], T), INPUTS_PER_BLOCK, sample_block(O, itemsize))
    return y


def spline_backward(dx, dcoef, dscale_base, dscale_sp, dy, x, grid, coef,
                    scale_base, scale_sp, mask, k, base_fun):
    """Compiled ``reference.spline_backward``: adds into dx, dcoef, dscale_base, dscale_sp,
    which must not overlap one another or the inputs (as in ``spline_forward``).

    The kernel gathers raw sums R[i,m,o] = sum_b g[b,o] B[m,k](x[b,i]) and
    Rb[i,o] = sum_b g[b,o] b(x[b,i]); the parameter gradients follow in
    O(I*K*O):  dcoef += R * scale_sp * mask,  dscale_base += Rb * mask,
    dscale_sp += mask * sum_m coef * R  (since s = sum_m coef * B[m]).
    Extra memory: R, one coefficient-sized buffer per batch chunk (a single
    one when the input blocks alone give ``_parallel.TASKS`` tasks).
    """
    B, I = x.shape
    O = dy.shape[1]
    IB = input_block(I)
    nchunk = batch_chunks(B, -(-I // IB))  # one when the input blocks give enough tasks
    backward = _backward_kernel(k, OUTPUT_BLOCK, tile(coef.dtype.itemsize), O % OUTPUT_BLOCK == 0)
    with threads_for(B * I * O):
        backward(dx, dcoef, dscale_base, dscale_sp, dy, x, grid, coef, scale_base, scale_sp, mask,
                 BASE_CODES[base_fun], nchunk, IB)


# ===========================================================================
# Training ops (loss, Adam step, regulariser moments) live in cpu_train.py.
from .cpu_train import (adam_step, edge_moments_backward, edge_moments_forward,  # noqa: E402,F401
                        mse_loss_grad)
