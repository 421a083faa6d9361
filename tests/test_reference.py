"""The reference's two forms of a layer agree, and the definition is right.

``reference.py`` states a layer twice: the definition (``dense_basis``,
``dense_forward``, ``dense_backward``: every basis, the layer as a plain sum)
and the local-support form the layers run (``local_basis``, ``spline_forward``,
``spline_backward``). Here, in float64, on non-uniform strictly increasing
knots of every order k = 1..5, at points inside the knots, on every knot, at
both ends and outside:

1. ``dense_basis`` and ``dense_basis_deriv`` against ``local_basis``, basis by
   basis (on repeated knots as well);
2. ``dense_forward`` / ``dense_backward`` against ``spline_forward`` /
   ``spline_backward`` (which add into non-zero buffers), every output, for
   every base function;
3. ``dense_backward`` against central finite differences of ``dense_forward``;
4. the bases sum to one on the interior grid (their derivatives to zero), are
   non-negative, and vanish outside the half-open knot range.

A change that breaks either form breaks 1 or 2; one that breaks the dense form
consistently in value and gradient still fails 3 or 4.
"""
import numpy as np
import pytest

from numkan.kernels import reference as R

from conftest import assert_close

ORDERS = (1, 2, 3, 4, 5)
BASE_FUNS = ("silu", "identity", "zero")


def increasing_knots(rng, I, G, k):
    """(I, G+2k+1) knots, strictly increasing with uneven gaps, different for every input."""
    n = G + 2 * k + 1
    gaps = rng.uniform(0.05, 1.0, (I, n - 1))
    return rng.uniform(-2.0, 0.0, (I, 1)) + np.concatenate([np.zeros((I, 1)), np.cumsum(gaps, axis=1)], axis=1)


def sample_points(rng, knots, inside=12):
    """(B, I): per input, points inside its knots, on every knot, at both ends (t[0],
    t[-1] and the float just below t[-1]) and outside on either side."""
    cols = []
    for t in knots:
        cols.append(np.concatenate([rng.uniform(t[0], t[-1], inside), t,
                                    [np.nextafter(t[-1], -np.inf), t[0] - 0.3, t[-1] + 0.4, t[-1] + 5.0]]))
    return np.stack(cols, axis=1)


def random_params(rng, I, K, O):
    coef = rng.normal(0.0, 1.0, (I, K, O))
    scale_base = rng.uniform(-1.0, 1.0, (I, O))
    scale_sp = rng.uniform(-1.0, 1.0, (I, O))
    mask = (rng.random((I, O)) > 0.25).astype(np.float64)
    mask[0, 0] = 1.0  # at least one live edge: the comparisons are not all of zeros
    return coef, scale_base, scale_sp, mask


def scattered(span, local, k, K):
    """The local (B, I, k+1) values put back at their basis indices: (B, I, K)."""
    B, I = span.shape
    full = np.zeros((B, I, K))
    for s in range(k + 1):
        a = span - k + s
        ok = (span >= 0) & (a >= 0) & (a < K)
        b, i = np.nonzero(ok)
        full[b, i, a[ok]] = local[b, i, s]
    return full


# ---------------------------------------------------------------------------
# 1. the bases
def with_repeats(rng, knots, k):
    """A copy of ``knots`` in which one run of each row repeats a knot up to k+1 times."""
    out = knots.copy()
    n = knots.shape[1]
    for row in out:
        start = rng.integers(0, n - 1)
        row[start:start + rng.integers(2, k + 2)] = row[start]  # still non-decreasing
    return out


@pytest.mark.parametrize("k", ORDERS)
def test_dense_basis_matches_local_basis(k):
    rng = np.random.default_rng(100 + k)
    for G in (1, 4, 9):
        increasing = increasing_knots(rng, 3, G, k)
        # repeated knots too: the zero denominators of the recursion
        for kind, knots in (("increasing", increasing), ("repeated", with_repeats(rng, increasing, k))):
            K = G + k
            x = sample_points(rng, knots)
            dense = R.dense_basis(x, knots, k)
            ddense = R.dense_basis_deriv(x, knots, k)
            assert dense.shape == ddense.shape == x.shape + (K,)
            span, N, dN = R.local_basis(x, knots, k, deriv=True)
            label = f"k={k} G={G} {kind}"
            assert_close(label + " bases", scattered(span, N, k, K), dense, 1e-13, 1.0)
            assert_close(label + " derivatives", scattered(span, dN, k, K), ddense, 1e-12,
                         max(1.0, float(np.abs(ddense).max())))


