"""Bad input at the public boundary: a ValueError that names the argument, the
value it got and what was expected; and a rejected call changes nothing."""
import re

import numpy as np
import pytest

import numkan as nk

from conftest import HOST_DEVICES

GOOD = dict(width=[2, 3, 1], grid=4, k=3, seed=0)


# ---------------------------------------------------------------------------
# constructor arguments
@pytest.mark.parametrize("arg, value, shown", [
    ("width", [2, 0, 1], "0"),
    ("width", [2, -3], "-3"),
    ("width", [2, 2.5, 1], "2.5"),
    ("width", [2, True], "True"),
    ("width", [3], "[3]"),
    ("width", [], "[]"),
    ("width", "2,1", "'2,1'"),
    ("width", 5, "5"),
    ("grid", 0, "0"),
    ("grid", -2, "-2"),
    ("grid", 2.5, "2.5"),
    ("grid", "5", "'5'"),
    ("grid", None, "None"),
    ("k", 0, "0"),
    ("k", 1.5, "1.5"),
    ("k", "3", "'3'"),
    ("dtype", np.int32, "int32"),
    ("dtype", "float16", "float16"),
    ("dtype", np.complex128, "complex128"),
    ("dtype", "double-ish", "double-ish"),
    ("device", "gpu", "'gpu'"),
    ("device", None, "None"),
    ("device", "CPU", "'CPU'"),
    ("base_fun", "relu", "'relu'"),
    ("base_fun", None, "None"),
    ("grid_range", (1, -1), "(1, -1)"),
    ("grid_range", (0, 0), "(0, 0)"),
    ("grid_range", (0, np.inf), "inf"),
    ("grid_range", (0, 1, 2), "(0, 1, 2)"),
    ("grid_range", "ab", "'ab'"),
    ("grid_range", 3, "3"),
])
def test_bad_constructor_argument(arg, value, shown):
    with pytest.raises(ValueError) as info:
        nk.KAN(**{**GOOD, arg: value})
    msg = str(info.value)
    assert re.search(rf"\b{arg}\b", msg), f"message does not name {arg!r}: {msg!r}"
    assert shown in msg, f"message does not show the value {shown!r}: {msg!r}"
    assert "must" in msg or "expected" in msg, f"message does not say what was expected: {msg!r}"


# ---------------------------------------------------------------------------
# inputs of forward, __call__, backward and loss_and_grad
BAD_X = [  # (x for a model with 2 inputs, text the message must show)
    (np.ones(5), "(5,)"),
    (np.ones((5, 2, 1)), "(5, 2, 1)"),
    (np.float64(1.0), "()"),
    (np.ones((5, 3)), "(5, 3)"),
    (np.ones((5, 1)), "(5, 1)"),
    (np.ones((0, 2)), "(0, 2)"),
    (np.array([[0.5, np.nan]]), "nan"),
    (np.array([[np.inf, 0.5]]), "inf"),
    (np.array([[0.5, -np.inf], [0.0, 0.0]]), "-inf"),
    ([["a", "b"]], "<U1"),
    ([[1.0, None]], "object"),
    (None, "object"),
    ([[1.0, 2.0], [3.0]], "list"),                # ragged
    (np.ones((3, 2), dtype=complex), "complex"),
]


@pytest.mark.parametrize("call", ["forward", "__call__", "loss_and_grad"])
@pytest.mark.parametrize("x, shown", BAD_X, ids=[repr(s) for _, s in BAD_X])
def test_bad_x(call, x, shown):
    model = nk.KAN(**GOOD, device="numpy")
    args = (x, np.zeros((len(x) if hasattr(x, "__len__") else 1, 1))) if call == "loss_and_grad" else (x,)
    with pytest.raises(ValueError) as info:
        getattr(model, call)(*args)
    msg = str(info.value)
    assert re.search(r"\bx\b", msg), f"message does not name x: {msg!r}"
    assert shown in msg, f"message does not show {shown!r}: {msg!r}"


def test_x_overflowing_float32():
    """Finite in float64 but not after conversion to the model's float32."""
    model = nk.KAN(**GOOD, dtype=np.float32, device="numpy")
    with pytest.raises(ValueError, match=r"\bx\b.*inf.*float32"):
        model.forward(np.array([[1e300, 0.0]]))


