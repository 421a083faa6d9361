"""The sparsity regulariser of KAN_MATH (pykan's ``edge_forward_spline_n``), with its gradient.

For one layer with inputs x (B, I) and edge values phi[b,i,o] = phi[i,o](x[b,i]):

    A[i,o]  = std_b(phi[:, i, o]) / (std_b(x[:, i]) + 0.1)          (unbiased std, n-1)
    l1      = sum_{i,o} A
    p_row   = A[i,o] / (sum_i A[i,o] + 1)       (each output o normalised over its inputs)
    p_col   = A[i,o] / (sum_o A[i,o] + 1)       (each input i normalised over its outputs)
    entropy = -mean_o sum_i p_row log2(p_row + 1e-4) - mean_i sum_o p_col log2(p_col + 1e-4)
    reg     = sum_layers (lamb_l1 * l1 + lamb_entropy * entropy)
              + lamb_coef * sum_{i,o} mean_m |coef| + lamb_coefdiff * sum_{i,o} mean_m |coef[m+1] - coef[m]|

(KAN_MATH writes A as (O, I); here it is stored (I, O) like every other edge array.)

The standard deviations come from batch sums that the backend op
``edge_moments_forward`` accumulates without a (B, I, O) array:

    var = (S2 - S1^2 / B) / (B - 1),  S1 = sum_b v, S2 = sum_b v^2.

Everything after those sums is (I, O)-sized host arithmetic, and each forward
rule here has its backward rule right below it. The chain back to the
parameters and to x (the regulariser depends on every layer's input, so on the
earlier layers too) is ``edge_moments_backward``.

Where a standard deviation is 0 (a pruned edge, a constant input) its gradient
is taken as 0, the subgradient that keeps pruned edges pruned.
"""
import numpy as np

from . import _validate as v

EPS_STD = 0.1      # added to std(x) in A's denominator
EPS_LOG = 1e-4     # inside log2 in the entropy
_LN2 = np.log(2.0)


# ---------------------------------------------------------------------------
# std from batch sums
def std_forward(s1, s2, B):
    """Unbiased standard deviation from sums s1 = sum v, s2 = sum v^2 over B samples (B >= 2)."""
    var = (s2 - s1 * s1 / B) / (B - 1)
    return np.sqrt(np.maximum(var, 0.0))


def std_backward(dstd, std, s1, B):
    """(ds1, ds2) from dstd: dstd/dvar = 1 / (2 std), dvar/ds2 = 1/(B-1), dvar/ds1 = -2 s1 / (B (B-1))."""
    dvar = np.where(std > 0, dstd / (2.0 * np.where(std > 0, std, 1.0)), 0.0)
    return dvar * (-2.0 * s1 / (B * (B - 1))), dvar / (B - 1)


# ---------------------------------------------------------------------------
# edge scales A
def edge_scales_forward(s1, s2, xs1, xs2, B):
    """A (I, O) = std(phi) / (std(x) + 0.1) from the moments of ``edge_moments_forward``."""
    return std_forward(s1, s2, B) / (std_forward(xs1, xs2, B)[:, None] + EPS_STD)


def edge_scales_backward(dA, s1, s2, xs1, xs2, B):
    """(ds1, ds2, dxs1, dxs2) from dA (I, O)."""
    std_phi = std_forward(s1, s2, B)
    std_x = std_forward(xs1, xs2, B)
    den = std_x[:, None] + EPS_STD
    ds1, ds2 = std_backward(dA / den, std_phi, s1, B)
    dstd_x = -np.sum(dA * std_phi / (den * den), axis=1)  # dA/dstd_x = -std_phi / den^2
    dxs1, dxs2 = std_backward(dstd_x, std_x, xs1, B)
    return ds1, ds2, dxs1, dxs2


# ---------------------------------------------------------------------------
# l1 + entropy of A
def _plogp(p):
    """p log2(p + 1e-4) and its derivative log2(p + 1e-4) + p / ((p + 1e-4) ln 2)."""
    q = p + EPS_LOG
    return p * np.log2(q), np.log2(q) + p / (q * _LN2)


def sparsity_forward(A, lamb_l1, lamb_entropy):
    """lamb_l1 * sum A + lamb_entropy * (row entropy + column entropy) of one layer's A (I, O)."""
    p_row = A / (A.sum(axis=0, keepdims=True) + 1)   # over inputs i, per output o
    p_col = A / (A.sum(axis=1, keepdims=True) + 1)   # over outputs o, per input i
    ent_row = -np.mean(np.sum(_plogp(p_row)[0], axis=0))
    ent_col = -np.mean(np.sum(_plogp(p_col)[0], axis=1))
    return float(lamb_l1 * A.sum() + lamb_entropy * (ent_row + ent_col))


def sparsity_backward(A, lamb_l1, lamb_entropy):
    """dA (I, O) of ``sparsity_forward``.

    With p = A / (S + 1), S the sum along the normalised axis, and an upstream
    gp = dE/dp: dA = gp / (S + 1) - sum_axis(gp * A) / (S + 1)^2.
    """
    I, O = A.shape
    dA = np.full_like(A, lamb_l1, dtype=np.float64)
    for axis, n_mean in ((0, O), (1, I)):
        S1 = A.sum(axis=axis, keepdims=True) + 1
        gp = -lamb_entropy / n_mean * _plogp(A / S1)[1]
        dA += gp / S1 - np.sum(gp * A, axis=axis, keepdims=True) / (S1 * S1)
    return dA


