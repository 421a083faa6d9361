"""Fuzzing: no input, parameter value or knot vector may crash the process.

Random finite and non-finite values (NaN, +-inf, the largest floats,
subnormals, signed zeros) go into the kernels' inputs, their parameters and
their knots, through forward, backward and the regulariser's moments on the
"numpy" and "cpu" backends, in float32 and float64; then through whole models:
live parameter and knot arrays written with NaN and inf, extreme grid ranges,
``update_grid`` and ``refine`` on huge samples, and short fits that diverge.

A segmentation fault would kill pytest itself, so each batch of cases runs in a
child process (this file run as a script, ``python test_fuzz_kernels.py
<part>``): the child runs its hypothesis examples and prints a last line
``FUZZ-DONE <part> <count>``; the test asserts exit status 0 and that line.
The child prints each case before running it, so the output of a crash names
the case (and faulthandler prints the Python stack).

What is checked besides survival, where the semantics are defined (the
reference's module docstring):
- on valid knots and finite parameters the cpu kernels agree with the reference
  for every input, NaN and +-inf included (the same values where finite, the
  same NaN and signed inf elsewhere);
- a sample with a non-finite input gets a non-finite output row, and a sample
  whose inputs are all finite (and not huge) a finite one: a NaN is never
  hidden nor invented;
- public calls either work or raise ValueError (RuntimeWarning when a fit
  restores its last finite parameters), and a failed ``update_grid`` or
  ``refine`` leaves the model as it was.

Examples are drawn from a fixed seed (``derandomize``) unless
HYPOTHESIS_PROFILE is "numkan" or "thorough" (the latter also draws 10x as
many), as in conftest.py.
"""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

SENTINEL = "FUZZ-DONE"
PARTS = {"kernels": 400, "models": 100, "fits": 20}  # examples per child
CHILD_TIMEOUT = 600  # seconds: a hang is a failure too (cold Numba compiles take minutes)


def _run_child(part):
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), part], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT, env=env, cwd=os.path.dirname(os.path.abspath(__file__)))
    out = proc.stdout[-3000:] + "\n--- stderr ---\n" + proc.stderr[-5000:]
    assert proc.returncode == 0, f"fuzz child '{part}' exited with status {proc.returncode}:\n{out}"
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert last.startswith(f"{SENTINEL} {part} "), f"fuzz child '{part}' did not finish:\n{out}"


@pytest.mark.parametrize("part", list(PARTS))
def test_fuzz_in_a_child_process(part):
    _run_child(part)


# ===========================================================================
# the child: everything below runs only in the subprocess
def _special_values(dtype):
    fi = np.finfo(dtype)
    return np.array([np.nan, np.inf, -np.inf, fi.max, -fi.max, fi.max / 3, -fi.max / 7,
                     fi.smallest_subnormal, -fi.smallest_subnormal, fi.tiny, 0.0, -0.0], dtype=dtype)


NONFINITE = 3  # the first entries of _special_values: NaN, inf, -inf
HUGE = slice(3, 7)


def _knots(rng, G, k, kind, dtype):
    """One knot row: "uniform" or "nonuniform" (valid), or "bad" (anything at all)."""
    n = G + 2 * k + 1
    lo = rng.uniform(-3.0, 1.0)
    width = rng.uniform(0.5, 4.0)
    if kind == "uniform":
        return (lo + width * (np.arange(n) - k) / G).astype(dtype)
    t = lo + width * np.concatenate([[0.0], np.cumsum(rng.uniform(0.05, 1.0, n - 1))]) / n
    if kind == "nonuniform":
        return t.astype(dtype)
    how = rng.integers(0, 5)
    if how == 0:    # specials written over some knots
        sp = _special_values(dtype)
        t = t.astype(dtype)
        where = rng.choice(n, size=rng.integers(1, n + 1), replace=False)
        t[where] = sp[rng.integers(0, sp.size, where.size)]
        return t
    if how == 1:    # all equal
        return np.full(n, lo, dtype=dtype)
    if how == 2:    # decreasing
        return t[::-1].astype(dtype)
    if how == 3:    # a span that overflows
        return np.linspace(-np.finfo(dtype).max, np.finfo(dtype).max, n).astype(dtype)
    return (t * 1e-300 if dtype == np.float64 else t * 1e-40).astype(dtype)  # subnormal spacing


