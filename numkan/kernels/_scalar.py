"""Scalar maths shared by every compiled backend.

These are plain Python functions with no decorator. ``cpu.py`` compiles them
with ``numba.njit`` and ``cuda.py`` with ``numba.cuda.jit(device=True)``, so the
B-spline recursion is written exactly once for all compiled kernels. The NumPy
reference (``reference.py``) spells the same maths out over whole arrays.

Notation follows KAN_MATH: knots ``t`` (one input's row, G + 2k + 1 values),
order ``k``, ``K = G + k`` basis functions per input.
"""
import math

# base_fun codes (kernels take an int, the public API a string)
SILU, IDENTITY, ZERO = 0, 1, 2
BASE_CODES = {"silu": SILU, "identity": IDENTITY, "zero": ZERO}


def sigmoid(x):
    """1 / (1 + exp(-x)), split on the sign so exp never overflows."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


# base_value and base_deriv repeat sigmoid's two lines instead of calling it:
# a compiled function may only call other compiled functions, and these plain
# functions are compiled separately for each target.
def base_value(x, code):
    """b(x): silu(x) = x * sigmoid(x), x, or 0."""
    if code == SILU:
        if x >= 0:
            return x / (1.0 + math.exp(-x))
        e = math.exp(x)
        return x * e / (1.0 + e)
    if code == IDENTITY:
        return x
    return 0.0 * x


def base_deriv(x, code):
    """b'(x): sigmoid(x) * (1 + x * (1 - sigmoid(x))), 1, or 0."""
    if code == SILU:
        if x >= 0:
            s = 1.0 / (1.0 + math.exp(-x))
        else:
            e = math.exp(x)
            s = e / (1.0 + e)
        return s * (1.0 + x * (1.0 - s))
    if code == IDENTITY:
        return 1.0 + 0.0 * x
    return 0.0 * x


def find_span(t, x):
    """The span j with t[j] <= x < t[j+1], by binary search; -1 outside [t[0], t[-1]).

    NaN compares false everywhere and lands outside too.
    """
    n = t.shape[0]
    if not (x >= t[0] and x < t[n - 1]):
        return -1
    lo = 0
    hi = n - 1  # invariant: t[lo] <= x < t[hi]
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if t[mid] <= x:
            lo = mid
        else:
            hi = mid
    return lo


def local_basis(t, j, x, k, N, dN, deriv):
    """The k+1 bases that can be non-zero on span j, and optionally their derivatives.

    On return ``N[s] = B[j-k+s, k](x)`` for s = 0..k (0 where the basis index
    j-k+s is outside 0..K-1, i.e. the basis does not exist), and when ``deriv``
    is true ``dN[s] = d/dx B[j-k+s, k](x)``.

    The triangle is built in place, order r = 1..k, from the Cox-de Boor rule

        B[a,r] = (x - t[a]) / (t[a+r] - t[a]) * B[a,r-1]
               + (t[a+r+1] - x) / (t[a+r+1] - t[a+1]) * B[a+1,r-1]

    with a = j - r + s. A term whose denominator is 0 counts as 0, and a basis
    index outside 0..(len(t) - 2 - r) does not exist at order r. Going down in
    s lets slot s be overwritten only after slot s+1 has read it.
    """
    nk = t.shape[0]
    N[0] = 1.0
    for r in range(1, k + 1):
        if deriv and r == k:
            # the derivative needs the order k-1 values, which N holds right now:
            # dB[a,k] = k/(t[a+k]-t[a]) B[a,k-1] - k/(t[a+k+1]-t[a+1]) B[a+1,k-1]
            for s in range(k + 1):
                a = j - k + s
                v = 0.0
                if a >= 0 and a <= nk - 2 - k:
                    if s >= 1:
                        d = t[a + k] - t[a]
                        if d > 0:
                            v += N[s - 1] / d
                    if s <= k - 1:
                        d = t[a + k + 1] - t[a + 1]
                        if d > 0:
                            v -= N[s] / d
                dN[s] = k * v
        for s in range(r, -1, -1):
            a = j - r + s
            v = 0.0
            if a >= 0 and a <= nk - 2 - r:
                if s >= 1:
                    d = t[a + r] - t[a]
                    if d > 0:
                        v += (x - t[a]) / d * N[s - 1]
                if s <= r - 1:
                    d = t[a + r + 1] - t[a + 1]
                    if d > 0:
                        v += (t[a + r + 1] - x) / d * N[s]
            N[s] = v
