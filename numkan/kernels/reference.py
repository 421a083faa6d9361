"""Pure-NumPy reference kernels: the readable definition of a numkan layer.

Every fast backend (``cpu.py``, ``cuda.py``) has the same functions with the
same signatures and is tested against this module on the same inputs. The maths
is KAN_MATH's, written for a student to follow:

    s[i,o](x)   = sum_m coef[i,m,o] * B[m,k](x)        (only k+1 terms are non-zero)
    phi[i,o](x) = mask[i,o] * (scale_base[i,o] * b(x) + scale_sp[i,o] * s[i,o](x))
    y[b,o]      = sum_i phi[i,o](x[b,i])

Shapes: x (B, I), y (B, O), grid (I, G+2k+1), coef (I, K, O) with K = G + k,
scale_base, scale_sp, mask (I, O). Nothing here builds a (B, I, O) or a
(B, I, K) array: the local bases are (B, I, k+1) and the contraction walks one
input at a time with (B, O) temporaries.

Non-finite values. The public API accepts only finite inputs and knots, but a
NaN or inf can still reach a layer (a hidden value that overflows, a
diverging fit, a NaN written into a live parameter array). Every backend then
gives what this module gives, and never turns the value into an index:

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
a live grid array can bring them here) give unspecified values. Neither ever
crashes a kernel or makes it index outside an array.
"""
import numpy as np

from ._host import all_finite, asarray, copy_into, fill, to_host, zeros  # noqa: F401  (storage)
from ._scalar import BASE_CODES

name = "numpy"


# ---------------------------------------------------------------------------
# base function b(x)
def base_value(x, base_fun):
    """b(x) elementwise: silu(x) = x * sigmoid(x), identity, or zero."""
    if base_fun == "silu":
        # sigmoid without overflow: exp of a non-positive number only
        e = np.exp(-np.abs(x))
        sig = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype)
        return x * sig
    if base_fun == "identity":
        return x.copy()
    return 0 * x  # 0, but NaN at a non-finite x (see the module docstring)


def base_deriv(x, base_fun):
    """b'(x) elementwise: sigmoid(x) * (1 + x * (1 - sigmoid(x))), 1, or 0."""
    if base_fun == "silu":
        e = np.exp(-np.abs(x))
        sig = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype)
        return sig * (1 + x * (1 - sig))
    if base_fun == "identity":
        return 1 + 0 * x  # NaN at a non-finite x, as b'(x) of silu
    return 0 * x


# ---------------------------------------------------------------------------
# B-spline bases on their local support
def find_span(x, grid):
    """span (B, I) int: j with grid[i, j] <= x[b, i] < grid[i, j+1], or -1 outside.

    A binary search on each input's own knots (``searchsorted`` with side
    "right" finds the last knot <= x, so repeated knots are skipped correctly).
    """
    B, I = x.shape
    n = grid.shape[1]
    span = np.empty((B, I), dtype=np.int64)
    for i in range(I):
        span[:, i] = np.searchsorted(grid[i], x[:, i], side="right") - 1
    inside = (x >= grid[:, :1].T) & (x < grid[:, n - 1:].T)  # False for NaN too
    span[~inside] = -1
    return span


def local_basis(x, grid, k, deriv=False):
    """The k+1 B-spline bases (and derivatives) that can be non-zero at each x.

    Returns ``span`` (B, I), ``N`` (B, I, k+1) and ``dN`` (B, I, k+1) or None,
    where ``N[b, i, s] = B[span - k + s, k](x[b, i])`` and entries whose basis
    index is outside 0..K-1 (or whose x is outside the knots) are 0.

    This is Cox-de Boor on the triangle of bases that touch span j: at order r
    the live bases are a = j - r + s for s = 0..r, and

        B[a,r] = (x - t[a]) / (t[a+r] - t[a]) * B[a,r-1]
               + (t[a+r+1] - x) / (t[a+r+1] - t[a+1]) * B[a+1,r-1],

    where a zero denominator makes its term 0, and a basis index a outside
    0..n-2-r (n knots) does not exist at order r. Outside the knots (NaN and
    +-inf included) every N and dN is exactly 0: the recursion runs there on a
    placeholder span, and its values (x - t could overflow, or be NaN) are
    discarded at the end.
    """
    B, I = x.shape
    n = grid.shape[1]
    span = find_span(x, grid)
    inside = span >= 0
    j = np.where(inside, span, 0)
    rows = np.arange(I)[None, :]

    def knot(idx):
        # t[i, idx[b, i]]; callers only use the value where idx is in range
        return grid[rows, np.clip(idx, 0, n - 1)]

    def ratio(num, den):
        # num / den with 0 where den == 0 (the "0/0 counts as 0" rule)
        safe = np.where(den > 0, den, 1)
        return np.where(den > 0, num / safe, 0)

    # the placeholder span of a point outside the knots may overflow or give NaN here;
    # those values are discarded below, so numpy need not warn about them
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        N = np.zeros((B, I, k + 1), dtype=x.dtype)
        N[:, :, 0] = inside  # order 0: the indicator of span j
        dN = None
        for r in range(1, k + 1):
            if deriv and r == k:
                dN = np.zeros((B, I, k + 1), dtype=x.dtype)
                for s in range(k + 1):
                    a = j - k + s
                    exists = (a >= 0) & (a <= n - 2 - k)
                    v = np.zeros((B, I), dtype=x.dtype)
                    if s >= 1:
                        v += ratio(N[:, :, s - 1], knot(a + k) - knot(a))
                    if s <= k - 1:
                        v -= ratio(N[:, :, s], knot(a + k + 1) - knot(a + 1))
                    dN[:, :, s] = np.where(exists, k * v, 0)
            new = np.zeros((B, I, k + 1), dtype=x.dtype)
            for s in range(r + 1):
                a = j - r + s
                exists = (a >= 0) & (a <= n - 2 - r)
                v = np.zeros((B, I), dtype=x.dtype)
                if s >= 1:  # left term, B[a, r-1] sits in slot s-1 of order r-1
                    v += ratio(x - knot(a), knot(a + r) - knot(a)) * N[:, :, s - 1]
                if s <= r - 1:  # right term, B[a+1, r-1] sits in slot s
                    v += ratio(knot(a + r + 1) - x, knot(a + r + 1) - knot(a + 1)) * N[:, :, s]
                new[:, :, s] = np.where(exists, v, 0)
            N = new
    N = np.where(inside[:, :, None], N, 0)
    if dN is not None:
        dN = np.where(inside[:, :, None], dN, 0)
    return span, N, dN