@pytest.mark.parametrize("dy, shown", [
    (np.ones((4, 2)), "(4, 2)"),     # wrong width
    (np.ones((3, 1)), "(3, 1)"),     # wrong batch: the forward had 4 rows
    (np.ones(4), "(4,)"),
    (np.array([[1.0], [np.nan], [0.0], [0.0]]), "nan"),
])
def test_bad_dy(dy, shown):
    model = nk.KAN(**GOOD, device="numpy")
    model.forward(np.zeros((4, 2)))
    with pytest.raises(ValueError) as info:
        model.backward(dy)
    msg = str(info.value)
    assert re.search(r"\bdy\b", msg) and shown in msg, msg


@pytest.mark.parametrize("y_true, shown", [
    (np.ones((4, 2)), "(4, 2)"),
    (np.ones((3, 1)), "(3, 1)"),
    (np.ones(3), "(3, 1)"),
    (np.array([[1.0], [np.inf], [0.0], [0.0]]), "inf"),
])
def test_bad_target(y_true, shown):
    model = nk.KAN(**GOOD, device="numpy")
    with pytest.raises(ValueError) as info:
        model.loss_and_grad(np.zeros((4, 2)), y_true)
    msg = str(info.value)
    assert re.search(r"\by_true\b", msg) and shown in msg, msg


def test_backward_needs_forward():
    model = nk.KAN(**GOOD, device="numpy")
    with pytest.raises(RuntimeError, match="forward"):
        model.backward(np.ones((4, 1)))
    model(np.zeros((4, 2)))  # model(x) keeps nothing for backward
    with pytest.raises(RuntimeError, match="forward"):
        model.backward(np.ones((4, 1)))


# ---------------------------------------------------------------------------
# a rejected call changes nothing
def snapshot(model):
    host = model.backend.to_host
    state = {}
    for l, layer in enumerate(model.layers):
        for n in ("knots", "coef", "scale_base", "scale_sp", "mask", "dcoef", "dscale_base", "dscale_sp"):
            state[f"{l}.{n}"] = host(getattr(layer, n)).copy()
    return state


BAD_CALLS = {
    "forward(bad x)": lambda m: m.forward(np.ones((7, 3))),
    "forward(nan x)": lambda m: m.forward(np.full((7, 2), np.nan)),
    "model(bad x)": lambda m: m(np.ones(7)),
    "loss_and_grad(bad x)": lambda m: m.loss_and_grad(np.ones((7, 3)), np.ones((7, 1))),
    "loss_and_grad(bad y_true)": lambda m: m.loss_and_grad(np.ones((7, 2)), np.ones((6, 1))),
    "loss_and_grad(nan y_true)": lambda m: m.loss_and_grad(np.ones((7, 2)), np.full((7, 1), np.nan)),
    "backward(bad dy)": lambda m: m.backward(np.ones((7, 1))),
}


@pytest.mark.parametrize("device", HOST_DEVICES)
@pytest.mark.parametrize("bad", list(BAD_CALLS))
def test_rejected_call_changes_nothing(device, bad):
    """forward(good), a rejected call, backward(good): exactly as if the bad call never happened."""
    rng = np.random.default_rng(3)
    x0, y0 = rng.uniform(-1, 1, (6, 2)), rng.uniform(-1, 1, (6, 1))
    x, dy = rng.uniform(-1, 1, (5, 2)), rng.uniform(-1, 1, (5, 1))
    models = [nk.KAN(**GOOD, device=device) for _ in range(2)]
    results = []
    for n, model in enumerate(models):
        model.loss_and_grad(x0, y0)          # gradients start non-zero
        y = model.forward(x)
        before = snapshot(model)
        if n == 1:
            with pytest.raises(ValueError):
                BAD_CALLS[bad](model)
            after = snapshot(model)
            for key in before:
                np.testing.assert_array_equal(after[key], before[key], err_msg=f"{bad} changed {key}")
        dx = model.backward(dy)              # still the batch of the good forward
        results.append((y, dx, snapshot(model)))
    (y_a, dx_a, s_a), (y_b, dx_b, s_b) = results
    np.testing.assert_array_equal(dx_b, dx_a, err_msg=f"after {bad}, backward gave another dx")
    for key in s_a:
        np.testing.assert_array_equal(s_b[key], s_a[key], err_msg=f"after {bad}, {key} differs")
    assert np.any(s_b["0.dcoef"] != before["0.dcoef"]), "backward added nothing: the test would not see a change"


