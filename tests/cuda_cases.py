"""CUDA backend checks, run by ``test_cuda.py`` in a subprocess.

Not collected by a plain ``pytest`` run (the name does not start with
``test_``): numba decides at its first import of ``numba.cuda`` whether to use
the simulator, so these run in a fresh process with ``NUMBA_ENABLE_CUDASIM=1``
(CI, no GPU) or without it on a GPU machine. Every CUDA kernel is compared
with the NumPy reference on the same inputs; errors are measured as
max |cuda - reference| / max |reference| per array, float64 against 1e-10 and
float32 against 1e-5.
"""
import numpy as np
import pytest

import numkan as nk
from numkan.kernels import cuda as C
from numkan.kernels import reference as R

RTOL = {np.float64: 1e-10, np.float32: 1e-5}
SIM = C._SIMULATOR  # numba's CUDA simulator, not a GPU


def rel_err(actual, expected):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    err = np.abs(actual - expected)
    idx = np.unravel_index(int(np.argmax(err)), err.shape)
    return float(err[idx] / max(np.max(np.abs(expected)), 1e-300)), idx


def check(name, actual, expected, dtype):
    e, idx = rel_err(actual, expected)
    assert e <= RTOL[dtype], (f"{name}: relative error {e:.3g} > {RTOL[dtype]:g} at {idx}: "
                              f"{np.asarray(actual)[idx]!r} vs {np.asarray(expected)[idx]!r}")


