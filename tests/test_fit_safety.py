"""fit() never loses the model: diverging fits, Ctrl-C at the worst moment,
callbacks that stop, failures, and arguments checked up front.

A diverging fit must stop where the first NaN or inf appears and restore the
last finite parameters; the cases run in a fresh interpreter, so that a
crash in a kernel fails a test instead of ending the test run. Spies on the
backend's kernels record what reached them: no kernel call may get a
non-finite parameter, and no backward pass a non-finite value at all.
"""
import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import numkan as nk
from numkan import train

DIVERGING = textwrap.dedent("""
    import json, warnings
    import numpy as np, numkan as nk
    from numkan.kernels import get_backend

    be = get_backend("cpu")
    seen = {"forward": 0, "backward": 0}
    fwd, bwd = be.spline_forward, be.spline_backward

    def spy_forward(y, x, grid, coef, scale_base, scale_sp, *rest):
        if not be.all_finite(grid, coef, scale_base, scale_sp):
            seen["forward"] += 1      # a kernel got a non-finite parameter
        return fwd(y, x, grid, coef, scale_base, scale_sp, *rest)

    def spy_backward(dx, dcoef, dsb, dsp, dy, x, grid, coef, scale_base, scale_sp, *rest):
        if not be.all_finite(dy, x, grid, coef, scale_base, scale_sp):
            seen["backward"] += 1     # a NaN or inf was spread into the gradients
        return bwd(dx, dcoef, dsb, dsp, dy, x, grid, coef, scale_base, scale_sp, *rest)

    be.spline_forward, be.spline_backward = spy_forward, spy_backward

    def unbounded(pred, target):  # no minimum: L-BFGS runs the outputs off to infinity
        return -1e3 * float(pred.mean()), np.full_like(pred, -1e3 / pred.size)

    ds = nk.create_dataset(lambda x: np.sin(np.pi * x[:, :1]) + x[:, 1:] ** 2, n_var=2,
                           train_num=100, test_num=50, seed=0)
    cases = {
        "issue": ("Adam", "float32", dict(lr=1e6)),     # the reproducer of issue 19
        # without grid updates the last finite parameters are those of a completed step
        "adam32": ("Adam", "float32", dict(lr=1e38, update_grid=False)),
        "adam64": ("Adam", "float64", dict(lr=1e307, update_grid=False)),
        "lbfgs32": ("LBFGS", "float32", dict(loss_fn=unbounded)),
        # margin 0: a trajectory whose first non-finite value is a hidden layer's output
        "lbfgs64": ("LBFGS", "float64", dict(loss_fn=unbounded, grid_margin=0.0)),
        # finite parameters whose hidden values overflow, at step 1's grid update
        "grid": ("LBFGS", "float32", dict()),
    }
    out = {}
    for name, (opt, dtype, kw) in cases.items():
        seen.update(forward=0, backward=0)
        m = nk.KAN([2, 5, 1], dtype=np.dtype(dtype), seed=0)
        if name == "grid":
            m.params["layers.0.scale_base"][:] = 3e38  # silu(1) * 3e38 * 2 inputs > 3.4e38
        snaps = [{n: a.copy() for n, a in m.params.items()}]   # the start, then after each step
        cb = lambda step, r: snaps.append({n: a.copy() for n, a in m.params.items()})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # n_init=1: these cases follow the model's own draw (restarts: test_restarts.py)
            res = m.fit(ds, opt=opt, steps=60, log=0, callback=cb, n_init=1, **kw)
        final = m.params
        out[name] = {
            "steps": len(res["train_loss"]),
            "warnings": [str(w.message) for w in caught if w.category is RuntimeWarning
                         and "fit stopped" in str(w.message)],
            "finite": all(bool(np.isfinite(a).all()) for a in final.values()),
            "finite_output": bool(np.isfinite(m(ds["train_input"])).all()),
            # which saved state the model came back to: -1 the last, -2 the one before
            "restored": [j for j in (-1, -2) if len(snaps) >= -j
                         and all(np.array_equal(final[n], snaps[j][n]) for n in final)],
            "seen": dict(seen),
        }
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def diverging():
    proc = subprocess.run([sys.executable, "-c", DIVERGING], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_issue_reproducer_ends_with_a_finite_model(diverging):
    case = diverging["issue"]
    assert case["finite"] and case["seen"] == {"forward": 0, "backward": 0}, case
    assert case["steps"] == 60 or case["warnings"], case


@pytest.mark.parametrize("name,first,restored", [
    ("adam32", "the Adam update of step 1", [-1]), ("adam64", "the outputs of layer 0", [-2]),
    ("lbfgs32", "not finite", None), ("lbfgs64", "the outputs of layer 1 are not finite", None),
    ("grid", "at step 1 of 60: the outputs of layer 0 are not finite", [-1])])
def test_diverging_fit_stops_where_the_first_non_finite_value_appears(diverging, name, first,
                                                                      restored):
    case = diverging[name]
    assert len(case["warnings"]) == 1, case
    message = case["warnings"][0]
    assert first in message and message.endswith(
        "restored the last finite parameters (the last whose objective was finite)"), message
    assert case["steps"] < 60 and case["finite"], case
    # the objective was finite at the restored parameters (in "grid" no step got that
    # far: the model is as before the call, whose hidden values overflow)
    assert case["finite_output"] != (name == "grid"), case
    # stopped before any kernel saw a non-finite parameter or any backward a non-finite value
    assert case["seen"] == {"forward": 0, "backward": 0}, case
    if restored:
        # Adam: after a bad update, the parameters before it (-1: the last step's, or the
        # start); after a bad forward pass, those before the update that led to it (-2)
        assert case["restored"][:1] == restored, case


def test_flat_set_rejects_an_iterate_that_overflows_the_dtype():
    model = nk.KAN([2, 1], grid=3, dtype=np.float32)
    flat = train._Flat(model)
    before = {n: a.copy() for n, a in model.params.items()}
    theta = flat.get()
    theta[1] = 1e39  # finite in float64, inf in float32
    with pytest.raises(train._NonFinite, match="float32"):
        flat.set(theta)
    for n, a in model.params.items():
        np.testing.assert_array_equal(a, before[n])


# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    return nk.create_dataset(lambda x: np.sin(np.pi * x[:, :1]) + x[:, 1:] ** 2, n_var=2,
                             train_num=100, test_num=50, seed=0)


def host_state(model):
    out = {n: np.array(a) for n, a in model.params.items()}
    out.update({f"grid{l}": np.array(L.knots) for l, L in enumerate(model.layers)})
    return out


@pytest.mark.parametrize("opt", ["LBFGS", "Adam"])
def test_ctrl_c_while_saving_the_best_restores_one_whole_step(opt, data, monkeypatch):
    """A KeyboardInterrupt in the middle of copying the best parameters (after
    layer 0 is copied, before layer 1 is) leaves the previous best whole."""
    model = nk.KAN([2, 3, 1], grid=4, seed=0)
    be = model.backend
    steps = {}
    state = {"armed": False, "in_best": False}

    def callback(step, results):
        steps[step] = (results["train_loss"][-1], host_state(model))
        state["armed"] = step == 2

    real_copy, real_save = be.copy_into, train._State.save_best

    def copy_into(dst, src):
        if state["armed"] and state["in_best"] and src is model.layers[1].coef:
            state["armed"] = False
            raise KeyboardInterrupt
        return real_copy(dst, src)

    def save_best(self, *args):
        state["in_best"] = True
        try:
            return real_save(self, *args)
        finally:
            state["in_best"] = False

    monkeypatch.setattr(be, "copy_into", copy_into)
    monkeypatch.setattr(train._State, "save_best", save_best)
    with pytest.warns(UserWarning, match="interrupted after 3 of 10 steps"):
        model.fit(data, opt=opt, lr=0.01 if opt == "Adam" else 1.0, steps=10, log=0,
                  update_grid=False, callback=callback)
    assert not state["armed"]  # the interrupt did come from inside the copy of step 3's best
    best = min(steps, key=lambda s: steps[s][0])
    for n, a in host_state(model).items():
        np.testing.assert_array_equal(a, steps[best][1][n], err_msg=n)


@pytest.mark.parametrize("opt", ["LBFGS", "Adam"])
def test_stop_iteration_in_the_callback_stops_cleanly(opt, data):
    """As in scipy.optimize: the fit ends, returning the steps so far, no exception, no warning."""
    model = nk.KAN([2, 1], grid=4, seed=0)

    def callback(step, results):
        if step == 3:
            raise StopIteration

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = model.fit(data, opt=opt, lr=0.01 if opt == "Adam" else 1.0, steps=10, log=0,
                        callback=callback)
    assert len(res["train_loss"]) == 3


@pytest.mark.parametrize("opt", ["LBFGS", "Adam"])
def test_batch_of_one_with_grid_updates_is_rejected_up_front(opt, data):
    model = nk.KAN([2, 1], grid=4, seed=0)
    before = host_state(model)
    with pytest.raises(ValueError, match=r"batch=1 .*update_grid=False"):
        model.fit(data, opt=opt, steps=5, batch=1, log=0)
    for n, a in host_state(model).items():
        np.testing.assert_array_equal(a, before[n])
    # without grid updates in the schedule a batch of one is fine
    model.fit(data, opt="Adam", lr=0.01, steps=3, batch=1, log=0, update_grid=False)
    model.fit(data, opt="Adam", lr=0.01, steps=3, batch=1, log=0, start_grid_update_step=5)


def test_non_finite_model_is_rejected_up_front(data):
    model = nk.KAN([2, 3, 1], grid=4, seed=0)
    model.params["layers.1.scale_sp"][2, 0] = np.inf
    before = host_state(model)
    with pytest.raises(ValueError, match=r"layers\.1\.scale_sp has NaN or inf"):
        model.fit(data, steps=2, log=0)
    for n, a in host_state(model).items():
        np.testing.assert_array_equal(a, before[n])


@pytest.mark.parametrize("opt", ["LBFGS", "Adam"])
def test_failed_fit_leaves_grads_and_the_kept_input_as_they_were(opt, data):
    """An error inside fit leaves the whole model as it was: parameters, knots,
    the gradient buffers (the same live arrays) and a pending backward."""
    model = nk.KAN([2, 3, 1], grid=4, seed=0)
    rng = np.random.default_rng(1)
    x, dy = rng.uniform(-1, 1, (7, 2)), rng.standard_normal((7, 1))
    model.forward(x)
    model.backward(dy)
    before = host_state(model)
    grads = {n: g.copy() for n, g in model.grads.items()}
    live = model.grads
    kept = [L._x for L in model.layers]
    calls = {"n": 0}

    def loss_fn(pred, target):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        d = pred - target
        return float(np.mean(d * d)), 2 * d / d.size

    with pytest.raises(RuntimeError, match="boom"):
        model.fit(data, opt=opt, lr=0.01 if opt == "Adam" else 1.0, steps=4, log=0,
                  loss_fn=loss_fn)
    for n, a in host_state(model).items():
        np.testing.assert_array_equal(a, before[n], err_msg=n)
    for n, g in model.grads.items():
        np.testing.assert_array_equal(g, grads[n], err_msg=n)
        assert g is live[n]
    assert all(L._x is k for L, k in zip(model.layers, kept))
    model.zero_grad()
    assert model.backward(dy).shape == x.shape  # the pending backward is still the user's


def test_fit_that_returns_keeps_the_training_data_for_attribution(data):
    """As pykan's cached activations: attribute() after fit, without x, sees the training data."""
    model = nk.KAN([2, 3, 1], grid=4, seed=0)
    model.fit(data, steps=2, log=0)
    np.testing.assert_array_equal(np.asarray(model.layers[0]._x), data["train_input"])
    model.attribute()