# ---------------------------------------------------------------------------
# knots: checked wherever they are made
@pytest.mark.parametrize("grid_range, dtype, shown", [
    ((-1e308, 1e308), np.float64, "-inf"),                          # h overflows
    ((-5e307, 5e307), np.float64, "overflows"),                      # finite knots, infinite span
    ((1e6, 1e6 + 1e-3), np.float32, "equal interior knots"),         # float32 rounding merges them
    ((0.0, 1e-300), np.float32, "equal interior knots"),             # all 0 in float32
    ((0.0, 5e-308), np.float64, "smallest normal"),                  # subnormal spacing
])
def test_grid_range_whose_knots_are_unusable(grid_range, dtype, shown):
    with pytest.raises(ValueError, match="grid_range") as info:
        nk.KAN([1, 1], grid=5, grid_range=grid_range, dtype=dtype)
    assert shown in str(info.value) and np.dtype(dtype).name in str(info.value)


def test_grid_range_usable_in_float64_only():
    nk.KAN([1, 1], grid=5, grid_range=(1e6, 1e6 + 1e-3), dtype=np.float64)  # distinct in float64


@pytest.mark.parametrize("edit, shown", [
    (lambda t: t.__setitem__((1, 4), np.nan), "input 1 has t[4] = nan"),
    (lambda t: t.__setitem__((0, 0), -np.inf), "input 0 has t[0] = -inf"),
    (lambda t: t.__setitem__((0, 5), 5.0), "non-decreasing"),
    (lambda t: t.__setitem__((0, 4), t[0, 3]), "equal interior knots"),
    (lambda t: t.__setitem__((0, slice(None)), t[0] * 1e308), "overflows"),
])
def test_check_knots_names_the_problem(edit, shown):
    from numkan._validate import check_knots
    t = np.tile(np.linspace(-1.6, 1.6, 5 + 2 * 3 + 1), (2, 1))
    np.testing.assert_array_equal(check_knots("knots", t, 3, np.float32), t.astype(np.float32))
    edit(t)
    with pytest.raises(ValueError, match="knots") as info:
        check_knots("knots", t, 3, np.float64)
    assert shown in str(info.value)


def test_check_knots_allows_repeated_end_knots_and_checks_the_shape():
    from numkan._validate import check_knots
    t = np.array([[0, 0, 0, 0, 0.5, 1, 1, 1, 1.0]])  # clamped ends: the interior is strictly increasing
    assert check_knots("knots", t, 3, np.float64).dtype == np.float64
    for bad in (t[0], t[:, :7], np.array([["a"] * 9])):
        with pytest.raises(ValueError, match="knots"):
            check_knots("knots", bad, 3, np.float64)


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_update_grid_on_samples_whose_knots_overflow(device):
    model = nk.KAN([2, 5, 1], device=device)
    before = [(np.array(L.knots), np.array(L.coef)) for L in model.layers]
    with pytest.raises(ValueError, match=r"x \(margin=0.0\) for layer 0 .*overflows float64"):
        model.update_grid(np.array([[8e307, -8e307], [-8e307, 8e307], [0, 1.0]]))
    for L, (t, c) in zip(model.layers, before):
        np.testing.assert_array_equal(np.array(L.knots), t)
        np.testing.assert_array_equal(np.array(L.coef), c)


def test_refine_whose_knots_merge_in_float32():
    model = nk.KAN([1, 1], grid=2, grid_range=(1000.0, 1000.01), dtype=np.float32)
    with pytest.raises(ValueError, match="new_grid=400 for layer 0 .*float32"):
        model.refine(400)
    assert model.refine(4).grid == 4