def make_layer(rng, B, I, O, G, k, dtype, knots):
    """Random inputs and parameters; x hits knots, the ends and the outside of the grid."""
    n = G + 2 * k + 1
    if knots == "uniform":
        grid = np.tile(np.linspace(-1, 1, n), (I, 1))
    else:  # non-uniform, different per input, with one repeated knot
        grid = np.sort(rng.uniform(-1.2, 1.2, (I, n)), axis=1)
        grid[:, n // 2] = grid[:, n // 2 - 1]
    x = rng.uniform(-1.5, 1.5, (B, I))
    x[0] = grid[:, 0]                    # the first knot (inside)
    x[1] = grid[:, n - 1]                # the last knot (outside: half-open)
    x[2] = grid[:, k + 1]                # an interior knot
    x[3] = grid[:, n // 2]               # the repeated knot
    x[4] = grid[:, 0] - 0.25             # left of every knot
    coef = rng.normal(size=(I, G + k, O))
    sb, sp = rng.normal(size=(I, O)), rng.normal(size=(I, O))
    mask = (rng.random((I, O)) > 0.2).astype(float)
    dy = rng.normal(size=(B, O))
    return [a.astype(dtype) for a in (x, grid, coef, sb, sp, mask)], dy.astype(dtype)


def run_both(arrays, dy, k, base_fun, dtype):
    x, grid, coef, sb, sp, mask = arrays
    B, I = x.shape
    O = coef.shape[2]
    y = np.zeros((B, O), dtype)
    R.spline_forward(y, *arrays, k, base_fun)
    # the gradients are added into buffers that already hold values
    start = [np.full((B, I), 0.5, dtype), np.full(coef.shape, -0.25, dtype),
             np.full((I, O), 0.125, dtype), np.full((I, O), 1.0, dtype)]
    ref = [a.copy() for a in start]
    R.spline_backward(*ref, dy, *arrays, k, base_fun)

    dev = [C.asarray(a, dtype) for a in arrays]
    yd = C.zeros((B, O), dtype)
    C.fill(yd, 7.0)  # forward overwrites
    C.spline_forward(yd, *dev, k, base_fun)
    gd = [C.asarray(a, dtype) for a in start]
    C.spline_backward(*gd, C.asarray(dy, dtype), *dev, k, base_fun)
    return (y, ref), (C.to_host(yd), [C.to_host(a) for a in gd])


CASES = [  # B, I, O, G, k, dtype, base_fun, knots
    (9, 3, 5, 4, 1, np.float64, "silu", "random"),
    (9, 2, 3, 3, 2, np.float64, "identity", "random"),
    (9, 3, 5, 5, 3, np.float64, "silu", "uniform"),
    (9, 2, 4, 2, 4, np.float64, "silu", "random"),
    (70, 2, 1, 4, 3, np.float64, "silu", "random"),     # several batch chunks, one output
    (9, 2, 40, 3, 3, np.float64, "zero", "random"),     # 32 lanes along the outputs
    (9, 3, 5, 4, 3, np.float32, "silu", "random"),
    (9, 2, 3, 3, 1, np.float32, "silu", "uniform"),
    (40, 2, 50, 3, 2, np.float32, "silu", "random"),    # two outputs per lane, several chunks
]


@pytest.mark.parametrize("B,I,O,G,k,dtype,base_fun,knots", CASES)
def test_layer_kernels_match_reference(B, I, O, G, k, dtype, base_fun, knots):
    rng = np.random.default_rng(B * 1000 + O * 10 + k)
    arrays, dy = make_layer(rng, B, I, O, G, k, dtype, knots)
    (y, ref), (yd, got) = run_both(arrays, dy, k, base_fun, dtype)
    check("y", yd, y, dtype)
    for name, a, b in zip(("dx", "dcoef", "dscale_base", "dscale_sp"), got, ref):
        check(name, a, b, dtype)
    # dx=None (the input gradient not wanted): the same parameter gradients
    dev = [C.asarray(a, dtype) for a in arrays]
    start = [np.full(arrays[2].shape, -0.25, dtype), np.full((I, O), 0.125, dtype),
             np.full((I, O), 1.0, dtype)]
    gd = [C.asarray(a, dtype) for a in start]
    C.spline_backward(None, *gd, C.asarray(dy, dtype), *dev, k, base_fun)
    for name, a, b in zip(("dcoef", "dscale_base", "dscale_sp"), gd, ref[1:]):
        check(name + " (dx=None)", C.to_host(a), b, dtype)


def test_backward_with_basis_tiles(monkeypatch):
    """A fine grid whose coefficient-gradient tile does not fit: several basis tiles."""
    monkeypatch.setattr(C, "_SHARED_BUDGET", 6300)
    B, I, O, G, k = 9, 2, 3, 12, 3
    TX, TY, RB, RO, MT, nchunk = C._backward_config(B, I, O, G + k, k, 8)
    assert MT < G + k, "the test must exercise more than one basis tile"
    rng = np.random.default_rng(5)
    arrays, dy = make_layer(rng, B, I, O, G, k, np.float64, "random")
    (y, ref), (yd, got) = run_both(arrays, dy, k, "silu", np.float64)
    check("y", yd, y, np.float64)
    for name, a, b in zip(("dx", "dcoef", "dscale_base", "dscale_sp"), got, ref):
        check(name, a, b, np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_training_ops_match_reference(dtype):
    rng = np.random.default_rng(1)
    y, t = rng.normal(size=(13, 3)).astype(dtype), rng.normal(size=(13, 3)).astype(dtype)
    dy = np.zeros_like(y)
    loss = R.mse_loss_grad(dy, y, t)
    dyd = C.zeros(y.shape, dtype)
    lossd = C.mse_loss_grad(dyd, C.asarray(y, dtype), C.asarray(t, dtype))
    assert abs(lossd - loss) <= RTOL[dtype] * loss
    check("dy", C.to_host(dyd), dy, dtype)

    p, g = rng.normal(size=(4, 5, 3)).astype(dtype), rng.normal(size=(4, 5, 3)).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    pd, gd, md, vd = (C.asarray(a, dtype) for a in (p, g, m, v))
    for t_ in (1, 2, 3):
        R.adam_step(p, g, m, v, 0.01, 0.9, 0.999, 1e-8, t_)
        C.adam_step(pd, gd, md, vd, 0.01, 0.9, 0.999, 1e-8, t_)
    for name, a, b in (("p", pd, p), ("m", md, m), ("v", vd, v)):
        check(name, C.to_host(a), b, dtype)

    # the last layer and its loss in one call: the three launches, the reference's values
    arrays, target = make_layer(rng, 37, 3, 2, 4, 3, dtype, "nonuniform")
    x, grid, coef, sb, sp, mask = arrays
    yr, dxr = np.empty((37, 2), dtype), np.zeros((37, 3), dtype)
    gr = [np.zeros(a.shape, dtype) for a in (coef, sb, sp)]
    loss_r = R.spline_mse(yr, dxr, *gr, target, x, grid, coef, sb, sp, mask, 3, "silu")
    dev = [C.asarray(a, dtype) for a in arrays]
    yd, dxd = C.zeros((37, 2), dtype), C.zeros((37, 3), dtype)
    gd = [C.zeros(a.shape, dtype) for a in (coef, sb, sp)]
    loss_d = C.spline_mse(yd, dxd, *gd, C.asarray(target, dtype), *dev, 3, "silu")
    assert abs(loss_d - loss_r) <= RTOL[dtype] * loss_r
    for name, a, b in zip(("y", "dx", "dcoef", "dscale_base", "dscale_sp"), (yd, dxd, *gd), (yr, dxr, *gr)):
        check(f"spline_mse {name}", C.to_host(a), b, dtype)

    assert C.all_finite(C.asarray(y, dtype))
    bad = y.copy()
    bad[7, 2] = np.inf
    assert not C.all_finite(C.asarray(bad, dtype))


def test_device_arrays_cast_and_copy():
    a = np.arange(12.0).reshape(3, 4)
    d = C.asarray(a, np.float64)
    e = C.asarray(d, np.float32)           # device -> device, cast
    assert e.dtype == np.float32 and np.array_equal(C.to_host(e), a.astype(np.float32))
    f = C.asarray(d, np.float64)           # a copy, never the caller's memory
    C.fill(f, 0)
    assert np.array_equal(C.to_host(d), a)
    h = np.arange(12.0)[::-1].copy()
    C.upload_into(f, h.reshape(3, 4))  # host -> the existing device array, in place
    assert np.array_equal(C.to_host(f), h.reshape(3, 4))
    with pytest.raises(ValueError, match="one shape and dtype"):
        C.upload_into(f, h.reshape(4, 3))
    with pytest.raises(ValueError, match="one shape and dtype"):
        C.upload_into(f, h.reshape(3, 4).astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_same_seed_same_model_on_cuda_and_cpu(dtype):
    a = nk.KAN([3, 4, 2], grid=5, k=3, seed=11, dtype=dtype, device="cpu")
    b = nk.KAN([3, 4, 2], grid=5, k=3, seed=11, dtype=dtype, device="cuda")
    for name, p in a.params.items():
        q = b.params[name]
        assert not isinstance(q, np.ndarray), f"{name} is not on the device"
        assert np.array_equal(C.to_host(q), p), name


def adam_run(model, x, y, steps):
    """Plain Adam through the backend ops only (what numkan.train does on every device)."""
    be, dt = model.backend, model.dtype
    xb, yb = be.asarray(x, dt), be.asarray(y, dt)
    state = {n: (be.zeros(p.shape, dt), be.zeros(p.shape, dt)) for n, p in model.params.items()}
    losses = []
    for t in range(1, steps + 1):
        model.zero_grad()
        out = model.forward(xb, return_device=True)
        dy = be.zeros(out.shape, dt)
        losses.append(be.mse_loss_grad(dy, out, yb))
        model.backward(dy)
        for n, p in model.params.items():
            m, v = state[n]
            be.adam_step(p, model.grads[n], m, v, 0.02, 0.9, 0.999, 1e-8, t)
    return losses


@pytest.mark.parametrize("dtype", [np.float64])  # float32 Adam is checked op by op above
def test_adam_steps_on_cuda_match_cpu(dtype):
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (8, 2))
    y = np.sin(np.pi * x[:, :1]) * x[:, 1:]
    cpu = nk.KAN([2, 2, 1], grid=4, k=3, seed=3, dtype=dtype, device="cpu")
    gpu = nk.KAN([2, 2, 1], grid=4, k=3, seed=3, dtype=dtype, device="cuda")
    lc, lg = adam_run(cpu, x, y, 3), adam_run(gpu, x, y, 3)
    # float32 Adam divides by sqrt(v) + eps, which amplifies the last-bit
    # differences of the gradients; compare the float32 run a little looser
    tol = RTOL[dtype] if dtype == np.float64 else 1e-4
    assert np.allclose(lg, lc, rtol=tol, atol=0), (lg, lc)
    assert lc[-1] < lc[0]
    for name, p in cpu.params.items():
        e, idx = rel_err(C.to_host(gpu.params[name]), p)
        assert e <= tol, f"{name}: {e:.3g} at {idx}"


def test_model_device_io_and_to():
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (6, 3))
    model = nk.KAN([3, 2], grid=3, k=2, seed=1, device="cuda")
    host = model(x)
    assert isinstance(host, np.ndarray) and host.shape == (6, 2)
    from_dev = model(C.asarray(x, np.float32))          # a device array of another dtype
    assert isinstance(from_dev, np.ndarray)
    assert np.allclose(from_dev, model(x.astype(np.float32)), rtol=0, atol=0)
    kept = model.forward(C.asarray(x, np.float64), return_device=True)
    assert not isinstance(kept, np.ndarray) and np.array_equal(C.to_host(kept), host)

    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="x must be finite"):
        model(C.asarray(bad, np.float64))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 3\)"):
        model(C.asarray(x[:, :2], np.float64))

    before = {n: C.to_host(p) for n, p in model.params.items()}
    assert model.to("cpu") is model and model.device == "cpu"
    for n, p in model.params.items():
        assert isinstance(p, np.ndarray) and np.array_equal(p, before[n])
    check("model(x) after to('cpu')", model(x), host, np.float64)  # the CPU kernels' rounding
    model.to("cuda")
    assert not isinstance(model.params["layers.0.coef"], np.ndarray)
    assert np.array_equal(model(x), host)

    # pickled (multiprocessing, joblib): host copies travel, and device arrays come back
    import pickle
    twin = pickle.loads(pickle.dumps(model))
    assert twin.device == "cuda" and twin.backend is C and all(L.backend is C for L in twin.layers)
    assert not isinstance(twin.params["layers.0.coef"], np.ndarray)
    for n, p in model.params.items():
        assert np.array_equal(C.to_host(twin.params[n]), C.to_host(p)), n
    assert np.array_equal(twin(x), host)