def _layer(rng, case):
    """Kernel arguments for one fuzz case (a dict from ``kernel_cases``)."""
    dt = np.dtype(case["dtype"])
    B, I, O, G, k = case["B"], case["I"], case["O"], case["G"], case["k"]
    grid = np.stack([_knots(rng, G, k, case["knots"], dt) for _ in range(I)])
    K = G + k
    fin = grid[np.isfinite(grid)].astype(np.float64)
    lo, hi = (np.clip([fin.min(), fin.max()], -100, 100) if fin.size else (-1.0, 1.0))
    x = rng.uniform(lo - 1, hi + 1, (B, I)).astype(dt)  # inside and a little outside the knots
    sp = _special_values(dt)
    pool = {"nonfinite": sp[:NONFINITE], "huge": sp[HUGE], "small": sp[7:], "all": sp}[case["x_specials"]]
    hit = rng.random((B, I)) < case["x_fraction"]
    x[hit] = pool[rng.integers(0, pool.size, int(hit.sum()))]
    p = dict(x=x, grid=grid,
             coef=rng.normal(0.0, 1.0, (I, K, O)).astype(dt),
             scale_base=rng.uniform(-1.0, 1.0, (I, O)).astype(dt),
             scale_sp=rng.uniform(-1.0, 1.0, (I, O)).astype(dt),
             mask=(rng.random((I, O)) > 0.2).astype(dt), k=k, base_fun=case["base_fun"])
    if case["poison"]:  # a special value written into a parameter, as into a live array
        name = case["poison"]
        a = p[name]
        a.flat[rng.integers(0, a.size)] = sp[rng.integers(0, sp.size)]
    dy = rng.normal(0.0, 1.0, (B, O)).astype(dt)
    return p, dy


def _run_kernels(be, p, dy):
    B, O = dy.shape
    I = p["x"].shape[1]
    dt = dy.dtype
    args = (p["x"], p["grid"], p["coef"], p["scale_base"], p["scale_sp"], p["mask"], p["k"], p["base_fun"])
    y = np.full((B, O), 7.0, dtype=dt)
    be.spline_forward(y, *args)
    g = dict(dx=np.zeros((B, I), dt), dcoef=np.zeros_like(p["coef"]), dscale_base=np.zeros((I, O), dt),
             dscale_sp=np.zeros((I, O), dt))
    be.spline_backward(g["dx"], g["dcoef"], g["dscale_base"], g["dscale_sp"], dy, *args)
    s1, s2 = np.zeros((I, O)), np.zeros((I, O))
    xs1, xs2 = np.zeros(I), np.zeros(I)
    be.edge_moments_forward(s1, s2, xs1, xs2, *args)
    m = dict(mdx=np.zeros((B, I), dt), mdcoef=np.zeros_like(p["coef"]), mdscale_base=np.zeros((I, O), dt),
             mdscale_sp=np.zeros((I, O), dt))
    ds1 = np.linspace(-1, 1, I * O).reshape(I, O)
    be.edge_moments_backward(m["mdx"], m["mdcoef"], m["mdscale_base"], m["mdscale_sp"], ds1, 0.5 * ds1,
                             np.ones(I), np.full(I, 0.25), *args)
    # the last layer and its loss in one call (dy as target: any finite or special values)
    f = dict(fy=np.full((B, O), 7.0, dtype=dt), fdx=np.zeros((B, I), dt), fdcoef=np.zeros_like(p["coef"]),
             fdscale_base=np.zeros((I, O), dt), fdscale_sp=np.zeros((I, O), dt))
    f["floss"] = np.array([be.spline_mse(f["fy"], f["fdx"], f["fdcoef"], f["fdscale_base"], f["fdscale_sp"],
                                         dy, *args)])
    return dict(y=y, s1=s1, s2=s2, **g, **m, **f)


def _assert_same(name, a, e, dtype, label, kinds=True):
    """Same NaN, same signed inf (``kinds``; else only non-finite in the same places), and
    close finite values (tolerance scaled as in test_kernels)."""
    assert a.shape == e.shape and a.dtype == e.dtype, f"{label} {name}: {a.shape} {a.dtype} vs {e.shape} {e.dtype}"
    checks = (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)) if kinds else \
        (("non-finite", lambda v: ~np.isfinite(v)),)
    for what, f in checks:
        bad = f(a) != f(e)
        assert not bad.any(), (f"{label} {name}: {what} differs at {tuple(np.argwhere(bad)[0])}: "
                               f"cpu {a[tuple(np.argwhere(bad)[0])]}, reference {e[tuple(np.argwhere(bad)[0])]}")
    fin = np.isfinite(e)
    if not fin.any():
        return
    rtol = 1e-9 if dtype == np.float64 else 2e-4
    scale = max(1.0, float(np.max(np.abs(e[fin]))))
    err = np.abs(a[fin].astype(np.float64) - e[fin]) / np.maximum(np.abs(e[fin].astype(np.float64)), 1e-2 * scale)
    assert err.max() <= rtol, f"{label} {name}: cpu and reference differ by {err.max():.3g} (relative)"


