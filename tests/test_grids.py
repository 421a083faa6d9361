"""Grid update from samples and grid extension (refine).

- the new knots are KAN_MATH's blend of sample quantiles and a uniform grid;
- a spline that lies in the new spline space (a cubic polynomial, or any
  spline under nested refinement) is carried over exactly, up to rounding;
- otherwise the new coefficients are the least-squares fit: the residual at
  the samples is orthogonal to every new basis function;
- update_grid never builds a (B, I, O) or larger array (peak memory);
- failures leave the model unchanged.
"""
import tracemalloc

import numpy as np
import pytest

import numkan as nk
from numkan import grids, spline
from numkan.kernels import reference

from conftest import HOST_DEVICES


def host(model, l, name):
    return np.array(model.backend.to_host(getattr(model.layers[l], name)))


def edge_spline(model, l, i, x):
    """s[i, o](x) for all o of layer l: (N, O)."""
    return spline.basis_matrix(x, host(model, l, "knots")[i], model.k) @ host(model, l, "coef")[i]


def test_sample_knots_follow_kan_math():
    rng = np.random.default_rng(0)
    x = rng.normal(size=101) ** 3
    G, k, eps = 6, 3, 0.1
    t = grids.sample_knots(x, G, k, eps)
    xs = np.sort(x)
    adaptive = xs[[int(np.floor(p)) for p in np.linspace(0, 100, G + 1)]]
    uniform = xs[0] + (xs[-1] - xs[0]) * np.arange(G + 1) / G
    np.testing.assert_allclose(t[k:k + G + 1], eps * uniform + (1 - eps) * adaptive, rtol=0, atol=1e-14)
    h = (xs[-1] - xs[0]) / G
    np.testing.assert_allclose(np.diff(t[:k + 1]), h, rtol=1e-12)
    np.testing.assert_allclose(np.diff(t[k + G:]), h, rtol=1e-12)
    assert grids.sample_knots(np.full(10, 0.3), G, k, eps) is None


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_update_grid_sets_knots_and_preserves_cubics_exactly(device):
    """Layer 0's edges hold cubic polynomials: every spline space contains them."""
    rng = np.random.default_rng(1)
    model = nk.KAN([2, 3, 1], grid=5, k=3, seed=0, device=device)
    L = model.layers[0]
    t0 = host(model, 0, "knots")
    cubic = lambda x, o: 0.3 * x ** 3 - (o + 1) * 0.2 * x ** 2 + 0.1 * o * x + 0.05
    z = np.linspace(-1, 1, 40)
    coef = np.stack([spline.fit_coef(z, np.stack([cubic(z, o) for o in range(3)], 1), t0[i], 3)
                     for i in range(2)])
    L.coef = model.backend.asarray(coef, L.dtype)
    x = rng.uniform(-0.9, 0.95, (300, 2)) * np.array([1.0, 0.5])
    model.update_grid(x)
    t = host(model, 0, "knots")
    for i in range(2):
        np.testing.assert_array_equal(t[i], grids.sample_knots(x[:, i], 5, 3, model.grid_eps))
        want = np.stack([cubic(x[:, i], o) for o in range(3)], 1)
        np.testing.assert_allclose(edge_spline(model, 0, i, x[:, i]), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_update_grid_is_the_least_squares_fit(device):
    rng = np.random.default_rng(2)
    model = nk.KAN([3, 2, 2], grid=4, k=3, seed=3, device=device)
    for L in model.layers:  # smooth splines, which a grid of 4 intervals can follow
        t = np.array(model.backend.to_host(L.knots))
        z = np.linspace(-1.2, 1.2, 60)
        L.coef = model.backend.asarray(np.stack([spline.fit_coef(
            z, np.stack([np.sin(1.5 * z + i - o) for o in range(L.out_dim)], 1), t[i], 3)
            for i in range(L.in_dim)]), L.dtype)
    x = rng.uniform(-1, 1, (200, 3)) ** 3
    # the old splines of every layer at that layer's samples
    inputs, old = [], []
    h = x
    for l, L in enumerate(model.layers):
        inputs.append(h)
        old.append([edge_spline(model, l, i, h[:, i]) for i in range(L.in_dim)])
        h = np.array(model.backend.to_host(L.forward(model.backend.asarray(h, L.dtype), keep=False)))
    y_before = model(x)
    model.update_grid(x)
    # layer 0 sees the same samples: the residual is orthogonal to the new bases
    t = host(model, 0, "knots")
    for i in range(3):
        A = spline.basis_matrix(x[:, i], t[i], 3)
        r = edge_spline(model, 0, i, x[:, i]) - old[0][i]
        assert np.abs(A.T @ r).max() < 1e-10 * max(1, np.abs(old[0][i]).max())
        assert np.abs(r).max() < 0.05 * np.abs(old[0][i]).max()   # and the fit is close
    # the function is preserved up to the spline approximation error
    assert np.abs(model(x) - y_before).max() < 0.05 * np.abs(y_before).max()


def test_sample_knots_margin_widens_the_end_knots():
    rng = np.random.default_rng(4)
    x = rng.uniform(-0.7, 1.3, 200)
    G, k, eps, m = 5, 3, 0.02, 0.1
    t0 = grids.sample_knots(x, G, k, eps)
    t = grids.sample_knots(x, G, k, eps, margin=m)
    lo, hi = x.min(), x.max()
    pad = m * (hi - lo)
    np.testing.assert_allclose([t[k], t[k + G]], [lo - pad, hi + pad], rtol=0, atol=1e-14)
    # the inner knots: the same quantiles, blended with the wider uniform grid
    uniform = np.linspace(lo - pad, hi + pad, G + 1)
    np.testing.assert_allclose(t[k + 1:k + G], t0[k + 1:k + G]
                               + eps * (uniform[1:-1] - np.linspace(lo, hi, G + 1)[1:-1]), rtol=0, atol=1e-14)
    np.testing.assert_allclose(np.diff(t[:k + 1]), (hi - lo + 2 * pad) / G, rtol=1e-12)
    np.testing.assert_array_equal(grids.sample_knots(x, G, k, eps, margin=0.0), t0)


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_update_grid_margin_keeps_nearby_inputs_inside(device):
    """Just beyond the samples, margin=0 leaves a basis missing (the spline of a
    constant fades), a margin keeps all k+1 bases (the constant is exact there)."""
    x = np.random.default_rng(5).uniform(-0.5, 0.5, (100, 1))
    beyond = np.array([x.max() + 0.02, x.min() - 0.02])
    for margin, exact in ((0.0, False), (0.05, True)):
        model = nk.KAN([1, 1], grid=6, k=3, seed=0, device=device, base_fun="zero")
        L = model.layers[0]
        L.coef = model.backend.asarray(np.ones(host(model, 0, "coef").shape), L.dtype)  # s(x) = 1 inside
        model.update_grid(x, margin=margin)
        s = edge_spline(model, 0, 0, beyond)[:, 0]
        assert np.allclose(s, 1.0, rtol=0, atol=1e-9) == exact, (margin, s)
    before = {n: np.array(a) for n, a in model.params.items()}
    for bad, err in ((-0.1, ">= 0"), (np.nan, "finite"), ("0.1", "real number")):
        with pytest.raises(ValueError, match="margin"):
            model.update_grid(x, margin=bad)
    for n, a in model.params.items():
        np.testing.assert_array_equal(a, before[n])


def test_fit_passes_grid_margin_to_its_grid_updates():
    ds = nk.create_dataset(lambda x: np.sin(2 * x[:, :1]), n_var=1, train_num=64, test_num=16, seed=0)
    grids_seen = {}
    for margin in (0.0, 0.2):
        model = nk.KAN([1, 1], grid=4, k=3, seed=0)
        model.fit(ds, opt="Adam", lr=1e-3, steps=1, stop_grid_update_step=1, grid_margin=margin, log=0)
        grids_seen[margin] = host(model, 0, "knots")[0]
    x = ds["train_input"][:, 0]
    r = x.max() - x.min()
    np.testing.assert_allclose(grids_seen[0.0][3], x.min(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(grids_seen[0.2][3], x.min() - 0.2 * r, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="grid_margin"):
        nk.KAN([1, 1], grid=4, seed=0).fit(ds, steps=1, grid_margin=-1.0, log=0)


def test_update_grid_keeps_constant_inputs_and_validates():
    model = nk.KAN([2, 2], grid=4, seed=0)
    t_before = host(model, 0, "knots")
    x = np.column_stack([np.linspace(-1, 1, 50), np.full(50, 0.25)])
    model.update_grid(x)
    t = host(model, 0, "knots")
    np.testing.assert_array_equal(t[1], t_before[1])
    assert not np.array_equal(t[0], t_before[0])
    before = {n: np.array(a) for n, a in model.params.items()}
    bad = x.copy()
    bad[0, 0] = np.nan
    for arg, match in ((bad, "finite"), (x[:1], "at least 2 rows"), (x[:, :1], r"\(batch, 2\)")):
        with pytest.raises(ValueError, match=match):
            model.update_grid(arg)
    for n, a in model.params.items():
        np.testing.assert_array_equal(a, before[n])
    np.testing.assert_array_equal(host(model, 0, "knots"), t)
    assert model.update_grid_from_samples.__func__ is model.update_grid.__func__


def test_update_grid_memory_stays_per_input():
    """[10, 100] layer, 4000 samples: a (B, I, O) array alone would take 32 MB.

    Per input, update_grid holds (B, O) spline values (3.2 MB) and a (B, K)
    design matrix; the peak must stay well below one (B, I, O) array.
    """
    B, I, O = 4000, 10, 100
    model = nk.KAN([I, O], grid=5, seed=0, device="numpy")
    x = np.random.default_rng(0).uniform(-1, 1, (B, I))
    model.update_grid(x[:10])
    tracemalloc.start()
    model.update_grid(x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < B * I * O * 8 / 2, f"peak {peak / 1e6:.1f} MB"


@pytest.mark.parametrize("device", HOST_DEVICES)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_refine_nested_is_exact(device, dtype, tol):
    rng = np.random.default_rng(4)
    model = nk.KAN([2, 3, 2], grid=5, k=3, seed=1, device=device, dtype=dtype)
    x = rng.uniform(-1, 1, (300, 2))
    model.update_grid(x)  # non-uniform knots, and the hidden grids cover the hidden samples
    for G in (10, 15):
        new = model.refine(G)
        assert new.grid == G and new.layers[0].coef.shape == (2, G + 3, 3)
        for l in range(2):  # every old knot is a new knot
            t_old, t_new = host(model, l, "knots"), host(new, l, "knots")
            for i in range(t_old.shape[0]):
                assert np.all(np.min(np.abs(t_old[i, 3:-3, None] - t_new[i, None, 3:-3]), axis=1)
                              <= 1e-12 * 4)
        y, y_new = model(x), new(x)
        assert np.abs(y_new - y).max() <= tol * max(1, np.abs(y).max()), np.abs(y_new - y).max()
        for n in ("scale_base", "scale_sp", "mask"):
            np.testing.assert_array_equal(host(new, 1, n), host(model, 1, n))


def test_refine_not_nested_is_close_and_leaves_the_model_alone():
    rng = np.random.default_rng(5)
    model = nk.KAN([2, 2, 1], grid=5, k=3, seed=2)
    x = rng.uniform(-1, 1, (300, 2))
    model.update_grid(x)
    before = {n: np.array(a) for n, a in model.params.items()}
    y = model(x)
    new = model.refine(7, x=x)
    assert np.abs(new(x) - y).max() < 1e-2 * np.abs(y).max()
    for n, a in model.params.items():
        np.testing.assert_array_equal(a, before[n])
    assert (new.seed, new.k, new.base_fun, new.grid_eps) == (model.seed, model.k, model.base_fun, model.grid_eps)
    with pytest.raises(ValueError, match="new_grid"):
        model.refine(0)


def test_refine_keeps_frozen_flags():
    model = nk.KAN([1, 1], grid=4, sp_trainable=False, sb_trainable=False, base_fun="zero")
    new = model.refine(8)
    assert (new.sp_trainable, new.sb_trainable, new.base_fun) == (False, False, "zero")


def _set_cubic_splines(model, rng):
    """Every edge's spline a random cubic polynomial on its interior grid (written
    through the live coefficient arrays). A cubic lies in every cubic spline space,
    so a refit onto any knots is exact wherever the samples are inside both grids:
    the refit error is rounding."""
    k = model.k
    for l, L in enumerate(model.layers):
        t = host(model, l, "knots")
        coef = model.params[f"layers.{l}.coef"]
        for i in range(L.in_dim):
            p = np.linspace(t[i, k], t[i, -k - 1], 40)
            c = rng.uniform(-1, 1, (4, L.out_dim)) / np.array([1, 2, 4, 8])[:, None] ** (l + 1)
            vals = np.stack([p ** d for d in range(4)], axis=1) @ c
            coef[i] = spline.fit_coef(p, vals, t[i], k)


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_update_grid_sees_symbolic_edges(device):
    """Symbolic edges are part of what the next layer's knots are placed on.

    Layer 0 has two symbolic edges whose values reach well beyond what its
    splines alone give; every spline is a cubic, so the refit is exact and
    update_grid must keep the output up to rounding. Placing layer 1's knots on
    the spline part alone (the old behaviour) left most of its real inputs
    outside its new interior grid, where the cubic is not reproduced.
    """
    rng = np.random.default_rng(11)
    model = nk.KAN([2, 3, 1], grid=5, k=3, seed=3, grid_range=(-8, 8), device=device)
    _set_cubic_splines(model, rng)
    model.fix_symbolic(0, 0, 1, "sin", fit_params=False)
    model.fix_symbolic(0, 1, 2, "x^2", fit_params=False)
    aff = model.params["layers.0.symbolic_affine"]
    aff[0, 1] = [2.0, 0.5, 3.0, 1.5]   # 3 sin(2x + 0.5) + 1.5, in [-1.5, 4.5]
    aff[1, 2] = [1.5, 0.3, 2.0, -2.0]  # 2 (1.5x + 0.3)^2 - 2, in [-2, 5.2]
    x = rng.uniform(-1, 1, (400, 2))
    y = model(x)
    model.update_grid(x)
    err = np.abs(model(x) - y).max()
    assert err <= 1e-9 * max(1.0, np.abs(y).max()), f"update_grid moved the output by {err:.3g}"
    hidden = model.layers[0].forward(model.backend.asarray(x, model.dtype), keep=False)
    hidden = model.backend.to_host(hidden)
    t1 = host(model, 1, "knots")
    k = model.k
    # layer 1's interior grid spans its real inputs, symbolic part included
    np.testing.assert_allclose(t1[:, k], hidden.min(axis=0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(t1[:, -k - 1], hidden.max(axis=0), rtol=0, atol=1e-9)


def test_update_grid_keeps_knots_that_float32_cannot_separate():
    """Samples spanning two float32 ulps: G + 1 distinct interior knots do not exist
    in float32, so that input keeps its knots (as for equal samples); float64 moves them."""
    x = np.column_stack([1000.0 + (np.arange(20) % 3) * 6.1035e-5, np.linspace(-1, 1, 20)])
    for dtype, moved in ((np.float32, False), (np.float64, True)):
        model = nk.KAN([2, 1], grid=5, dtype=dtype)
        before = host(model, 0, "knots")
        model.update_grid(x)
        t = host(model, 0, "knots")
        assert np.array_equal(t[0], before[0]) != moved, dtype
        assert not np.array_equal(t[1], before[1])
        assert np.all(np.diff(t[:, 3:-3], axis=1) > 0)
    assert grids.sample_knots(x[:, 0].astype(np.float32), 5, 3, 0.02, dtype=np.float32) is None


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_refine_with_symbolic_edges_keeps_the_output(device):
    """refine carries symbolic edges over and fits each layer on the old layer's whole
    output for x (symbolic part included): with cubic splines the transfer is exact."""
    rng = np.random.default_rng(12)
    model = nk.KAN([2, 3, 1], grid=5, k=3, seed=3, grid_range=(-8, 8), device=device)
    _set_cubic_splines(model, rng)
    model.fix_symbolic(0, 0, 1, "sin", fit_params=False)
    model.params["layers.0.symbolic_affine"][0, 1] = [2.0, 0.5, 3.0, 1.5]
    x = rng.uniform(-1, 1, (200, 2))
    y = model(x)
    for G in (7, 10):
        new = model.refine(G, x=x)
        assert new.layers[0].symbolic_names[0][1] == "sin"
        err = np.abs(new(x) - y).max()
        assert err <= 1e-9 * max(1.0, np.abs(y).max()), f"refine({G}) moved the output by {err:.3g}"


@pytest.mark.parametrize("k", [1, 3, 4])
def test_basis_matrices_of_many_inputs_equal_one_input_at_a_time(k, monkeypatch):
    # groups of inputs share one call of the local recursion; the matrices must be
    # those of each input alone, bit for bit, across group boundaries and off the knots
    rng = np.random.default_rng(k)
    I, N, G = 6, 40, 7
    t = np.stack([np.sort(rng.uniform(-1, 1, G + 2 * k + 1)) for _ in range(I)])
    x = rng.uniform(-1.2, 1.2, (N, I))
    x[0, 1], x[1, 2], x[2, 3] = np.nan, np.inf, -np.inf
    monkeypatch.setattr(spline, "_GROUP_ELEMENTS", N * (k + 1) * 4)  # groups of 4 inputs
    got = list(spline.basis_matrices(x, t, k))
    assert [i for i, _ in got] == list(range(I))
    for i, A in got:
        finite = np.isfinite(x[:, i])
        dense = reference.dense_basis(x[finite, i:i + 1], t[i:i + 1], k)[:, 0, :]
        np.testing.assert_allclose(A[finite], dense, rtol=0, atol=1e-14)
        assert not A[~finite].any()
        assert np.array_equal(A, spline.basis_matrix(x[:, i], t[i], k))


def test_least_squares_by_normal_equations_where_accurate(monkeypatch):
    """``spline.lstsq_coef`` solves a well-conditioned design matrix's least squares by
    the normal equations (no SVD), to 1e-12 of numpy's lstsq; a rank-deficient one (a
    span with no samples), an ill-conditioned one, an underdetermined one, a given
    rcond and a non-finite right-hand side go to numpy's lstsq and get its answer."""
    rng = np.random.default_rng(4)
    real = np.linalg.lstsq
    svd_calls = []
    monkeypatch.setattr(np.linalg, "lstsq", lambda *a, **kw: (svd_calls.append(1), real(*a, **kw))[1])
    t = spline.uniform_grid((-1, 1), 20, 3, 1)[0]
    A = spline.basis_matrix(rng.uniform(-1, 1, 1000), t, 3)
    for y in (rng.normal(size=(1000, 4)), rng.normal(size=1000)):
        c = spline.lstsq_coef(A, y)
        want = real(A, y, rcond=None)[0]
        assert c.shape == want.shape
        np.testing.assert_allclose(c, want, rtol=0, atol=1e-12 * np.abs(want).max())
    assert not svd_calls
    gap = np.concatenate([rng.uniform(-1, -0.2, 500), rng.uniform(0.4, 1, 500)])  # empty spans
    thin = A * np.where(np.arange(A.shape[1]) == 5, 1e-4, 1.0)  # a basis all but absent: cond(A) ~ 1e4
    y = rng.normal(size=(1000, 2))
    for label, A_, y_, kw in (("empty spans", spline.basis_matrix(gap, t, 3), y, {}),
                              ("ill-conditioned", thin, y, {}),
                              ("underdetermined", A[:10], y[:10], {}),
                              ("rcond given", A, y, dict(rcond=1e-3)),
                              ("NaN in y", A, np.where(np.arange(1000)[:, None] == 7, np.nan, y), {})):
        svd_calls.clear()
        if label != "NaN in y":
            np.testing.assert_array_equal(spline.lstsq_coef(A_, y_, **kw), real(A_, y_, **kw)[0], err_msg=label)
        else:  # numpy's lstsq on a NaN: its answer or its error, as before
            try:
                want = real(A_, y_, rcond=None)[0]
            except np.linalg.LinAlgError:
                with pytest.raises(np.linalg.LinAlgError):
                    spline.lstsq_coef(A_, y_)
            else:
                np.testing.assert_array_equal(spline.lstsq_coef(A_, y_), want)
        assert svd_calls, f"{label}: not solved by numpy's lstsq"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's numpy, on the NaN meant here
@pytest.mark.parametrize("kind", ["uniform", "nonuniform", "repeated"])
def test_normal_sums_of_the_compiled_backend_match_the_reference(kind):
    """cpu.normal_sums (sample by sample, no design matrix) gives reference.normal_sums'
    A_new^T A_new and A_new^T A_old coef_old to rounding, for every order served (and
    the reference's own above them), with samples outside either grid, on a knot, NaN."""
    from numkan.kernels import cpu, cpu_narrow
    rng = np.random.default_rng(len(kind))
    for k in list(range(1, cpu_narrow.MAX_ORDER + 1)) + [cpu_narrow.MAX_ORDER + 1]:
        I, G_old, G_new = 3, 4 + k % 3, 7
        if kind == "uniform":
            t_old = spline.uniform_grid((-1, 1), G_old, k, I)
            t_new = spline.uniform_grid((-0.9, 1.1), G_new, k, I)
        else:
            t_old = np.sort(rng.uniform(-1.2, 1.2, (I, G_old + 2 * k + 1)), axis=1)
            t_new = np.sort(rng.uniform(-1.2, 1.2, (I, G_new + 2 * k + 1)), axis=1)
            if kind == "repeated":
                t_new[:, 5] = t_new[:, 4]
                t_old[:, 3] = t_old[:, 4]
        x = rng.uniform(-1.4, 1.4, (300, I))
        x[:4, 0] = [np.nan, t_new[0, 0], t_new[0, -1], t_old[0, 2]]
        coef = rng.normal(size=(I, t_old.shape[1] - k - 1, 2))
        gram, rhs = cpu.normal_sums(x, t_old, coef, t_new, k)
        g_ref, r_ref = reference.normal_sums(x, t_old, coef, t_new, k)
        assert gram.shape == g_ref.shape and rhs.shape == r_ref.shape
        np.testing.assert_allclose(gram, g_ref, rtol=0, atol=2.0 ** k * 1e-13 * np.abs(g_ref).max(),
                                   err_msg=f"{kind} k={k}")
        np.testing.assert_allclose(rhs, r_ref, rtol=0, atol=2.0 ** k * 1e-13 * np.abs(r_ref).max(),
                                   err_msg=f"{kind} k={k}")
        # and they are the design matrices' products
        for i in range(I):
            A_new = spline.basis_matrix(np.nan_to_num(x[:, i], nan=5.0), t_new[i], k)
            A_old = spline.basis_matrix(np.nan_to_num(x[:, i], nan=5.0), t_old[i], k)
            np.testing.assert_allclose(g_ref[i], A_new.T @ A_new, rtol=0, atol=1e-12 * np.abs(g_ref[i]).max())
            np.testing.assert_allclose(r_ref[i], A_new.T @ (A_old @ coef[i]), rtol=0,
                                       atol=1e-12 * max(np.abs(r_ref[i]).max(), 1.0))


def test_refit_solves_the_normal_equations_or_falls_back_to_the_svd(monkeypatch):
    """spline.refit: the least-squares coefficients, from the backend's normal sums where
    they are well conditioned, and from numpy's SVD on the design matrices where they
    are not (new bases with no samples under them), for each input separately."""
    from numkan.kernels import cpu
    rng = np.random.default_rng(9)
    t_old = spline.uniform_grid((-1, 1), 5, 3, 2)
    t_new = spline.uniform_grid((-1, 1), 12, 3, 2)
    x = rng.uniform(-1, 1, (400, 2))
    x[:, 1] = np.where(x[:, 1] > 0.1, x[:, 1], -0.95)  # input 1: spans with no samples
    coef_old = rng.normal(size=(2, 8, 3))
    real = np.linalg.lstsq
    svd_calls = []
    monkeypatch.setattr(np.linalg, "lstsq", lambda *a, **kw: (svd_calls.append(1), real(*a, **kw))[1])
    for backend in (reference, cpu):
        svd_calls.clear()
        got = spline.refit(x, t_old, coef_old, t_new, 3, backend)
        assert len(svd_calls) == 1  # input 1 only
        for i in range(2):
            A_new = spline.basis_matrix(x[:, i], t_new[i], 3)
            y = spline.basis_matrix(x[:, i], t_old[i], 3) @ coef_old[i]
            want = real(A_new, y, rcond=None)[0]
            np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-9 * np.abs(want).max(),
                                       err_msg=f"{backend.name} input {i}")