# ---------------------------------------------------------------------------
# regulariser moments (edge_moments_forward / _backward) and the training loop
def run_moments(arrays, k, base_fun, dtype, rng):
    """Both moment ops on the reference and on CUDA; backward adds into filled buffers."""
    x, grid, coef, sb, sp, mask = arrays
    B, I = x.shape
    O = coef.shape[2]
    ref_m = [np.zeros((I, O)), np.zeros((I, O)), np.zeros(I), np.zeros(I)]
    R.edge_moments_forward(*ref_m, *arrays, k, base_fun)
    dev = [C.asarray(a, dtype) for a in arrays]
    got_m = [C.asarray(np.full(a.shape, 7.0), np.float64) for a in ref_m]  # overwritten
    C.edge_moments_forward(*got_m, *dev, k, base_fun)

    up = [rng.normal(size=(I, O)), rng.normal(size=(I, O)), rng.normal(size=I), rng.normal(size=I)]
    start = [np.full((B, I), 0.5, dtype), np.full(coef.shape, -0.25, dtype),
             np.full((I, O), 0.125, dtype), np.full((I, O), 1.0, dtype)]
    ref_g = [a.copy() for a in start]
    R.edge_moments_backward(*ref_g, *up, *arrays, k, base_fun)
    got_g = [C.asarray(a, dtype) for a in start]
    C.edge_moments_backward(*got_g, *(C.asarray(u, np.float64) for u in up), *dev, k, base_fun)
    return ((ref_m, [C.to_host(a) for a in got_m]), (ref_g, [C.to_host(a) for a in got_g]))


