"""Input derivatives (numkan.pde): against finite differences, compiled against the
reference, and short PDE fits.

For random float64 models (depth 1-3, widths 1-5, G 1-6, k 2-5, random
non-uniform knots per input, random coefficients and scales, a mask with
zeros, every base_fun):
- du and d2u from ``input_derivatives`` match central differences of model(x);
- the parameter gradient of a second-order loss (a linear residual with
  per-point coefficients, plus weighted boundary points) matches central
  differences of that loss;
each evaluation is rejected when a perturbation moves some layer input into
another knot span (the functions are piecewise smooth only).
"""
import numpy as np
import pytest
from hypothesis import given, reject, settings, strategies as st

import numkan as nk
from numkan import pde
from numkan.kernels import cpu_pde, reference

from conftest import HOST_DEVICES, assert_close, worst
from test_layer_gradients import random_knots

# first derivative: 6-point central stencil (error O(h^6)); second: 7-point
D1 = (np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0]), np.array([-1.0, 9.0, -45.0, 45.0, -9.0, 1.0]) / 60.0)
D2 = (np.array([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]),
      np.array([2.0, -27.0, 270.0, -490.0, 270.0, -27.0, 2.0]) / 180.0)
X_STEP1, X_STEP2, P_STEP = 1e-4, 2e-4, 2e-6
RTOL = 1e-5
FLOOR = 1e-4


@st.composite
def random_models(draw, max_width=5, max_grid=6):
    depth = draw(st.integers(1, 3))
    width = draw(st.lists(st.integers(1, max_width), min_size=depth + 1, max_size=depth + 1))
    return dict(width=width, G=draw(st.integers(1, max_grid)), k=draw(st.integers(2, 5)),
                base_fun=draw(st.sampled_from(["silu", "identity", "zero"])),
                batch=draw(st.integers(1, 4)), seed=draw(st.integers(0, 2**32 - 1)))


def build(device, width, G, k, base_fun, batch, seed):
    """A float64 model with random knots (away from the inputs) and parameters, and inputs x."""
    rng = np.random.default_rng(seed)
    model = nk.KAN(width, grid=G, k=k, seed=seed % 1000, base_fun=base_fun, device=device)
    x = rng.uniform(-2.0, 2.0, (batch, width[0]))
    h = x
    for layer in model.layers:
        for i in range(layer.in_dim):
            layer.knots[i] = random_knots(rng, h[:, i], G, k)
        layer.coef[...] = rng.normal(0.0, 0.5, layer.coef.shape)
        layer.scale_base[...] = rng.uniform(-1.5, 1.5, layer.scale_base.shape)
        layer.scale_sp[...] = rng.uniform(-1.5, 1.5, layer.scale_sp.shape)
        layer.mask[...] = rng.random(layer.mask.shape) > 0.2
        h = model.backend.to_host(layer.forward(model.backend.asarray(h, model.dtype), keep=False))
    return model, x, rng


def spans(model, x):
    """Every layer's knot spans at the points x: what must not change along a difference."""
    out, h = [], x
    for layer in model.layers:
        out.append(reference.find_span(h, np.asarray(layer.knots)))
        h = model.backend.to_host(layer.forward(model.backend.asarray(h, model.dtype), keep=False))
    return out


def smooth_eval(model, x, ref_spans, rows):
    """model(x), rejecting the example when a row's spans differ from those of its centre row."""
    for s, r in zip(spans(model, x), ref_spans):
        if not np.array_equal(s, r[rows]):
            reject()
    return model(x)


