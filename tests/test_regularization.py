"""The sparsity regulariser: value against its definition, gradients against finite differences.

- the moments op (``edge_moments_forward``) against a direct (B, I, O)
  computation, and the compiled op against the reference;
- the regulariser's value against KAN_MATH's formula written with numpy.std
  on the full (B, I, O) edge values (test-only: the library never builds it);
- every parameter's gradient of ``reg`` (l1, entropy, coefficient terms, over
  a multi-layer model, so the gradient through each layer's input x is
  exercised) against central differences, for hypothesis-drawn models;
- ``edge_moments_backward``'s dx against differences in x directly.

Orders k >= 2 only: the regulariser is then C^1 in x and in the parameters,
so central differences with a 1e-6 step are accurate to about 1e-8. The differences
are taken of ``direct_reg`` (two-pass standard deviations): the library's value,
from batch sums, loses digits to cancellation when an edge's values barely vary,
which a 1e-6 step would amplify.
"""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import numkan as nk
from numkan import regularization as R
from numkan.kernels import cpu, reference
from numkan.train import Objective

from conftest import HOST_DEVICES, assert_close

STEP = 1e-6


@st.composite
def cases(draw):
    depth = draw(st.integers(1, 3))
    return dict(width=draw(st.lists(st.integers(1, 3), min_size=depth + 1, max_size=depth + 1)),
                G=draw(st.integers(2, 6)), k=draw(st.integers(2, 3)),
                base_fun=draw(st.sampled_from(["silu", "identity", "zero"])),
                batch=draw(st.integers(3, 12)), seed=draw(st.integers(0, 2**31 - 1)),
                weights=draw(st.sampled_from([(1.0, 2.0, 0.0, 0.0), (0.5, 0.0, 0.0, 0.0),
                                              (0.0, 1.0, 0.0, 0.0), (1.0, 2.0, 0.3, 0.7)])))


