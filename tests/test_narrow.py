"""The narrow-layer kernels (``numkan.kernels.cpu_narrow``) against the reference.

``cpu.spline_forward`` / ``spline_backward`` send layers with few outputs
(``cpu_narrow.serves``) to these kernels; tests/test_kernels.py checks the
``cpu`` backend as a whole (so these too, at its narrow widths). Here, what is
particular to them:

- they are the ones a narrow layer runs (the dispatch), and a layer they do
  not serve (more outputs, a higher order) still matches the reference, as do
  the wide kernels at the narrow shapes they no longer get, at every order;
- O = 1, 2, 3, 5; k = 1..5 (and float32 at k = 6, 7, the highest orders
  served); batches that end inside a tile, on a tile and
  just after one (the idle lanes of the last tile); uniform, non-uniform and
  repeated knots; masks; every base function; float64 and float32;
- non-finite inputs with one output (the reference's NaN and inf, entry by entry);
- the chunked (parallel) path of large batches: the same bits for any number
  of threads, and the reference's values;
- the power form itself: each span's M gives the reference's local bases, a
  knot array written in place gets a new M, and the kept M stay bounded;
- a fixed input (``FixedInput``, fit's batch through the first layer): the
  reference's values from its kept design, which follows the knots, order and
  base function, and the per-call kernels beyond its limits.
"""
import numba
import numpy as np
import pytest

from numkan.kernels import reference

from test_kernels import (BASE_FUNS, TOL, assert_same_nonfinite, check_cpu_against_reference,
                          random_layer, run)
from conftest import assert_close

cpu = pytest.importorskip("numkan.kernels.cpu", reason="numba is not installed")
from numkan.kernels import cpu_narrow  # noqa: E402

TILE = cpu_narrow.TILE


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("O", [1, 2, 3, 5])
def test_narrow_matches_reference(dtype, O):
    """Every order, knot kind and base function, at batch sizes around the tile."""
    for k in range(1, 6):
        for c, (kind, base_fun) in enumerate((kind, b) for kind in ("uniform", "nonuniform", "repeated")
                                             for b in BASE_FUNS):
            B = (1, TILE - 1, TILE, TILE + 1, 2 * TILE + 37)[(k + c) % 5]
            G = 1 + (3 * k + c) % 9
            p, dy, start = random_layer(seed=1000 * O + 10 * k + c, B=B, I=1 + c % 4, O=O, G=G, k=k, kind=kind,
                                        dtype=dtype, base_fun=base_fun)
            check_cpu_against_reference(p, dy, start, f"{np.dtype(dtype).name} O={O} k={k} G={G} B={B} "
                                                      f"{kind} {base_fun}")


def test_narrow_layers_run_the_narrow_kernels(monkeypatch):
    """cpu.spline_forward/backward call cpu_narrow for O <= MAX_OUTPUTS and k <= MAX_ORDER, and
    only then; the others (the wide kernels) still match the reference."""
    calls = []
    for name in ("spline_forward", "spline_backward"):
        real = getattr(cpu_narrow, name)
        monkeypatch.setattr(cpu_narrow, name, lambda *a, _real=real, _n=name: (calls.append(_n), _real(*a))[1])
    for O, k, narrow in ((1, 3, True), (cpu_narrow.MAX_OUTPUTS, 3, True), (cpu_narrow.MAX_OUTPUTS + 1, 3, False),
                         (2, cpu_narrow.MAX_ORDER, True), (2, cpu_narrow.MAX_ORDER + 1, False)):
        calls.clear()
        p, dy, start = random_layer(seed=O + 10 * k, B=90, I=3, O=O, G=4, k=k, kind="nonuniform",
                                    dtype=np.float64, base_fun="silu")
        check_cpu_against_reference(p, dy, start, f"O={O} k={k}")
        assert bool(calls) == narrow, f"O={O} k={k}: narrow kernels called {calls}"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["uniform", "nonuniform"])
def test_narrow_non_finite_inputs_one_output(dtype, kind):
    fi = np.finfo(dtype)
    specials = np.array([np.nan, np.inf, -np.inf, fi.max, -fi.max, fi.smallest_subnormal, -0.0], dtype)
    for base_fun in BASE_FUNS:
        p, dy, start = random_layer(seed=7, B=TILE + 9, I=2, O=1, G=5, k=3, kind=kind, dtype=dtype,
                                    base_fun=base_fun)
        x = p["x"]
        x[0:7, 0] = specials
        x[TILE:TILE + 7, 1] = specials  # in the last, partial tile
        x[-1, 0] = np.nan               # the sample the idle lanes repeat
        ref = run(reference, p, dy, start)
        fast = run(cpu, p, dy, start)
        tol = TOL[np.dtype(dtype)]
        for name in ref:
            assert_same_nonfinite(f"{kind} {base_fun} {name}", fast[name], ref[name])
            both = np.isfinite(ref[name])
            scale = max(float(np.max(np.abs(ref[name][both]), initial=0.0)), 1.0)
            assert_close(f"{kind} {base_fun} {name}", np.where(both, fast[name], 0),
                         np.where(both, ref[name], 0), tol["rtol"], tol["floor"] * scale)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's, on the inf * 0 meant here