@pytest.mark.parametrize("device", HOST_DEVICES)
@settings(max_examples=15)
@given(case=random_models())
def test_input_derivatives_match_finite_differences(device, case):
    model, x, _ = build(device, **case)
    u, du, d2u = pde.input_derivatives(model, x)
    B, D = x.shape
    np.testing.assert_allclose(u, model(x), rtol=1e-13, atol=1e-13)  # u is the forward pass
    centre = spans(model, x)
    for (stencil, weights), step, order, analytic in ((D1, X_STEP1, 1, du), (D2, X_STEP2, 2, d2u)):
        pts = np.repeat(x[:, None, None, :], D, axis=1).repeat(len(stencil), axis=2)   # (B, D, S, D)
        for d in range(D):
            pts[:, d, :, d] += stencil * step
        rows = np.repeat(np.arange(B), D * len(stencil))
        y = smooth_eval(model, pts.reshape(-1, D), centre, rows).reshape(B, D, len(stencil), -1)
        numeric = np.einsum("bdso,s->bod", y, weights) / step ** order                 # (B, O, D)
        scale = max(float(np.max(np.abs(numeric))), float(np.max(np.abs(u))), 1.0)
        err, idx, a, e = worst(analytic, numeric, FLOOR * scale)
        assert err <= RTOL * 10 ** (order - 1), (f"{device} {case}: d^{order}u/dx^{order}{list(idx)}: "
                                                 f"jet {a!r}, finite difference {e!r}, error {err:.3g}")


def _loss(model, res, x, xb, ub, wb):
    """The objective fit_pde minimises, evaluated from input_derivatives and model(xb)."""
    u, du, d2u = pde.input_derivatives(model, x)
    return res(x, u, du, d2u)[0] + float(np.mean(wb * (model(xb) - ub) ** 2))


@pytest.mark.parametrize("device", HOST_DEVICES)
@settings(max_examples=10)
@given(case=random_models(max_width=4, max_grid=5))
def test_parameter_gradient_of_a_second_order_loss_matches_finite_differences(device, case):
    model, x, rng = build(device, **case)
    B, D = x.shape
    O = model.width[-1]
    # per-point coefficients of every kind, and weighted boundary points (a subset of x,
    # so that they too are away from the knots)
    res = pde.linear_residual(a=rng.normal(size=(B, D)), b=rng.normal(size=(B, D)),
                              c=rng.normal(size=B), f=rng.normal(size=(B, O)), weight=0.7)
    xb, ub = x[: max(1, B // 2)], rng.normal(size=(max(1, B // 2), O))
    wb = rng.uniform(0.5, 2.0, (xb.shape[0], 1))
    obj = pde.PDEObjective(model, x, res, xb, ub, wb)
    f, _ = obj()
    assert abs(f - _loss(model, res, x, xb, ub, wb)) <= 1e-12 * max(1.0, abs(f))
    grads = {n: np.array(g) for n, g in model.grads.items()}
    centre = spans(model, x)
    stencil, weights = D1
    for name, p in model.params.items():
        # at most 12 entries per array, drawn at random: the cost stays bounded at any size
        flat = [np.unravel_index(j, p.shape) for j in
                rng.choice(p.size, min(p.size, 12), replace=False)]
        numeric = np.empty(len(flat))
        for n, idx in enumerate(flat):
            old = p[idx]
            vals = []
            for m in stencil:
                p[idx] = old + m * P_STEP
                if any(not np.array_equal(s, r) for s, r in zip(spans(model, x), centre)):
                    p[idx] = old
                    reject()
                vals.append(_loss(model, res, x, xb, ub, wb))
            p[idx] = old
            numeric[n] = np.dot(weights, vals) / P_STEP
        analytic = np.array([grads[name][idx] for idx in flat])
        scale = max(float(np.max(np.abs(numeric))), abs(f), 1e-3)
        err, i, a, e = worst(analytic, numeric, 1e-3 * scale)
        assert err <= RTOL, (f"{device} {case}: d loss / d {name}{list(flat[i[0]])}: hand-written "
                             f"{a!r}, finite difference {e!r}, relative error {err:.3g}")


# ---------------------------------------------------------------------------
# the compiled kernels against the reference
@st.composite
def random_layers(draw):
    I, O, D = draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    G, k = draw(st.integers(1, 8)), draw(st.integers(2, 5))
    return dict(I=I, O=O, D=D, G=G, k=k, B=draw(st.integers(1, 40)),
                base_fun=draw(st.sampled_from(["silu", "identity", "zero"])),
                seed=draw(st.integers(0, 2**32 - 1)))


def _layer_inputs(I, O, D, G, k, B, base_fun, seed, dtype):
    rng = np.random.default_rng(seed)
    # non-uniform knots, some repeated; inputs partly outside them
    knots = np.sort(rng.uniform(-1.5, 1.5, (I, G + 2 * k + 1)), axis=1)
    knots[:, G // 2 + k] = knots[:, G // 2 + k - 1]
    arrays = dict(x=rng.uniform(-2, 2, (B, I)), J=rng.normal(size=(B, I, D)), H=rng.normal(size=(B, I, D)),
                  knots=knots, coef=rng.normal(size=(I, G + k, O)), scale_base=rng.normal(size=(I, O)),
                  scale_sp=rng.normal(size=(I, O)), mask=(rng.random((I, O)) > 0.2) * 1.0)
    up = dict(gy=rng.normal(size=(B, O)), gJ=rng.normal(size=(B, O, D)), gH=rng.normal(size=(B, O, D)))
    return ({n: a.astype(dtype) for n, a in arrays.items()}, {n: a.astype(dtype) for n, a in up.items()})


def _run(be, a, up, k, base_fun):
    B, I, D = a["J"].shape
    O = a["coef"].shape[2]
    dt = a["x"].dtype
    fw = [np.zeros((B, O), dt), np.zeros((B, O, D), dt), np.zeros((B, O, D), dt)]
    be.spline_jet_forward(*fw, a["x"], a["J"], a["H"], a["knots"], a["coef"], a["scale_base"],
                          a["scale_sp"], a["mask"], k, base_fun)
    bw = [np.zeros((B, I), dt), np.zeros((B, I, D), dt), np.zeros((B, I, D), dt),
          np.zeros(a["coef"].shape, dt), np.zeros((I, O), dt), np.zeros((I, O), dt)]
    be.spline_jet_backward(*bw, up["gy"], up["gJ"], up["gH"], a["x"], a["J"], a["H"], a["knots"],
                           a["coef"], a["scale_base"], a["scale_sp"], a["mask"], k, base_fun)
    names = ("y", "Jy", "Hy", "dx", "dJ", "dH", "dcoef", "dscale_base", "dscale_sp")
    return dict(zip(names, fw + bw))


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-11), (np.float32, 2e-3)])
@settings(max_examples=40)
@given(case=random_layers())
def test_cpu_kernels_match_the_reference(dtype, rtol, case):
    a, up = _layer_inputs(**case, dtype=dtype)
    want = _run(reference, a, up, case["k"], case["base_fun"])
    got = _run(cpu_pde, a, up, case["k"], case["base_fun"])
    for name in want:
        # entries far below the array's largest are sums that cancelled (the kernels
        # add in different orders): they count absolutely, at 1e-3 of the largest
        scale = max(1.0, float(np.max(np.abs(want[name].astype(np.float64)), initial=0.0)))
        assert_close(f"{case} {np.dtype(dtype).name} {name}", got[name], want[name], rtol, 1e-3 * scale)


