"""fit(): convergence to frozen levels, the grid schedule, minibatches, frozen scales,
the NaN guard, Ctrl-C, progress display, and boundary checks; create_dataset.
Diverging fits, interrupts inside snapshots and the model's state after a fit:
test_fit_safety.py.

The frozen levels were measured once (L-BFGS: train RMSE 4.5e-3 after 10
steps; Adam lr=0.02: 8.4e-3 after 300 steps; the spline error of G = 5 on
sin(pi x) is about 4e-3) and are set with a margin of about 30%.
"""
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize

import numkan as nk
from numkan import train

from conftest import HOST_DEVICES


def f_add(x):
    return np.sin(np.pi * x[:, 0]) + x[:, 1] ** 2


@pytest.fixture(scope="module")
def data():
    return nk.create_dataset(f_add, n_var=2, train_num=200, test_num=200, seed=0)


def params_host(model):
    return {n: np.array(model.backend.to_host(a)) for n, a in model.params.items()}


def state_host(model):
    out = params_host(model)
    out.update({f"grid{l}": np.array(model.backend.to_host(L.knots)) for l, L in enumerate(model.layers)})
    return out


# ---------------------------------------------------------------------------
# create_dataset
def test_create_dataset_shapes_ranges_and_seed():
    ds = nk.create_dataset(lambda x: x[:, :1] * x[:, 1:2], n_var=2, ranges=[(-1, 1), (2, 5)],
                           train_num=50, test_num=30, seed=3)
    assert ds["train_input"].shape == (50, 2) and ds["test_input"].shape == (30, 2)
    assert ds["train_label"].shape == (50, 1) and ds["test_label"].shape == (30, 1)
    assert ds["train_input"][:, 1].min() >= 2 and ds["train_input"][:, 1].max() <= 5
    assert ds["train_input"][:, 0].min() >= -1 and ds["train_input"][:, 0].max() <= 1
    np.testing.assert_array_equal(ds["train_label"][:, 0], ds["train_input"].prod(axis=1))
    again = nk.create_dataset(lambda x: x[:, :1] * x[:, 1:2], n_var=2, ranges=[(-1, 1), (2, 5)],
                              train_num=50, test_num=30, seed=3)
    np.testing.assert_array_equal(again["test_input"], ds["test_input"])
    other = nk.create_dataset(lambda x: x[:, 0], n_var=2, seed=4, train_num=50, test_num=30)
    assert not np.array_equal(other["train_input"], ds["train_input"])


def test_create_dataset_normalize():
    ds = nk.create_dataset(lambda x: 3 + 10 * x[:, 0], n_var=1, ranges=(0, 4), seed=1,
                           normalize_input=True, normalize_label=True)
    np.testing.assert_allclose(ds["train_input"].mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(ds["train_label"].std(0), 1, atol=1e-12)
    np.testing.assert_allclose(ds["test_label"] * ds["label_std"] + ds["label_mean"],
                               3 + 10 * (ds["test_input"] * ds["input_std"] + ds["input_mean"]))


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_var=0), "n_var"), (dict(ranges=(1, -1)), "lo < hi"), (dict(ranges=[(0, 1)] * 3), "ranges"),
    (dict(train_num=0), "train_num"), (dict(f=lambda x: x[:3, 0]), "f must map"),
    (dict(f=lambda x: np.log(x[:, 0] - 5)), "non-finite")])
