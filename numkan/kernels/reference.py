"""Pure-NumPy reference kernels: the definition of a numkan layer, then its local form.

Every fast backend (``cpu.py``, ``cuda.py``) has the functions of part 2 with the
same signatures and is tested against them on the same inputs. The maths is
KAN_MATH's, written for a student to follow:

    s[i,o](x)   = sum_m coef[i,m,o] * B[m,k](x)
    phi[i,o](x) = mask[i,o] * (scale_base[i,o] * b(x) + scale_sp[i,o] * s[i,o](x))
    y[b,o]      = sum_i phi[i,o](x[b,i])

Shapes: x (B, I), y (B, O), knots (I, G+2k+1), coef (I, K, O) with K = G + k,
scale_base, scale_sp, mask (I, O).

The module reads top to bottom:

1. The definition (``dense_basis``, ``dense_basis_deriv``, ``base_value``,
   ``base_deriv``, ``dense_forward``, ``dense_backward``): every basis by the
   Cox-de Boor recursion, and the layer as a plain sum over all of them. These
   build (B, I, K) and (B, I, O) arrays on purpose: they are the maths written
   as directly as NumPy allows, not a fast path, and no layer calls them.
2. The local-support form (``find_span``, ``local_basis``, ``spline_forward``,
   ``spline_backward``, and ``group_product_forward``/``_backward`` for
   multiplication nodes): at each x only the k+1 bases of its knot span can be
   non-zero, so the bases are a (B, I, k+1) triangle and the contraction walks
   one input at a time with (B, O) temporaries. This is what the layers run
   (it is the backend without Numba) and what the fast kernels are checked
   against; ``tests/test_reference.py`` checks it against part 1.
3. Training ops (``mse_loss_grad``, ``adam_step``, ``edge_moments_forward``,
   ``edge_moments_backward``), in the local form.

Non-finite values (the local form, which every backend follows). The public
API accepts only finite inputs and knots, but a NaN or inf can still reach a
layer (a hidden value that overflows, a diverging fit, a NaN written into a
live parameter array). Every backend then gives what this module's local form
gives, and never turns the value into an index:

- a NaN or +-inf x lies in no knot span (``x >= t[0]`` and ``x < t[-1]`` are
  false for NaN, and +-inf is beyond every finite knot), so like any x outside
  the knots all its bases and their derivatives are exactly 0, and its spline
  terms are dropped (not multiplied by 0): it adds no spline term to y and
  nothing to dcoef or dscale_sp, whatever dy, coef or scale_sp hold;
- the base branch carries it: b(x) and b'(x) are the formulas below in IEEE
  arithmetic, with "zero" meaning 0 * x and identity's b'(x) = 1 + 0 * x, so
  b'(x) is NaN at every non-finite x, and b(x) is NaN there too except for
  silu(+inf) = +inf and identity(+-inf) = +-inf. Each output y[b, :] of a
  sample with a non-finite input is therefore NaN or +-inf, whatever the
  masks and scales (0 * inf is NaN): a non-finite value is never hidden;
- the scales multiply the mask first, (mask * scale_base) * b(x), as the
  compiled kernels do, so a pruned edge (mask 0) of a huge finite x gives 0,
  not 0 * inf.

Likewise a basis that does not exist at x (near the ends of the knots) drops
its term. Non-finite parameters give NaN or inf wherever they are used, but
the backends need not agree on exactly which outputs they reach (the cpu
backend, for one, forms dscale_sp as sum_m coef * dcoef, which sees every
coefficient). Knots that ``_validate.check_knots`` rejects (only a write into
a live knot array can bring them here) give unspecified values. Neither ever
crashes a kernel or makes it index outside an array. The dense definition of
part 1 is meant for finite x of ordinary size (there x - t cannot overflow).
"""
from typing import NamedTuple

import numpy as np

from ._host import all_finite, asarray, copy_into, fill, to_host, upload_into, zeros  # noqa: F401  (storage)

name = "numpy"


# ===========================================================================
# 1. The definition: all K bases, and the layer as a sum over them
# ---------------------------------------------------------------------------
# B-spline bases by the Cox-de Boor recursion
def dense_basis(x, knots, k):
    """B (B, I, n-1-k): every B-spline basis B[m,k](x[b,i]) on input i's own knots t = knots[i].

    With n = G + 2k + 1 knots there are n-1-k = G + k = K bases. Order 0 is the
    indicator of the half-open span [t[m], t[m+1]), and each order mixes two
    bases of the order below:

        B[m,0](x) = 1 if t[m] <= x < t[m+1] else 0
        B[m,p](x) = (x - t[m]) / (t[m+p] - t[m]) * B[m,p-1](x)
                  + (t[m+p+1] - x) / (t[m+p+1] - t[m+1]) * B[m+1,p-1](x)

    where a term with a zero denominator (repeated knots) counts as 0. Because
    the spans are half-open, x = t[n-1], the right end of the knots, lies in no
    span and all its bases are 0, as is every x outside [t[0], t[n-1]). The
    local form (``find_span``) uses the same convention.
    """
    xb = x[:, :, None]                                   # (B, I, 1)
    n = knots.shape[1]
    basis = ((_t(knots, 0, n - 1) <= xb) & (xb < _t(knots, 1, n - 1))).astype(x.dtype)
    for p in range(1, k + 1):
        M = n - 1 - p                                    # bases of order p: m = 0 .. M-1
        t_m, t_m1, t_mp, t_mp1 = (_t(knots, shift, M) for shift in (0, 1, p, p + 1))
        basis = (_ratio(xb - t_m, t_mp - t_m) * basis[..., :-1]
                 + _ratio(t_mp1 - xb, t_mp1 - t_m1) * basis[..., 1:])
    return basis


