"""Scalar maths shared by every compiled backend.

These are plain Python functions with no decorator. ``cpu.py`` compiles them
with ``numba.njit`` and ``cuda.py`` with ``numba.cuda.jit(device=True)``, so the
B-spline recursion is written once for every compiled kernel that evaluates one
sample at a time. The exception is the CPU kernels' fast path: ``cpu._tile_bases``
and ``cpu._base_lanes`` repeat the interior case of ``local_basis`` and silu with
one SIMD lane per sample (knots gathered per lane, divisions instead of the
reciprocal table, ``_vexp``'s exp), and send every other case here. The NumPy
reference (``reference.py``) spells the same maths out over whole arrays.

Notation follows KAN_MATH: knots ``t`` (one input's row, G + 2k + 1 values),
order ``k``, ``K = G + k`` basis functions per input.
"""
import math

# base_fun codes (kernels take an int, the public API a string)
SILU, IDENTITY, ZERO = 0, 1, 2
BASE_CODES = {"silu": SILU, "identity": IDENTITY, "zero": ZERO}


# sigmoid(x) = 1 / (1 + exp(-x)), split on the sign so exp never overflows. base_value
# and base_pair each spell it out instead of calling a helper: a compiled function may
# only call other compiled functions, and these plain ones are compiled per target.
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


def base_pair(x, code):
    """(b(x), b'(x)) from a single exp: what a backward pass needs."""
    if code == SILU:
        if x >= 0:
            s = 1.0 / (1.0 + math.exp(-x))
        else:
            e = math.exp(x)
            s = e / (1.0 + e)
        return x * s, s * (1.0 + x * (1.0 - s))
    if code == IDENTITY:
        return x, 1.0 + 0.0 * x
    return 0.0 * x, 0.0 * x


def find_span(knots, i, x):
    """The span j with knots[i, j] <= x < knots[i, j+1]; -1 outside [knots[i, 0], knots[i, -1]).

    NaN compares false everywhere and lands outside too, and so do +-inf: a
    non-finite x is never turned into an index. The search starts
    from the guess uniform knots would give (exact for them), checks
    it against the knots themselves, and falls back to a binary search on the
    bracket that the guess leaves, so the result is always that of a binary
    search, in O(1) steps for uniform knots and O(log n) at worst.
    """
    n = knots.shape[1]
    t0 = knots[i, 0]
    tn = knots[i, n - 1]
    if not (x >= t0 and x < tn):
        return -1
    # (n-1)/(tn-t0) does not depend on x: compiled loops over samples hoist it.
    # The guess is clamped while still a float: on knots whose span overflows (inf)
    # or is subnormal, the product is inf or NaN, and converting either to an int
    # is undefined in compiled code (on x86 a huge negative index).
    g = (x - t0) * ((n - 1) / (tn - t0))
    if not g >= 0.0:  # NaN too
        g = 0.0
    if g > n - 2:
        g = n - 2
    j = int(g)
    lo = 0
    hi = n - 1  # invariant: knots[i, lo] <= x < knots[i, hi]
    if knots[i, j] <= x:
        if x < knots[i, j + 1]:
            return j
        lo = j + 1
    else:
        hi = j
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if knots[i, mid] <= x:
            lo = mid
        else:
            hi = mid
    return lo


def knot_reciprocals(inv, knots, i, k):
    """inv[i, r, m] = 1 / (t[m+r] - t[m]) for r = 1..k (0 where the knots coincide),
    for input i's knots t = knots[i].

    inv (I, k+1, n) with n knots per input; row r = 0 and the last r entries
    of row r are unused. Filled once per kernel call (O(k n) work per input), it
    turns every division of the local recursion into a multiplication.
    """
    n = knots.shape[1]
    for r in range(1, k + 1):
        for m in range(n - r):
            d = knots[i, m + r] - knots[i, m]
            inv[i, r, m] = 1.0 / d if d > 0 else 0.0