def test_create_dataset_rejects_bad_arguments(kwargs, match):
    args = dict(f=lambda x: x[:, 0], n_var=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        nk.create_dataset(**args)


# ---------------------------------------------------------------------------
# convergence to frozen levels
@pytest.mark.parametrize("device", HOST_DEVICES)
def test_lbfgs_reaches_frozen_level(device, data):
    model = nk.KAN([2, 1], grid=5, seed=0, device=device)
    res = model.fit(data, steps=10, log=0)
    assert len(res["train_loss"]) == len(res["test_loss"]) == len(res["reg"]) == 10
    assert res["train_loss"][-1] < 6e-3 and res["test_loss"][-1] < 6e-3, res["train_loss"][-1]
    assert res["train_loss"][0] > res["train_loss"][-1]
    # the reported train RMSE is the model's RMSE on the data after the step
    rmse = np.sqrt(np.mean((model(data["train_input"]) - data["train_label"]) ** 2))
    assert abs(rmse - res["train_loss"][-1]) < 1e-12


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_adam_reaches_frozen_level(device, data):
    model = nk.KAN([2, 1], grid=5, seed=0, device=device)
    res = model.fit(data, opt="Adam", lr=0.02, steps=300, log=0)
    assert res["train_loss"][0] > 0.5 and res["train_loss"][-1] < 1.1e-2, res["train_loss"][-1]


def test_regularisation_shrinks_the_edges(data):
    """With lamb > 0 the fit ends with a smaller regulariser than the same fit without."""
    runs = {}
    for lamb in (0.0, 0.05):
        model = nk.KAN([2, 3, 1], grid=5, seed=0)
        res = model.fit(data, steps=5, lamb=lamb, log=0, update_grid=False)
        runs[lamb] = nk.regularization.regularization(model, data["train_input"])
        if lamb:
            assert abs(res["reg"][-1] - runs[lamb]) < 1e-9 * runs[lamb]
        else:
            assert res["reg"] == [0.0] * 5  # not evaluated when lamb = 0
    assert runs[0.05] < 0.8 * runs[0.0], runs


def test_lbfgs_line_search_satisfies_strong_wolfe(data):
    """The docstring's claim about scipy's L-BFGS-B, checked on a KAN objective."""
    model = nk.KAN([2, 3, 1], grid=5, seed=1)
    flat = train._Flat(model)
    obj = train.Objective(model, data["train_input"], data["train_label"], 0.0, (1, 2, 0, 0))
    evals = []

    def fun(theta):
        flat.set(theta)
        loss, _ = obj()
        g = flat.grad()
        evals.append((theta.copy(), loss, g))
        return loss, g

    iterates = [flat.get()]

    def callback(intermediate_result):  # scipy passes the result object to this name
        iterates.append(intermediate_result.x.copy())

    minimize(fun, iterates[0], jac=True, method="L-BFGS-B", callback=callback,
             options=dict(maxiter=40, maxcor=10, ftol=0, gtol=0))
    lookup = lambda th: next(e for e in reversed(evals) if np.array_equal(e[0], th))
    assert len(iterates) > 30
    for a, b in zip(iterates[:-1], iterates[1:]):
        _, fa, ga = lookup(a)
        _, fb, gb = lookup(b)
        d = b - a  # = step * direction
        assert fb <= fa + 1e-3 * (ga @ d) + 1e-15 * abs(fa)     # sufficient decrease
        assert abs(gb @ d) <= 0.9 * abs(ga @ d) * (1 + 1e-9)     # strong curvature condition


# ---------------------------------------------------------------------------
# schedule, minibatches, frozen scales
def test_grid_update_schedule(monkeypatch, data):
    calls = []
    real = train._update_grid
    monkeypatch.setattr(train, "_update_grid",
                        lambda m, x, margin, hidden: (calls.append(len(x)), real(m, x, margin, hidden)))
    model = nk.KAN([2, 1], grid=3, seed=0)
    model.fit(data, steps=13, stop_grid_update_step=10, grid_update_num=5, log=0)
    assert len(calls) == 5  # steps 0, 2, 4, 6, 8
    calls.clear()
    model.fit(data, opt="Adam", lr=1e-3, steps=13, stop_grid_update_step=10, grid_update_num=5,
              start_grid_update_step=3, batch=40, log=0)
    assert calls == [40, 40, 40]  # steps 4, 6, 8 on the step's minibatch
    calls.clear()
    model.fit(data, steps=3, update_grid=False, log=0)
    assert calls == []


@pytest.mark.parametrize("opt", ["LBFGS", "Adam"])
def test_minibatches_are_deterministic_given_the_seed(opt, data):
    runs = []
    for _ in range(2):
        model = nk.KAN([2, 2, 1], grid=4, seed=5)
        res = model.fit(data, opt=opt, lr=0.01, steps=4, batch=32, log=0)
        runs.append((res, params_host(model)))
    assert runs[0][0] == runs[1][0]
    for n in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][n], runs[1][1][n])
    other = nk.KAN([2, 2, 1], grid=4, seed=6).fit(data, opt=opt, lr=0.01, steps=4, batch=32, log=0)
    assert other["train_loss"] != runs[0][0]["train_loss"]