def dense_basis_deriv(x, knots, k):
    """dB (B, I, n-1-k): d/dx B[m,k](x[b,i]), from the order k-1 bases:

        B'[m,k](x) = k / (t[m+k] - t[m]) * B[m,k-1](x) - k / (t[m+k+1] - t[m+1]) * B[m+1,k-1](x)

    (a zero denominator again makes its term 0). At a knot this is the
    derivative from the right, the one the half-open spans give.
    """
    below = dense_basis(x, knots, k - 1)                 # (B, I, n-k)
    M = knots.shape[1] - 1 - k
    t_m, t_m1, t_mk, t_mk1 = (_t(knots, shift, M) for shift in (0, 1, k, k + 1))
    return _ratio(k, t_mk - t_m) * below[..., :-1] - _ratio(k, t_mk1 - t_m1) * below[..., 1:]


def _t(knots, shift, count):
    """t[m + shift] for m = 0 .. count-1, every input's own knots: (1, I, count)."""
    return knots[None, :, shift:shift + count]


def _ratio(num, den):
    """num / den, and 0 where den == 0: the "a zero denominator counts as 0" rule.

    Knots never decrease, so den >= 0 and den > 0 tells the two cases apart.
    """
    safe = np.where(den > 0, den, 1)
    return np.where(den > 0, num / safe, 0)


# ---------------------------------------------------------------------------
# the base function b(x) and its derivative
def base_value(x, base_fun):
    """b(x) elementwise: silu(x) = x * sigmoid(x), identity, or zero."""
    if base_fun == "silu":
        return x * _sigmoid(x)
    if base_fun == "identity":
        return x.copy()
    return 0 * x  # 0, but NaN at a non-finite x (see the module docstring)


def base_deriv(x, base_fun):
    """b'(x) elementwise: sigmoid(x) * (1 + x * (1 - sigmoid(x))), 1, or 0."""
    if base_fun == "silu":
        sig = _sigmoid(x)
        return sig * (1 + x * (1 - sig))
    if base_fun == "identity":
        return 1 + 0 * x  # NaN at a non-finite x, as b'(x) of silu
    return 0 * x


def _sigmoid(x):
    # without overflow: exp of a non-positive number only
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype)


# ---------------------------------------------------------------------------
# the layer as a sum over every basis
def dense_forward(x, knots, coef, scale_base, scale_sp, mask, k, base_fun):
    """y (B, O) = sum_i mask * (scale_base * b(x) + scale_sp * sum_m coef * B[m,k](x)), a new array.

    x (B, I), knots (I, G+2k+1), coef (I, K, O), scale_base/scale_sp/mask (I, O).
    """
    basis = dense_basis(x, knots, k)                                  # (B, I, K)
    spline = np.einsum("bim,imo->bio", basis, coef)                   # s[i,o](x[b,i])  (B, I, O)
    phi = mask * (scale_base * base_value(x, base_fun)[:, :, None] + scale_sp * spline)
    return phi.sum(axis=1)


def dense_backward(dy, x, knots, coef, scale_base, scale_sp, mask, k, base_fun):
    """(dx, dcoef, dscale_base, dscale_sp): the gradients of sum(dy * dense_forward(...)), new arrays.

    With g[b,i,o] = dy[b,o] * mask[i,o], the gradient reaching edge (i, o)'s bracket:

        dcoef[i,m,o]     = sum_b g * scale_sp * B[m,k](x[b,i])
        dscale_base[i,o] = sum_b g * b(x[b,i])
        dscale_sp[i,o]   = sum_b g * s[i,o](x[b,i])
        dx[b,i]          = sum_o g * (scale_base * b'(x[b,i]) + scale_sp * s'[i,o](x[b,i]))

    where s' = sum_m coef * B'[m,k] (``dense_basis_deriv``).
    """
    basis = dense_basis(x, knots, k)                                  # (B, I, K)
    spline = np.einsum("bim,imo->bio", basis, coef)                   # s   (B, I, O)
    dspline = np.einsum("bim,imo->bio", dense_basis_deriv(x, knots, k), coef)  # s'  (B, I, O)
    g = dy[:, None, :] * mask                                         # (B, I, O)
    dcoef = np.einsum("bio,bim->imo", g * scale_sp, basis)
    dscale_base = np.einsum("bio,bi->io", g, base_value(x, base_fun))
    dscale_sp = np.einsum("bio,bio->io", g, spline)
    dx = np.einsum("bio,bio->bi", g, scale_base * base_deriv(x, base_fun)[:, :, None] + scale_sp * dspline)
    return dx, dcoef, dscale_base, dscale_sp