@pytest.mark.parametrize("be", [reference, cpu_pde], ids=["numpy", "cpu"])
def test_a_non_finite_input_gives_nan_for_its_sample_only(be):
    case = dict(I=3, O=2, D=2, G=4, k=3, B=4, base_fun="silu", seed=1)
    a, up = _layer_inputs(**case, dtype=np.float64)
    a["x"][1, 0], a["x"][2, 1] = np.nan, np.inf
    with np.errstate(invalid="ignore"):  # NaN from inf * 0 is the point here
        out = _run(be, a, up, case["k"], case["base_fun"])
    for name in ("y", "Jy", "Hy"):
        assert np.all(np.isfinite(out[name][[0, 3]])), name
        assert not np.all(np.isfinite(out[name][1])), name
    assert np.all(np.isfinite(out["dx"][[0, 3]]))


def test_second_derivative_of_k2_bases_and_third_derivatives():
    """B'' of a quadratic spline is constant on each span and B''' is 0; with k = 3,
    B''' is constant: the derivative chain against differences of the values."""
    rng = np.random.default_rng(0)
    for k in (2, 3, 4):
        knots = np.sort(rng.uniform(-1, 1, (1, 12)), axis=1)
        x = np.array([[0.5 * (knots[0, 5] + knots[0, 6])]])
        h = 1e-3 * (knots[0, 6] - knots[0, 5])
        _, D = reference.local_basis_derivs(x, knots, k, 3)
        for q in range(1, 4):
            _, Dp = reference.local_basis_derivs(x + h, knots, k, 3)
            _, Dm = reference.local_basis_derivs(x - h, knots, k, 3)
            np.testing.assert_allclose(D[q], (Dp[q - 1] - Dm[q - 1]) / (2 * h), rtol=1e-5,
                                       atol=1e-6 * max(1.0, np.abs(D[q]).max()))
        if k == 2:
            assert np.all(D[3] == 0)