@pytest.mark.parametrize("opt", ["LBFGS", "Adam"])
def test_frozen_scales_stay_and_get_no_gradient(opt, data):
    model = nk.KAN([2, 2, 1], grid=4, seed=0, sp_trainable=False, sb_trainable=False)
    before = params_host(model)
    grads = []  # during the fit (afterwards model.grads are those of before the call)
    model.fit(data, opt=opt, lr=0.01, steps=3, log=0, lamb=0.01,
              callback=lambda step, r: grads.append({n: np.array(model.backend.to_host(g))
                                                     for n, g in model.grads.items()}))
    after = params_host(model)
    assert len(grads) == 3
    for n in before:
        if "scale" in n:
            np.testing.assert_array_equal(after[n], before[n])
            assert not any(np.any(g[n]) for g in grads)
        else:
            assert not np.array_equal(after[n], before[n])
            assert all(np.any(g[n]) for g in grads)
    assert all("scale" not in n for _, n in train._Flat(model).slots)
    with pytest.raises(ValueError, match="sp_trainable"):
        nk.KAN([2, 1], sp_trainable="no")


# ---------------------------------------------------------------------------
# NaN guard, Ctrl-C, failures
@pytest.mark.parametrize("opt", ["LBFGS", "Adam"])
def test_non_finite_loss_stops_and_restores_last_finite(opt, data):
    model = nk.KAN([2, 1], grid=4, seed=0)
    n = {"calls": 0}
    seen = []

    def loss_fn(pred, target):
        n["calls"] += 1
        seen.append(params_host(model))
        d = pred - target
        if n["calls"] > 30:
            return float("nan"), np.full_like(d, np.nan)
        return float(np.mean(d * d)), 2 * d / d.size

    with pytest.warns(RuntimeWarning, match="not finite|nan"):
        res = model.fit(data, opt=opt, lr=0.01, steps=50, loss_fn=loss_fn, log=0, update_grid=False,
                        n_init=1)  # the calls counted are those of the model's own draw
    assert 0 < len(res["train_loss"]) < 50
    final = params_host(model)
    assert all(np.all(np.isfinite(a)) for a in final.values())
    # the restored parameters are ones whose loss was evaluated and finite
    assert any(all(np.array_equal(final[k], s[k]) for k in final) for s in seen[:30])


def test_keyboard_interrupt_keeps_best_parameters(data):
    model = nk.KAN([2, 1], grid=4, seed=0)
    best = {}

    def callback(step, results):
        if results["train_loss"][-1] == min(results["train_loss"]):
            best.update(params_host(model))
        if step == 3:
            raise KeyboardInterrupt

    with pytest.warns(UserWarning, match="interrupted after 3 of 20 steps"):
        res = model.fit(data, steps=20, callback=callback, log=0)
    assert len(res["train_loss"]) == 3
    for n, a in params_host(model).items():
        np.testing.assert_array_equal(a, best[n])


def test_callback_can_stop_the_fit(data):
    model = nk.KAN([2, 1], grid=4, seed=0)
    res = model.fit(data, steps=20, callback=lambda step, r: step == 4, log=0)
    assert len(res["train_loss"]) == 4


def test_error_inside_fit_restores_the_model(data):
    model = nk.KAN([2, 1], grid=4, seed=0)
    before = state_host(model)

    def bad_loss(pred, target):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.fit(data, steps=3, loss_fn=bad_loss, log=0)
    for n, a in state_host(model).items():
        np.testing.assert_array_equal(a, before[n])


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(opt="SGD"), ValueError, "opt"), (dict(steps=-1), ValueError, "steps"),
    (dict(batch=0), ValueError, "batch"), (dict(lamb=-1.0), ValueError, "lamb"),
    (dict(lamb=0.1, batch=1), ValueError, "at least 2"), (dict(log=-1), ValueError, "log"),
    (dict(loss_fn=3), TypeError, "loss_fn"), (dict(update_grid="yes"), TypeError, "update_grid"),
    (dict(lr=0.0), ValueError, "lr")])