# ===========================================================================
# 2. The local-support form: what the layers run
# ---------------------------------------------------------------------------
# the k+1 bases of each x's knot span
def find_span(x, knots):
    """span (B, I) int: j with knots[i, j] <= x[b, i] < knots[i, j+1], or -1 outside.

    A binary search on each input's own knots (``searchsorted`` with side
    "right" finds the last knot <= x, so repeated knots are skipped correctly).
    """
    B, I = x.shape
    n = knots.shape[1]
    span = np.empty((B, I), dtype=np.int64)
    for i in range(I):
        span[:, i] = np.searchsorted(knots[i], x[:, i], side="right") - 1
    inside = (x >= knots[:, :1].T) & (x < knots[:, n - 1:].T)  # False for NaN too
    span[~inside] = -1
    return span


def local_basis(x, knots, k, deriv=False):
    """The k+1 B-spline bases (and derivatives) that can be non-zero at each x.

    Returns ``span`` (B, I), ``N`` (B, I, k+1) and ``dN`` (B, I, k+1) or None,
    where ``N[b, i, s] = B[span - k + s, k](x[b, i])`` and entries whose basis
    index is outside 0..K-1 (or whose x is outside the knots) are 0.

    This is ``dense_basis`` on the triangle of bases that touch span j: at
    order r the live bases are a = j - r + s for s = 0..r, slot s of order r
    mixes slots s-1 and s of order r-1,

        B[a,r]  = (x - t[a]) / (t[a+r] - t[a]) * B[a,r-1] + (t[a+r+1] - x) / (t[a+r+1] - t[a+1]) * B[a+1,r-1]
        B'[a,k] =          k / (t[a+k] - t[a]) * B[a,k-1] -              k / (t[a+k+1] - t[a+1]) * B[a+1,k-1]

    a zero denominator makes its term 0, and a basis index a outside 0..n-2-r
    (n knots) does not exist at order r. Outside the knots (NaN and +-inf
    included) every N and dN is exactly 0: the recursion runs there on a
    placeholder span, and its values (x - t could overflow, or be NaN) are
    discarded at the end.
    """
    B, I = x.shape
    n = knots.shape[1]
    span = find_span(x, knots)
    inside = span >= 0
    j = np.where(inside, span, 0)
    rows = np.arange(I)[None, :]
    # the knots the triangle reads, t[i, j + d] for d = -k .. k+1, gathered once; the
    # index is clipped into the knots, and callers use a value only where it was in range
    T = {d: knots[rows, np.clip(j + d, 0, n - 1)] for d in range(-k, k + 2)}

    def value(d, r, lo, hi):  # B[a,r] for a = j + d, from lo = B[a,r-1] and hi = B[a+1,r-1]
        return (_ratio(x - T[d], T[d + r] - T[d]) * lo
                + _ratio(T[d + r + 1] - x, T[d + r + 1] - T[d + 1]) * hi)

    def slope(d, r, lo, hi):  # B'[a,r] from the same two
        return r * (_ratio(lo, T[d + r] - T[d]) - _ratio(hi, T[d + r + 1] - T[d + 1]))

    def climb(below, r, rule):
        # order r on the triangle from order r-1 (``below``): slot s holds basis a = j - r + s,
        # B[a,r-1] sits in slot s-1 of ``below`` and B[a+1,r-1] in slot s (absent at the edges)
        out = np.zeros((B, I, k + 1), dtype=x.dtype)
        for s in range(r + 1):
            a = j - r + s
            lo = below[:, :, s - 1] if s >= 1 else 0
            hi = below[:, :, s] if s <= r - 1 else 0
            out[:, :, s] = np.where((a >= 0) & (a <= n - 2 - r), rule(s - r, r, lo, hi), 0)
        return out

    # the placeholder span of a point outside the knots may overflow or give NaN here;
    # those values are discarded below, so numpy need not warn about them
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        N = np.zeros((B, I, k + 1), dtype=x.dtype)
        N[:, :, 0] = inside  # order 0: the indicator of span j
        dN = None
        for r in range(1, k + 1):
            if deriv and r == k:  # from the order k-1 bases, before they are replaced
                dN = np.where(inside[:, :, None], climb(N, k, slope), 0)
            N = climb(N, r, value)
    return span, np.where(inside[:, :, None], N, 0), dN


def local_bases(x, knots, k):
    """(span, N) of ``local_basis`` without derivatives, on host float64 arrays: the
    bases the grid updates' least squares are built from (``spline.basis_matrices``)."""
    span, N, _ = local_basis(np.asarray(x, dtype=np.float64), np.asarray(knots, dtype=np.float64), k)
    return span, N


def design_matrix(span, N, K, k):
    """The design matrix A (B, K) of one input, A[b, m] = B[m, k](x[b]), from its local
    bases (``local_bases``' span (B,) and N (B, k+1)).

    The scatter goes into a matrix with k columns more on each side, where local basis
    s of span j (basis j - k + s) is column j + s: in range for every span, so no mask
    is needed. A basis that does not exist (j - k + s < 0 or >= K) has the value 0 and
    lands in the margins; a sample outside the knots (span -1, all its values 0) writes
    its zeros into columns 0..k of its own row. A is the middle (a view)."""
    B = span.shape[0]
    W = K + 2 * k
    P = np.zeros((B, W))
    first = np.arange(B)[:, None] * W + np.arange(k + 1)  # row b's column j + s is first[b, s] + j
    # one scatter: a row's k+1 columns are distinct, so no two values share a place
    P.reshape(-1)[first + np.maximum(span, 0)[:, None]] = N
    return P[:, k:k + K]