def test_silu_derivatives_against_differences():
    x = np.linspace(-30, 30, 601)
    b = reference.base_derivs(x, "silu", 3)
    h = 1e-5
    for q in range(1, 4):
        hi = reference.base_derivs(x + h, "silu", 3)[q - 1]
        lo = reference.base_derivs(x - h, "silu", 3)[q - 1]
        np.testing.assert_allclose(b[q], (hi - lo) / (2 * h), atol=1e-8)


def test_linear_residual_returns_its_own_gradient():
    rng = np.random.default_rng(3)
    B, O, D = 7, 2, 3
    x = rng.normal(size=(B, D))
    u, du, d2u = rng.normal(size=(B, O)), rng.normal(size=(B, O, D)), rng.normal(size=(B, O, D))
    res = pde.linear_residual(a=lambda x: np.cos(x), b=[0.5, -1.0, 2.0], c=rng.normal(size=B),
                              f=lambda x: x[:, 0], weight=3.0)
    loss, grads = res(x, u, du, d2u)
    r = res.residual(x, u, du, d2u)
    assert loss == pytest.approx(3.0 * np.mean(r ** 2))
    for arr, g in zip((u, du, d2u), grads):
        for idx in [(0,) * arr.ndim, tuple(s - 1 for s in arr.shape)]:
            old = arr[idx]
            arr[idx] = old + 1e-6
            lp = res(x, u, du, d2u)[0]
            arr[idx] = old - 1e-6
            lm = res(x, u, du, d2u)[0]
            arr[idx] = old
            assert g[idx] == pytest.approx((lp - lm) / 2e-6, rel=1e-6, abs=1e-9)


# ---------------------------------------------------------------------------
# what is not supported says so
def test_unsupported_models_are_clear_errors():
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="k >= 2.*layer 0 has k=1"):
        pde.input_derivatives(nk.KAN([2, 3, 1], k=1, device="numpy"), x)
    with pytest.raises(ValueError, match="multiplication nodes"):
        pde.input_derivatives(nk.KAN([2, [2, 1], 1], device="numpy"), x)
    model = nk.KAN([2, 2, 1], device="numpy")
    model.fix_symbolic(0, 0, 0, "sin", fit_params=False)
    with pytest.raises(ValueError, match="symbolic edges"):
        pde.input_derivatives(model, x)


def test_cuda_says_input_derivatives_are_not_there_yet():
    cuda = pytest.importorskip("numkan.kernels.cuda")
    with pytest.raises(NotImplementedError, match="device='cpu'"):
        cuda.spline_jet_forward(None, None, None, None, None, None, None, None, None, None, None, 3, "silu")


# ---------------------------------------------------------------------------
# fitting
def _poisson(n):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (n * n, 2))
    t = np.linspace(-1, 1, n)
    one = np.ones(n)
    xb = np.concatenate([np.stack(p, 1) for p in ((t, -one), (t, one), (-one, t), (one, t))])
    src = lambda p: -2 * np.pi ** 2 * np.sin(np.pi * p[:, 0]) * np.sin(np.pi * p[:, 1])  # noqa: E731
    sol = lambda p: np.sin(np.pi * p[:, [0]]) * np.sin(np.pi * p[:, [1]])  # noqa: E731
    return x, xb, pde.linear_residual(a=1.0, f=src), sol


