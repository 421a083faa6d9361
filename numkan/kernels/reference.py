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
"""
import numpy as np

from ._scalar import BASE_CODES

name = "numpy"


# ---------------------------------------------------------------------------
# storage: the reference keeps everything in host ndarrays
def asarray(a, dtype):
    """Host or device array -> this backend's storage (a C-contiguous ndarray of ``dtype``).

    A device array (numba's, or CuPy's with ``.get()``) is copied to the host.
    """
    if not isinstance(a, np.ndarray):
        if hasattr(a, "copy_to_host"):
            a = a.copy_to_host()
        elif hasattr(a, "__cuda_array_interface__"):
            a = a.get() if hasattr(a, "get") else _device_to_host(a)
    return np.ascontiguousarray(a, dtype=dtype)


def _device_to_host(a):
    from numba import cuda  # only reached with a device array, so numba-cuda is there
    return cuda.as_cuda_array(a).copy_to_host()


def to_host(a):
    """This backend's storage -> host ndarray (a copy)."""
    return np.array(a)


def zeros(shape, dtype):
    return np.zeros(shape, dtype=dtype)


def fill(a, value):
    a[...] = value


def copy_into(dst, src):
    """Copy the backend array ``src`` into the existing ``dst`` (same shape and dtype), in place."""
    if dst.shape != src.shape or dst.dtype != src.dtype:
        raise ValueError(f"copy_into needs arrays of one shape and dtype, got {dst.shape} {dst.dtype} "
                         f"and {src.shape} {src.dtype}")
    dst[...] = src


def all_finite(*arrays):
    """True when no entry of any of ``arrays`` is NaN or inf (the boundary check for backend arrays)."""
    return all(bool(np.isfinite(a).all()) for a in arrays)


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
    return np.zeros_like(x)


def base_deriv(x, base_fun):
    """b'(x) elementwise: sigmoid(x) * (1 + x * (1 - sigmoid(x))), 1, or 0."""
    if base_fun == "silu":
        e = np.exp(-np.abs(x))
        sig = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype)
        return sig * (1 + x * (1 - sig))
    if base_fun == "identity":
        return np.ones_like(x)
    return np.zeros_like(x)


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
    0..n-2-r (n knots) does not exist at order r.
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
    return span, N, dN


def _basis_index(span, k, K):
    """Basis indices a = span - k + s (B, I, k+1), clipped into 0..K-1.

    Clipped entries always carry a zero basis value, so they add nothing.
    """
    s = np.arange(k + 1)
    return np.clip(np.maximum(span, 0)[:, :, None] - k + s, 0, K - 1)


# ---------------------------------------------------------------------------
# the layer: forward and backward
def spline_forward(y, x, grid, coef, scale_base, scale_sp, mask, k, base_fun):
    """y (B, O) = sum_i phi[i, o](x[b, i]); y is overwritten.

    x (B, I), grid (I, G+2k+1), coef (I, K, O), scale_base/scale_sp/mask (I, O).
    """
    B, I = x.shape
    K = coef.shape[1]
    span, N, _ = local_basis(x, grid, k)
    idx = _basis_index(span, k, K)
    bx = base_value(x, base_fun)
    y[...] = 0
    for i in range(I):
        # s[b, o] = sum_s N[b, i, s] * coef[i, idx[b, i, s], o]: k+1 gathered rows
        s_io = np.zeros((B, y.shape[1]), dtype=y.dtype)
        for s in range(k + 1):
            s_io += N[:, i, s, None] * coef[i, idx[:, i, s], :]
        y += mask[i] * (scale_base[i] * bx[:, i, None] + scale_sp[i] * s_io)
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
    idx = _basis_index(span, k, K)
    bx = base_value(x, base_fun)
    dbx = base_deriv(x, base_fun)
    for i in range(I):
        s_io = np.zeros_like(g)   # s[i, o](x[b, i])  (B, O)
        ds_io = np.zeros_like(g)  # s'[i, o](x[b, i]) (B, O)
        for s in range(k + 1):
            rows = coef[i, idx[:, i, s], :]
            s_io += N[:, i, s, None] * rows
            ds_io += dN[:, i, s, None] * rows
            # scatter-add g * B into the coefficient each sample touched
            np.add.at(dcoef[i], idx[:, i, s], (mask[i] * scale_sp[i]) * N[:, i, s, None] * g)
        dscale_base[i] += mask[i] * (bx[:, i] @ g)
        dscale_sp[i] += mask[i] * np.sum(g * s_io, axis=0)
        dx[:, i] += np.sum(g * mask[i] * (scale_base[i] * dbx[:, i, None] + scale_sp[i] * ds_io), axis=1)


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
    idx = _basis_index(span, k, K)
    bx = base_value(x, base_fun)
    for i in range(I):
        s_io = np.zeros((B, coef.shape[2]), dtype=x.dtype)
        for s in range(k + 1):
            s_io += N[:, i, s, None] * coef[i, idx[:, i, s], :]
        phi = (mask[i] * (scale_base[i] * bx[:, i, None] + scale_sp[i] * s_io)).astype(np.float64)
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
    idx = _basis_index(span, k, K)
    bx = base_value(x, base_fun)
    dbx = base_deriv(x, base_fun)
    for i in range(I):
        s_io = np.zeros((B, coef.shape[2]), dtype=x.dtype)
        ds_io = np.zeros_like(s_io)
        for s in range(k + 1):
            rows = coef[i, idx[:, i, s], :]
            s_io += N[:, i, s, None] * rows
            ds_io += dN[:, i, s, None] * rows
        phi = mask[i] * (scale_base[i] * bx[:, i, None] + scale_sp[i] * s_io)
        g = (ds1[i] + 2.0 * ds2[i] * phi).astype(x.dtype)  # (B, O): dL/dphi for this input
        for s in range(k + 1):
            np.add.at(dcoef[i], idx[:, i, s], (mask[i] * scale_sp[i]) * N[:, i, s, None] * g)
        dscale_base[i] += mask[i] * (bx[:, i] @ g)
        dscale_sp[i] += mask[i] * np.sum(g * s_io, axis=0)
        dx[:, i] += (np.sum(g * mask[i] * (scale_base[i] * dbx[:, i, None] + scale_sp[i] * ds_io), axis=1)
                     + dxs1[i] + 2.0 * x[:, i] * dxs2[i]).astype(dx.dtype)