@pytest.mark.parametrize("bad", [np.inf, np.nan])
@pytest.mark.parametrize("O", [1, 3])
def test_a_non_finite_scale_sp_reaches_no_sample_outside_the_knots(O, bad):
    """scale_sp written by hand as inf or NaN: the spline term of a sample outside the
    knots is dropped, not multiplied by 0, so outputs and dx there are the reference's
    finite values, in the per-call passes, the fused last layer and a fixed input (whose
    dense design hands such weights to the power form). The parameter gradients of that
    edge are non-finite in both; which of NaN and inf depends on the order of the sums
    (the reference multiplies per sample, the kernels once per basis), so only
    finiteness is compared there."""
    p, dy, start = random_layer(seed=31, B=TILE + 9, I=2, O=O, G=5, k=3, kind="nonuniform", dtype=np.float64,
                                base_fun="silu")
    t = p["grid"]
    p["x"][:4, 0] = [t[0, 0] - 1.0, t[0, -1] + 2.0, t[0, 0] - 1e-9, 1e6]  # outside input 0's knots
    p["scale_sp"][0, 0] = bad
    ref = run(reference, p, dy, start)
    fast = run(cpu, p, dy, start)
    B = dy.shape[0]
    y, dx = np.zeros((B, O)), start["dx"].copy()
    g = {n: start[n].copy() for n in ("dcoef", "dscale_base", "dscale_sp")}
    target = np.zeros((B, O))
    cpu.spline_mse(y, dx, g["dcoef"], g["dscale_base"], g["dscale_sp"], target, p["x"], p["grid"], p["coef"],
                   p["scale_base"], p["scale_sp"], p["mask"], 3, "silu")
    ref_dy = 2 * ref["y"] / ref["y"].size  # the fused pass's own dy (finite only where y is)
    ref_mse = run(reference, p, ref_dy, start)
    fixed = run_fixed(cpu, cpu.fixed_input(p["x"]), p, dy, start)
    assert np.isfinite(ref["y"][:4]).all() and np.isfinite(ref["dx"][:4]).all()  # the case is meant
    for label, got, want in (("per-call", fast, ref), ("fixed", fixed, ref),
                             ("fused", dict(y=y, dx=dx, **g), ref_mse)):
        for name in ("y", "dx") if label != "fixed" else ("y",):
            assert_same_nonfinite(f"{label} {name}", got[name], want[name])
            both = np.isfinite(want[name])
            assert_close(f"{label} {name}", np.where(both, got[name], 0), np.where(both, want[name], 0),
                         TOL[np.dtype(np.float64)]["rtol"], TOL[np.dtype(np.float64)]["floor"])
        for name in ("dcoef", "dscale_base", "dscale_sp"):
            assert np.array_equal(np.isfinite(got[name]), np.isfinite(want[name])), (label, name)


