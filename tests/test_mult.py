"""Multiplication nodes (pykan's MultKAN): width pairs, the group-product ops of
every backend against the reference, hand-written gradients against finite
differences, and the interpretability and file paths that must know them."""
import numpy as np
import pytest
import sympy
from hypothesis import given, strategies as st

import numkan as nk
from numkan import _validate as v
from numkan.kernels import get_backend, reference

from conftest import HOST_DEVICES, assert_close

STEP = 1e-6


def central(f, theta, eps=STEP, idxs=None):
    """4-point central difference of the scalar f at theta (an array changed in place),
    at the entries ``idxs`` (default: all); the others are left 0."""
    out = np.zeros(theta.shape)
    for idx in (np.ndindex(theta.shape) if idxs is None else idxs):
        old = theta[idx]
        vals = []
        for c in (-2, -1, 1, 2):
            theta[idx] = old + c * eps
            vals.append(f())
        theta[idx] = old
        out[idx] = (vals[0] - 8 * vals[1] + 8 * vals[2] - vals[3]) / (12 * eps)
    return out


# ---------------------------------------------------------------------------
# width and mult_arity
def test_width_pairs_and_arities():
    assert v.check_width([2, [5, 3], 1]) == ([2, 8, 1], [[], [2, 2, 2], []])
    assert v.check_width([2, [1, 2], [0, 1]], [[], [2, 3], [4]]) == ([2, 3, 1], [[], [2, 3], [4]])
    assert v.check_width([3, 4, 1], 5) == ([3, 4, 1], [[], [], []])
    model = nk.KAN([2, [1, 2], 1], mult_arity=[[], [3, 2], []], device="numpy")
    assert model.width == [2, 3, 1] and model.width_spec == [2, [1, 2], 1]
    assert model.layers[0].out_dim == 1 + 3 + 2 and model.layers[0].n_nodes == 3
    assert list(model.layers[0].offsets) == [0, 1, 4, 6]
    assert model.layers[1].in_dim == 3 and model.layers[1].mult_arity == []


@pytest.mark.parametrize("width, arity, match", [
    ([[2, 1], 1], 2, "inputs, which cannot be multiplication nodes"),
    ([2, [1, -1], 1], 2, r"width\[1\] must be an integer >= 1 or a pair"),
    ([2, [0, 0], 1], 2, r"width\[1\]"),
    ([2, [1, 1, 1], 1], 2, r"width\[1\]"),
    ([2, [1, 1], 1], 1, "mult_arity must be an integer >= 2"),
    ([2, [1, 1], 1], [[], [2]], "one list per node layer"),
    ([2, [1, 2], 1], [[], [2], []], "one integer >= 2 per multiplication node"),
    ([2, [1, 1], 1], [[], [1], []], "one integer >= 2"),
    ([2, [1, 1], 1], True, "mult_arity"),
])
def test_bad_width_or_arity_is_a_clear_error(width, arity, match):
    with pytest.raises(ValueError, match=match):
        nk.KAN(width, mult_arity=arity, device="numpy")


# ---------------------------------------------------------------------------
# the ops
def random_groups(rng, n_nodes):
    sizes = rng.integers(1, 5, n_nodes)
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def products_by_definition(y, offsets):
    return np.stack([np.prod(y[:, a:b], axis=1) for a, b in zip(offsets[:-1], offsets[1:])], axis=1)