def normal_sums(x, t_old, coef_old, t_new, k):
    """The normal equations of moving splines to new knots (``spline.refit``): for each
    input i, with A_old, A_new the design matrices of x[:, i] on t_old[i] and t_new[i],
    gram[i] = A_new^T A_new (K_new, K_new) and rhs[i] = A_new^T A_old coef_old[i]
    (K_new, O). Host float64 arrays in and out."""
    x = np.asarray(x, dtype=np.float64)
    I = x.shape[1]
    K_old, K_new = t_old.shape[1] - k - 1, t_new.shape[1] - k - 1
    span_o, N_o = local_bases(x, t_old, k)
    span_n, N_n = local_bases(x, t_new, k)
    gram = np.empty((I, K_new, K_new))
    rhs = np.empty((I, K_new, coef_old.shape[2]))
    for i in range(I):
        A_new = design_matrix(span_n[:, i], N_n[:, i], K_new, k)
        values = design_matrix(span_o[:, i], N_o[:, i], K_old, k) @ np.asarray(coef_old[i], dtype=np.float64)
        gram[i] = A_new.T @ A_new
        rhs[i] = A_new.T @ values
    return gram, rhs


# ---------------------------------------------------------------------------
# one input at a time: the contraction with coef, and its transpose
class _Column(NamedTuple):
    """The local bases of input i over the batch, ready to meet coef[i].

    Entries that are not live carry a zero basis value, but their terms are
    dropped rather than multiplied by 0: a NaN or inf in a coefficient, or in
    dy, then reaches only the samples whose bases touch it, as in the compiled
    kernels, which never visit those entries.
    """
    i: int
    idx: np.ndarray     # (B, k+1) basis index a = span - k + s, clipped into 0..K-1
    N: np.ndarray       # (B, k+1) the bases B[a,k](x[b, i])
    dN: object          # (B, k+1) their derivatives, or None when not asked for
    live: np.ndarray    # (B, k+1) basis a exists and x is inside the knots
    inside: np.ndarray  # (B,) x inside the knots
    bx: np.ndarray      # (B,) b(x)
    dbx: object         # (B,) b'(x), or None when not asked for


def _columns(x, knots, k, K, base_fun, deriv=False):
    """Yield a ``_Column`` for each input i = 0 .. I-1 (bases of all inputs found at once)."""
    span, N, dN = local_basis(x, knots, k, deriv)
    s = np.arange(k + 1)
    live = (span[:, :, None] >= 0) & (span[:, :, None] - k + s >= 0) & (span[:, :, None] - k + s < K)
    idx = np.clip(np.maximum(span, 0)[:, :, None] - k + s, 0, K - 1)
    bx = base_value(x, base_fun)
    dbx = base_deriv(x, base_fun) if deriv else None
    for i in range(x.shape[1]):
        yield _Column(i, idx[:, i], N[:, i], None if dN is None else dN[:, i], live[:, i],
                      span[:, i] >= 0, bx[:, i], None if dbx is None else dbx[:, i])


def _live(live, term):
    """term (B, O) where live (B,), else 0 (not 0 * term: see ``_Column``)."""
    return np.where(live[:, None], term, 0)


def _contract(col, coef, W):
    """sum_s W[b, s] * coef[i, idx[b, s], o] over the live terms (B, O): the spline
    s[i, o](x[b, i]) when W = col.N, its derivative s' when W = col.dN."""
    out = np.zeros((W.shape[0], coef.shape[2]), dtype=W.dtype)
    for s in range(W.shape[1]):  # k+1 gathered rows of coef[i]
        out += _live(col.live[:, s], W[:, s, None] * coef[col.i, col.idx[:, s], :])
    return out


def _phi(col, spline, scale_base, scale_sp, mask):
    """phi[i, o](x[b, i]) (B, O) from the spline values; outside the knots the edge
    is its base term alone (no scale_sp * 0)."""
    i = col.i
    return (mask[i] * scale_base[i]) * col.bx[:, None] + _live(col.inside, (mask[i] * scale_sp[i]) * spline)


def _phi_backward(dcoef, dscale_base, dscale_sp, g, col, spline, dspline, scale_base, scale_sp, mask):
    """Backward of ``_phi`` for input i with g = dL/dphi (B, O): adds into dcoef[i],
    dscale_base[i] and dscale_sp[i], and returns dL/dx[:, i] (B,) for the caller to add
    (None when ``dspline`` is None: dx not wanted)."""
    i = col.i
    for s in range(col.N.shape[1]):  # scatter-add g * B into the coefficient each sample touched
        np.add.at(dcoef[i], col.idx[:, s], _live(col.live[:, s], (mask[i] * scale_sp[i]) * col.N[:, s, None] * g))
    dscale_base[i] += mask[i] * (col.bx @ g)
    # a sample outside the knots has s = 0 exactly and adds nothing (not g * 0)
    dscale_sp[i] += mask[i] * np.sum(_live(col.inside, g * spline), axis=0)
    if dspline is None:  # dx not wanted
        return None
    return np.sum(g * ((mask[i] * scale_base[i]) * col.dbx[:, None]
                       + _live(col.inside, (mask[i] * scale_sp[i]) * dspline)), axis=1)