# ---------------------------------------------------------------------------
# coefficient terms
def coef_forward(coef, lamb_coef, lamb_coefdiff):
    """lamb_coef * sum_{i,o} mean_m |coef| + lamb_coefdiff * sum_{i,o} mean_m |diff_m coef|; coef (I, K, O)."""
    val = 0.0
    if lamb_coef:
        val += lamb_coef * np.sum(np.mean(np.abs(coef), axis=1))
    if lamb_coefdiff:
        val += lamb_coefdiff * np.sum(np.mean(np.abs(np.diff(coef, axis=1)), axis=1))
    return float(val)


def coef_backward(coef, lamb_coef, lamb_coefdiff):
    """dcoef (I, K, O) of ``coef_forward`` (sign(0) = 0 as the subgradient)."""
    K = coef.shape[1]
    dcoef = np.zeros(coef.shape, dtype=np.float64)
    if lamb_coef:
        dcoef += lamb_coef / K * np.sign(coef)
    if lamb_coefdiff:
        d = lamb_coefdiff / (K - 1) * np.sign(np.diff(coef, axis=1))  # (I, K-1, O)
        dcoef[:, 1:] += d
        dcoef[:, :-1] -= d
    return dcoef


# ---------------------------------------------------------------------------
# one layer on the backend
class LayerReg:
    """The regulariser of one layer on its inputs x (B, I), forward then backward.

    ``forward`` calls the backend's ``edge_moments_forward`` and returns the
    layer's contribution; ``backward`` adds the gradient of
    ``lamb * contribution`` into the layer's gradient buffers and into dx.
    """

    def __init__(self, layer, lamb_l1, lamb_entropy, lamb_coef, lamb_coefdiff):
        self.layer = layer
        self.w = (lamb_l1, lamb_entropy, lamb_coef, lamb_coefdiff)

    def forward(self, x):
        L, be = self.layer, self.layer.backend
        I, O = L.in_dim, L.out_dim
        m = [be.zeros((I, O), np.float64), be.zeros((I, O), np.float64),
             be.zeros((I,), np.float64), be.zeros((I,), np.float64)]
        be.edge_moments_forward(*m, x, L.knots, L.coef, L.scale_base, L.scale_sp, L.mask, L.k,
                                L.base_fun)
        self.x, self.B = x, x.shape[0]
        self.moments = [be.to_host(a) for a in m]
        self.A = edge_scales_forward(*self.moments, self.B)
        lamb_l1, lamb_entropy, lamb_coef, lamb_coefdiff = self.w
        value = sparsity_forward(self.A, lamb_l1, lamb_entropy)
        if lamb_coef or lamb_coefdiff:
            value += coef_forward(be.to_host(L.coef), lamb_coef, lamb_coefdiff)
        return value

    def backward(self, dx, lamb):
        """Add d(lamb * value) into dx (B, I) and the layer's dcoef, dscale_base, dscale_sp."""
        L, be = self.layer, self.layer.backend
        lamb_l1, lamb_entropy, lamb_coef, lamb_coefdiff = self.w
        dA = lamb * sparsity_backward(self.A, lamb_l1, lamb_entropy)
        grads = edge_scales_backward(dA, *self.moments, self.B)
        be.edge_moments_backward(dx, L.dcoef, L.dscale_base, L.dscale_sp,
                                 *[be.asarray(g, np.float64) for g in grads], self.x,
                                 L.knots, L.coef, L.scale_base, L.scale_sp, L.mask, L.k, L.base_fun)
        if lamb_coef or lamb_coefdiff:
            # host round trip: works on every backend without another op, and runs
            # only when the (default-off) coefficient terms are switched on
            d = lamb * coef_backward(be.to_host(L.coef), lamb_coef, lamb_coefdiff)
            L.dcoef = be.asarray(be.to_host(L.dcoef) + d, L.dtype)


def check_weights(lamb, lamb_l1, lamb_entropy, lamb_coef, lamb_coefdiff):
    """Validated regularisation weights (all finite and >= 0)."""
    return tuple(v.check_float(n, w, minimum=0) for n, w in (
        ("lamb", lamb), ("lamb_l1", lamb_l1), ("lamb_entropy", lamb_entropy),
        ("lamb_coef", lamb_coef), ("lamb_coefdiff", lamb_coefdiff)))


def regularization(model, x, lamb_l1=1.0, lamb_entropy=2.0, lamb_coef=0.0, lamb_coefdiff=0.0):
    """The regulariser ``reg`` of KAN_MATH for ``model`` on inputs x (B, n_in), B >= 2.

    This is the quantity ``fit`` multiplies by ``lamb``; the model is not changed.
    """
    _, lamb_l1, lamb_entropy, lamb_coef, lamb_coefdiff = check_weights(
        0.0, lamb_l1, lamb_entropy, lamb_coef, lamb_coefdiff)
    xb = model.backend.asarray(v.check_array("x", x, model.width[0], model.dtype), model.dtype)
    if xb.shape[0] < 2:
        raise ValueError(f"x must have at least 2 rows (the regulariser uses batch standard "
                         f"deviations), got shape {tuple(xb.shape)}")
    total = 0.0
    for layer in model.layers:
        total += LayerReg(layer, lamb_l1, lamb_entropy, lamb_coef, lamb_coefdiff).forward(xb)
        xb = layer.forward(xb, keep=False)
    return total
