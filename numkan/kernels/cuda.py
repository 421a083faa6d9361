"""CUDA kernels (numba-cuda): the reference's maths on an NVIDIA GPU.

Same functions and signatures as ``reference.py`` (the definition every kernel
here is tested against, under ``NUMBA_ENABLE_CUDASIM=1`` in CI). The scalar
maths (span search, Cox-de Boor on the local triangle, silu) is ``_scalar.py``
compiled with ``cuda.jit(device=True)``; nothing here repeats the recursion.
Arrays live on the device as numba ``DeviceNDArray``; ``asarray`` and
``to_host`` are the only transfers.

Why the kernels look the way they do
------------------------------------
A layer does about (k+1) multiply-adds per edge and sample on data that is
small (coef is I*K*O values) while the batch is large, so the work is bound by
on-chip traffic, not by DRAM, as long as nothing of size B*I*O or B*I*K ever
touches global memory. Each kernel therefore fuses the basis evaluation with
the contraction, and the (B, I, k+1) bases exist only in shared memory, a tile
at a time.

The scalar recursion multiplies by knot reciprocals ``inv[i, r, m]``
(``_scalar.knot_reciprocals``), filled by one tiny launch (O(I k n) work)
before each layer kernel.

``spline_forward`` (two launches: reciprocals, then the layer). A block owns a tile of TB samples and TO
outputs; its threads form TX lanes along the outputs (consecutive outputs, so
every coefficient row read by a warp is one coalesced segment) by TY rows along
the samples, and each thread keeps an RB x RO register tile of y. The block
walks the inputs TI at a time: first its threads evaluate the TB*TI local
bases cooperatively (span search and Cox-de Boor once per sample and input, not
once per edge) into shared memory, then every thread gathers the k+1
coefficient rows each of its samples needs. Bases, their first index and b(x)
are read from shared memory once per sample and reused for RO outputs; the
coefficient tile of the TI inputs is small enough to stay in L1/L2.

``spline_backward`` (three launches: reciprocals, partial sums, finish). The
coefficient gradient is a reduction over the batch,
R[i,m,o] = sum_b g[b,o] B[m](x[b,i]), and dx[b,i] is a reduction over the
outputs. The partial-sums launch gives each block one input i and one chunk of
the batch: it stages the bases and derivatives of TS samples at a time, with
their g, in shared memory; each thread adds its samples' dx partials and b(x) g
over its outputs; then each entry (m, o) of the block's R tile (K x TO in
shared memory) is owned by one thread, which adds the staged samples in order.
dx[b,i] is finished by one thread from its lane partials in lane order, and
the chunk's raw sums are written once to P[c,i,m,o]. The finishing launch sums
the chunks in order and finishes all three parameter gradients:
dcoef += R*scale_sp*mask, dscale_base += Rb*mask and
dscale_sp += mask*sum_m coef*R (because s = sum_m coef B[m]). No atomic
appears anywhere, so every sum has a fixed order and a backward pass gives the
same bits on every run, as the CPU backend does. The number of chunks is chosen
to fill the GPU while keeping the partial buffer small (at most a few hundred
MB, usually far less).

``edge_moments_forward`` / ``_backward`` (the sparsity regulariser's batch
sums) reuse spline_backward's layout: one block per (input, batch chunk) that
stages the bases of its samples. The forward keeps phi in registers and
reduces phi, phi^2, x and x^2 per chunk in float64 (shared tile, fixed order),
then a small launch sums the chunks; the backward is spline_backward's kernel
built with g = gphi = ds1[i, o] + 2 ds2[i, o] phi, finished by the same
``_backward_finish``.

When K x TO does not fit in shared memory (very fine grids) the block walks the
basis index in tiles of MT rows, visiting its samples once per tile; for the
usual grids there is one tile.

Tile shapes are compile-time constants (shared and local arrays need them), so
kernels are built by a cached factory per (order k, dtype, tile shape); the
launchers pick the shape from the layer's sizes. Only the launchers choose grid
and block sizes.

Names in the kernels
--------------------
Tile sizes are short capitals because they are the constants the shapes are
written in:

    TX, TY     a block's threads: TX lanes along the outputs by TY rows along the
               samples; NT = TX * TY threads, tid = ty * TX + tx
    RO, RB     outputs per lane and samples per row that one thread keeps in registers
    TO         outputs of a block's tile, TX * RO
    TB, TS     samples of a block's tile, TY * RB (TB in the forward, TS where they
               are staged one slot per sample)
    TI         inputs whose bases the forward stages at once
    MT         rows m of the coefficient-gradient tile R a backward block holds
    C, c       chunks of the batch (blocks along y) and this block's chunk, whose
               samples are b_lo .. b_hi-1
    KP1        k + 1, the bases that can be non-zero at one x; a0 the first one's index
    nbt        the numba type of the layer's dtype

and in the kernel bodies: ``*sh`` is a shared-memory array (Nsh / dNsh the staged
bases and derivatives, Ash their a0, BXsh / DBXsh b(x) and b'(x), Gsh the upstream
gradient, DXsh the lane partials of dx, RBsh / S1sh / S2sh per-row partials);
wb = mask * scale_base and sp = mask * scale_sp of an edge; P, PB, P1, P2, PX the
chunks' partial sums; inv the knot reciprocals (``_knot_reciprocals``); code the
base function as an int (``_scalar.BASE_CODES``).
"""
import math
from functools import lru_cache

import numpy as np
from numba import config, cuda, from_dtype

from . import _scalar, reference
from ._scalar import BASE_CODES

name = "cuda"

# the scalar maths, compiled for the device (compiled lazily on first use)
_SIMULATOR = bool(config.ENABLE_CUDASIM)  # numba's CUDA simulator replaces the compiler

_base_value = cuda.jit(device=True)(_scalar.base_value)
_base_pair = cuda.jit(device=True)(_scalar.base_pair)  # b and b' from one exp
_find_span = cuda.jit(device=True)(_scalar.find_span)
_local_basis = cuda.jit(device=True)(_scalar.local_basis)
_group_product = cuda.jit(device=True)(_scalar.group_product)
_group_product_grad = cuda.jit(device=True)(_scalar.group_product_grad)

_NT = 256                 # threads per block of the forward kernels
_NT_BACKWARD = 128        # threads per block of the backward kernels