# ---------------------------------------------------------------------------
# the layer: forward and backward
def spline_forward(y, x, knots, coef, scale_base, scale_sp, mask, k, base_fun):
    """y (B, O) = sum_i phi[i, o](x[b, i]); y is overwritten. ``dense_forward`` in the local form.

    x (B, I), knots (I, G+2k+1), coef (I, K, O), scale_base/scale_sp/mask (I, O).
    """
    y[...] = 0
    for col in _columns(x, knots, k, coef.shape[1], base_fun):
        y += _phi(col, _contract(col, coef, col.N), scale_base, scale_sp, mask)
    return y


def spline_backward(dx, dcoef, dscale_base, dscale_sp, dy, x, knots, coef,
                    scale_base, scale_sp, mask, k, base_fun):
    """Vector-Jacobian products of spline_forward, added (+=) into the d* buffers
    (``dense_backward`` in the local form).

    With g = dy (B, O):
        dcoef[i,m,o]      += sum_b g[b,o] * mask[i,o] * scale_sp[i,o] * B[m,k](x[b,i])
        dscale_base[i,o]  += sum_b g[b,o] * mask[i,o] * b(x[b,i])
        dscale_sp[i,o]    += sum_b g[b,o] * mask[i,o] * s[i,o](x[b,i])
        dx[b,i]           += sum_o g[b,o] * mask[i,o] * (scale_base[i,o] * b'(x[b,i])
                                                        + scale_sp[i,o] * s'[i,o](x[b,i]))

    dx None: the input gradient is not wanted (the first layer in training), and
    neither the derivatives of the bases nor dx are computed.
    """
    want = dx is not None
    for col in _columns(x, knots, k, coef.shape[1], base_fun, deriv=want):
        spline = _contract(col, coef, col.N)
        dspline = _contract(col, coef, col.dN) if want else None
        d = _phi_backward(dcoef, dscale_base, dscale_sp, dy, col, spline, dspline,
                          scale_base, scale_sp, mask)
        if want:
            dx[:, col.i] += d


# ---------------------------------------------------------------------------
# a fixed input: one batch passed again and again (fit's batch through the first layer)
class FixedInput:
    """x (B, I) wrapped for ``fixed_forward`` / ``fixed_backward``. A backend may keep
    in it what depends on x alone (the compiled CPU backend keeps each sample's span);
    here it is x itself, and the passes are ``spline_forward`` / ``spline_backward``."""

    def __init__(self, x):
        self.x = x


def fixed_input(x):
    """x (B, I), a batch the caller will not change, for repeated passes."""
    return FixedInput(x)


def fixed_forward(y, F, knots, coef, scale_base, scale_sp, mask, k, base_fun):
    """``spline_forward(y, F.x, ...)``."""
    return spline_forward(y, F.x, knots, coef, scale_base, scale_sp, mask, k, base_fun)


def fixed_backward(dcoef, dscale_base, dscale_sp, dy, F, knots, coef, scale_base, scale_sp, mask, k, base_fun):
    """``spline_backward(None, dcoef, dscale_base, dscale_sp, dy, F.x, ...)``: no input gradient."""
    spline_backward(None, dcoef, dscale_base, dscale_sp, dy, F.x, knots, coef, scale_base, scale_sp, mask, k,
                    base_fun)


# ---------------------------------------------------------------------------
# multiplication nodes (pykan's MultKAN): products of groups of a layer's outputs
def group_product_forward(z, y, offsets):
    """z[b, n] = prod of y[b, s] over s in [offsets[n], offsets[n+1]), left to right.

    z (B, N), y (B, S), offsets (N + 1,) int64 with offsets[0] = 0 and
    offsets[N] = S. A group of one subnode is a sum node: z = y there.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN carry through, as in IEEE
        for n in range(z.shape[1]):
            acc = y[:, offsets[n]].copy()
            for s in range(offsets[n] + 1, offsets[n + 1]):
                acc *= y[:, s]
            z[:, n] = acc


def group_product_backward(dy, dz, y, offsets):
    """dy[b, s] = dz[b, n] * prod of y[b, t] over the other t of s's group (written, not added).

    The product of the others is formed from the left and right partial
    products, with no division, so a factor that is 0 (or a NaN in another
    group) gets its exact gradient.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        for n in range(dz.shape[1]):
            lo, hi = offsets[n], offsets[n + 1]
            left = np.ones_like(dz[:, n])
            for s in range(lo, hi):
                right = np.ones_like(left)
                for t in range(s + 1, hi):
                    right *= y[:, t]
                dy[:, s] = dz[:, n] * (left * right)
                left *= y[:, s]


# ===========================================================================
# 3. Training ops (used by numkan.train): loss, optimiser step, regulariser moments
# ---------------------------------------------------------------------------
def mse_loss_grad(dy, y, target):
    """Mean squared error of y (B, O) against target (B, O); writes its gradient.

    Returns loss = mean((y - target)**2) as a Python float (summed in float64)
    and overwrites dy (B, O) with dloss/dy = 2 * (y - target) / y.size.
    """
    diff = y - target
    dy[...] = (2.0 / diff.size) * diff
    d64 = diff.astype(np.float64)
    return float(np.mean(d64 * d64))