# ---------------------------------------------------------------------------
# 2. the layer: the dense definition against the local form
@pytest.mark.parametrize("base_fun", BASE_FUNS)
@pytest.mark.parametrize("k", ORDERS)
def test_dense_layer_matches_local_form(k, base_fun):
    rng = np.random.default_rng(10 * k + len(base_fun))
    for G, I, O in ((1, 1, 1), (3, 2, 5), (7, 3, 4)):
        knots = increasing_knots(rng, I, G, k)
        K = G + k
        x = sample_points(rng, knots)
        B = x.shape[0]
        coef, scale_base, scale_sp, mask = random_params(rng, I, K, O)
        args = (x, knots, coef, scale_base, scale_sp, mask, k, base_fun)
        dy = rng.normal(0.0, 1.0, (B, O))
        label = f"k={k} {base_fun} G={G} I={I} O={O}"

        expected = dict(y=R.dense_forward(*args))
        expected["dx"], expected["dcoef"], expected["dscale_base"], expected["dscale_sp"] = \
            R.dense_backward(dy, *args)

        y = np.full((B, O), np.nan)  # overwritten, whatever it held
        R.spline_forward(y, *args)
        # the local backward adds (+=): start from non-zero buffers and take the difference
        start = dict(dx=rng.normal(0.0, 1.0, (B, I)), dcoef=rng.normal(0.0, 1.0, (I, K, O)),
                     dscale_base=rng.normal(0.0, 1.0, (I, O)), dscale_sp=rng.normal(0.0, 1.0, (I, O)))
        grads = {n: a.copy() for n, a in start.items()}
        R.spline_backward(grads["dx"], grads["dcoef"], grads["dscale_base"], grads["dscale_sp"], dy, *args)
        local = dict(y=y, **{n: grads[n] - start[n] for n in start})

        for name, e in expected.items():
            assert local[name].shape == e.shape, (label, name)
            scale = max(float(np.abs(e).max(initial=0.0)), 1.0)
            assert_close(f"{label} {name}", local[name], e, 1e-12, 1e-2 * scale)
        if base_fun != "zero":  # the inputs reach y: the comparison is not of zeros
            assert np.abs(expected["dx"]).max() > 0.1


# ---------------------------------------------------------------------------
# 3. the dense backward against finite differences of the dense forward
def away_from_knots(rng, knots, B, gap=1e-3):
    """(B, I) points inside and outside the knots, at least ``gap`` from every knot: the
    spline is smooth there (at a knot a k = 1 spline has a kink)."""
    x = np.empty((B, knots.shape[0]))
    for i, t in enumerate(knots):
        pts = rng.uniform(t[0] - 1.0, t[-1] + 1.0, 4 * B)
        far = np.min(np.abs(pts[:, None] - t[None, :]), axis=1) > gap
        x[:, i] = pts[far][:B]
    return x