def local_basis(knots, inv, i, j, x, k, N, dN, work, deriv):
    """The k+1 bases that can be non-zero on span j, and optionally their derivatives.

    On return ``N[s] = B[j-k+s, k](x)`` for s = 0..k on input i's knots
    ``t = knots[i]`` (0 where the basis index j-k+s is outside 0..K-1, i.e.
    the basis does not exist), and when ``deriv`` is true
    ``dN[s] = d/dx B[j-k+s, k](x)``. ``work`` is scratch of length 2(k+1);
    ``inv`` holds the knot reciprocals of ``knot_reciprocals``.

    The triangle of bases touching span j is built order by order from the
    Cox-de Boor rule (a = j - r + s at order r)

        B[a,r] = (x - t[a]) / (t[a+r] - t[a]) * B[a,r-1]
               + (t[a+r+1] - x) / (t[a+r+1] - t[a+1]) * B[a+1,r-1]

    where a zero denominator makes its term 0. The right term of B[a,r] and
    the left term of B[a+1,r] share the quotient B[a+1,r-1] / (t[a+r+1] - t[a+1]),
    so each order costs r multiplications by a reciprocal from ``inv`` (de
    Boor's form, with the differences x - t[..] and t[..] - x kept in
    ``work``). On the k outermost spans at either end some bases of the
    triangle do not exist; there the rule is applied term by term with the
    existence checks.
    """
    nk = knots.shape[1]
    if j >= k and j <= nk - 2 - k:
        # left[r] = x - t[j+1-r] in work[r], right[r] = t[j+r] - x in work[k+1+r]
        # (indices, not slices: a slice is an array view, which compiled code pays for)
        R = k + 1
        N[0] = 1.0
        for r in range(1, k + 1):
            work[r] = x - knots[i, j + 1 - r]
            work[R + r] = knots[i, j + r] - x
            saved = 0.0
            for s in range(r):
                # 1 / (t[j+s+1] - t[j+1-r+s]), 0 for coinciding knots
                q = N[s] * inv[i, r, j + 1 - r + s]
                if deriv and r == k:
                    # dB[a,k] = k * (B[a,k-1]/(t[a+k]-t[a]) - B[a+1,k-1]/(t[a+k+1]-t[a+1]))
                    # and these quotients are exactly the q of the last order
                    dN[s] = -k * q if s == 0 else dN[s] - k * q
                    dN[s + 1] = k * q
                N[s] = saved + work[R + s + 1] * q
                saved = work[r - s] * q
            N[r] = saved
        return
    N[0] = 1.0
    for r in range(1, k + 1):
        if deriv and r == k:
            for s in range(k + 1):
                a = j - k + s
                v = 0.0
                if a >= 0 and a <= nk - 2 - k:
                    if s >= 1:
                        v += N[s - 1] * inv[i, k, a]
                    if s <= k - 1:
                        v -= N[s] * inv[i, k, a + 1]
                dN[s] = k * v
        for s in range(r, -1, -1):
            a = j - r + s
            v = 0.0
            if a >= 0 and a <= nk - 2 - r:
                if s >= 1:
                    v += (x - knots[i, a]) * inv[i, r, a] * N[s - 1]
                if s <= r - 1:
                    v += (knots[i, a + r + 1] - x) * inv[i, r, a + 1] * N[s]
            N[s] = v


# ---------------------------------------------------------------------------
# multiplication nodes: one sample's product over one group of subnodes, and its gradient
def group_product(y, b, lo, hi):
    """y[b, lo] * y[b, lo+1] * ... * y[b, hi-1], left to right (``reference.group_product_forward``)."""
    acc = y[b, lo]
    for s in range(lo + 1, hi):
        acc *= y[b, s]
    return acc


def group_product_grad(dy, g, y, b, lo, hi):
    """dy[b, s] = g * (product of the group's other factors) for s in [lo, hi), from the
    left and right partial products, without division (``reference.group_product_backward``)."""
    left = 1.0
    for s in range(lo, hi):
        right = 1.0
        for t in range(s + 1, hi):
            right *= y[b, t]
        dy[b, s] = g * (left * right)
        left *= y[b, s]
