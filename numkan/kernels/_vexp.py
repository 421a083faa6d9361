"""exp(x) written so that LLVM vectorises it, for the CPU kernels' silu and sigmoid.

Numba compiles ``math.exp`` to a call into the C library, one value at a
time, and a loop with such a call is never vectorised. NumPy's ``np.exp`` is
vectorised but single-threaded, and silu(x) = x / (1 + exp(-x)) through NumPy
is three serial passes over a (B, I) array, into a (B, I) buffer of its own.
Here exp is plain arithmetic, so the kernels evaluate b(x) and b'(x) for a tile of samples in
a loop that LLVM vectorises (8 float32 or 4 float64 lanes per AVX2
instruction; ``cpu._base_lanes``).

The method (Cody and Waite's argument reduction, then a polynomial):

    exp(x) = 2^n * exp(r),   n = round(x / ln 2),   r = x - n ln 2,  |r| <= ln(2) / 2

- n is rounded by adding and subtracting 1.5 * 2^52 (float64) or 1.5 * 2^23
  (float32): the sum's low mantissa bits then hold n as an integer, read
  with ``bitcast``. This needs IEEE arithmetic: the functions here are
  compiled without fastmath's reassociation, which would fold (t + c) - c into t.
- r = x - n ln2_hi - n ln2_lo, with ln 2 split in two so that n ln2_hi is
  exact (the standard constants of fdlibm for float64, of Cephes for float32).
  Fused multiply-adds are allowed: each step stays exact or correctly rounded.
- exp(r) by its Taylor series to degree 13 (float64) or 7 (float32): the
  first omitted term, (ln(2)/2)^14 / 14! = 4e-18 (float64) and
  (ln(2)/2)^8 / 8! = 5e-9 (float32), is below half an ulp.
- 2^n is built from its bits, (n + bias) << mantissa bits.

exp(x) is exact to about one ulp for x in [-708, 709] (float64) or [-87, 88]
(float32), where 2^n is a normal number; above that range it is inf, as the
true exp soon overflows, and below it 0 (the true value is under 2^-1020 or
2^-125 there). So silu(x) = x / (1 + exp(-x)) is x for large x and -0 for
very negative x, as in the reference, and sigmoid(x) is 1 and 0; values
below 2^-1000 (float64) or 2^-100 (float32) in magnitude may come out as 0.

``vexp`` is compiled as its own function, without reassociation, even when
the caller allows it: LLVM keeps each instruction's flags when it inlines.
"""
import numpy as np
from numba import njit

from ._numba import bitcast, by_float_type


# float64 (fdlibm's split of ln 2: ln2_hi has 32 significant bits, so n * ln2_hi is exact)
_LOG2E_64 = 1.4426950408889634
_LN2_HI_64 = 6.93147180369123816490e-01
_LN2_LO_64 = 1.90821492927058770002e-10
_SHIFT_64 = 6755399441055744.0  # 1.5 * 2^52
_SHIFT_BITS_64 = np.int64(0x4338000000000000)
_LO_64, _HI_64 = -708.0, 709.0
_TAYLOR_64 = tuple(1.0 / float(np.prod(np.arange(1, n + 1, dtype=np.float64))) for n in range(14))  # 1/n!
_HORNER_64 = _TAYLOR_64[::-1]  # highest degree first

# float32 (Cephes's split: ln2_hi = 0.693359375 has 9 significant bits)
f32 = np.float32
_LOG2E_32 = f32(1.44269504088896341)
_LN2_HI_32 = f32(0.693359375)
_LN2_LO_32 = f32(-2.12194440e-4)
_SHIFT_32 = f32(12582912.0)  # 1.5 * 2^23
_SHIFT_BITS_32 = np.int64(0x4B400000)
_LO_32, _HI_32 = f32(-87.0), f32(88.0)
_ZERO_32, _INF_32 = f32(0.0), f32(np.inf)
_HORNER_32 = tuple(f32(c) for c in _TAYLOR_64[:8])[::-1]


@njit(inline="always")
def _horner(c, r):
    """c[0] r^(m-1) + c[1] r^(m-2) + ... + c[m-1] for the m coefficients of the tuple c
    (a constant trip count: the loop unrolls)."""
    p = c[0]
    for j in range(1, len(c)):
        p = p * r + c[j]
    return p


# 'contract' (fusing a*b+c) keeps every step exact or correctly rounded; the other
# fastmath flags stay off: reassociation would fold (t + c) - c into t.
@njit(fastmath={"contract"}, cache=True)
def _exp64(x0):
    x = min(max(x0, _LO_64), _HI_64)
    ts = x * _LOG2E_64 + _SHIFT_64
    nf = ts - _SHIFT_64                                  # round(x / ln 2), as a float
    r = (x - nf * _LN2_HI_64) - nf * _LN2_LO_64
    p = _horner(_HORNER_64, r)                           # exp(r), to degree 13
    n = bitcast(ts, np.int64) - _SHIFT_BITS_64          # the same n, as an integer
    v = p * bitcast((n + 1023) << 52, np.float64)
    return 0.0 if x0 < _LO_64 else (np.inf if x0 > _HI_64 else v)


@njit(fastmath={"contract"}, cache=True)
def _exp32(x0):
    x = min(max(x0, _LO_32), _HI_32)
    ts = x * _LOG2E_32 + _SHIFT_32
    nf = ts - _SHIFT_32
    r = (x - nf * _LN2_HI_32) - nf * _LN2_LO_32
    p = _horner(_HORNER_32, r)                           # exp(r), to degree 7
    n = bitcast(ts, np.int32) - _SHIFT_BITS_32
    v = p * bitcast(np.int32((n + 127) << 23), np.float32)
    return _ZERO_32 if x0 < _LO_32 else (_INF_32 if x0 > _HI_32 else v)


# exp(x) for a float32 or float64 scalar, in code LLVM can vectorise (compiled code only)
vexp = by_float_type("vexp", _exp64, _exp32)