def _basis_index(span, k, K):
    """Basis indices a = span - k + s (B, I, k+1), clipped into 0..K-1, and ``live``
    (B, I, k+1): where the basis exists and x is inside the knots.

    Entries that are not live carry a zero basis value, but their terms are
    dropped rather than multiplied by 0 (``_live``): a NaN or inf in a
    coefficient, or in dy, then reaches only the samples whose bases touch it,
    as in the compiled kernels, which never visit those entries.
    """
    s = np.arange(k + 1)
    a = span[:, :, None] - k + s
    live = (span[:, :, None] >= 0) & (a >= 0) & (a < K)
    return np.clip(np.maximum(span, 0)[:, :, None] - k + s, 0, K - 1), live


def _live(live, term):
    """term (B, O) where live (B,), else 0 (not 0 * term: see ``_basis_index``)."""
    return np.where(live[:, None], term, 0)


# ---------------------------------------------------------------------------
# the layer: forward and backward
def spline_forward(y, x, grid, coef, scale_base, scale_sp, mask, k, base_fun):
    """y (B, O) = sum_i phi[i, o](x[b, i]); y is overwritten.

    x (B, I), grid (I, G+2k+1), coef (I, K, O), scale_base/scale_sp/mask (I, O).
    """
    B, I = x.shape
    K = coef.shape[1]
    span, N, _ = local_basis(x, grid, k)
    idx, live = _basis_index(span, k, K)
    bx = base_value(x, base_fun)
    y[...] = 0
    for i in range(I):
        # s[b, o] = sum_s N[b, i, s] * coef[i, idx[b, i, s], o]: k+1 gathered rows
        s_io = np.zeros((B, y.shape[1]), dtype=y.dtype)
        for s in range(k + 1):
            s_io += _live(live[:, i, s], N[:, i, s, None] * coef[i, idx[:, i, s], :])
        # outside the knots the edge is its base term alone (no scale_sp * 0)
        y += (mask[i] * scale_base[i]) * bx[:, i, None] + _live(span[:, i] >= 0, (mask[i] * scale_sp[i]) * s_io)
    return y