MOMENT_CASES = [  # B, I, O, G, k, dtype, base_fun, knots, shared budget (None: the default)
    (9, 2, 3, 3, 2, np.float64, "identity", "uniform", None),
    (40, 1, 40, 3, 3, np.float64, "silu", "random", None),   # 2 batch chunks, 2 output tiles
    (9, 2, 3, 100, 3, np.float64, "silu", "random", 8100),   # several basis tiles in backward
    (9, 2, 3, 4, 1, np.float32, "silu", "random", None),
]


@pytest.mark.parametrize("B,I,O,G,k,dtype,base_fun,knots,budget", MOMENT_CASES)
def test_moment_kernels_match_reference(B, I, O, G, k, dtype, base_fun, knots, budget, monkeypatch):
    if budget is not None:
        monkeypatch.setattr(C, "_SHARED_BUDGET", budget)
        MT = C._backward_config(B, I, O, G + k, k, np.dtype(dtype).itemsize)[4]
        assert MT < G + k, "the case must exercise more than one basis tile"
    rng = np.random.default_rng(B * 1000 + O * 10 + k + 7)
    arrays, _ = make_layer(rng, B, I, O, G, k, dtype, knots)
    (ref_m, got_m), (ref_g, got_g) = run_moments(arrays, k, base_fun, dtype, rng)
    for name, a, b in zip(("s1", "s2", "xs1", "xs2"), got_m, ref_m):
        check(name, a, b, dtype)
    for name, a, b in zip(("dx", "dcoef", "dscale_base", "dscale_sp"), got_g, ref_g):
        check(name, a, b, dtype)