@pytest.mark.parametrize("opt", ["LBFGS", "Adam"])
def test_fit_pde_solves_a_small_poisson_problem(host_device, opt):
    x, xb, res, sol = _poisson(12)
    model = nk.KAN([2, 4, 1], grid=4, k=3, seed=0, device=host_device)
    steps = 12 if opt == "LBFGS" else 150
    hist = model.fit_pde(x, res, x_boundary=xb, u_boundary=0.0, bc_weight=10.0, opt=opt, steps=steps,
                         lr=0.02 if opt == "Adam" else None, log=0)
    assert len(hist["loss"]) == steps
    assert hist["loss"][-1] < 0.05 * hist["loss"][0]
    test = np.random.default_rng(1).uniform(-1, 1, (500, 2))
    mse = float(np.mean((model(test) - sol(test)) ** 2))
    assert mse < (3e-3 if opt == "LBFGS" else 3e-2), mse
    # the history's parts add up to the objective
    np.testing.assert_allclose(np.add(hist["pde_loss"], hist["bc_loss"]), hist["loss"], rtol=1e-12)


def test_fit_pde_bad_inputs_are_errors_and_leave_the_model_unchanged():
    x, xb, res, _ = _poisson(5)
    model = nk.KAN([2, 3, 1], grid=3, device="numpy")
    before = {n: np.array(p) for n, p in model.params.items()}
    knots = [np.array(L.knots) for L in model.layers]
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2\)"):
        model.fit_pde(np.zeros((4, 3)), res)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        model.fit_pde(x, "laplace")
    with pytest.raises(ValueError, match="x_boundary needs u_boundary"):
        model.fit_pde(x, res, x_boundary=xb)
    with pytest.raises(ValueError, match="bc_weight"):
        model.fit_pde(x, res, x_boundary=xb, u_boundary=0.0, bc_weight=-1.0)
    with pytest.raises(ValueError, match="opt must be"):
        model.fit_pde(x, res, opt="SGD")
    bad = lambda x, u, du, d2u: (0.0, (None, None, np.zeros(3)))  # noqa: E731
    with pytest.raises(ValueError, match="dL/dd2u must have shape"):
        model.fit_pde(x, bad, steps=2, log=0)
    with pytest.raises(ValueError, match="f must broadcast"):
        model.fit_pde(x, pde.linear_residual(a=1.0, f=np.zeros(7)), steps=2, log=0)
    for n, p in model.params.items():
        np.testing.assert_array_equal(p, before[n], err_msg=n)
    for L, t in zip(model.layers, knots):
        np.testing.assert_array_equal(L.knots, t)


def test_fit_pde_a_non_finite_objective_stops_with_the_last_finite_parameters():
    x, xb, _, _ = _poisson(5)
    model = nk.KAN([2, 3, 1], grid=3, device="numpy")
    calls = []

    def explode(x, u, du, d2u):
        calls.append(1)
        return (float("nan") if len(calls) > 3 else float(np.mean(u ** 2))), (2 * u / u.size, None, None)

    with pytest.warns(RuntimeWarning, match="not finite"):
        model.fit_pde(x, explode, steps=3, log=0, update_grid=False)
    assert all(np.all(np.isfinite(p)) for p in model.params.values())


def test_frozen_scales_get_no_gradient():
    x, xb, res, _ = _poisson(4)
    model = nk.KAN([2, 3, 1], grid=3, device="numpy", sb_trainable=False)
    pde.PDEObjective(model, x, res, xb, np.zeros((xb.shape[0], 1)), np.ones((xb.shape[0], 1)))()
    assert all(not np.any(L.dscale_base) for L in model.layers)
    assert any(np.any(L.dcoef) for L in model.layers)


def test_refine_then_fit_pde_continues_from_the_coarse_solution():
    x, xb, res, sol = _poisson(10)
    model = nk.KAN([2, 3, 1], grid=3, k=3, seed=0)
    model.fit_pde(x, res, x_boundary=xb, u_boundary=0.0, bc_weight=10.0, steps=8, log=0)
    coarse = model.fit_pde(x, res, x_boundary=xb, u_boundary=0.0, bc_weight=10.0, steps=1, log=0,
                           update_grid=False)["loss"][-1]
    fine = model.refine(6, x=np.concatenate([x, xb]))
    hist = fine.fit_pde(x, res, x_boundary=xb, u_boundary=0.0, bc_weight=10.0, steps=4, log=0)
    assert hist["loss"][0] < 2 * coarse    # the finer splines start from the coarse ones
    assert hist["loss"][-1] < coarse