def spline_backward(dx, dcoef, dscale_base, dscale_sp, dy, x, grid, coef,
                    scale_base, scale_sp, mask, k, base_fun):
    """Vector-Jacobian products of spline_forward, added (+=) into the d* buffers.

    With g = dy (B, O):
        dcoef[i,m,o]      += sum_b g[b,o] * mask[i,o] * scale_sp[i,o] * B[m,k](x[b,i])
        dscale_base[i,o]  += sum_b g[b,o] * mask[i,o] * b(x[b,i])
        dscale_sp[i,o]    += sum_b g[b,o] * mask[i,o] * s[i,o](x[b,i])
        dx[b,i]           += sum_o g[b,o] * mask[i,o] * (scale_base[i,o] * b'(x[b,i])
                                                        + scale_sp[i,o] * s'[i,o](x[b,i]))
    """
    B, I = x.shape
    K = coef.shape[1]
    g = dy
    span, N, dN = local_basis(x, grid, k, deriv=True)
    idx, live = _basis_index(span, k, K)
    bx = base_value(x, base_fun)
    dbx = base_deriv(x, base_fun)
    for i in range(I):
        s_io = np.zeros_like(g)   # s[i, o](x[b, i])  (B, O)
        ds_io = np.zeros_like(g)  # s'[i, o](x[b, i]) (B, O)
        for s in range(k + 1):
            rows = coef[i, idx[:, i, s], :]
            s_io += _live(live[:, i, s], N[:, i, s, None] * rows)
            ds_io += _live(live[:, i, s], dN[:, i, s, None] * rows)
            # scatter-add g * B into the coefficient each sample touched
            np.add.at(dcoef[i], idx[:, i, s], _live(live[:, i, s], (mask[i] * scale_sp[i]) * N[:, i, s, None] * g))
        dscale_base[i] += mask[i] * (bx[:, i] @ g)
        # a sample outside the knots has s = 0 exactly and adds nothing (not g * 0)
        dscale_sp[i] += mask[i] * np.sum(_live(span[:, i] >= 0, g * s_io), axis=0)
        dx[:, i] += np.sum(g * ((mask[i] * scale_base[i]) * dbx[:, i, None]
                                + _live(span[:, i] >= 0, (mask[i] * scale_sp[i]) * ds_io)), axis=1)


# ===========================================================================
# Training ops (used by numkan.train): loss, optimiser step, regulariser moments
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
def edge_moments_forward(s1, s2, xs1, xs2, x, grid, coef, scale_base, scale_sp, mask, k, base_fun):
    """Per-edge batch sums of phi and phi^2, and per-input sums of x and x^2.

        s1[i,o] = sum_b phi[i,o](x[b,i])        s2[i,o] = sum_b phi[i,o](x[b,i])^2
        xs1[i]  = sum_b x[b,i]                  xs2[i]  = sum_b x[b,i]^2

    s1, s2 (I, O) and xs1, xs2 (I,) are float64 whatever the model's dtype and
    are overwritten. From them the regulariser gets batch standard deviations
    without a (B, I, O) array: var = (s2 - s1^2 / B) / (B - 1). Here phi is
    built one input at a time as a (B, O) temporary, exactly as in
    ``spline_forward``.
    """
    B, I = x.shape
    K = coef.shape[1]
    span, N, _ = local_basis(x, grid, k)
    idx, live = _basis_index(span, k, K)
    bx = base_value(x, base_fun)
    for i in range(I):
        s_io = np.zeros((B, coef.shape[2]), dtype=x.dtype)
        for s in range(k + 1):
            s_io += _live(live[:, i, s], N[:, i, s, None] * coef[i, idx[:, i, s], :])
        phi = ((mask[i] * scale_base[i]) * bx[:, i, None]
               + _live(span[:, i] >= 0, (mask[i] * scale_sp[i]) * s_io)).astype(np.float64)
        s1[i] = phi.sum(axis=0)
        s2[i] = (phi * phi).sum(axis=0)
    x64 = x.astype(np.float64)
    xs1[...] = x64.sum(axis=0)
    xs2[...] = (x64 * x64).sum(axis=0)


def edge_moments_backward(dx, dcoef, dscale_base, dscale_sp, ds1, ds2, dxs1, dxs2, x, grid,
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
    B, I = x.shape
    K = coef.shape[1]
    span, N, dN = local_basis(x, grid, k, deriv=True)
    idx, live = _basis_index(span, k, K)
    bx = base_value(x, base_fun)
    dbx = base_deriv(x, base_fun)
    for i in range(I):
        s_io = np.zeros((B, coef.shape[2]), dtype=x.dtype)
        ds_io = np.zeros_like(s_io)
        for s in range(k + 1):
            rows = coef[i, idx[:, i, s], :]
            s_io += _live(live[:, i, s], N[:, i, s, None] * rows)
            ds_io += _live(live[:, i, s], dN[:, i, s, None] * rows)
        phi = (mask[i] * scale_base[i]) * bx[:, i, None] + _live(span[:, i] >= 0, (mask[i] * scale_sp[i]) * s_io)
        g = (ds1[i] + 2.0 * ds2[i] * phi).astype(x.dtype)  # (B, O): dL/dphi for this input
        for s in range(k + 1):
            np.add.at(dcoef[i], idx[:, i, s], _live(live[:, i, s], (mask[i] * scale_sp[i]) * N[:, i, s, None] * g))
        dscale_base[i] += mask[i] * (bx[:, i] @ g)
        # a sample outside the knots has s = 0 exactly and adds nothing (not g * 0)
        dscale_sp[i] += mask[i] * np.sum(_live(span[:, i] >= 0, g * s_io), axis=0)
        dx[:, i] += (np.sum(g * ((mask[i] * scale_base[i]) * dbx[:, i, None]
                                 + _live(span[:, i] >= 0, (mask[i] * scale_sp[i]) * ds_io)), axis=1)
                     + dxs1[i] + 2.0 * x[:, i] * dxs2[i]).astype(dx.dtype)