def spline_mse(y, dx, dcoef, dscale_base, dscale_sp, target, x, knots, coef, scale_base, scale_sp, mask,
               k, base_fun):
    """A network's last layer and its mean squared error in one call: ``spline_forward``
    into y (B, O), ``mse_loss_grad`` against target (B, O), then ``spline_backward`` with
    that dy (never returned) into dx (None: not wanted) and the parameter gradients.
    Returns the loss. (A backend may keep what both passes need between them.)"""
    spline_forward(y, x, knots, coef, scale_base, scale_sp, mask, k, base_fun)
    dy = np.empty_like(y)
    loss = mse_loss_grad(dy, y, target)
    spline_backward(dx, dcoef, dscale_base, dscale_sp, dy, x, knots, coef, scale_base, scale_sp, mask, k,
                    base_fun)
    return loss


def adam_step(p, g, m, v, lr, beta1, beta2, eps, t):
    """One Adam update (Kingma & Ba 2015) of p in place; m, v are its moment buffers.

        m = beta1 m + (1 - beta1) g            v = beta2 v + (1 - beta2) g^2
        p -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    t is the 1-based step count (bias correction).
    """
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    p -= (lr / (1 - beta1 ** t)) * m / (np.sqrt(v / (1 - beta2 ** t)) + eps)


# ---------------------------------------------------------------------------
# regulariser moments: the batch sums the sparsity regulariser needs
def edge_moments_forward(s1, s2, xs1, xs2, x, knots, coef, scale_base, scale_sp, mask, k, base_fun):
    """Per-edge batch sums of phi and phi^2, and per-input sums of x and x^2.

        s1[i,o] = sum_b phi[i,o](x[b,i])        s2[i,o] = sum_b phi[i,o](x[b,i])^2
        xs1[i]  = sum_b x[b,i]                  xs2[i]  = sum_b x[b,i]^2

    s1, s2 (I, O) and xs1, xs2 (I,) are float64 whatever the model's dtype and
    are overwritten. From them the regulariser gets batch standard deviations
    without a (B, I, O) array: var = (s2 - s1^2 / B) / (B - 1). Here phi is
    built one input at a time as a (B, O) temporary, exactly as in
    ``spline_forward``.
    """
    for col in _columns(x, knots, k, coef.shape[1], base_fun):
        phi = _phi(col, _contract(col, coef, col.N), scale_base, scale_sp, mask).astype(np.float64)
        s1[col.i] = phi.sum(axis=0)
        s2[col.i] = (phi * phi).sum(axis=0)
    x64 = x.astype(np.float64)
    xs1[...] = x64.sum(axis=0)
    xs2[...] = (x64 * x64).sum(axis=0)


def edge_moments_backward(dx, dcoef, dscale_base, dscale_sp, ds1, ds2, dxs1, dxs2, x, knots,
                          coef, scale_base, scale_sp, mask, k, base_fun):
    """Vector-Jacobian products of edge_moments_forward, added (+=) into dx and the d* buffers.

    With upstream gradients ds1, ds2 (I, O) and dxs1, dxs2 (I,), the gradient
    reaching each edge value is

        gphi[b,i,o] = ds1[i,o] + 2 * ds2[i,o] * phi[i,o](x[b,i])

    and it flows through phi exactly as dy flows through spline_backward:

        dcoef[i,m,o]      += sum_b gphi * mask * scale_sp * B[m,k](x[b,i])
        dscale_base[i,o]  += sum_b gphi * mask * b(x[b,i])
        dscale_sp[i,o]    += sum_b gphi * mask * s[i,o](x[b,i])
        dx[b,i]           += sum_o gphi * mask * (scale_base * b'(x) + scale_sp * s'(x))
                             + dxs1[i] + 2 * x[b,i] * dxs2[i]
    """
    for col in _columns(x, knots, k, coef.shape[1], base_fun, deriv=True):
        i = col.i
        spline, dspline = _contract(col, coef, col.N), _contract(col, coef, col.dN)
        phi = _phi(col, spline, scale_base, scale_sp, mask)
        g = (ds1[i] + 2.0 * ds2[i] * phi).astype(x.dtype)  # (B, O): dL/dphi for this input
        dphi = _phi_backward(dcoef, dscale_base, dscale_sp, g, col, spline, dspline, scale_base, scale_sp, mask)
        dx[:, i] += (dphi + dxs1[i] + 2.0 * x[:, i] * dxs2[i]).astype(dx.dtype)