def test_fit_rejects_bad_arguments_and_leaves_model_unchanged(kwargs, err, match, data):
    model = nk.KAN([2, 1], grid=4, seed=0)
    before = state_host(model)
    args = dict(steps=2, log=0)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        model.fit(data, **args)
    for n, a in state_host(model).items():
        np.testing.assert_array_equal(a, before[n])


def test_fit_rejects_bad_datasets(data):
    model = nk.KAN([2, 1], grid=4, seed=0)
    with pytest.raises(ValueError, match="missing 'test_label'"):
        model.fit({k: v for k, v in data.items() if k != "test_label"}, log=0)
    bad = dict(data, train_input=data["train_input"][:, :1])
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        model.fit(bad, log=0)
    bad = dict(data, train_label=data["train_label"][:10])
    with pytest.raises(ValueError, match="rows"):
        model.fit(bad, log=0)
    nan = dict(data, train_input=data["train_input"].copy())
    nan["train_input"][3, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        model.fit(nan, log=0)
    with pytest.raises(TypeError, match="dict"):
        model.fit([1, 2], log=0)


def test_progress_display(capsys, data):
    model = nk.KAN([2, 1], grid=4, seed=0)
    model.fit(data, steps=3, log=1)
    err = capsys.readouterr().err
    assert "step 3/3" in err and "steps/s" in err and "reg" in err
    model.fit(data, steps=3, log=0)
    assert capsys.readouterr().err == ""


def test_adam_without_lr_uses_its_own_default_and_lbfgs_accepts_pykans_lr(data, monkeypatch):
    seen = []
    real = train._fit_adam

    def spy(*args):
        seen.append(args[-4])  # _fit_adam(..., lr, beta1, beta2, eps)
        return real(*args)

    model = nk.KAN([2, 1], grid=3, seed=0, device="numpy")
    monkeypatch.setattr(train, "_fit_adam", spy)
    model.fit(data, opt="Adam", steps=2, log=0)
    model.fit(data, opt="Adam", steps=2, lr=0.05, log=0)
    assert seen == [train.ADAM_LR, 0.05]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(data, steps=1, lr=1.0, log=0)   # pykan's habit: no warning
        model.fit(data, steps=1, log=0)
    with pytest.warns(UserWarning, match="lr=0.1 is ignored"):
        model.fit(data, steps=1, lr=0.1, log=0)


def test_history_names_say_rmse(data):
    model = nk.KAN([2, 1], grid=3, seed=0, device="numpy")
    res = model.fit(data, steps=3, log=0)
    assert res["train_rmse"] is res["train_loss"] and res["test_rmse"] is res["test_loss"]
    x, y = data["train_input"], data["train_label"]
    assert np.isclose(res["train_rmse"][-1] ** 2, model.loss_and_grad(x, y)[0], rtol=0.5)
    custom = model.fit(data, steps=2, log=0,
                       loss_fn=lambda p, t: (float(np.mean(np.abs(p - t))), np.sign(p - t) / p.size))
    assert "train_rmse" not in custom and len(custom["train_loss"]) == 2


def test_fit_runs_blas_on_one_thread_and_puts_it_back(data):
    """Inside fit (seen from its callback) every BLAS library runs one thread, in every
    fit of a process (the libraries are found once); after it, each has its threads back."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}
    assert before
    inside = []

    def callback(step, results):
        inside.append({i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()
                       if i["user_api"] == "blas"})

    for _ in range(2):
        nk.KAN([2, 3, 1], grid=4, seed=0).fit(data, steps=2, log=0, callback=callback)
    assert len(inside) == 4 and all(d == {p: 1 for p in before} for d in inside)
    after = {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}
    assert after == before