def child_kernels(n_examples, settings_kw):
    from hypothesis import given, settings, strategies as st
    from numkan.kernels import cpu, reference

    @st.composite
    def kernel_cases(draw):
        return dict(dtype=draw(st.sampled_from(["float64", "float32"])), k=draw(st.sampled_from([1, 3])),
                    B=draw(st.integers(1, 70)), I=draw(st.integers(1, 4)), O=draw(st.integers(1, 5)),
                    G=draw(st.integers(1, 8)), knots=draw(st.sampled_from(["uniform", "nonuniform", "bad"])),
                    base_fun=draw(st.sampled_from(["silu", "identity", "zero"])),
                    x_specials=draw(st.sampled_from(["nonfinite", "huge", "small", "all"])),
                    x_fraction=draw(st.sampled_from([0.0, 0.05, 0.3, 1.0])),
                    poison=draw(st.sampled_from([None, None, "coef", "scale_base", "scale_sp", "mask"])),
                    seed=draw(st.integers(0, 2**32 - 1)))

    count = [0]

    @settings(max_examples=n_examples, **settings_kw)
    @given(case=kernel_cases())
    def prop(case):
        label = f"kernels {case}"
        print(label, flush=True)
        count[0] += 1
        p, dy = _layer(np.random.default_rng(case["seed"]), case)
        ref = _run_kernels(reference, p, dy)
        fast = _run_kernels(cpu, p, dy)
        valid = case["knots"] != "bad" and case["poison"] is None
        x = p["x"]
        if not valid:
            return  # survival is the test: the backends may differ in what NaN reaches
        nonfinite_row = ~np.all(np.isfinite(x), axis=1)
        for out in (ref, fast):
            assert not np.isfinite(out["y"][nonfinite_row]).any(), \
                f"{label}: a sample with a NaN or inf input got a finite output"
        if case["x_specials"] == "huge" and case["x_fraction"] > 0 or case["x_specials"] == "all":
            return  # sums of values near the largest float overflow or not with the summation order
        for out in (ref, fast):
            assert np.isfinite(out["y"][~nonfinite_row]).all(), f"{label}: a finite sample got a NaN or inf output"
        for name in ref:
            # spline_mse's dy is NaN or inf where y is; its power-form sums may turn an
            # inf gradient into NaN ("f" names: tests/test_narrow.py says why)
            _assert_same(name, fast[name], ref[name], x.dtype, label,
                         kinds=not (name.startswith("f") and name != "fy"))

    prop()
    return count[0]


def _model_case(draw, st):
    return dict(dtype=draw(st.sampled_from(["float64", "float32"])), device=draw(st.sampled_from(["numpy", "cpu"])),
                width=draw(st.sampled_from([[1, 1], [2, 3, 1], [2, 5, 5, 1]])),
                k=draw(st.sampled_from([1, 3])), grid=draw(st.integers(1, 6)), seed=draw(st.integers(0, 2**32 - 1)))


def _snapshot(m):
    return [(L.backend.to_host(L.knots).copy(), L.backend.to_host(L.coef).copy()) for L in m.layers]


def _same_snapshot(a, b):
    return all(np.array_equal(ga, gb, equal_nan=True) and np.array_equal(ca, cb, equal_nan=True)
               for (ga, ca), (gb, cb) in zip(a, b))