def test_fit_with_regulariser_and_attribute_on_cuda_match_cpu(monkeypatch):
    """fit(Adam, lamb > 0) runs the moments ops on the device and lands where the CPU fit does.

    One layer: the simulator's cost is per launch, and the regulariser's dx
    into earlier layers is the kernels' dx, checked above.
    """
    calls = {"edge_moments_forward": 0, "edge_moments_backward": 0}
    for name in calls:
        op = getattr(C, name)

        def counted(*args, _op=op, _name=name):
            calls[_name] += 1
            return _op(*args)
        monkeypatch.setattr(C, name, counted)
    data = nk.create_dataset(lambda x: np.sin(np.pi * x[:, :1]) * x[:, 1:], n_var=2,
                             train_num=8, test_num=8, seed=0)
    fits, models = [], []
    for device in ("cpu", "cuda"):
        model = nk.KAN([2, 1], grid=4, k=3, seed=3, device=device)
        fits.append(model.fit(data, opt="Adam", steps=3, lr=1e-2, lamb=1e-3, update_grid=False, log=0))
        models.append(model)
    cpu, gpu = models
    assert calls["edge_moments_backward"] == 3, calls  # one per layer and step
    assert calls["edge_moments_forward"] >= 3, calls
    for key in ("train_loss", "test_loss", "reg"):
        assert np.allclose(fits[1][key], fits[0][key], rtol=1e-10, atol=0), (key, fits)
    assert fits[0]["reg"][0] > 0
    for name, p in cpu.params.items():
        e, idx = rel_err(C.to_host(gpu.params[name]), p)
        assert e <= 1e-10, f"{name} after fit: {e:.3g} at {idx}"

    before = calls["edge_moments_forward"]
    x = data["train_input"]
    check("feature score", gpu.attribute(x), cpu.attribute(x), np.float64)
    assert calls["edge_moments_forward"] == before + 1  # one call per layer
    for l in range(1):
        check(f"edge_scores[{l}]", gpu.edge_scores[l], cpu.edge_scores[l], np.float64)
        check(f"node_scores[{l}]", gpu.node_scores[l], cpu.node_scores[l], np.float64)