@pytest.mark.parametrize("device", HOST_DEVICES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_group_product_ops_match_the_definition(device, dtype):
    be = get_backend(device)
    rng = np.random.default_rng(1)
    for B, N in ((1, 1), (7, 3), (300, 5)):
        off = random_groups(rng, N)
        y = rng.normal(size=(B, off[-1])).astype(dtype)
        y[0, off[-2]] = 0.0                      # a zero factor still gets its gradient
        dz = rng.normal(size=(B, N)).astype(dtype)
        z = be.zeros((B, N), dtype)
        be.group_product_forward(z, be.asarray(y, dtype), be.asarray(off, np.int64))
        rtol = 1e-12 if dtype == np.float64 else 1e-5
        assert_close("z", be.to_host(z), products_by_definition(y.astype(np.float64), off), rtol, 1e-6)
        dy = be.zeros(y.shape, dtype)
        be.group_product_backward(dy, be.asarray(dz, dtype), be.asarray(y, dtype), be.asarray(off, np.int64))
        expect = np.zeros(y.shape)
        for n, (a, b) in enumerate(zip(off[:-1], off[1:])):
            for s in range(a, b):
                others = np.prod(np.delete(y[:, a:b].astype(np.float64), s - a, axis=1), axis=1)
                expect[:, s] = dz[:, n] * others
        assert_close("dy", be.to_host(dy), expect, rtol, 1e-6)
        # the backends give the reference's bits in float64 (same order of products)
        if device != "numpy" and dtype == np.float64:
            z_ref, dy_ref = np.zeros((B, N)), np.zeros(y.shape)
            reference.group_product_forward(z_ref, y, off)
            reference.group_product_backward(dy_ref, dz, y, off)
            assert np.array_equal(be.to_host(z), z_ref) and np.array_equal(be.to_host(dy), dy_ref)


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_group_products_of_non_finite_values_do_not_crash(device):
    be = get_backend(device)
    off = np.array([0, 1, 3, 6], dtype=np.int64)
    y = np.array([[np.nan, np.inf, 0.0, 1.0, -np.inf, 1e308],
                  [1.0, 2.0, 3.0, 1e308, 1e308, 1e308]])
    z, dy = be.zeros((2, 3), np.float64), be.zeros(y.shape, np.float64)
    be.group_product_forward(z, be.asarray(y, np.float64), be.asarray(off, np.int64))
    be.group_product_backward(dy, be.asarray(np.ones((2, 3)), np.float64), be.asarray(y, np.float64),
                              be.asarray(off, np.int64))
    z = be.to_host(z)
    assert np.isnan(z[0, 0]) and np.isnan(z[0, 1]) and z[1, 1] == 6.0 and np.isinf(z[1, 2])


# ---------------------------------------------------------------------------
# gradients of whole networks with product nodes
@st.composite
def mult_networks(draw):
    depth = draw(st.integers(1, 3))
    width = [draw(st.integers(1, 3))]
    arity = [[]]
    for _ in range(depth):
        n_sum, n_mult = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        if n_sum + n_mult == 0:
            n_sum = 1
        width.append([n_sum, n_mult] if n_mult else n_sum)
        arity.append([draw(st.integers(2, 3)) for _ in range(n_mult)])
    if not any(arity):                      # at least one product node somewhere
        width[-1] = [0, 1]
        arity[-1] = [2]
    return dict(width=width, arity=arity, k=draw(st.integers(1, 4)), grid=draw(st.integers(2, 6)),
                seed=draw(st.integers(0, 10_000)), base_fun=draw(st.sampled_from(["silu", "identity"])))


@given(case=mult_networks(), device=st.sampled_from(HOST_DEVICES))
def test_parameter_and_input_gradients_match_finite_differences(case, device):
    model = nk.KAN(case["width"], mult_arity=case["arity"], grid=case["grid"], k=case["k"],
                   seed=case["seed"], base_fun=case["base_fun"], device=device,
                   grid_range=(-1.5, 1.5))
    rng = np.random.default_rng(case["seed"])
    for L in model.layers:  # non-trivial scales so every subnode matters
        L.scale_sp[...] = rng.uniform(0.5, 1.5, L.scale_sp.shape)
        L.scale_base[...] = rng.uniform(-1, 1, L.scale_base.shape)
    x = rng.uniform(-0.9, 0.9, (6, model.width[0]))
    y = rng.normal(size=(6, model.width[-1]))
    loss, grads = model.loss_and_grad(x, y)
    f = lambda: model.loss_and_grad(x, y)[0]
    for name, p in model.params.items():
        # up to 12 entries per array, drawn anew for every example: each finite
        # difference is 4 evaluations of the whole network, and coef is the big array
        flat = rng.choice(p.size, min(p.size, 12), replace=False)
        idxs = [np.unravel_index(n, p.shape) for n in flat]
        fd = central(f, p, idxs=idxs)
        assert_close(name, grads[name][tuple(np.array(idxs).T)], fd[tuple(np.array(idxs).T)],
                     rtol=1e-5, floor=1e-4 * max(loss, 1e-3))
    model.forward(x)
    dy = 2 * (model(x) - y) / y.size
    dx = model.backward(dy)
    xx = x.copy()
    assert_close("dx", dx, central(lambda: float(np.mean((model(xx) - y) ** 2)), xx),
                 rtol=1e-5, floor=1e-4 * max(loss, 1e-3))


def test_backends_agree_on_a_product_network():
    outs = []
    x = np.random.default_rng(3).uniform(-1, 1, (50, 2))
    for device in HOST_DEVICES:
        model = nk.KAN([2, [2, 2], [1, 1]], mult_arity=[[], [2, 3], [2]], seed=5, device=device)
        loss, grads = model.loss_and_grad(x, np.sin(x[:, :1]) * np.ones((1, 2)))
        outs.append((model(x), loss, grads))
    (y0, l0, g0), (y1, l1, g1) = outs
    assert_close("y", y1, y0, rtol=1e-12, floor=1e-12)
    for n in g0:
        assert_close(n, g1[n], g0[n], rtol=1e-10, floor=1e-12)


# ---------------------------------------------------------------------------
# the interpretability and file paths
def product_model(device="numpy"):
    """[2, [0, 1], 1]: one product node of the two inputs' edges, then an identity-like edge."""
    model = nk.KAN([2, [0, 1], 1], seed=0, device=device)
    x = np.random.default_rng(0).uniform(-1, 1, (200, 2))
    model.forward(x)
    return model, x


def test_formula_of_a_product_is_a_product():
    model, x = product_model()
    model.fix_symbolic(0, 0, 0, "x", fit_params=False)
    model.fix_symbolic(0, 1, 1, "x", fit_params=False)
    for i, o in ((0, 1), (1, 0)):  # the cross edges are pruned: no spline left live
        model.layers[0].mask[i, o] = 0
    model.fix_symbolic(1, 0, 0, "x", fit_params=False)
    (f,), (x1, x2) = model.symbolic_formula()
    assert sympy.simplify(f - x1 * x2) == 0
    assert np.allclose(model(x)[:, 0], x[:, 0] * x[:, 1], rtol=1e-12, atol=1e-14)


def test_save_load_prune_refine_and_scores_keep_the_products(tmp_path):
    model = nk.KAN([3, [2, 2], 1], mult_arity=[[], [2, 3], []], seed=1, device="numpy")
    x = np.random.default_rng(1).uniform(-1, 1, (100, 3))
    y = model(x)
    loaded = nk.load(model.save(tmp_path / "m"), device="numpy")
    assert loaded.width == model.width and loaded.mult_arity == model.mult_arity
    assert np.array_equal(loaded(x), y)
    scores = model.attribute(x)
    assert scores.shape == (3,) and model.node_scores[1].shape == (4,)
    assert model.edge_scores[0].shape == (3, 2 + 2 + 3)
    small = model.prune_node(active_neurons_id=[[0, 3]], keep_mean=False)
    assert small.width == [3, 2, 1] and small.mult_arity == [[], [3], []]
    assert small.layers[0].out_dim == 1 + 3 and small.layers[1].in_dim == 2
    # the kept nodes compute what they computed before
    h_old = model.layers[0].forward(x, keep=False)
    h_new = small.layers[0].forward(x, keep=False)
    np.testing.assert_array_equal(h_new, h_old[:, [0, 3]])
    fine = model.refine(10, x=x)
    assert fine.mult_arity == model.mult_arity
    assert_close("refine", fine(x), y, rtol=0.05, floor=0.05 * np.abs(y).max())


def test_a_version_1_reader_refuses_product_files(tmp_path):
    import json
    import zipfile
    model = nk.KAN([2, [1, 1], 1], device="numpy")
    path = model.save(tmp_path / "m")
    with zipfile.ZipFile(path) as z:
        header = json.loads(str(np.load(z.open("header.npy"))[()]))
    assert header["version"] == 2 and header["mult_arity"] == [[], [2], []]
    plain = nk.KAN([2, 2, 1], device="numpy").save(tmp_path / "p")
    with zipfile.ZipFile(plain) as z:
        header = json.loads(str(np.load(z.open("header.npy"))[()]))
    assert header["version"] == 1 and "mult_arity" not in header


def test_plot_draws_product_nodes(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    model, x = product_model()
    fig = model.plot(path=str(tmp_path / "p.png"))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("×") == 1
    plt.close("all")


@pytest.mark.parametrize("name", ["x1*x2", "x1*x2*x3"])
def test_the_example_recovers_the_products_exactly(name):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "examples" / "multiplication.py"
    spec = importlib.util.spec_from_file_location("multiplication_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.run(name, verbose=False)
    assert out["exact"], out["snapped"]
    assert out["rmse"] <= example.TARGET and out["rmse_snapped"] <= example.TARGET


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_a_hand_edited_mult_arity_is_an_error_not_a_crash(device):
    model = nk.KAN([2, [1, 1], 1], seed=0, device=device)
    x = np.random.default_rng(0).uniform(-1, 1, (8, 2))
    y0 = model(x)
    for bad in ([5], [2, 2]):   # groups past the layer's 3 subnodes
        model.layers[0].mult_arity = list(bad)
        model.layers[0].n_nodes = 1 + len(bad)
        with pytest.raises(ValueError, match="needs .* subnodes"):
            model.layers[0].forward(x, keep=False)
    model.layers[0].mult_arity, model.layers[0].n_nodes = [2], 2
    np.testing.assert_array_equal(model(x), y0)