def child_models(n_examples, settings_kw):
    from hypothesis import given, settings, strategies as st
    import numkan as nk

    fmax = np.finfo(np.float64).max
    ranges = [(-1, 1)] * 4 + [(-1e308, 1e308), (-fmax, fmax), (0, 1e-300), (1e6, 1e6 + 1e-3), (1000, 1000.001),
                              (1e30, 1e30 * (1 + 1e-6)), (-3e38, 3e38), (-1e-310, 1e-310), (5, -5)]

    @st.composite
    def model_cases(draw):
        c = _model_case(draw, st)
        c.update(grid_range=draw(st.sampled_from(ranges)), x_scale=draw(st.sampled_from([1.0, 1e150, 1e300, fmax])),
                 poison=draw(st.sampled_from([None, "coef", "scale_base", "scale_sp", "symbolic", "grid"])),
                 value=draw(st.sampled_from([np.nan, np.inf, -np.inf, fmax, 1e-320])),
                 new_grid=draw(st.sampled_from([2, 10, 40])))
        return c

    count = [0]

    @settings(max_examples=n_examples, **settings_kw)
    @given(case=model_cases())
    def prop(case):
        label = f"models {case}"
        print(label, flush=True)
        count[0] += 1
        rng = np.random.default_rng(case["seed"])
        try:
            m = nk.KAN(case["width"], grid=case["grid"], k=case["k"], seed=case["seed"] % 1000,
                       grid_range=case["grid_range"], dtype=case["dtype"], device=case["device"])
        except ValueError:
            return
        n_in = case["width"][0]
        fmax_dt = float(np.finfo(case["dtype"]).max)
        x = np.clip(rng.uniform(-1, 1, (6, n_in)) * case["x_scale"], -fmax_dt, fmax_dt)
        m(x)  # finite input, possibly huge: hidden values may overflow
        L = m.layers[-1]
        if case["poison"] == "symbolic":
            m.fix_symbolic(len(m.layers) - 1, 0, 0, "sin", fit_params=False)
            m.params[f"layers.{len(m.layers) - 1}.symbolic_affine"][0, 0, 0] = case["value"]
        elif case["poison"] == "grid":  # written through the live knot array
            L.knots[0, rng.integers(0, L.knots.shape[1])] = case["value"]
        elif case["poison"] is not None:
            a = m.params[f"layers.0.{case['poison']}"]
            a.flat[rng.integers(0, a.size)] = case["value"]
        y = m.forward(x)
        assert y.shape == (6, case["width"][-1])
        m.zero_grad()
        m.backward(np.ones_like(y))
        before = _snapshot(m)
        try:
            m.update_grid(x)
        except ValueError:
            assert _same_snapshot(before, _snapshot(m)), f"{label}: a failed update_grid changed the model"
        m(x)
        before = _snapshot(m)
        try:
            m.refine(case["new_grid"])(x)
        except ValueError:
            pass
        assert _same_snapshot(before, _snapshot(m)), f"{label}: refine changed the model"

    prop()
    return count[0]


def child_fits(n_examples, settings_kw):
    from hypothesis import given, settings, strategies as st
    import numkan as nk

    @st.composite
    def fit_cases(draw):
        c = _model_case(draw, st)
        c.update(opt=draw(st.sampled_from(["Adam", "Adam", "LBFGS"])), lr=draw(st.sampled_from([1e-2, 1e6, 1e30])),
                 lamb=draw(st.sampled_from([0.0, 0.01])), label_scale=draw(st.sampled_from([1.0, 1e200])),
                 poison=draw(st.sampled_from([None, None, "coef", "grid"])),
                 value=draw(st.sampled_from([np.nan, np.inf, -1e308])))
        return c

    count = [0]

    @settings(max_examples=n_examples, **settings_kw)
    @given(case=fit_cases())
    def prop(case):
        label = f"fits {case}"
        print(label, flush=True)
        count[0] += 1
        rng = np.random.default_rng(case["seed"])
        n_in, n_out = case["width"][0], case["width"][-1]
        xs = rng.uniform(-1, 1, (40, n_in))
        ys = np.sin(3 * xs).sum(axis=1, keepdims=True).repeat(n_out, axis=1) * case["label_scale"]
        if case["dtype"] == "float32":
            ys = np.clip(ys, -3e38, 3e38)
        ds = dict(train_input=xs[:30], train_label=ys[:30], test_input=xs[30:], test_label=ys[30:])
        m = nk.KAN(case["width"], grid=case["grid"], k=case["k"], seed=case["seed"] % 1000,
                   dtype=case["dtype"], device=case["device"])
        if case["poison"] == "coef":    # through the live arrays, before the fit
            m.params["layers.0.coef"].flat[rng.integers(0, m.params["layers.0.coef"].size)] = case["value"]
        elif case["poison"] == "grid":
            m.layers[-1].knots[0, rng.integers(0, m.layers[-1].knots.shape[1])] = case["value"]
        try:
            m.fit(ds, opt=case["opt"], lr=case["lr"], steps=3 if case["opt"] == "Adam" else 1,
                  lamb=case["lamb"], log=0, grid_update_num=2, stop_grid_update_step=3)
        except ValueError:
            pass
        m(xs)

    prop()
    return count[0]


def _child(part):
    from hypothesis import HealthCheck
    profile = os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "numkan")
    n = PARTS[part] * (10 if profile == "thorough" else 1)
    kw = dict(deadline=None, database=None, derandomize=profile not in ("numkan", "thorough"),
              suppress_health_check=list(HealthCheck), print_blob=True)
    warnings.simplefilter("ignore")  # overflow and NaN warnings, and fit's restore warning, are expected
    count = {"kernels": child_kernels, "models": child_models, "fits": child_fits}[part](n, kw)
    print(f"{SENTINEL} {part} {count}", flush=True)


if __name__ == "__main__":
    _child(sys.argv[1])