def launch_bounds(kind, k, dtype, TX):
    """(threads per block, blocks each SM must hold) for a layer kernel of order k whose
    blocks have TX lanes along the outputs.

    The second number caps registers per thread at 65536 / (threads * blocks), and
    ptxas spills what does not fit. The span search and Cox-de Boor, unrolled for k,
    take most of them: the backward needs about 140-200 without a cap. Three
    128-thread blocks (12 warps an SM, a 168-register cap) compile without spills for
    the layer's backward in float32 at k = 2 and 3, the usual orders, with at least 8
    lanes (layers of at least 5 outputs); the regulariser's backward (``kind =
    "moments_backward"``, which also evaluates phi), other layers, orders and float64
    get two blocks
    (8 warps, up to 255 registers), and the float64 forward at k >= 4 one 256-thread
    block. ``tests/test_cuda_compile.py`` assembles every variant with these bounds and
    fails on any spill; ``tests/cuda_ptx.py --table`` prints what each variant uses.
    """
    single = np.dtype(dtype).itemsize == 4
    if kind == "backward":
        return _NT_BACKWARD, (3 if single and k in (2, 3) and TX >= 8 else 2)
    if kind == "moments_backward":
        return _NT_BACKWARD, 2
    return _NT, (2 if single or k <= 3 else 1)


_SHARED_BUDGET = 44 * 1024  # bytes of shared memory per block we allow ourselves (48 KiB limit)
_EW = 256                 # threads per block of the elementwise kernels


def _layer_jit(bounds):
    """cuda.jit with launch bounds ``(threads, min_blocks_per_sm)``; the simulator takes none."""
    if _SIMULATOR:
        return cuda.jit
    return cuda.jit(launch_bounds=bounds)


def check_available():
    """Raise RuntimeError unless a CUDA GPU (or the CUDA simulator) is usable."""
    try:
        ok = cuda.is_available()
    except Exception as exc:  # a broken driver raises instead of returning False
        raise RuntimeError(f"device='cuda' needs an NVIDIA GPU with a working driver: {exc}") from exc
    if not ok:
        raise RuntimeError(
            "device='cuda' needs an NVIDIA GPU with a working CUDA driver, and none was found "
            "(numba.cuda.is_available() is False). Use device='cpu', or set "
            "NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels in numba's simulator.")


# ---------------------------------------------------------------------------
# storage: numba device arrays
def _is_device(a):
    return (not isinstance(a, np.ndarray)
            and (hasattr(a, "__cuda_array_interface__") or getattr(a, "__cuda_ndarray__", False)))


def _as_device(a):
    """A numba device-array view of any __cuda_array_interface__ object (no copy)."""
    if getattr(a, "__cuda_ndarray__", False):
        return a
    return cuda.as_cuda_array(a)


def asarray(a, dtype):
    """Host array or device array -> a new C-contiguous device array of ``dtype``.

    A device input is copied on the device (cast if its dtype differs), so the
    result never aliases the caller's memory; a host input is copied over once.
    """
    dtype = np.dtype(dtype)
    if not _is_device(a):
        return cuda.to_device(np.ascontiguousarray(a, dtype=dtype))
    src = _as_device(a)
    out = cuda.device_array(src.shape, dtype=dtype)
    if out.size == 0:
        return out
    if src.ndim == 2:
        _cast2d[_grid2(src.shape), (16, 16)](out, src)
    elif src.is_c_contiguous():
        flat = src.reshape(src.size)
        _cast1d[_blocks(src.size), _EW](out.reshape(out.size), flat)
    else:  # rare: non-contiguous and not 2-D; go through the host
        out.copy_to_device(np.ascontiguousarray(src.copy_to_host(), dtype=dtype))
    return out


def to_host(a):
    """Device array -> host ndarray (a copy)."""
    return a.copy_to_host()


def copy_into(dst, src):
    """Copy the device array ``src`` into the existing device array ``dst`` (same shape and
    dtype): a device-to-device copy, nothing passes through the host."""
    src = _as_device(src)
    if tuple(dst.shape) != tuple(src.shape) or dst.dtype != src.dtype:
        raise ValueError(f"copy_into needs arrays of one shape and dtype, got {tuple(dst.shape)} "
                         f"{dst.dtype} and {tuple(src.shape)} {src.dtype}")
    if dst.size:
        dst.copy_to_device(src)


def upload_into(dst, src):
    """Copy the host ndarray ``src`` into the existing device array ``dst`` (same shape and
    dtype): one host-to-device copy."""
    src = np.ascontiguousarray(src)
    if tuple(dst.shape) != tuple(src.shape) or dst.dtype != src.dtype:
        raise ValueError(f"upload_into needs arrays of one shape and dtype, got {tuple(dst.shape)} "
                         f"{dst.dtype} and {tuple(src.shape)} {src.dtype}")
    if dst.size:
        dst.copy_to_device(src)


def zeros(shape, dtype):
    out = cuda.device_array(shape, dtype=np.dtype(dtype))
    fill(out, 0)
    return out


def fill(a, value):
    """Set every entry of the C-contiguous device array ``a`` to ``value``."""
    if a.size:
        _fill1d[_blocks(a.size), _EW](a.reshape(a.size), a.dtype.type(value))