# ---------------------------------------------------------------------------
# fit(Adam) keeps its per-step work on the device
def _count_transfers(monkeypatch):
    """Record every device -> host copy (elements) and host -> device upload."""
    log = {"d2h": [], "h2d": 0}
    cls = type(C.zeros((1,), np.float64))
    copy_to_host, to_device = cls.copy_to_host, C.cuda.to_device

    def counted_copy_to_host(self, *args, **kwargs):
        log["d2h"].append(int(self.size))
        return copy_to_host(self, *args, **kwargs)

    def counted_to_device(*args, **kwargs):
        log["h2d"] += 1
        return to_device(*args, **kwargs)
    monkeypatch.setattr(cls, "copy_to_host", counted_copy_to_host)
    monkeypatch.setattr(C.cuda, "to_device", counted_to_device)
    return log


@pytest.mark.parametrize("batch,steps", [(-1, (2, 4)), (4, (1, 2))])  # few steps: the simulator is slow
def test_adam_fit_moves_only_scalars_per_step(batch, steps, monkeypatch):
    """Per Adam step only three one-number copies come back: the training loss, the
    combined finiteness flag of every parameter and knot, and the test loss. No
    parameter, gradient or prediction crosses; the whole data set is uploaded once
    (batch=-1), a minibatch's four arrays (train and test x, y) per step (batch=4)."""
    data = nk.create_dataset(lambda x: x[:, :1] * x[:, 1:], n_var=2, train_num=8, test_num=8, seed=0)
    log = _count_transfers(monkeypatch)
    counts = {}
    for n in steps:
        model = nk.KAN([2, 1], grid=3, k=2, seed=3, device="cuda")
        del log["d2h"][:]
        log["h2d"] = 0
        res = model.fit(data, opt="Adam", steps=n, lr=1e-2, batch=batch, update_grid=False,
                        lamb=0.0, log=0)
        assert len(res["test_loss"]) == n and np.all(np.isfinite(res["test_loss"]))
        counts[n] = (len(log["d2h"]), log["h2d"], max(log["d2h"], default=0))
    (d_a, u_a, big_a), (d_b, u_b, big_b) = (counts[n] for n in steps)
    more = steps[1] - steps[0]
    assert max(big_a, big_b) == 1, counts              # every copy back is one number
    assert d_b - d_a == 3 * more, counts               # loss, finiteness flag, test loss per step
    assert u_b - u_a == (0 if batch == -1 else 4) * more, counts