# ===========================================================================
# 4. Input derivatives (physics-informed training, ``numkan.pde``): the jet ops
# ---------------------------------------------------------------------------
# A "jet" of a layer's input is (h, J, H): the values h (B, I), their first
# derivatives J[b,i,d] = dh[b,i]/dx[b,d] and their diagonal second derivatives
# H[b,i,d] = d^2 h[b,i]/dx[b,d]^2 with respect to the network's D inputs x.
# Each edge needs phi, phi', phi'' of its input (and phi''' for the backward):
#
#     phi^(n)[i,o](h) = mask * (scale_base * b^(n)(h) + scale_sp * s^(n)[i,o](h))
#     s^(n)[i,o](h)   = sum_m coef[i,m,o] * B^(n)[m,k](h)
#
# and the layer maps the jet of its input to the jet of its output by the
# chain rule (``spline_jet_forward``):
#
#     y[b,o]    = sum_i phi(h[b,i])
#     Jy[b,o,d] = sum_i phi'(h[b,i]) * J[b,i,d]
#     Hy[b,o,d] = sum_i phi''(h[b,i]) * J[b,i,d]^2 + phi'(h[b,i]) * H[b,i,d]
#
# (the derivation and the backward are in ``numkan.pde``'s docstring).
def base_derivs(x, base_fun, n):
    """[b(x), b'(x), ..., b^(n)(x)] elementwise, n <= 3.

    silu: with sigma = sigmoid(x), p = sigma (1 - sigma) = sigma' and
    q = 1 - 2 sigma (so p' = p q and q' = -2 p):

        b   = x sigma                 b'   = sigma + x p
        b'' = p (2 + x q)             b''' = p (3 q + x (q^2 - 2 p))

    p is formed as e / (1 + e)^2 with e = exp(-|x|), which has no
    cancellation at large |x|. identity: x, 1, 0, 0; zero: 0. As ``base_value``
    and ``base_deriv``, every derivative is NaN at a non-finite x (0 * x).
    """
    out = [base_value(x, base_fun), base_deriv(x, base_fun)]
    if n >= 2:
        if base_fun == "silu":
            sig = _sigmoid(x)
            e = np.exp(-np.abs(x))
            p = e / ((1.0 + e) * (1.0 + e))
            q = 1.0 - 2.0 * sig
            with np.errstate(invalid="ignore"):  # inf * 0 at a non-finite x: NaN, as intended
                out.append(p * (2.0 + x * q))
                if n >= 3:
                    out.append(p * (3.0 * q + x * (q * q - 2.0 * p)))
        else:
            out += [0 * x] * (n - 1)
    return [a.astype(x.dtype) for a in out[:n + 1]]


def local_basis_derivs(x, knots, k, n):
    """The k+1 local bases of each x and their first n derivatives.

    Returns ``span`` (B, I) and a list ``D`` of n+1 arrays (B, I, k+1):
    ``D[q][b, i, s] = d^q/dx^q B[span - k + s, k](x[b, i])``, 0 where the basis
    does not exist or x is outside the knots (as ``local_basis``). The q-th
    derivative comes from the order k-q bases by q applications of the
    derivative rule, which is linear in the lower-order functions,

        d^q B[a,r] = r * ( d^(q-1) B[a,r-1] / (t[a+r] - t[a])
                         - d^(q-1) B[a+1,r-1] / (t[a+r+1] - t[a+1]) ),

    so it holds for every q (a zero denominator makes its term 0). For q > k
    the derivative is 0: the bases are polynomials of degree k on each span
    (with k = 2, B''' = 0 inside every span).
    """
    B, I = x.shape
    nk = knots.shape[1]
    span = find_span(x, knots)
    inside = span >= 0
    j = np.where(inside, span, 0)
    rows = np.arange(I)[None, :]

    def t(idx):
        return knots[rows, np.clip(idx, 0, nk - 1)]

    def climb(below, r, derivative):
        # order r on the triangle (slot s: basis a = j - r + s) from order r-1
        out = np.zeros((B, I, k + 1), dtype=x.dtype)
        for s in range(r + 1):
            a = j - r + s
            lo = below[:, :, s - 1] if s >= 1 else 0
            hi = below[:, :, s] if s <= r - 1 else 0
            if derivative:
                v = r * (_ratio(lo, t(a + r) - t(a)) - _ratio(hi, t(a + r + 1) - t(a + 1)))
            else:
                v = (_ratio(x - t(a), t(a + r) - t(a)) * lo
                     + _ratio(t(a + r + 1) - x, t(a + r + 1) - t(a + 1)) * hi)
            out[:, :, s] = np.where((a >= 0) & (a <= nk - 2 - r), v, 0)
        return out

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        orders = [np.zeros((B, I, k + 1), dtype=x.dtype)]
        orders[0][:, :, 0] = inside            # order 0: the indicator of span j
        for r in range(1, k + 1):
            orders.append(climb(orders[-1], r, False))
        D = []
        for q in range(n + 1):
            if q > k:
                D.append(np.zeros((B, I, k + 1), dtype=x.dtype))
                continue
            d = orders[k - q]
            for r in range(k - q + 1, k + 1):
                d = climb(d, r, True)
            D.append(np.where(inside[:, :, None], d, 0))
    return span, D