def _blocks(n):
    return min(max(1, -(-n // _EW)), 65535)


def _grid2(shape):
    return (max(1, -(-shape[0] // 16)), max(1, -(-shape[1] // 16)))


@cuda.jit
def _fill1d(a, value):
    for p in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        a[p] = value


@cuda.jit
def _cast1d(out, src):
    for p in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):
        out[p] = src[p]


@cuda.jit
def _cast2d(out, src):
    r, c = cuda.grid(2)
    if r < src.shape[0] and c < src.shape[1]:
        out[r, c] = src[r, c]


# ---------------------------------------------------------------------------
# the layer: kernel factories
@lru_cache(maxsize=None)
def _stage_fn(k, dtype):
    """Device function: the k+1 bases (and derivatives) of x on input i, shifted
    so that entry s belongs to basis a0 + s with 0 <= a0 <= K-1-k.

    Bases whose index lies outside 0..K-1 are zero, so moving the window inside
    0..K-1 changes no sum and lets the kernels index coef without a branch.
    Outside the knots (x NaN or inf included) every entry is zero and the result is
    -1: the kernels then drop the sample's spline terms, as the reference does, so
    that a NaN coefficient or upstream gradient is not multiplied by those zeros.
    """
    KP1 = k + 1
    W2 = 2 * KP1  # array shapes must be names bound to constants, not expressions
    nbt = from_dtype(np.dtype(dtype))

    @cuda.jit(device=True)
    def stage(knots, inv, i, xv, K, N, dN, deriv):
        work = cuda.local.array(W2, nbt)
        j = _find_span(knots, i, xv)
        if j < 0:
            for s in range(KP1):
                N[s] = 0
                dN[s] = 0
            return -1
        _local_basis(knots, inv, i, j, xv, k, N, dN, work, deriv)
        a = j - k
        a0 = min(max(a, 0), K - KP1)
        sh = a0 - a  # N[s] must become B[a0 + s] = old N[s + sh]
        if sh > 0:
            for s in range(KP1):
                src = s + sh
                N[s] = N[src] if src < KP1 else 0
                if deriv:
                    dN[s] = dN[src] if src < KP1 else 0
        elif sh < 0:
            for s in range(KP1 - 1, -1, -1):
                src = s + sh
                N[s] = N[src] if src >= 0 else 0
                if deriv:
                    dN[s] = dN[src] if src >= 0 else 0
        return a0

    return stage


@lru_cache(maxsize=None)
def _stage_tile_fn(k, dtype, TS, NT, backward):
    """Device function: stage samples s0 .. s0+TS-1 (those below b_hi) of input i in
    shared memory, one slot p = b - s0 per sample, shared by the block's NT threads.

    Slot p gets ``stage``'s first basis index in Ash[p], the k+1 bases in Nsh[p, :]
    and b(x) in BXsh[p]; for a backward pass (``backward`` is fixed per factory) also
    b'(x) in DBXsh[p] and the derivatives in dNsh[p, :], which hold values only when
    ``deriv`` (other callers pass any arrays there: they are not touched).
    """
    KP1 = k + 1
    stage = _stage_fn(k, dtype)

    @cuda.jit(device=True)
    def stage_tile(knots, inv, x, i, s0, b_hi, K, code, deriv, tid, N, dN, Ash, Nsh, dNsh, BXsh, DBXsh):
        for p in range(tid, TS, NT):
            b = s0 + p
            if b < b_hi:
                xv = x[b, i]
                Ash[p] = stage(knots, inv, i, xv, K, N, dN, deriv)
                if backward:
                    b_x, db_x = _base_pair(xv, code)  # b and b' from one exp
                    BXsh[p] = b_x
                    DBXsh[p] = db_x
                else:
                    BXsh[p] = _base_value(xv, code)
                for s in range(KP1):
                    Nsh[p, s] = N[s]
                    if backward:
                        dNsh[p, s] = dN[s]

    return stage_tile


@lru_cache(maxsize=None)
def _spline_fn(k, dtype):
    """Device function: s[i, o](x) = sum_s N[s] * coef[i, a0 + s, o], the spline of edge
    (i, o) at a sample inside the knots whose bases ``stage`` left in N from index a0."""
    KP1 = k + 1
    nbt = from_dtype(np.dtype(dtype))

    @cuda.jit(device=True)
    def spline(coef, i, o, a0, N):
        v = nbt(0)
        for s in range(KP1):
            v += N[s] * coef[i, a0 + s, o]
        return v

    return spline


@cuda.jit(device=True)
def _chunk_block(B, TX):
    """Where a thread of an (input, batch chunk) block stands: (i, c, b_lo, b_hi, tx, ty, tid),
    input i = blockIdx.x, chunk c = blockIdx.y of the gridDim.y chunks of the batch, whose
    samples are b_lo .. b_hi-1, lane tx, row ty and thread id tid = ty * TX + tx."""
    c = cuda.blockIdx.y
    C = cuda.gridDim.y
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    return cuda.blockIdx.x, c, c * B // C, (c + 1) * B // C, tx, ty, ty * TX + tx


@lru_cache(maxsize=None)
def _forward_kernel(k, dtype, TX, TY, RB, RO, TI):
    """spline_forward for order k: block (TX, TY) owns TB = TY*RB samples x TO = TX*RO outputs."""
    KP1 = k + 1
    TB, TO = TY * RB, TX * RO
    NT = TX * TY
    nbt = from_dtype(np.dtype(dtype))
    stage, spline = _stage_fn(k, dtype), _spline_fn(k, dtype)

    @_layer_jit(launch_bounds("forward", k, dtype, TX))
    def kernel(y, x, knots, inv, coef, scale_base, scale_sp, mask, code):
        # y (B, O) out; x (B, I); knots (I, G+2k+1); inv (I, k+1, G+2k+1) knot
        # reciprocals; coef (I, K, O); scale_*, mask (I, O)
        Nsh = cuda.shared.array((TB, TI, KP1), nbt)   # bases of the tile's samples
        Ash = cuda.shared.array((TB, TI), np.int32)   # their first basis index a0
        BXsh = cuda.shared.array((TB, TI), nbt)       # b(x)
        N = cuda.local.array(KP1, nbt)
        dN = cuda.local.array(KP1, nbt)
        acc = cuda.local.array((RB, RO), nbt)
        wb = cuda.local.array(RO, nbt)
        sp = cuda.local.array(RO, nbt)
        B, I = x.shape
        O = y.shape[1]
        K = coef.shape[1]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        o0 = cuda.blockIdx.x * TO
        b0 = cuda.blockIdx.y * TB
        for q in range(RB):
            for r in range(RO):
                acc[q, r] = 0
        for i0 in range(0, I, TI):
            # 1. the bases of TB samples x TI inputs, once each, into shared memory
            for p in range(tid, TB * TI, NT):
                bl = p // TI
                il = p - bl * TI
                b = b0 + bl
                i = i0 + il
                if b < B and i < I:
                    xv = x[b, i]
                    Ash[bl, il] = stage(knots, inv, i, xv, K, N, dN, False)
                    BXsh[bl, il] = _base_value(xv, code)
                    for s in range(KP1):
                        Nsh[bl, il, s] = N[s]
                else:
                    Ash[bl, il] = 0
                    BXsh[bl, il] = 0
                    for s in range(KP1):
                        Nsh[bl, il, s] = 0
            cuda.syncthreads()
            # 2. every thread adds its samples' k+1 coefficient rows and base term
            for il in range(min(TI, I - i0)):
                i = i0 + il
                for r in range(RO):
                    o = min(o0 + tx + r * TX, O - 1)
                    wb[r] = scale_base[i, o] * mask[i, o]
                    sp[r] = scale_sp[i, o] * mask[i, o]
                for q in range(RB):
                    bl = ty + q * TY
                    a0 = Ash[bl, il]
                    bxv = BXsh[bl, il]
                    for s in range(KP1):
                        N[s] = Nsh[bl, il, s]
                    for r in range(RO):
                        o = o0 + tx + r * TX
                        if o < O:
                            acc[q, r] += wb[r] * bxv
                            if a0 >= 0:  # inside the knots
                                acc[q, r] += sp[r] * spline(coef, i, o, a0, N)
            cuda.syncthreads()
        for q in range(RB):
            b = b0 + ty + q * TY
            if b < B:
                for r in range(RO):
                    o = o0 + tx + r * TX
                    if o < O:
                        y[b, o] = acc[q, r]

    return kernel


@lru_cache(maxsize=None)
def _backward_kernel(k, dtype, TX, TY, RB, RO, moments):
    """Launch 1 of spline_backward (``moments=False``) and of edge_moments_backward
    (``moments=True``): block (TX, TY) owns input blockIdx.x and batch chunk blockIdx.y.

    The two differ only in the upstream gradient of phi[i, o](x[b, i]): dy[b, o]
    for the layer, gphi = ds1[i, o] + 2 ds2[i, o] phi for the moments (which
    needs phi, so the coefficient rows are gathered for the value too), plus the
    x-moment terms dxs1 + 2 x dxs2 of dx. Every sum has a fixed order, so the
    results are bit-identical from run to run:
    - dx[b, i]: the TX lane partials of sample b, added in lane order by one thread;
    - R[m, o] = sum_b g[b, o] B[m](x[b, i]): entry (m, o) has one owner, the
      thread of lane o (mod TX) and row ty = m (mod TY), which visits the tile's
      samples in order (no atomics: a sample's k+1 bases fall to k+1 rows);
    - Rb[o] = sum_b g[b, o] b(x[b, i]): per-row partials in registers, then
      added over the TY rows in row order.
    """
    KP1 = k + 1
    TS, TO = TY * RB, TX * RO
    NT = TX * TY
    TXP = TX + 1  # dx partials padded against bank conflicts (a name: shapes must be constants)
    nbt = from_dtype(np.dtype(dtype))
    stage_tile = _stage_tile_fn(k, dtype, TS, NT, True)

    @_layer_jit(launch_bounds("moments_backward" if moments else "backward", k, dtype, TX))
    def kernel(dx, P, PB, inv, dy, ds1, ds2, dxs1, dxs2, x, knots, coef, scale_base, scale_sp,
               mask, code, MT):
        # dx (B, I) +=; P (C, I, K, O) and PB (C, I, O) raw partial sums of chunk c:
        #   P[c,i,m,o] = sum_b g[b,o] B[m](x[b,i]),  PB[c,i,o] = sum_b g[b,o] b(x[b,i]);
        # inv (I, k+1, n) knot reciprocals (_knot_reciprocals).
        # Layer: g = dy (B, O). Moments: g = ds1 + 2 ds2 phi with ds1, ds2 (I, O) and
        # dxs1, dxs2 (I,) float64. The arguments of the other kind are not read.
        R = cuda.shared.array(0, nbt)                  # (MT, TO) tile of P, dynamic
        Gsh = cuda.shared.array((TS, TO), nbt)         # g of the tile's samples and outputs
        Nsh = cuda.shared.array((TS, KP1), nbt)
        dNsh = cuda.shared.array((TS, KP1), nbt)
        Ash = cuda.shared.array(TS, np.int32)
        BXsh = cuda.shared.array(TS, nbt)
        DBXsh = cuda.shared.array(TS, nbt)
        DXsh = cuda.shared.array((TS, TXP), nbt)
        RBsh = cuda.shared.array((TY, TO), nbt)        # per-row partials of Rb
        N = cuda.local.array(KP1, nbt)
        dN = cuda.local.array(KP1, nbt)
        rb = cuda.local.array(RO, nbt)
        K, O = coef.shape[1], coef.shape[2]
        i, c, b_lo, b_hi, tx, ty, tid = _chunk_block(x.shape[0], TX)
        for o0 in range(0, O, TO):
            for m0 in range(0, K, MT):
                first = m0 == 0  # dx and Rb are complete after the first basis tile
                for p in range(tid, MT * TO, NT):
                    R[p] = 0
                for r in range(RO):
                    rb[r] = 0
                for s0 in range(b_lo, b_hi, TS):
                    # 1. stage the bases (and derivatives) of TS samples of input i, and g
                    stage_tile(knots, inv, x, i, s0, b_hi, K, code, first, tid, N, dN,
                               Ash, Nsh, dNsh, BXsh, DBXsh)
                    if not moments:
                        for ql in range(ty, TS, TY):
                            b = s0 + ql
                            for r in range(RO):
                                ol = tx + r * TX
                                o = o0 + ol
                                Gsh[ql, ol] = dy[b, o] if b < b_hi and o < O else 0
                    cuda.syncthreads()
                    # 2. the thread's samples and outputs: g (moments), dx partials, rb
                    if first or moments:
                        for ql in range(ty, TS, TY):  # not unrolled: fewer registers
                            b = s0 + ql
                            dxp = nbt(0)
                            if b < b_hi:
                                a0 = Ash[ql]
                                bxv = BXsh[ql]
                                dbxv = DBXsh[ql]
                                for s in range(KP1):
                                    N[s] = Nsh[ql, s]
                                    dN[s] = dNsh[ql, s]
                                for r in range(RO):
                                    ol = tx + r * TX
                                    o = o0 + ol
                                    if o < O:
                                        # read here, not kept across the loops: registers
                                        wb = scale_base[i, o] * mask[i, o]
                                        sp = scale_sp[i, o] * mask[i, o]
                                        phi = wb * bxv
                                        dphi = wb * dbxv
                                        if a0 >= 0:  # inside the knots
                                            v = nbt(0)
                                            dv = nbt(0)
                                            for s in range(KP1):
                                                cv = coef[i, a0 + s, o]
                                                if moments:
                                                    v += N[s] * cv
                                                if first:
                                                    dv += dN[s] * cv
                                            phi += sp * v
                                            dphi += sp * dv
                                        if moments:
                                            g = nbt(ds1[i, o] + 2.0 * ds2[i, o] * phi)
                                            Gsh[ql, ol] = g
                                        else:
                                            g = Gsh[ql, ol]
                                        if first:
                                            rb[r] += bxv * g
                                            dxp += g * dphi
                                    elif moments:
                                        Gsh[ql, ol] = 0
                            DXsh[ql, tx] = dxp
                        cuda.syncthreads()
                    # 3. R: thread (tx, ty) owns rows m = ty (mod TY) of its outputs and
                    #    visits the samples in order; sample bl adds to rows Ash[bl] + s
                    for bl in range(min(TS, b_hi - s0)):
                        a = Ash[bl] - m0
                        s = (ty - a) & (TY - 1)  # (ty - a) mod TY: TY is a power of two
                        if Ash[bl] < 0:  # outside the knots: no spline terms
                            s = KP1
                        while s < KP1:
                            m = a + s
                            if m >= 0 and m < MT:
                                ns = Nsh[bl, s]
                                for r in range(RO):
                                    ol = tx + r * TX
                                    R[m * TO + ol] += ns * Gsh[bl, ol]
                            s += TY
                    # 4. one writer per dx[b, i]: the lane partials in lane order
                    if first:
                        for p in range(tid, min(TS, b_hi - s0), NT):
                            tot = nbt(0)
                            for l in range(TX):
                                tot += DXsh[p, l]
                            if moments and o0 == 0:  # the x-moment terms, once per sample
                                tot += dxs1[i] + 2.0 * x[s0 + p, i] * dxs2[i]
                            dx[s0 + p, i] += tot
                    cuda.syncthreads()
                # 5. write this chunk's raw partial sums once; Rb over the rows in order
                for p in range(tid, MT * TO, NT):
                    m = m0 + p // TO
                    o = o0 + p % TO
                    if m < K and o < O:
                        P[c, i, m, o] = R[p]
                if first:
                    for r in range(RO):
                        RBsh[ty, tx + r * TX] = rb[r]
                    cuda.syncthreads()
                    for p in range(tid, TO, NT):
                        o = o0 + p
                        if o < O:
                            tot = nbt(0)
                            for l in range(TY):
                                tot += RBsh[l, p]
                            PB[c, i, o] = tot
                cuda.syncthreads()

    return kernel


@cuda.jit
def _backward_finish(dcoef, dscale_base, dscale_sp, P, PB, coef, scale_sp, mask):
    """Launch 2 of spline_backward: sum the chunks' partials and finish the gradients.

    dcoef[i,m,o] += R * scale_sp * mask, dscale_base[i,o] += Rb * mask,
    dscale_sp[i,o] += mask * sum_m coef * R, with R = sum_c P[c], Rb = sum_c PB[c].
    """
    o, i = cuda.grid(2)
    C = P.shape[0]
    K = coef.shape[1]
    if i < coef.shape[0] and o < coef.shape[2]:
        msk = mask[i, o]
        sp = scale_sp[i, o] * msk
        dsp = 0.0  # dscale_sp's sum, in float64 for both dtypes
        for m in range(K):
            r = P[0, i, m, o]
            for c in range(1, C):
                r += P[c, i, m, o]
            dcoef[i, m, o] += r * sp
            dsp += coef[i, m, o] * r
        rb = PB[0, i, o]
        for c in range(1, C):
            rb += PB[c, i, o]
        dscale_base[i, o] += rb * msk
        dscale_sp[i, o] += msk * dsp


@cuda.jit
def _inv_kernel(inv, knots, k):
    # inv (I, k+1, n) = 1 / (t[m+r] - t[m]), 0 for coinciding knots (_scalar.knot_reciprocals)
    p, i = cuda.grid(2)
    n = knots.shape[1]
    if i < knots.shape[0] and p < k * n:
        r = 1 + p // n
        m = p - (r - 1) * n
        if m < n - r:
            d = knots[i, m + r] - knots[i, m]
            inv[i, r, m] = 1.0 / d if d > 0 else 0.0


# ---------------------------------------------------------------------------
# the layer: launchers (the only code that picks tile, block and grid sizes)
def _knot_reciprocals(knots, k):
    I, n = knots.shape
    inv = cuda.device_array((I, k + 1, n), dtype=knots.dtype)
    _inv_kernel[(-(-k * n // 64), I), (64, 1)](inv, knots, k)
    return inv


def _lanes(O):
    """Lanes along the outputs (TX) and outputs per lane (RO) for O outputs."""
    TX = 32 if O >= 32 else 1 << max(0, (O - 1).bit_length())
    RO = 4 if O >= 96 else (2 if O >= 48 else 1)
    return TX, RO


@lru_cache(maxsize=None)
def _sm_count():
    try:
        return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    except Exception:  # the simulator has no such attribute
        return 16


def _forward_config(B, O, k, itemsize):
    TX, RO = _lanes(O)
    TY = _NT // TX
    RB = 4 if TX == 32 else 1
    per = (k + 2) * itemsize + 4  # shared bytes per (sample, input)
    while RB > 1 and TY * RB * per * 1 > _SHARED_BUDGET // 2:
        RB //= 2
    TI = max(1, min(16, (_SHARED_BUDGET // 2) // (TY * RB * per)))
    TI = 1 << (TI.bit_length() - 1)  # a power of two: fewer compiled variants
    if TY * RB * per > _SHARED_BUDGET:
        raise ValueError(f"k={k} is too large for the CUDA kernels' shared-memory tiles")
    return TX, TY, RB, RO, TI


def spline_forward(y, x, knots, coef, scale_base, scale_sp, mask, k, base_fun):
    """CUDA ``reference.spline_forward``: y (B, O) overwritten; two launches."""
    B, I = x.shape
    O = y.shape[1]
    dtype = np.dtype(y.dtype)
    TX, TY, RB, RO, TI = _forward_config(B, O, k, dtype.itemsize)
    kern = _forward_kernel(k, dtype.str, TX, TY, RB, RO, TI)
    blocks = (-(-O // (TX * RO)), -(-B // (TY * RB)))
    inv = _knot_reciprocals(knots, k)
    kern[blocks, (TX, TY)](y, x, knots, inv, coef, scale_base, scale_sp, mask, BASE_CODES[base_fun])
    return y


def _backward_config(B, I, O, K, k, itemsize):
    TX, RO = _lanes(O)
    TY = _NT_BACKWARD // TX
    RB = max(1, 32 // TY)  # tiles of at least 32 samples
    TS = TY * RB

    def static(RO):  # _backward_kernel's fixed shared arrays, in bytes
        TO = TX * RO
        return (TS * (TO + 2 * (k + 1) + 2 + TX + 1) + TY * TO) * itemsize + 4 * TS

    # prefer one basis tile (MT = K); give up output width before that
    while RO > 1 and static(RO) + K * TX * RO * itemsize > _SHARED_BUDGET:
        RO //= 2
    room = _SHARED_BUDGET - static(RO)
    if room < TX * RO * itemsize:
        raise ValueError(f"k={k} is too large for the CUDA kernels' shared-memory tiles")
    MT = max(1, min(K, room // (TX * RO * itemsize)))
    # chunks of the batch: enough blocks to fill the GPU, chunks of at least TS
    # samples, and a partial buffer of at most ~256 MB
    want = -(-8 * _sm_count() // I)
    cap_mem = max(1, (256 << 20) // max(1, I * K * O * itemsize))
    C = max(1, min(want, -(-B // TS), cap_mem))
    return TX, TY, RB, RO, MT, C


def spline_backward(dx, dcoef, dscale_base, dscale_sp, dy, x, knots, coef,
                    scale_base, scale_sp, mask, k, base_fun):
    """CUDA ``reference.spline_backward``: adds into dx (None: not wanted), dcoef,
    dscale_base, dscale_sp.

    Two launches: per-(input, batch chunk) partial sums with dx finished in
    place, then the sum over chunks that finishes the parameter gradients.
    """
    if dx is None:  # not wanted: the kernel computes it into scratch
        dx = zeros(x.shape, x.dtype)
    # the moments' arguments (ds1, ds2, dxs1, dxs2) are not read: dy stands in for them
    _backward(False, (dx, dcoef, dscale_base, dscale_sp), (dy, dy, dy, dy[0], dy[0]),
              x, knots, coef, scale_base, scale_sp, mask, k, base_fun)


# the grid updates' bases are computed on the host
local_bases = reference.local_bases
normal_sums = reference.normal_sums


# a fixed input: nothing kept beyond x on the device (the generic passes of ``reference``)
FixedInput = reference.FixedInput
fixed_input = reference.fixed_input


def fixed_forward(y, F, knots, coef, scale_base, scale_sp, mask, k, base_fun):
    """``spline_forward(y, F.x, ...)``."""
    return spline_forward(y, F.x, knots, coef, scale_base, scale_sp, mask, k, base_fun)


def fixed_backward(dcoef, dscale_base, dscale_sp, dy, F, knots, coef, scale_base, scale_sp, mask, k, base_fun):
    """``spline_backward(None, ..., dy, F.x, ...)``: no input gradient."""
    spline_backward(None, dcoef, dscale_base, dscale_sp, dy, F.x, knots, coef, scale_base, scale_sp, mask, k,
                    base_fun)


def _backward(moments, grads, upstream, x, knots, coef, scale_base, scale_sp, mask, k, base_fun):
    """The launches of spline_backward (``moments=False``) and edge_moments_backward:
    ``_backward_kernel`` per (input, batch chunk), then ``_backward_finish``.

    grads = (dx, dcoef, dscale_base, dscale_sp), added into; upstream = (dy, ds1, ds2,
    dxs1, dxs2), where the kernel reads dy for the layer and the other four for the
    moments (the caller passes any array of the right rank for the unread ones).
    """
    dx, dcoef, dscale_base, dscale_sp = grads
    B, I = x.shape
    K, O = coef.shape[1], coef.shape[2]
    dtype = np.dtype(x.dtype)
    TX, TY, RB, RO, MT, C = _backward_config(B, I, O, K, k, dtype.itemsize)
    P = cuda.device_array((C, I, K, O), dtype=dtype)
    PB = cuda.device_array((C, I, O), dtype=dtype)
    inv = _knot_reciprocals(knots, k)
    kern = _backward_kernel(k, dtype.str, TX, TY, RB, RO, moments)
    shared = MT * TX * RO * dtype.itemsize
    kern[(I, C), (TX, TY), 0, shared](dx, P, PB, inv, *upstream, x, knots, coef,
                                      scale_base, scale_sp, mask, BASE_CODES[base_fun], MT)
    _backward_finish[(-(-O // 32), -(-I // 8)), (32, 8)](dcoef, dscale_base, dscale_sp, P, PB,
                                                        coef, scale_sp, mask)


# ---------------------------------------------------------------------------
# multiplication nodes: reference.group_product_*, one thread per (sample, node)
@cuda.jit
def _group_product_forward_kernel(z, y, offsets):
    nodes = z.shape[1]
    for p in range(cuda.grid(1), z.shape[0] * nodes, cuda.gridsize(1)):
        b = p // nodes
        n = p - b * nodes
        z[b, n] = _group_product(y, b, offsets[n], offsets[n + 1])


@cuda.jit
def _group_product_backward_kernel(dy, dz, y, offsets):
    nodes = dz.shape[1]
    for p in range(cuda.grid(1), dz.shape[0] * nodes, cuda.gridsize(1)):
        b = p // nodes
        n = p - b * nodes
        _group_product_grad(dy, dz[b, n], y, b, offsets[n], offsets[n + 1])


def group_product_forward(z, y, offsets):
    """CUDA ``reference.group_product_forward``: z[b, n] = product of y[b, group n]."""
    if z.size:
        _group_product_forward_kernel[_blocks(z.size), _EW](z, y, offsets)


def group_product_backward(dy, dz, y, offsets):
    """CUDA ``reference.group_product_backward``: dy[b, s] = dz[b, n] * the other factors."""
    if dz.size:
        _group_product_backward_kernel[_blocks(dz.size), _EW](dy, dz, y, offsets)


# ===========================================================================
# Training ops: loss, optimiser step, input check (same maths as the reference)

# ---------------------------------------------------------------------------
_RED = 256  # threads per block of the reductions (a power of two)


@cuda.jit
def _mse_kernel(dy, y, target, scale, partial):
    # flat views; partial[blockIdx] = sum over the block's entries of (y - target)^2 in float64
    acc = cuda.shared.array(_RED, np.float64)
    tid = cuda.threadIdx.x
    s = 0.0
    for p in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        d = y[p] - target[p]
        dy[p] = scale * d
        s += d * d
    acc[tid] = s
    cuda.syncthreads()
    step = _RED // 2
    while step > 0:
        if tid < step:
            acc[tid] += acc[tid + step]
        cuda.syncthreads()
        step //= 2
    if tid == 0:
        partial[cuda.blockIdx.x] = acc[0]


def mse_loss_grad(dy, y, target):
    """CUDA ``reference.mse_loss_grad``: dy = 2 (y - target) / y.size, returns the float loss.

    The squared errors are summed in float64, per block on the device; only the
    block sums (at most a few hundred numbers) come back to the host.
    """
    n = y.size
    nblock = min(-(-n // _RED), 512)
    partial = cuda.device_array(nblock, dtype=np.float64)
    _mse_kernel[nblock, _RED](dy.reshape(n), y.reshape(n), target.reshape(n),
                              y.dtype.type(2.0 / n), partial)
    return float(partial.copy_to_host().sum() / n)


def spline_mse(y, dx, dcoef, dscale_base, dscale_sp, target, x, knots, coef, scale_base, scale_sp, mask,
               k, base_fun):
    """``reference.spline_mse`` as its three launches: ``spline_forward``, ``mse_loss_grad``
    (dy in a device buffer of y's shape), ``spline_backward``."""
    spline_forward(y, x, knots, coef, scale_base, scale_sp, mask, k, base_fun)
    dy = zeros(y.shape, y.dtype)
    loss = mse_loss_grad(dy, y, target)
    spline_backward(dx, dcoef, dscale_base, dscale_sp, dy, x, knots, coef, scale_base, scale_sp, mask, k, base_fun)
    return loss


@cuda.jit
def _adam_kernel(p, g, m, v, beta1, omb1, beta2, omb2, step, c2, eps):
    for q in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        gq = g[q]
        mq = m[q] * beta1 + omb1 * gq
        vq = v[q] * beta2 + omb2 * gq * gq
        m[q] = mq
        v[q] = vq
        p[q] -= step * mq / (math.sqrt(vq / c2) + eps)


def adam_step(p, g, m, v, lr, beta1, beta2, eps, t):
    """CUDA ``reference.adam_step``: one bias-corrected Adam update of p, m, v in place.

        m = beta1 m + (1 - beta1) g            v = beta2 v + (1 - beta2) g^2
        p -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    The scalars are rounded to p's dtype on the host, as NumPy does for the reference.
    """
    n = p.size
    if n == 0:
        return
    f = p.dtype.type
    _adam_kernel[_blocks(n), _EW](p.reshape(n), g.reshape(n), m.reshape(n), v.reshape(n),
                                  f(beta1), f(1 - beta1), f(beta2), f(1 - beta2),
                                  f(lr / (1 - beta1 ** t)), f(1 - beta2 ** t), f(eps))


@cuda.jit
def _nonfinite_kernel(a, flag):
    for p in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        if not math.isfinite(a[p]):
            flag[0] = 1  # any writer will do: every one writes 1


def all_finite(*arrays):
    """True when no entry of any of the device ``arrays`` is NaN or inf.

    One launch per array into one shared flag; only that flag comes back.
    """
    arrays = [a for a in arrays if a.size]
    if not arrays:
        return True
    flag = zeros(1, np.int32)
    for a in arrays:
        _nonfinite_kernel[_blocks(a.size), _EW](a.reshape(a.size), flag)
    return bool(flag.copy_to_host()[0] == 0)


# ===========================================================================
# Regulariser moments: edge_moments_forward / edge_moments_backward
# ---------------------------------------------------------------------------
# Both passes use spline_backward's decomposition: block (i, c) owns input i
# and batch chunk c, stages the bases of TS samples of input i at a time in
# shared memory (``_stage_tile_fn``, as the layer's backward does) and evaluates
# phi[i, o](x[b, i]) for its samples and outputs in registers. No (B, I, O) or
# (B, I, K) array exists anywhere; the per-chunk partial sums are (C, I, O)
# (forward) or (C, I, K, O) (backward, spline_backward's own P and PB) and a
# second small launch adds them up in a fixed order.
#
# Forward: each thread sums phi and phi^2 of its rows in float64 registers;
# the TY rows are reduced through a shared tile by one thread per output (a
# fixed order, no atomics); x and x^2 are summed the same way at the end.
# Backward: ``_backward_kernel(..., moments=True)``, where gphi = ds1 + 2 ds2 phi
# replaces dy[b, o] and dx[b, i]'s one writer also adds dxs1[i] + 2 x dxs2[i].
@lru_cache(maxsize=None)
def _moments_forward_kernel(k, dtype, TX, TY, RB, RO):
    """Launch 1 of edge_moments_forward: block (TX, TY) owns input blockIdx.x and batch chunk blockIdx.y."""
    KP1 = k + 1
    TS, TO = TY * RB, TX * RO
    NT = TX * TY
    nbt = from_dtype(np.dtype(dtype))
    stage_tile, spline = _stage_tile_fn(k, dtype, TS, NT, False), _spline_fn(k, dtype)

    @_layer_jit(launch_bounds("forward", k, dtype, TX))
    def kernel(P1, P2, PX, inv, x, knots, coef, scale_base, scale_sp, mask, code):
        # P1, P2 (C, I, O) float64: sums of phi and phi^2 over chunk c's samples;
        # PX (C, I, 2) float64: sums of x and x^2; inv (I, k+1, n) knot reciprocals
        Nsh = cuda.shared.array((TS, KP1), nbt)
        Ash = cuda.shared.array(TS, np.int32)
        BXsh = cuda.shared.array(TS, nbt)
        S1sh = cuda.shared.array((TY, TO), np.float64)  # per-row sums of phi, phi^2
        S2sh = cuda.shared.array((TY, TO), np.float64)
        XSsh = cuda.shared.array((TS, 2), np.float64)
        N = cuda.local.array(KP1, nbt)
        dN = cuda.local.array(KP1, nbt)
        a1 = cuda.local.array(RO, np.float64)
        a2 = cuda.local.array(RO, np.float64)
        wb = cuda.local.array(RO, nbt)
        sp = cuda.local.array(RO, nbt)
        K, O = coef.shape[1], coef.shape[2]
        i, c, b_lo, b_hi, tx, ty, tid = _chunk_block(x.shape[0], TX)
        for o0 in range(0, O, TO):
            for r in range(RO):
                o = min(o0 + tx + r * TX, O - 1)
                wb[r] = scale_base[i, o] * mask[i, o]
                sp[r] = scale_sp[i, o] * mask[i, o]
                a1[r] = 0
                a2[r] = 0
            for s0 in range(b_lo, b_hi, TS):
                # 1. stage the bases of TS samples of input i (no derivatives: Nsh and BXsh
                #    stand in for the arrays that only a backward pass fills)
                stage_tile(knots, inv, x, i, s0, b_hi, K, code, False, tid, N, dN, Ash, Nsh, Nsh, BXsh, BXsh)
                cuda.syncthreads()
                # 2. phi of this thread's samples and outputs, summed in float64
                for q in range(RB):
                    ql = ty + q * TY
                    if s0 + ql < b_hi:
                        a0 = Ash[ql]
                        bxv = BXsh[ql]
                        for s in range(KP1):
                            N[s] = Nsh[ql, s]
                        for r in range(RO):
                            o = o0 + tx + r * TX
                            if o < O:
                                phi = wb[r] * bxv
                                if a0 >= 0:  # inside the knots
                                    phi += sp[r] * spline(coef, i, o, a0, N)
                                a1[r] += phi
                                a2[r] += phi * phi
                cuda.syncthreads()
            # 3. sum the TY rows of each output in a fixed order; one writer per partial
            for r in range(RO):
                S1sh[ty, tx + r * TX] = a1[r]
                S2sh[ty, tx + r * TX] = a2[r]
            cuda.syncthreads()
            for p in range(tid, TO, NT):
                o = o0 + p
                if o < O:
                    t1 = 0.0
                    t2 = 0.0
                    for l in range(TY):
                        t1 += S1sh[l, p]
                        t2 += S2sh[l, p]
                    P1[c, i, o] = t1
                    P2[c, i, o] = t2
            cuda.syncthreads()
        # 4. x and x^2: thread p < TS sums samples b_lo + p, b_lo + p + TS, ... (those of
        #    staging slot p), apart from the phi loop so that it holds no registers there
        for p in range(tid, TS, NT):
            x1 = 0.0
            x2 = 0.0
            for b in range(b_lo + p, b_hi, TS):
                xv = x[b, i]
                x1 += xv
                x2 += xv * xv
            XSsh[p, 0] = x1
            XSsh[p, 1] = x2
        cuda.syncthreads()
        if tid == 0:
            t1 = 0.0
            t2 = 0.0
            for p in range(TS):
                t1 += XSsh[p, 0]
                t2 += XSsh[p, 1]
            PX[c, i, 0] = t1
            PX[c, i, 1] = t2

    return kernel


@cuda.jit
def _moments_forward_finish(s1, s2, xs1, xs2, P1, P2, PX):
    """Launch 2 of edge_moments_forward: s1, s2, xs1, xs2 = the chunks' partials summed in order."""
    o, i = cuda.grid(2)
    C = P1.shape[0]
    if i < s1.shape[0] and o < s1.shape[1]:
        t1 = 0.0
        t2 = 0.0
        for c in range(C):
            t1 += P1[c, i, o]
            t2 += P2[c, i, o]
        s1[i, o] = t1
        s2[i, o] = t2
        if o == 0:
            t1 = 0.0
            t2 = 0.0
            for c in range(C):
                t1 += PX[c, i, 0]
                t2 += PX[c, i, 1]
            xs1[i] = t1
            xs2[i] = t2


def _moments_forward_config(B, I, O, k, itemsize):
    TX, RO = _lanes(O)
    TY = _NT // TX
    RB = 4 if TX == 32 else 1
    TS = TY * RB
    shared = TS * ((k + 2) * itemsize + 4 + 16) + 2 * TY * TX * RO * 8
    if shared > _SHARED_BUDGET:
        raise ValueError(f"k={k} is too large for the CUDA kernels' shared-memory tiles")
    want = -(-8 * _sm_count() // I)
    cap_mem = max(1, (64 << 20) // max(1, 16 * I * O))
    C = max(1, min(want, -(-B // TS), cap_mem))
    return TX, TY, RB, RO, C


def edge_moments_forward(s1, s2, xs1, xs2, x, knots, coef, scale_base, scale_sp, mask, k, base_fun):
    """CUDA ``reference.edge_moments_forward``: s1, s2 (I, O), xs1, xs2 (I,) overwritten (float64).

    Two launches: per-(input, batch chunk) float64 sums of phi, phi^2, x and
    x^2 (bases staged in shared memory, phi only in registers), then the sum
    over chunks in a fixed order.
    """
    B, I = x.shape
    O = coef.shape[2]
    dtype = np.dtype(x.dtype)
    TX, TY, RB, RO, C = _moments_forward_config(B, I, O, k, dtype.itemsize)
    P1 = cuda.device_array((C, I, O), dtype=np.float64)
    P2 = cuda.device_array((C, I, O), dtype=np.float64)
    PX = cuda.device_array((C, I, 2), dtype=np.float64)
    inv = _knot_reciprocals(knots, k)
    kern = _moments_forward_kernel(k, dtype.str, TX, TY, RB, RO)
    kern[(I, C), (TX, TY)](P1, P2, PX, inv, x, knots, coef, scale_base, scale_sp, mask,
                           BASE_CODES[base_fun])
    _moments_forward_finish[(-(-O // 32), -(-I // 8)), (32, 8)](s1, s2, xs1, xs2, P1, P2, PX)


def edge_moments_backward(dx, dcoef, dscale_base, dscale_sp, ds1, ds2, dxs1, dxs2, x, knots,
                          coef, scale_base, scale_sp, mask, k, base_fun):
    """CUDA ``reference.edge_moments_backward``: adds into dx, dcoef, dscale_base, dscale_sp.

    Two launches, as ``spline_backward``: per-(input, batch chunk) raw sums of
    gphi = ds1 + 2 ds2 phi against B[m] and b(x), with dx finished in place,
    then ``_backward_finish`` (the same finishing launch as spline_backward).
    """
    # dy is not read: ds1 stands in for it
    _backward(True, (dx, dcoef, dscale_base, dscale_sp), (ds1, ds1, ds2, dxs1, dxs2),
              x, knots, coef, scale_base, scale_sp, mask, k, base_fun)


def spline_jet_forward(y, Jy, Hy, x, J, H, knots, coef, scale_base, scale_sp, mask, k, base_fun):
    """Input derivatives (``reference.spline_jet_forward``) are not on CUDA yet."""
    raise NotImplementedError("input derivatives for PDE training (numkan.pde, fit_pde) are not "
                              "implemented on CUDA yet: use device='cpu' (model.to('cpu'))")


def spline_jet_backward(dx, dJ, dH, dcoef, dscale_base, dscale_sp, gy, gJ, gH, x, J, H, knots,
                        coef, scale_base, scale_sp, mask, k, base_fun):
    """Input derivatives (``reference.spline_jet_backward``) are not on CUDA yet."""
    spline_jet_forward(None, None, None, x, J, H, knots, coef, scale_base, scale_sp, mask, k, base_fun)