@pytest.mark.parametrize("base_fun", BASE_FUNS)
@pytest.mark.parametrize("k", ORDERS)
def test_dense_backward_matches_finite_differences(k, base_fun):
    rng = np.random.default_rng(1000 + 10 * k + len(base_fun))
    I, O, G, B = 2, 3, 4, 9
    knots = increasing_knots(rng, I, G, k)
    x = away_from_knots(rng, knots, B)
    coef, scale_base, scale_sp, mask = random_params(rng, I, G + k, O)
    dy = rng.normal(0.0, 1.0, (B, O))
    params = dict(coef=coef, scale_base=scale_base, scale_sp=scale_sp)

    def per_sample_loss(x, **p):
        # L = sum_b L_b with L_b = sum_o dy[b, o] y[b, o]
        kw = dict(params, **p)
        y = R.dense_forward(x, knots, kw["coef"], kw["scale_base"], kw["scale_sp"], mask, k, base_fun)
        return np.sum(dy * y, axis=1)

    dx, dcoef, dscale_base, dscale_sp = R.dense_backward(dy, x, knots, coef, scale_base, scale_sp, mask,
                                                         k, base_fun)
    label = f"k={k} {base_fun}"
    h = 1e-6
    # x[b, i] reaches only L_b, so one shift of a whole column gives dL/dx[:, i]
    fd_dx = np.empty_like(x)
    for i in range(I):
        e = np.zeros_like(x)
        e[:, i] = h
        fd_dx[:, i] = (per_sample_loss(x + e) - per_sample_loss(x - e)) / (2 * h)
    assert_close(label + " dx", dx, fd_dx, 1e-6, max(1.0, float(np.abs(fd_dx).max())))
    # L is linear in each parameter: central differences are exact up to rounding
    for name, analytic in (("coef", dcoef), ("scale_base", dscale_base), ("scale_sp", dscale_sp)):
        fd = np.empty_like(params[name])
        for idx in np.ndindex(*fd.shape):
            plus, minus = params[name].copy(), params[name].copy()
            plus[idx] += h
            minus[idx] -= h
            fd[idx] = (per_sample_loss(x, **{name: plus}).sum()
                       - per_sample_loss(x, **{name: minus}).sum()) / (2 * h)
        assert_close(f"{label} d{name}", analytic, fd, 1e-6, max(1.0, float(np.abs(fd).max())))
    if base_fun != "zero":
        assert np.abs(dx).max() > 0.1


def test_base_functions():
    """b(x) is silu, identity or zero, as dense_forward and every kernel use it."""
    x = np.linspace(-30.0, 30.0, 121)[:, None]
    assert_close("silu", R.base_value(x, "silu"), x / (1.0 + np.exp(-x)), 1e-14, 1e-300)
    assert np.array_equal(R.base_value(x, "identity"), x)
    assert np.array_equal(R.base_value(x, "zero"), np.zeros_like(x))
    sig = 1.0 / (1.0 + np.exp(-x))
    assert_close("silu'", R.base_deriv(x, "silu"), sig * (1 + x * (1 - sig)), 1e-13, 1e-300)
    assert np.array_equal(R.base_deriv(x, "identity"), np.ones_like(x))
    assert np.array_equal(R.base_deriv(x, "zero"), np.zeros_like(x))


# ---------------------------------------------------------------------------
# 4. partition of unity, and where the bases live
@pytest.mark.parametrize("k", ORDERS)
def test_dense_bases_sum_to_one_on_the_interior_grid(k):
    rng = np.random.default_rng(k)
    for G in (1, 3, 12):
        knots = increasing_knots(rng, 3, G, k)
        knots[0] = knots[0, 0] + 0.25 * (np.arange(G + 2 * k + 1))  # a uniform row too
        # the interior grid [t[k], t[G+k]], its knots and both of its ends included
        x = np.stack([np.concatenate([rng.uniform(t[k], t[G + k], 50), t[k:G + k + 1]]) for t in knots], axis=1)
        basis = R.dense_basis(x, knots, k)
        label = f"k={k} G={G}"
        assert_close(label + " sum of bases", basis.sum(axis=2), np.ones(x.shape), 1e-13)
        # and their derivatives to zero, on [t[k], t[G+k]): at t[G+k] itself the derivative from
        # the right also sees basis K, which the layer does not have
        x = x[:-1]
        dbasis = R.dense_basis_deriv(x, knots, k)
        assert_close(label + " sum of derivatives", dbasis.sum(axis=2), np.zeros(x.shape), 1e-12,
                     float(np.abs(dbasis).max()))
        # near the ends of the knots fewer than k+1 bases exist: the sum falls below one there
        x = sample_points(rng, knots)
        basis = R.dense_basis(x, knots, k)
        assert np.all(basis >= -1e-15), label
        assert np.all(basis.sum(axis=2) <= 1 + 1e-13), label
        outside = (x < knots[:, 0]) | (x >= knots[:, -1])  # the last knot is outside: half-open
        assert outside.sum() >= 3 * knots.shape[0]
        assert np.all(basis[outside] == 0) and np.all(R.dense_basis_deriv(x, knots, k)[outside] == 0), label