def _edge_derivs(x, knots, coef, scale_base, scale_sp, mask, k, base_fun, n):
    """Per input i: (i, live, idx, D, phis, splines) with phis[q] = phi^(q) (B, O) and
    splines[q] = s^(q) (B, O), q = 0..n, and the local bases D[q] (B, k+1).

    Splines are summed over the live terms only and dropped outside the knots,
    as in ``_contract`` and ``_phi``."""
    K = coef.shape[1]
    span, D = local_basis_derivs(x, knots, k, n)
    s_ = np.arange(k + 1)
    live = (span[:, :, None] >= 0) & (span[:, :, None] - k + s_ >= 0) & (span[:, :, None] - k + s_ < K)
    idx = np.clip(np.maximum(span, 0)[:, :, None] - k + s_, 0, K - 1)
    bases = base_derivs(x, base_fun, n)
    for i in range(x.shape[1]):
        inside = span[:, i] >= 0
        Di = [d[:, i] for d in D]
        splines, phis = [], []
        for q in range(n + 1):
            sq = np.zeros((x.shape[0], coef.shape[2]), dtype=x.dtype)
            for s in range(k + 1):
                sq += _live(live[:, i, s], Di[q][:, s, None] * coef[i, idx[:, i, s], :])
            splines.append(sq)
            phis.append((mask[i] * scale_base[i]) * bases[q][:, i, None]
                        + _live(inside, (mask[i] * scale_sp[i]) * sq))
        yield i, live[:, i], idx[:, i], Di, phis, splines, [b[:, i] for b in bases], inside


def spline_jet_forward(y, Jy, Hy, x, J, H, knots, coef, scale_base, scale_sp, mask, k, base_fun):
    """The jet of a layer's output from the jet of its input; y, Jy, Hy are overwritten.

    x (B, I), J, H (B, I, D) -> y (B, O), Jy, Hy (B, O, D):

        y[b,o]    = sum_i phi(x[b,i])
        Jy[b,o,d] = sum_i phi'(x[b,i]) * J[b,i,d]
        Hy[b,o,d] = sum_i phi''(x[b,i]) * J[b,i,d]^2 + phi'(x[b,i]) * H[b,i,d]

    Needs k >= 2 (phi'' of a linear spline is 0 inside every span and not
    defined at its knots); callers check it. y is exactly ``spline_forward``'s.
    """
    y[...] = 0
    Jy[...] = 0
    Hy[...] = 0
    for i, live, idx, D, phis, splines, bases, inside in _edge_derivs(
            x, knots, coef, scale_base, scale_sp, mask, k, base_fun, 2):
        Ji, Hi = J[:, i, None, :], H[:, i, None, :]                     # (B, 1, D)
        y += phis[0]
        Jy += phis[1][:, :, None] * Ji
        Hy += phis[2][:, :, None] * (Ji * Ji) + phis[1][:, :, None] * Hi


def spline_jet_backward(dx, dJ, dH, dcoef, dscale_base, dscale_sp, gy, gJ, gH, x, J, H, knots,
                        coef, scale_base, scale_sp, mask, k, base_fun):
    """Vector-Jacobian products of ``spline_jet_forward``, added (+=) into every d* buffer.

    Upstream gy (B, O), gJ, gH (B, O, D). What reaches phi, phi' and phi'' of
    edge (i, o) at sample b:

        a0 = gy[b,o]
        a1 = sum_d gJ[b,o,d] * J[b,i,d] + gH[b,o,d] * H[b,i,d]
        a2 = sum_d gH[b,o,d] * J[b,i,d]^2

    and since phi^(q) is linear in the parameters,

        dcoef[i,m,o]     += sum_b mask * scale_sp * (a0 B[m] + a1 B'[m] + a2 B''[m])(x[b,i])
        dscale_base[i,o] += sum_b mask * (a0 b + a1 b' + a2 b'')(x[b,i])
        dscale_sp[i,o]   += sum_b mask * (a0 s + a1 s' + a2 s'')(x[b,i])
        dx[b,i]          += sum_o a0 phi' + a1 phi'' + a2 phi'''
        dJ[b,i,d]        += sum_o gJ[b,o,d] phi' + 2 gH[b,o,d] phi'' J[b,i,d]
        dH[b,i,d]        += sum_o gH[b,o,d] phi'

    (phi''' uses B''', which is 0 for k = 2.) Terms of bases that do not exist,
    or of x outside the knots, are dropped, as in ``spline_backward``.
    """
    for i, live, idx, D, phis, splines, bases, inside in _edge_derivs(
            x, knots, coef, scale_base, scale_sp, mask, k, base_fun, 3):
        Ji, Hi = J[:, i, None, :], H[:, i, None, :]                     # (B, 1, D)
        a0 = gy
        a1 = np.sum(gJ * Ji + gH * Hi, axis=2)                          # (B, O)
        a2 = np.sum(gH * (Ji * Ji), axis=2)
        spm = mask[i] * scale_sp[i]
        for s in range(k + 1):
            w = D[0][:, s, None] * a0 + D[1][:, s, None] * a1 + D[2][:, s, None] * a2
            np.add.at(dcoef[i], idx[:, s], _live(live[:, s], spm * w))
        dscale_base[i] += mask[i] * (bases[0] @ a0 + bases[1] @ a1 + bases[2] @ a2)
        dscale_sp[i] += mask[i] * np.sum(_live(inside, a0 * splines[0] + a1 * splines[1]
                                               + a2 * splines[2]), axis=0)
        dx[:, i] += np.sum(a0 * phis[1] + a1 * phis[2] + a2 * phis[3], axis=1)
        dJ[:, i, :] += np.sum(gJ * phis[1][:, :, None] + 2.0 * gH * phis[2][:, :, None] * Ji, axis=1)
        dH[:, i, :] += np.sum(gH * phis[1][:, :, None], axis=1)