def test_adam_fit_non_finite_restores_last_finite_on_device():
    """A parameter made NaN by a callback: the fit stops and the model gets the last finite
    parameters back from the device-side snapshot, as on the CPU."""
    data = nk.create_dataset(lambda x: x[:, :1] * x[:, 1:], n_var=2, train_num=8, test_num=8, seed=0)
    models = []
    for device in ("cpu", "cuda"):
        model = nk.KAN([2, 1], grid=3, k=2, seed=3, device=device)
        be = model.backend

        def poison(step, results, model=model, be=be):
            if step == 1:
                coef = be.to_host(model.layers[0].coef)
                coef[...] = np.nan
                model.layers[0].coef = be.asarray(coef, model.dtype)
        with pytest.warns(RuntimeWarning, match="not finite.*restored the last finite parameters"):
            res = model.fit(data, opt="Adam", steps=3, lr=1e-2, update_grid=False, log=0,
                            callback=poison)
        assert len(res["train_loss"]) == 1
        models.append(model)
    cpu, gpu = models
    for name, p in cpu.params.items():
        q = C.to_host(gpu.params[name])
        assert np.all(np.isfinite(q)), name
        e, idx = rel_err(q, p)
        assert e <= 1e-10, f"{name}: {e:.3g} at {idx}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_passes_are_bit_identical_across_runs(dtype):
    """The backward kernels sum in a fixed order (no atomics): repeated runs give the same bits.

    In the simulator threads run one after another, so this bites on a real GPU, where
    the warps of a block and the blocks of a launch race; the compile test checks the
    kernels' PTX for atomics on every machine."""
    rng = np.random.default_rng(11)
    # on a GPU: many chunks, warps and output lanes per block race; the simulator runs threads
    # one by one (nothing to race), so it only runs the test's code, on a small case
    B, I, O, G, k = (40, 2, 40, 6, 3) if SIM else (20000, 8, 100, 6, 3)
    arrays, dy = make_layer(rng, B, I, O, G, k, dtype, "random")
    dev = [C.asarray(a, dtype) for a in arrays]
    dyd = C.asarray(dy, dtype)
    up = [C.asarray(rng.normal(size=s), np.float64) for s in ((I, O), (I, O), (I,), (I,))]
    runs = []
    for _ in range(2 if SIM else 5):
        g = [C.zeros(s, dtype) for s in ((B, I), arrays[2].shape, (I, O), (I, O))]
        C.spline_backward(*g, dyd, *dev, k, "silu")
        gm = [C.zeros(s, dtype) for s in ((B, I), arrays[2].shape, (I, O), (I, O))]
        C.edge_moments_backward(*gm, *up, *dev, k, "silu")
        runs.append([C.to_host(a) for a in g + gm])
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            assert a.tobytes() == b.tobytes()


def same_non_finite(name, actual, expected, dtype):
    """NaN and inf in the same places, the finite entries within the dtype's tolerance."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    for test in (np.isnan, np.isposinf, np.isneginf):
        assert np.array_equal(test(actual), test(expected)), (name, test.__name__)
    fin = np.isfinite(expected)
    check(name, np.where(fin, actual, 0), np.where(fin, expected, 0), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_non_finite_inputs_match_reference(dtype):
    """A NaN or inf x lies outside every knot span: its spline terms are dropped and its
    base term carries it, as in the reference (reference.py's docstring)."""
    rng = np.random.default_rng(21)
    arrays, dy = make_layer(rng, 12, 3, 5, 4, 3, dtype, "random")
    x = arrays[0]
    x[5, 0], x[6, 1], x[7, 2], x[8, 0] = np.nan, np.inf, -np.inf, np.nan
    (y, ref), (yd, got) = run_both(arrays, dy, 3, "silu", dtype)
    same_non_finite("y", yd, y, dtype)
    for name, a, b in zip(("dx", "dcoef", "dscale_base", "dscale_sp"), got, ref):
        same_non_finite(name, a, b, dtype)
    # the regulariser's backward: gphi is NaN at a NaN x, and must not reach dcoef
    (ref_m, got_m), (ref_g, got_g) = run_moments(arrays, 3, "silu", dtype, rng)
    for name, a, b in zip(("s1", "s2", "xs1", "xs2", "dx", "dcoef", "dscale_base", "dscale_sp"),
                          got_m + got_g, ref_m + ref_g):
        same_non_finite(name, a, b, dtype)


def test_multiplication_nodes_on_cuda_match_cpu():
    """A network with product nodes: outputs, loss and every gradient as on the host."""
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (37, 3))
    y = rng.normal(size=(37, 2))
    outs = {}
    for device in ("cpu", "cuda"):
        model = nk.KAN([3, [2, 2], [1, 1]], mult_arity=[[], [2, 3], [2]], grid=4, seed=3,
                       device=device)
        loss, grads = model.loss_and_grad(x, y)
        outs[device] = (model(x), loss, grads)
    (y0, l0, g0), (y1, l1, g1) = outs["cpu"], outs["cuda"]
    check("y", y1, y0, np.float64)
    assert abs(l1 - l0) <= 1e-12 * max(1.0, l0)
    for n in g0:
        check(n, g1[n], g0[n], np.float64)