def test_chunked_path_is_bit_identical_across_thread_counts():
    """A batch large enough for several chunks: the same bits with 1 and with all
    threads, and the reference's values."""
    B = 2 * cpu_narrow.CHUNK_SAMPLES + 123
    I = -(-cpu_narrow.SERIAL_EDGES // B) + 1
    assert cpu_narrow.chunks(B, I, 1) > 1
    p, dy, start = random_layer(seed=3, B=B, I=I, O=1, G=6, k=3, kind="nonuniform", dtype=np.float64,
                                base_fun="silu")
    before = numba.get_num_threads()
    outs = []
    try:
        for threads in (1, before):
            numba.set_num_threads(threads)
            outs.append(run(cpu, p, dy, start))
    finally:
        numba.set_num_threads(before)
    for name in outs[0]:
        np.testing.assert_array_equal(outs[0][name], outs[1][name], err_msg=name)
    check_cpu_against_reference(p, dy, start, f"chunked B={B} I={I}")


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_wide_kernels_still_match_at_few_outputs(monkeypatch, k):
    """The wide kernels stay correct for the narrow shapes they no longer get (the
    reference path of issue 22, and what a layer with MAX_ORDER < k runs)."""
    monkeypatch.setattr(cpu_narrow, "serves", lambda O, k: False)
    for O, kind in ((1, "nonuniform"), (4, "repeated")):
        p, dy, start = random_layer(seed=50 + 10 * k + O, B=TILE + 21, I=3, O=O, G=6, k=k, kind=kind,
                                    dtype=np.float64, base_fun="silu")
        check_cpu_against_reference(p, dy, start, f"wide O={O} k={k} {kind}")


@pytest.mark.parametrize("kind", ["uniform", "nonuniform", "repeated"])
@pytest.mark.parametrize("k", [1, 2, 3, 5, cpu_narrow.MAX_ORDER])
def test_span_bases_are_the_local_bases_in_power_form(kind, k):
    """M of ``span_bases`` evaluated at u = (x - t[j]) / (t[j+1] - t[j]) gives the
    reference's local bases on every span, the boundary spans (bases that exist only)
    and the ends of each span included; an empty span (repeated knots) is all zeros."""
    from test_kernels import random_knots
    rng = np.random.default_rng(100 * k + len(kind))
    G = 4 + k
    knots = np.stack([random_knots(rng, G, k, kind) for _ in range(3)])
    I, n = knots.shape
    M = np.empty((I, n - 1, k + 1, k + 1))
    cpu_narrow.span_bases(M, knots, k)
    checked = 0
    for i in range(I):
        for j in range(n - 1):
            lo, hi = knots[i, j], knots[i, j + 1]
            if not lo < hi:
                assert not M[i, j].any(), f"empty span {j} of input {i} has bases"
                continue
            x = np.concatenate([[lo], rng.uniform(lo, hi, 20), [np.nextafter(hi, lo)]])
            span, N, _ = reference.local_basis(np.tile(x[:, None], (1, I)), knots, k)
            assert (span[:, i] == j).all()
            u = (x - lo) / (hi - lo)
            power = np.einsum("sp,bp->bs", M[i, j], u[:, None] ** np.arange(k + 1))
            exists = (np.arange(k + 1) + j - k >= 0) & (np.arange(k + 1) + j - k < n - k - 1)
            np.testing.assert_allclose(power[:, exists], N[:, i, exists], rtol=0, atol=1e-13,
                                       err_msg=f"{kind} k={k} input {i} span {j}")
            checked += 1
    assert checked >= G


def test_span_bases_follow_knots_written_in_place():
    """The kept M is used only while the knot values are those it came from: knots
    written in place (a grid update) give the new layer's values, as the reference."""
    p, dy, start = random_layer(seed=11, B=TILE + 5, I=2, O=2, G=5, k=3, kind="nonuniform",
                                dtype=np.float64, base_fun="silu")
    check_cpu_against_reference(p, dy, start, "before")
    M0 = cpu_narrow._span_bases(p["grid"], 3)
    assert cpu_narrow._span_bases(p["grid"], 3) is M0  # kept
    p["grid"][:] = np.sort(p["grid"] * 1.1 + 0.05, axis=1)  # same array, new values
    check_cpu_against_reference(p, dy, start, "after the knots changed")
    assert cpu_narrow._span_bases(p["grid"], 3) is not M0


def test_kept_span_bases_are_bounded(monkeypatch):
    """The bases kept for knot arrays stay within their entry and byte limits, and a
    layer too large to keep still gets its own (correct) bases."""
    monkeypatch.setattr(cpu_narrow, "_BASES", {})
    rng = np.random.default_rng(5)
    grids = [np.sort(rng.uniform(-1, 1, (2, 12)), axis=1) for _ in range(cpu_narrow._BASES_KEPT + 3)]
    for g in grids:
        cpu_narrow._span_bases(g, 3)
        assert len(cpu_narrow._BASES) <= cpu_narrow._BASES_KEPT
    monkeypatch.setattr(cpu_narrow, "_BASES_BYTES", 2 * 11 * 16 * 8 * 3)  # room for three of them
    cpu_narrow._BASES.clear()
    for g in grids[:5]:
        cpu_narrow._span_bases(g, 3)
        assert sum(v[1].nbytes for v in cpu_narrow._BASES.values()) <= cpu_narrow._BASES_BYTES
    big = np.sort(rng.uniform(-1, 1, (8, 12)), axis=1)  # 8 inputs: over the byte limit alone
    M = cpu_narrow._span_bases(big, 3)
    assert all(v[1] is not M for v in cpu_narrow._BASES.values())
    ref = np.empty_like(M)
    cpu_narrow.span_bases(ref, big, 3)
    np.testing.assert_array_equal(M, ref)


@pytest.mark.parametrize("k", [6, cpu_narrow.MAX_ORDER])
def test_narrow_high_orders_float32(k):
    """The highest orders served: the power form's coefficients grow up to 2^k in u, and
    float32 must still agree with the reference to its tolerance."""
    for c, kind in enumerate(("uniform", "nonuniform", "repeated")):
        for O in (1, 3):
            p, dy, start = random_layer(seed=77 + k + 10 * c + O, B=2 * TILE + 9, I=3, O=O, G=6, k=k, kind=kind,
                                        dtype=np.float32, base_fun="silu")
            check_cpu_against_reference(p, dy, start, f"float32 k={k} {kind} O={O}")


# ---------------------------------------------------------------------------
# a fixed input (fit's batch through the first layer): cpu_narrow.FixedInput
def run_fixed(backend, F, p, dy, start, calls=3):
    """``fixed_forward`` and ``fixed_backward`` of one backend, ``calls`` times (the CPU
    backend builds its design at the first and uses it from then on); the last call's
    results."""
    B, O = dy.shape
    for _ in range(calls):
        y = np.full((B, O), np.nan, dtype=dy.dtype)
        backend.fixed_forward(y, F, p["grid"], p["coef"], p["scale_base"], p["scale_sp"], p["mask"], p["k"],
                              p["base_fun"])
        g = {n: start[n].copy() for n in ("dcoef", "dscale_base", "dscale_sp")}
        backend.fixed_backward(g["dcoef"], g["dscale_base"], g["dscale_sp"], dy, F, p["grid"], p["coef"],
                               p["scale_base"], p["scale_sp"], p["mask"], p["k"], p["base_fun"])
    return dict(y=y, **g)


def check_fixed(F, p, dy, start, label, built=True):
    """The CPU backend's passes on F give the reference's ``spline_forward`` and
    ``spline_backward`` without dx (TOL), from its kept design when ``built``."""
    ref = run(reference, p, dy, start)
    fast = run_fixed(cpu, F, p, dy, start)
    assert (F._design is not None) == built, f"{label}: design kept {F._design is not None}, expected {built}"
    tol = TOL[dy.dtype]
    for name, a in fast.items():
        assert a.dtype == dy.dtype
        assert_same_nonfinite(f"{label} {name}", a, ref[name])
        both = np.isfinite(ref[name])
        scale = max(float(np.max(np.abs(ref[name][both]), initial=0.0)), 1.0)
        assert_close(f"{label} {name}", np.where(both, a, 0), np.where(both, ref[name], 0), tol["rtol"],
                     tol["floor"] * scale)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's, on the NaN and inf meant here
@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("O", [1, 2, 5])
def test_fixed_input_matches_reference(dtype, O, dense, monkeypatch):
    """Orders 1..7, every knot kind and base function, batches around the tile, and
    non-finite inputs (outside the knots: no spline term, b(x) as the reference); with
    the dense design where a layer is small enough for one, and with the power form
    alone (``DENSE_COLUMNS`` = 0)."""
    if not dense:
        monkeypatch.setattr(cpu_narrow, "DENSE_COLUMNS", 0)
    for k in (6, 7):
        p, dy, start = random_layer(seed=40 + k + O, B=2 * TILE + 9, I=3, O=O, G=6, k=k, kind="repeated",
                                    dtype=dtype, base_fun="silu")
        F = cpu.fixed_input(p["x"])
        check_fixed(F, p, dy, start, f"k={k}")
        assert (F._dense is not False) == dense
    for k in (1, 2, 3, 4, 5):
        for c, (kind, base_fun) in enumerate((kind, b) for kind in ("uniform", "nonuniform", "repeated")
                                             for b in BASE_FUNS):
            B = (1, TILE - 1, TILE, TILE + 1, 3 * TILE + 37)[(k + c) % 5]
            p, dy, start = random_layer(seed=500 * O + 10 * k + c, B=B, I=1 + c % 4, O=O, G=1 + (3 * k + c) % 9,
                                        k=k, kind=kind, dtype=dtype, base_fun=base_fun)
            if c % 3 == 0 and B > 8:
                p["x"][:7, 0] = [np.nan, np.inf, -np.inf, 1e30, -1e30, p["grid"][0, 0], p["grid"][0, -1]]
            check_fixed(cpu.fixed_input(p["x"]), p, dy, start, f"{np.dtype(dtype).name} O={O} k={k} B={B} "
                                                              f"{kind} {base_fun}")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's numpy, on the NaN and inf meant here
def test_fixed_input_dense_design_leaves_nonfinite_values_to_the_power_form():
    """The dense design's products would spread a NaN in coef or dy to every sample:
    those calls (and a batch with a non-finite x) run the power-form passes and
    give the reference's values, NaN and inf where it has them and nowhere else; the
    dense path is used, and correct, on the finite values around them."""
    p, dy, start = random_layer(seed=12, B=3 * TILE + 5, I=2, O=3, G=5, k=3, kind="nonuniform",
                                dtype=np.float64, base_fun="silu")
    F = cpu.fixed_input(p["x"])
    check_fixed(F, p, dy, start, "finite")
    assert isinstance(F._dense, np.ndarray) and F._dense.shape == (p["x"].shape[0], 2 * 8 + 2)
    calls = []
    real = np.matmul
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(np, "matmul", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
        run_fixed(cpu, F, p, dy, start, calls=1)
    assert len(calls) == 2  # the forward and the backward, both dense
    coef = p["coef"].copy()
    p["coef"][0, 2, 1] = np.nan
    check_fixed(F, p, dy, start, "NaN in coef")
    p["coef"][:] = coef
    dy[7, 1] = np.nan
    dy[9, 0] = np.nan
    check_fixed(F, p, dy, start, "NaN in dy")  # (an inf may give NaN for inf in the power form's sums)
    p["x"][3, 1] = np.nan
    F = cpu.fixed_input(p["x"])
    check_fixed(F, p, dy, start, "NaN in x")
    assert F._dense is False


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finite_check_finds_every_non_finite_value(dtype):
    """The dense path's check (a vectorised OR without an early exit) at every position of
    arrays whose length is not a multiple of the lanes, and for NaN, inf and -inf."""
    for n in (1, 7, 8, 9, 67):
        a = np.linspace(-3e38, 3e38, n).astype(dtype)
        assert cpu_narrow._finite(a)
        for pos in range(n):
            for bad in (np.nan, np.inf, -np.inf):
                b = a.copy()
                b[pos] = bad
                assert not cpu_narrow._finite(b), (n, pos, bad)
    assert cpu_narrow._finite(np.empty(0, dtype))


def test_fixed_input_follows_its_arguments():
    """The kept design is used only for the knots, order and base function it was built
    for: knots written in place, another base function or another knot array give the
    reference's values for those; a fresh F builds its design at its first call."""
    p, dy, start = random_layer(seed=4, B=3 * TILE + 5, I=3, O=2, G=5, k=3, kind="nonuniform",
                                dtype=np.float64, base_fun="silu")
    F = cpu.fixed_input(p["x"])
    assert F._design is None
    run_fixed(cpu, F, p, dy, start, calls=1)
    assert F._design is not None  # built at the first call
    first = F._design
    check_fixed(F, p, dy, start, "built")
    assert F._design is first
    kept = F._design
    check_fixed(F, p, dy, start, "kept")
    assert F._design is kept
    p["grid"][:] = np.sort(p["grid"] * 1.1 + 0.05, axis=1)  # same array, new values
    check_fixed(F, p, dy, start, "knots written in place")
    assert F._design is not kept
    p["base_fun"] = "identity"
    check_fixed(F, p, dy, start, "another base function")
    p["grid"] = p["grid"].copy()
    p["grid"][1] += 0.01
    check_fixed(F, p, dy, start, "another knot array")


def test_fixed_input_beyond_its_limits_runs_the_per_call_kernels(monkeypatch):
    """A batch over FIXED_MAX samples x inputs, or large enough for several chunks, keeps
    nothing and still gives the reference's values; so does a layer the narrow kernels
    do not serve, and the reference backend's own fixed input."""
    monkeypatch.setattr(cpu_narrow, "FIXED_MAX", 100)
    p, dy, start = random_layer(seed=8, B=60, I=2, O=1, G=4, k=3, kind="uniform", dtype=np.float64,
                                base_fun="silu")
    check_fixed(cpu.fixed_input(p["x"]), p, dy, start, "over FIXED_MAX", built=False)
    monkeypatch.undo()
    B = 2 * cpu_narrow.CHUNK_SAMPLES + 5
    I = -(-cpu_narrow.SERIAL_EDGES // B) + 1
    assert cpu_narrow.chunks(B, I, 1) > 1
    p, dy, start = random_layer(seed=9, B=B, I=I, O=1, G=4, k=3, kind="uniform", dtype=np.float64,
                                base_fun="silu")
    check_fixed(cpu.fixed_input(p["x"]), p, dy, start, "chunked", built=False)
    p, dy, start = random_layer(seed=10, B=90, I=2, O=cpu_narrow.MAX_OUTPUTS + 1, G=4, k=3, kind="uniform",
                                dtype=np.float64, base_fun="silu")
    check_fixed(cpu.fixed_input(p["x"]), p, dy, start, "wide", built=False)
    ref = run(reference, p, dy, start)
    again = run_fixed(reference, reference.fixed_input(p["x"]), p, dy, start)
    for name, a in again.items():
        np.testing.assert_array_equal(a, ref[name])


# ---------------------------------------------------------------------------
# the bases grid updates fit on (kernels' local_bases)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's numpy, on the NaN and inf meant here
@pytest.mark.parametrize("kind", ["uniform", "nonuniform", "repeated"])
def test_local_bases_match_reference(kind):
    """cpu.local_bases: the reference's spans exactly and its bases to a few ulps times
    2^k (every order served; non-finite x, x on the first and last knot, outside);
    above MAX_ORDER the reference's own."""
    rng = np.random.default_rng(len(kind))
    for k in list(range(1, cpu_narrow.MAX_ORDER + 1)) + [cpu_narrow.MAX_ORDER + 1]:
        p, _, _ = random_layer(seed=k, B=300, I=3, O=1, G=1 + k % 6, k=k, kind=kind, dtype=np.float64,
                               base_fun="silu")
        x, t = p["x"], p["grid"]
        x[:8, 0] = [np.nan, np.inf, -np.inf, t[0, 0], t[0, -1], t[0, 0] - 1, t[0, -1] + 1, 1e300]
        x[8:, 1] = rng.choice(t[1], size=x.shape[0] - 8)  # on the knots themselves
        span, N = cpu.local_bases(x, t, k)
        span_ref, N_ref = reference.local_bases(x, t, k)
        np.testing.assert_array_equal(span, span_ref, err_msg=f"{kind} k={k}")
        assert N.dtype == np.float64 and N.shape == N_ref.shape
        np.testing.assert_allclose(N, N_ref, rtol=0, atol=2.0 ** k * 4e-16, err_msg=f"{kind} k={k}")
        assert not N[span < 0].any()


def test_fit_runs_its_first_layer_from_a_fixed_input_and_lets_it_go(monkeypatch):
    """fit's objective passes its batch through the first layer as a fixed input (the
    kept design serves its evaluations, and its loss and gradients are those of the
    per-call kernels); once fit returns, the model does not keep it alive."""
    import gc
    import numkan as nk
    from numkan import train
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (300, 2))
    y = np.sin(np.pi * x[:, :1]) + x[:, 1:] ** 2
    model = nk.KAN([2, 3, 1], grid=5, k=3, seed=0)
    obj = train.Objective(model, x, y, 0.0, None)
    runs = [obj() for _ in range(4)]
    assert obj.fixed._design is not None
    grads = {n: a.copy() for n, a in model.grads.items()}
    obj.fixed = None  # no fixed input: the per-call kernels
    assert abs(obj()[0] - runs[-1][0]) <= 1e-13 * runs[-1][0]
    for n, a in model.grads.items():  # the same arithmetic: equal but for FMA contraction
        np.testing.assert_allclose(a, grads[n], rtol=1e-12, atol=1e-14 * np.abs(grads[n]).max(), err_msg=n)
    calls = []
    real = cpu_narrow.fixed_backward
    monkeypatch.setattr(cpu_narrow, "fixed_backward", lambda *a: (calls.append(1), real(*a))[1])
    model.fit({"train_input": x, "train_label": y, "test_input": x, "test_label": y}, steps=2, log=0)
    assert len(calls) > 10
    gc.collect()
    assert model.layers[0]._fixed is None or model.layers[0]._fixed() is None


def test_a_fixed_input_of_another_batch_is_not_used():
    """Layer.forward given a fixed input whose x is not the x passed runs the per-call
    kernels, and its backward then gives the gradients of that x, not of the other."""
    import numkan as nk
    rng = np.random.default_rng(2)
    model = nk.KAN([2, 3, 1], grid=5, k=3, seed=1)
    L = model.layers[0]
    x, other = rng.uniform(-1, 1, (150, 2)), rng.uniform(-1, 1, (150, 2))
    F = cpu.fixed_input(other)
    for _ in range(3):  # F's design is built and kept
        cpu.fixed_forward(np.empty((150, 3)), F, L.knots, L.coef, L.scale_base, L.scale_sp, L.mask, 3, "silu")
    assert F._design is not None
    dy = rng.normal(size=(150, 3))
    L.zero_grad()
    y = L.forward(x, keep=True, fixed=F)
    L.backward(dy, need_dx=False)
    got = (y.copy(), L.dcoef.copy())
    L.zero_grad()
    y = L.forward(x, keep=True)
    L.backward(dy, need_dx=False)
    np.testing.assert_array_equal(got[0], y)
    np.testing.assert_array_equal(got[1], L.dcoef)


# ---------------------------------------------------------------------------
# a network's last layer and its loss in one pass: cpu_narrow.mse_rows
def run_mse(backend, p, target, start, wantdx=True):
    """``spline_mse`` of one backend, into a buffer of garbage and copies of ``start``:
    (loss, {y, dx (when wanted), dcoef, dscale_base, dscale_sp})."""
    B, O = target.shape
    y = np.full((B, O), np.nan, dtype=target.dtype)
    g = {n: start[n].copy() for n in ("dx", "dcoef", "dscale_base", "dscale_sp")}
    loss = backend.spline_mse(y, g["dx"] if wantdx else None, g["dcoef"], g["dscale_base"], g["dscale_sp"],
                              target, p["x"], p["grid"], p["coef"], p["scale_base"], p["scale_sp"], p["mask"],
                              p["k"], p["base_fun"])
    if not wantdx:
        del g["dx"]
    return loss, dict(y=y, **g)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's, on the NaN and inf meant here
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("O", [1, 2, 5])
def test_last_layer_and_loss_in_one_pass_match_reference(dtype, O):
    """``cpu.spline_mse`` where ``mse_rows`` serves it, against ``reference.spline_mse``
    (forward, mean squared error, backward): orders 1..5, every knot kind and base
    function, batches around the tile, 1 to FUSED_INPUTS inputs, with and without dx,
    and NaN, inf and huge inputs: the reference's NaN and inf in y entry by entry, and
    non-finite gradients where the reference's are (a NaN or inf dy reaches the raw sums,
    which the power form maps to the bases with coefficients of both signs, so an inf
    there may come out as NaN)."""
    tol = TOL[np.dtype(dtype)]
    for k in (1, 2, 3, 4, 5):
        for c, (kind, base_fun) in enumerate((kind, b) for kind in ("uniform", "nonuniform", "repeated")
                                             for b in BASE_FUNS):
            B = (1, TILE - 1, TILE, TILE + 1, 3 * TILE + 37)[(k + c) % 5]
            I = (1, 3, 5, cpu_narrow.FUSED_INPUTS)[(k + c) % 4]
            p, target, start = random_layer(seed=700 * O + 10 * k + c, B=B, I=I, O=O, G=1 + (3 * k + c) % 9,
                                            k=k, kind=kind, dtype=dtype, base_fun=base_fun)
            if c % 3 == 0 and B > 8:
                # huge inputs make a huge dy, whose sums keep few digits in float32: float64 only
                big = [1e30, -1e30] if dtype == np.float64 else [np.nan, np.nan]
                p["x"][:7, 0] = [np.nan, np.inf, -np.inf] + big + [p["grid"][0, 0], p["grid"][0, -1]]
            assert cpu_narrow.fuses(B, I, O, k)
            label = f"{np.dtype(dtype).name} O={O} I={I} k={k} B={B} {kind} {base_fun}"
            for wantdx in (True, False):
                loss_ref, ref = run_mse(reference, p, target, start, wantdx)
                loss, fast = run_mse(cpu, p, target, start, wantdx)
                assert isinstance(loss, float)
                assert (np.isnan(loss) and np.isnan(loss_ref)) or loss == pytest.approx(loss_ref, rel=tol["rtol"]), \
                    f"{label}: loss {loss} against {loss_ref}"
                assert ref.keys() == fast.keys()
                for name, a in fast.items():
                    assert a.dtype == target.dtype
                    if name == "y":
                        assert_same_nonfinite(f"{label} {name}", a, ref[name])
                    else:
                        bad = np.argwhere(np.isfinite(a) != np.isfinite(ref[name]))
                        assert bad.size == 0, f"{label} {name}: finite differs at {tuple(bad[0])}"
                    both = np.isfinite(ref[name])
                    scale = max(float(np.max(np.abs(ref[name][both]), initial=0.0)), 1.0)
                    assert_close(f"{label} {name}", np.where(both, a, 0), np.where(both, ref[name], 0),
                                 tol["rtol"], tol["floor"] * scale)


def test_last_layer_and_loss_in_one_pass_are_the_separate_passes(monkeypatch):
    """At k = 3 in float64 ``mse_rows`` gives the compiled separate calls' outputs, dx and
    parameter gradients bit for bit (the same arithmetic in the same order) and their
    loss to rounding; a layer it does not serve (more inputs than FUSED_INPUTS, more
    outputs than the narrow kernels take, a batch of several chunks) runs the separate
    calls and still matches the reference."""
    for I in (1, 5, cpu_narrow.FUSED_INPUTS):
        p, target, start = random_layer(seed=90 + I, B=1000, I=I, O=2, G=7, k=3, kind="nonuniform",
                                        dtype=np.float64, base_fun="silu")
        loss, fused = run_mse(cpu, p, target, start)
        y = np.empty_like(target)
        g = {n: start[n].copy() for n in ("dx", "dcoef", "dscale_base", "dscale_sp")}
        args = (p["x"], p["grid"], p["coef"], p["scale_base"], p["scale_sp"], p["mask"], 3, "silu")
        cpu.spline_forward(y, *args)
        dy = np.empty_like(y)
        sep_loss = cpu.mse_loss_grad(dy, y, target)
        cpu.spline_backward(g["dx"], g["dcoef"], g["dscale_base"], g["dscale_sp"], dy, *args)
        assert loss == pytest.approx(sep_loss, rel=1e-14)
        for name, a in dict(y=y, **g).items():
            np.testing.assert_array_equal(fused[name], a, err_msg=f"I={I} {name}")
    calls = []
    real = cpu_narrow.mse_rows
    monkeypatch.setattr(cpu_narrow, "mse_rows", lambda *a: (calls.append(1), real(*a))[1])
    for B, I, O in ((300, cpu_narrow.FUSED_INPUTS + 1, 1), (300, 2, cpu_narrow.MAX_OUTPUTS + 1),
                    (2 * cpu_narrow.CHUNK_SAMPLES, 4, 5)):
        assert not cpu_narrow.fuses(B, I, O, 3)
        p, target, start = random_layer(seed=B + I + O, B=B, I=I, O=O, G=5, k=3, kind="uniform",
                                        dtype=np.float64, base_fun="silu")
        loss, fast = run_mse(cpu, p, target, start)
        loss_ref, ref = run_mse(reference, p, target, start)
        assert loss == pytest.approx(loss_ref, rel=1e-12)
        for name, a in fast.items():
            scale = max(float(np.max(np.abs(ref[name]))), 1.0)
            assert_close(f"B={B} I={I} O={O} {name}", a, ref[name], 1e-12, 1e-2 * scale)
    assert not calls
    run_mse(cpu, *random_layer(seed=5, B=40, I=2, O=1, G=5, k=3, kind="uniform", dtype=np.float64,
                               base_fun="silu")[:2], start)  # a layer it serves: the counter counts
    assert calls == [1]


def test_fit_objective_runs_its_last_layer_with_the_loss():
    """fit's objective with the mean squared error runs its last layer, the loss and that
    layer's backward as one ``spline_mse`` call: its loss and every gradient are those of
    the same objective with the loss given as a ``loss_fn`` (the separate passes), with
    and without the regulariser. A non-finite objective leaves no gradient behind."""
    import numkan as nk
    from numkan import train
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (200, 2))
    y = np.exp(np.sin(np.pi * x[:, :1]) + x[:, 1:] ** 2)

    def mse(pred, target):
        d = pred - target
        return float(np.mean(d * d)), 2.0 * d / d.size

    for width in ([2, 3, 1], [2, 4, 2, 1]):
        model = nk.KAN(width, grid=5, k=3, seed=0)
        for lamb in (0.0, 1e-2):
            got, want = [], []
            for loss_fn, out in ((None, got), (mse, want)):
                obj = train.Objective(model, x, y, lamb, (1.0, 2.0, 0.0, 0.0), loss_fn)
                loss, reg = obj()
                out.append((loss, reg, {n: a.copy() for n, a in model.grads.items()}))
            (l1, r1, g1), (l2, r2, g2) = got[0], want[0]
            assert l1 == pytest.approx(l2, rel=1e-13) and r1 == r2
            for n in g1:
                np.testing.assert_allclose(g1[n], g2[n], rtol=1e-11, atol=1e-13 * np.abs(g2[n]).max(),
                                           err_msg=f"{width} lamb={lamb} {n}")
        model.layers[-1].coef[0, 2, 0] = np.nan
        obj = train.Objective(model, x, y, 0.0, (1.0, 2.0, 0.0, 0.0))
        with pytest.raises(train._NonFinite, match=f"layer {len(width) - 2}"):
            obj()
        for n, a in model.grads.items():
            assert not a.any(), f"{width}: {n} kept gradients of a non-finite objective"


def test_span_table_gives_each_bin_its_span_and_marks_uniform_knots():
    """span_table: the span of each bin's left end (the last j <= n-2 with t[j] <= that
    end), for uniform, non-uniform and repeated knots; the last column 1 exactly for the
    uniform rows; indices that stay in 0..n-2 for knots with NaN or inf (never read out
    of bounds), whose results the kernels' checks then discard."""
    rng = np.random.default_rng(5)
    n = 14
    rows = [np.linspace(-1, 1, n), np.sort(rng.uniform(-2, 3, n)),
            np.repeat(np.sort(rng.uniform(0, 1, n // 2)), 2), np.linspace(0, 1e-3, n) + 1e3]
    knots = np.array(rows)
    NB = cpu_narrow.SPAN_BINS * (n - 1)
    TAB = np.empty((len(rows), NB + 1), np.int64)
    cpu_narrow.span_table(TAB, knots)
    for i, t in enumerate(knots):
        edges = t[0] + np.arange(NB) * ((t[-1] - t[0]) / NB)
        expected = np.clip(np.searchsorted(t[:n - 1], edges, side="right") - 1, 0, n - 2)
        # (the kernel's bin ends may round the other way where one falls on a knot)
        tie = np.abs(edges[:, None] - t[None, :]).min(axis=1) <= 1e-12 * (t[-1] - t[0])
        off = TAB[i, :NB] != expected
        assert not (off & ~tie).any(), f"row {i}: bins {np.flatnonzero(off & ~tie)}"
        assert (np.abs(TAB[i, :NB] - expected) <= 1).all()
    np.testing.assert_array_equal(TAB[:, NB], [1, 0, 0, 1])
    bad = knots.copy()
    bad[0, 3], bad[1, :] = np.nan, np.inf
    bad[2, -1] = np.nan
    cpu_narrow.span_table(TAB, bad)
    assert TAB[:, :NB].min() >= 0 and TAB[:, :NB].max() <= n - 2
    assert not TAB[:3, NB].any()