def build(device, width, G, k, base_fun, batch, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    model = nk.KAN(width, grid=G, k=k, seed=seed % 1000, base_fun=base_fun, device=device,
                   dtype=dtype)
    be = model.backend
    for L in model.layers:
        L.coef = be.asarray(rng.normal(0.0, 0.5, L.coef.shape), dtype)
        L.scale_base = be.asarray(rng.uniform(-1.5, 1.5, L.scale_base.shape), dtype)
        L.scale_sp = be.asarray(rng.uniform(0.5, 1.5, L.scale_sp.shape), dtype)
    x = rng.uniform(-1.2, 1.2, (batch, width[0]))
    return model, x


def direct_reg(model, x, lamb_l1, lamb_entropy, lamb_coef, lamb_coefdiff):
    """KAN_MATH's regulariser with the full (B, I, O) edge values (test only)."""
    total = 0.0
    h = x
    for L in model.layers:
        phi = edge_values(L, h)                                     # (B, I, O)
        A = phi.std(axis=0, ddof=1) / (h.std(axis=0, ddof=1)[:, None] + 0.1)   # (I, O)
        p_row = A / (A.sum(axis=0, keepdims=True) + 1)
        p_col = A / (A.sum(axis=1, keepdims=True) + 1)
        ent = (-np.mean(np.sum(p_row * np.log2(p_row + 1e-4), axis=0))
               - np.mean(np.sum(p_col * np.log2(p_col + 1e-4), axis=1)))
        coef = np.asarray(L.coef)
        total += (lamb_l1 * A.sum() + lamb_entropy * ent
                  + lamb_coef * np.sum(np.mean(np.abs(coef), axis=1))
                  + lamb_coefdiff * np.sum(np.mean(np.abs(np.diff(coef, axis=1)), axis=1)))
        h = np.asarray(L.forward(np.asarray(h, dtype=L.dtype), keep=False))
    return total


def edge_values(L, h):
    """phi[b, i, o] for one layer: one input at a time through the reference kernel."""
    B, I = h.shape
    phi = np.empty((B, I, L.out_dim))
    for i in range(I):
        y = np.zeros((B, L.out_dim))
        reference.spline_forward(y, h[:, i:i + 1], np.asarray(L.knots)[i:i + 1],
                                 np.asarray(L.coef)[i:i + 1], np.asarray(L.scale_base)[i:i + 1],
                                 np.asarray(L.scale_sp)[i:i + 1], np.asarray(L.mask)[i:i + 1],
                                 L.k, L.base_fun)
        phi[:, i] = y
    return phi


# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", HOST_DEVICES)
@given(case=cases())
def test_value_matches_definition(device, case):
    weights = case.pop("weights")
    model, x = build(device, **case)
    got = R.regularization(model, x, *weights)
    want = direct_reg(model, x, *weights)
    assert abs(got - want) <= 1e-10 * max(1.0, abs(want)), (got, want)


@pytest.mark.parametrize("device", HOST_DEVICES)
@settings(max_examples=12)
@given(case=cases())
# the last layer's coef gradient is ~1e-6 everywhere while reg ~ 17
@example(case=dict(width=[3, 2, 1, 1], G=6, k=3, base_fun="identity", batch=6, seed=0,
                   weights=(1.0, 2.0, 0.0, 0.0)))
def test_gradient_matches_finite_differences(device, case):
    """d(reg)/d(every parameter), through every layer's input, against central differences."""
    case = dict(case)  # the explicit example's dict is shared by both devices
    weights = case.pop("weights")
    model, x = build(device, **case)
    zero_loss = lambda pred, target: (0.0, np.zeros_like(pred))
    obj = Objective(model, x, np.zeros((x.shape[0], model.width[-1])), 1.0, weights, zero_loss)
    _, reg = obj()
    grads = {n: np.array(model.backend.to_host(g)) for n, g in model.grads.items()}
    assert abs(reg - R.regularization(model, x, *weights)) < 1e-12 * max(1, abs(reg))
    for name, p in model.params.items():
        l, kind = int(name.split(".")[1]), name.split(".")[2]
        L = model.layers[l]
        host = np.array(model.backend.to_host(p))
        fd = np.empty_like(host)
        for idx in np.ndindex(host.shape):
            vals = []
            for sgn in (1, -1):
                q = host.copy()
                q[idx] += sgn * STEP
                setattr(L, kind, model.backend.asarray(q, L.dtype))
                vals.append(direct_reg(model, x, *weights))
            setattr(L, kind, model.backend.asarray(host, L.dtype))
            fd[idx] = (vals[0] - vals[1]) / (2 * STEP)
        # near-zero entries are compared on the scale of the gradient and of reg itself: a
        # difference of reg carries rounding ~ eps * |reg| / STEP (1e-9 at reg ~ 10), which is
        # more than rtol of a gradient whose entries are all ~1e-6
        scale = max(np.abs(fd).max(), np.abs(grads[name]).max(), abs(reg), 1e-3)
        assert_close(name, grads[name], fd, rtol=1e-5, floor=1e-3 * scale)


@pytest.mark.parametrize("backend", [reference, cpu], ids=["numpy", "cpu"])
@given(case=cases())
def test_moments_backward_dx_matches_finite_differences(backend, case):
    """dx of F(x) = <ds1, s1> + <ds2, s2> + <dxs1, xs1> + <dxs2, xs2> for one layer."""
    case.pop("weights")
    model, x = build("numpy", **case)
    L = model.layers[0]
    rng = np.random.default_rng(case["seed"] + 1)
    I, O = L.in_dim, L.out_dim
    up = [rng.normal(size=(I, O)), rng.normal(size=(I, O)), rng.normal(size=I), rng.normal(size=I)]
    args = (L.knots, L.coef, L.scale_base, L.scale_sp, L.mask, L.k, L.base_fun)

    def F(xx):
        m = [np.zeros((I, O)), np.zeros((I, O)), np.zeros(I), np.zeros(I)]
        backend.edge_moments_forward(*m, xx, *args)
        return sum(np.sum(a * b) for a, b in zip(up, m))

    dx = np.zeros_like(x)
    grads = [np.zeros_like(L.coef), np.zeros_like(L.scale_base), np.zeros_like(L.scale_sp)]
    backend.edge_moments_backward(dx, *grads, *up, x, *args)
    fd = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += STEP
        xm[idx] -= STEP
        fd[idx] = (F(xp) - F(xm)) / (2 * STEP)
    assert_close("dx", dx, fd, rtol=1e-4, floor=1e-3 * max(np.abs(fd).max(), 1.0))


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-4)])
@given(case=cases())
def test_cpu_moments_match_reference(dtype, rtol, case):
    case.pop("weights")
    model, x = build("numpy", **case, dtype=dtype)
    x = x.astype(dtype)
    L = model.layers[0]
    rng = np.random.default_rng(case["seed"] + 2)
    I, O = L.in_dim, L.out_dim
    L.mask = (rng.random((I, O)) > 0.3).astype(dtype)
    args = (x, L.knots, L.coef, L.scale_base, L.scale_sp, L.mask, L.k, L.base_fun)
    up = [rng.normal(size=(I, O)), rng.normal(size=(I, O)), rng.normal(size=I), rng.normal(size=I)]
    out = {}
    for be in (reference, cpu):
        m = [np.zeros((I, O)), np.zeros((I, O)), np.zeros(I), np.zeros(I)]
        be.edge_moments_forward(*m, *args)
        g = [np.zeros_like(x), np.zeros_like(L.coef), np.zeros_like(L.scale_base),
             np.zeros_like(L.scale_sp)]
        be.edge_moments_backward(*g, *up, *args)
        out[be.name] = m + g
    names = ["s1", "s2", "xs1", "xs2", "dx", "dcoef", "dscale_base", "dscale_sp"]
    for n, a, b in zip(names, out["cpu"], out["numpy"]):
        assert_close(n, a, b, rtol=rtol, floor=max(np.abs(b).max(), 1.0))


def test_moments_forward_matches_direct_sums(host_device):
    model, x = build(host_device, [3, 4], 5, 3, "silu", 50, 7)
    L = model.layers[0]
    phi = edge_values(L, x)
    m = [np.zeros((3, 4)), np.zeros((3, 4)), np.zeros(3), np.zeros(3)]
    model.backend.edge_moments_forward(*m, x, L.knots, L.coef, L.scale_base, L.scale_sp, L.mask,
                                       L.k, L.base_fun)
    for got, want in zip(m, [phi.sum(0), (phi ** 2).sum(0), x.sum(0), (x ** 2).sum(0)]):
        assert_close("moments", got, want, rtol=1e-12, floor=1.0)


def test_sparsity_backward_matches_finite_differences():
    rng = np.random.default_rng(3)
    A = rng.uniform(0.01, 2.0, (4, 3))
    dA = R.sparsity_backward(A, 0.7, 2.0)
    fd = np.empty_like(A)
    for idx in np.ndindex(A.shape):
        ap, am = A.copy(), A.copy()
        ap[idx] += STEP
        am[idx] -= STEP
        fd[idx] = (R.sparsity_forward(ap, 0.7, 2.0) - R.sparsity_forward(am, 0.7, 2.0)) / (2 * STEP)
    assert_close("dA", dA, fd, rtol=1e-6, floor=1e-3)


def test_pruned_edge_gets_zero_gradient_not_nan(host_device):
    """A masked edge has std 0: its regulariser gradient is 0 (no NaN reaches the model)."""
    model, x = build(host_device, [2, 3, 1], 4, 3, "silu", 10, 11)
    L = model.layers[0]
    mask = np.ones((2, 3))
    mask[0, 1] = 0
    L.mask = model.backend.asarray(mask, L.dtype)
    obj = Objective(model, x, np.zeros((10, 1)), 1.0, (1.0, 2.0, 0.0, 0.0),
                    lambda p, t: (0.0, np.zeros_like(p)))
    obj()
    for name, g in model.grads.items():
        assert np.all(np.isfinite(model.backend.to_host(g))), name
    assert np.all(model.backend.to_host(L.dscale_sp)[0, 1] == 0)


def test_regularization_validates_input():
    model = nk.KAN([2, 1], grid=3)
    with pytest.raises(ValueError, match="at least 2 rows"):
        R.regularization(model, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="lamb_l1"):
        R.regularization(model, np.zeros((4, 2)), lamb_l1=-1.0)
