"""Fast kernels against the reference, and the reference's bases against a naive oracle.

1. ``reference.local_basis`` against a full Cox-de Boor recursion over all
   bases, written out below, on uniform, non-uniform and repeated knots, on
   the knots themselves and outside them; the bases sum to one on the
   interior grid.
2. ``cpu.spline_forward`` / ``cpu.spline_backward`` against the reference on
   the same inputs: non-uniform, per-input and repeated knots, inputs inside,
   outside and exactly on knots (the first and last included), k = 1..5,
   G = 1..12, batches 1..200, every base_fun, float64 and float32; widths
   1..6, and 40, 64, 70, 100 and 130 (the CPU kernels' full and partial blocks of
   outputs); gradient buffers start non-zero, so accumulation (+=) is checked too.
3. non-finite inputs (NaN, +-inf, the largest floats, subnormals): the cpu kernels
   give the reference's NaN and infinities, entry by entry (the semantics are in
   reference.py's docstring; tests/test_fuzz_kernels.py fuzzes them in a child process).
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from numkan.kernels import reference

from conftest import assert_close

cpu = pytest.importorskip("numkan.kernels.cpu", reason="numba is not installed")

# Tolerances of the fast kernels against the reference on the same inputs.
# An entry's error is |fast - ref| / max(|ref|, floor * scale), where scale is
# the larger of the array's largest entry and 1, the size of the terms that
# the kernels sum (inputs, parameters and dy here are all O(1)): an entry much
# smaller than that is a cancellation in a sum over the batch or the inputs
# and carries the rounding of its terms (the kernels sum in other orders, and
# cpu forms dscale_sp as sum_m coef * dcoef). Measured over 150 random layers:
# float64 worst 4e-14 at floor 1e-2 (7e-13 entrywise); float32 worst 2.2e-6
# at floor 1 (6e-6 at floor 0.1).
TOL = {
    np.dtype(np.float64): dict(rtol=1e-12, floor=1e-2),
    np.dtype(np.float32): dict(rtol=1e-5, floor=1.0),
}
BASE_FUNS = ("silu", "identity", "zero")


# ---------------------------------------------------------------------------
# inputs
def random_knots(rng, G, k, kind):
    """One knot row (G + 2k + 1,): "uniform", "nonuniform" or "repeated" (non-decreasing)."""
    n = G + 2 * k + 1
    lo = rng.uniform(-2.0, 0.0)
    hi = lo + rng.uniform(0.5, 3.0)
    if kind == "uniform":
        h = (hi - lo) / G
        return lo + (np.arange(n) - k) * h
    gaps = rng.uniform(0.1, 1.9, n - 1)
    if kind == "repeated":
        # runs of equal knots, each of multiplicity up to k + 1
        for start in rng.choice(n - 1, size=max(1, (n - 1) // 4), replace=False):
            gaps[start:start + rng.integers(1, k + 1)] = 0.0
        if gaps.sum() == 0:
            gaps[-1] = 1.0
    t = np.concatenate([[0.0], np.cumsum(gaps)])
    return lo + (hi - lo) * t / t[-1]


def random_inputs(rng, grid, B, dtype):
    """x (B, I): a mix of points inside the knots, outside them and exactly on knots.

    Exact knot values (the first and last knot of each row always among them)
    are taken from the dtype-cast grid so that equality holds in that dtype.
    """
    I, n = grid.shape
    lo, hi = grid[:, 0], grid[:, -1]
    x = rng.uniform(lo, hi, (B, I))
    kind = rng.integers(0, 5, (B, I))      # 0, 1: inside; 2: below; 3: above; 4: on a knot
    x = np.where(kind == 2, lo - rng.uniform(0.0, 1.0, (B, I)), x)
    x = np.where(kind == 3, hi + rng.uniform(0.0, 1.0, (B, I)), x)
    on = grid[np.arange(I)[None, :], rng.integers(0, n, (B, I))]
    x = np.where(kind == 4, on, x)
    x = x.astype(dtype)
    for i in range(I):  # the first and last knot, exactly, in every column
        x[rng.integers(0, B), i] = grid[i, 0]
        x[rng.integers(0, B), i] = grid[i, -1]
    return x


def random_layer(seed, B, I, O, G, k, kind, dtype, base_fun):
    rng = np.random.default_rng(seed)
    grid = np.stack([random_knots(rng, G, k, kind) for _ in range(I)]).astype(dtype)
    K = G + k
    p = dict(
        x=random_inputs(rng, grid, B, dtype),
        grid=grid,
        coef=rng.normal(0.0, 1.0, (I, K, O)).astype(dtype),
        scale_base=rng.uniform(-1.0, 1.0, (I, O)).astype(dtype),
        scale_sp=rng.uniform(-1.0, 1.0, (I, O)).astype(dtype),
        mask=(rng.random((I, O)) > 0.2).astype(dtype),
        k=k, base_fun=base_fun,
    )
    dy = rng.normal(0.0, 1.0, (B, O)).astype(dtype)
    # non-zero starting gradients: the kernels must add into them
    start = dict(dx=rng.normal(0.0, 1.0, (B, I)), dcoef=rng.normal(0.0, 1.0, (I, K, O)),
                 dscale_base=rng.normal(0.0, 1.0, (I, O)), dscale_sp=rng.normal(0.0, 1.0, (I, O)))
    return p, dy, {n: a.astype(dtype) for n, a in start.items()}


def run(backend, p, dy, start):
    """Forward (into a buffer of garbage) and backward (into copies of ``start``) of one backend."""
    B, O = dy.shape
    y = np.full((B, O), np.nan, dtype=dy.dtype)
    backend.spline_forward(y, p["x"], p["grid"], p["coef"], p["scale_base"], p["scale_sp"],
                           p["mask"], p["k"], p["base_fun"])
    g = {n: a.copy() for n, a in start.items()}
    backend.spline_backward(g["dx"], g["dcoef"], g["dscale_base"], g["dscale_sp"], dy, p["x"],
                            p["grid"], p["coef"], p["scale_base"], p["scale_sp"], p["mask"],
                            p["k"], p["base_fun"])
    return dict(y=y, **g)


def check_cpu_against_reference(p, dy, start, label):
    dt = dy.dtype
    tol = TOL[dt]
    before = {n: a.copy() for n, a in p.items() if isinstance(a, np.ndarray)}
    ref = run(reference, p, dy, start)
    fast = run(cpu, p, dy, start)
    for n, a in before.items():  # kernels leave their inputs alone
        np.testing.assert_array_equal(p[n], a, err_msg=f"{label}: a kernel wrote into {n}")
    for name in ref:
        assert fast[name].dtype == dt, f"{label}: {name} has dtype {fast[name].dtype}, expected {dt}"
        scale = max(float(np.max(np.abs(ref[name]), initial=0.0)), 1.0)
        assert_close(f"{label} {name}", fast[name], ref[name], tol["rtol"], tol["floor"] * scale)
    # accumulation: (start + gradient) - start is the gradient computed from zero
    zero = {n: np.zeros_like(a) for n, a in start.items()}
    for backend in (reference, cpu):
        from_zero = run(backend, p, dy, zero)
        acc = run(backend, p, dy, start)
        for name in start:
            scale = float(np.max(np.abs(start[name]) + np.abs(acc[name]), initial=0.0))
            assert_close(f"{label} {backend.name} {name} accumulates", acc[name] - start[name],
                         from_zero[name], tol["rtol"], scale)


# ---------------------------------------------------------------------------
# fast kernels against the reference
@st.composite
def layer_cases(draw):
    return dict(B=draw(st.integers(1, 200)), I=draw(st.integers(1, 5)), O=draw(st.integers(1, 6)),
                G=draw(st.integers(1, 12)), k=draw(st.integers(1, 5)),
                kind=draw(st.sampled_from(["uniform", "nonuniform", "repeated"])),
                base_fun=draw(st.sampled_from(BASE_FUNS)), seed=draw(st.integers(0, 2**32 - 1)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(case=layer_cases())
def test_cpu_matches_reference(dtype, case):
    p, dy, start = random_layer(dtype=dtype, **case)
    check_cpu_against_reference(p, dy, start, f"{np.dtype(dtype).name} {case}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_cpu_matches_reference_every_order_and_grid(dtype, k):
    """Every (k, G) pair, k 1..5 and G 1..12, with batch sizes spread over 1..200."""
    for G in range(1, 13):
        B = 1 + (37 * k + 17 * G * G) % 200
        kind = ("uniform", "nonuniform", "repeated")[G % 3]
        p, dy, start = random_layer(seed=100 * k + G, B=B, I=3, O=4, G=G, k=k, kind=kind,
                                    dtype=dtype, base_fun=BASE_FUNS[(k + G) % 3])
        check_cpu_against_reference(p, dy, start, f"{np.dtype(dtype).name} k={k} G={G} B={B} {kind}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [1, 3])
def test_cpu_matches_reference_on_fine_uniform_grids(dtype, k):
    """Fine uniform grids (G = 200, the knots rounded to the dtype): the CPU kernels must
    evaluate the stored knots, whose rounding makes them uniform only to about eps * max|t|
    (bases computed for ideal uniform knots miss the reference by eps * max|t| / h)."""
    p, dy, start = random_layer(seed=k, B=300, I=2, O=3, G=200, k=k, kind="uniform",
                                dtype=dtype, base_fun="silu")
    check_cpu_against_reference(p, dy, start, f"{np.dtype(dtype).name} k={k} G=200 uniform")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("O", [64, 70, 130, 40, 100])
def test_cpu_matches_reference_on_wide_layers(dtype, O):
    """Layers as wide as the CPU kernels' block of outputs (``cpu.OUTPUT_BLOCK``) and wider:
    a full block alone, a full and a partial one, two full and a partial one, and partial
    blocks of more than one vector of outputs (40, and 36 past a full block); enough
    samples and inputs for several tiles, sample blocks, input blocks and batch chunks."""
    assert cpu.OUTPUT_BLOCK == 64  # the widths above are chosen around it
    for B, I, G, kind in [(300, 5, 7, "nonuniform"), (97, 40, 3, "uniform"), (260, 17, 12, "repeated")]:
        p, dy, start = random_layer(seed=O + B, B=B, I=I, O=O, G=G, k=3, kind=kind, dtype=dtype,
                                    base_fun="silu")
        check_cpu_against_reference(p, dy, start, f"{np.dtype(dtype).name} B={B} I={I} O={O} G={G} {kind}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("O, k, B", [(1, 3, 150), (4, 1, 70), (5, 5, 33), (70, 3, 90)])
def test_backward_without_dx_gives_the_same_parameter_gradients(dtype, O, k, B):
    # dx=None (training's first layer): the parameter gradients are those of the full
    # backward, bit for bit, on every host backend; narrow (O <= 5) and wide layers
    p, dy, start = random_layer(O * 100 + k, B, 3, O, 6, k, "nonuniform", np.dtype(dtype), "silu")
    for backend in (reference, cpu):
        full = run(backend, p, dy, start)
        g = {n: start[n].copy() for n in ("dcoef", "dscale_base", "dscale_sp")}
        backend.spline_backward(None, g["dcoef"], g["dscale_base"], g["dscale_sp"], dy, p["x"],
                                p["grid"], p["coef"], p["scale_base"], p["scale_sp"], p["mask"],
                                p["k"], p["base_fun"])
        for name, a in g.items():
            np.testing.assert_array_equal(a, full[name], err_msg=f"{backend.name} {name}")


def test_cpu_results_do_not_depend_on_threads_or_blocks(monkeypatch):
    """Neither the number of threads nor the forward's blocks of samples (from
    ``cpu.Y_BLOCK_BYTES``) may change a bit of any result, and the results still agree
    with the reference."""
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one Numba thread only")
    # 520 * 9 * 70 edges: above the size that runs on one thread (_parallel.SERIAL_EDGES)
    p, dy, start = random_layer(seed=3, B=520, I=9, O=70, G=12, k=3, kind="nonuniform",
                                dtype=np.float64, base_fun="silu")
    before = numba.get_num_threads()
    runs = {}
    try:
        for threads, y_block in [(1, None), (2, None), (2, 1), (1, 1)]:
            numba.set_num_threads(threads)
            if y_block is not None:  # one block of tiles of samples per sample block
                monkeypatch.setattr(cpu, "Y_BLOCK_BYTES", y_block)
            runs[threads, y_block] = run(cpu, p, dy, start)
    finally:
        numba.set_num_threads(before)
    assert cpu.sample_block(70, 8) == cpu.TILES_PER_BLOCK * cpu.tile(8) < 520
    first = runs[1, None]
    for key, got in runs.items():
        for name in first:
            np.testing.assert_array_equal(got[name], first[name], err_msg=f"{name}, (threads, Y_BLOCK_BYTES) = {key}")
    check_cpu_against_reference(p, dy, start, "float64 B=520 I=9 O=70 G=12 nonuniform")


def test_cpu_scratch_within_its_bound_and_the_budget():
    """A forward + backward allocates (as tracemalloc sees it: NumPy's and Numba's
    allocations) no more than ``cpu.kernel_scratch_bytes`` says, and that stays within
    B*I*(k+2) numbers on the benchmark's G = 50 layer."""
    import tracemalloc
    numba = pytest.importorskip("numba")
    B, I, O, G, k = 1024, 64, 64, 50, 3
    p, dy, start = random_layer(seed=5, B=B, I=I, O=O, G=G, k=k, kind="uniform", dtype=np.float64,
                                base_fun="silu")
    p = {n: cpu.asarray(a, a.dtype) if isinstance(a, np.ndarray) else a for n, a in p.items()}
    g = {n: cpu.asarray(a, a.dtype) for n, a in start.items()}
    y = cpu.zeros((B, O), np.float64)
    dy = cpu.asarray(dy, dy.dtype)

    def call():
        cpu.spline_forward(y, p["x"], p["grid"], p["coef"], p["scale_base"], p["scale_sp"], p["mask"], k, "silu")
        cpu.spline_backward(g["dx"], g["dcoef"], g["dscale_base"], g["dscale_sp"], dy, p["x"], p["grid"],
                            p["coef"], p["scale_base"], p["scale_sp"], p["mask"], k, "silu")

    call()  # compiled, and the thread pool started, outside the measurement
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        call()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    bound = cpu.kernel_scratch_bytes(B, I, O, G, k, 8, numba.get_num_threads())
    assert 0.5 * bound < peak <= bound + 4096, (peak, bound)  # 4 KB: Python's own objects of the calls
    assert bound <= B * I * (k + 2) * 8


def test_cpu_forward_overwrites_and_backward_adds():
    """Forward ignores what y held; backward adds, so two calls give twice one call."""
    p, dy, _ = random_layer(seed=7, B=50, I=3, O=4, G=6, k=3, kind="nonuniform",
                            dtype=np.float64, base_fun="silu")
    zero = dict(dx=np.zeros((50, 3)), dcoef=np.zeros((3, 9, 4)),
                dscale_base=np.zeros((3, 4)), dscale_sp=np.zeros((3, 4)))
    for backend in (reference, cpu):
        once = run(backend, p, dy, zero)
        y = np.full_like(once["y"], 1e30)
        backend.spline_forward(y, p["x"], p["grid"], p["coef"], p["scale_base"], p["scale_sp"],
                               p["mask"], p["k"], p["base_fun"])
        np.testing.assert_array_equal(y, once["y"], err_msg=f"{backend.name}: forward kept old y")
        twice = run(backend, p, dy, {n: once[n] for n in zero})
        for n in zero:
            assert_close(f"{backend.name} {n} twice", twice[n], 2 * once[n], 1e-14,
                         float(np.max(np.abs(once[n]))))
        assert np.any(once["dcoef"] != 0) and np.any(once["dx"] != 0)


# ---------------------------------------------------------------------------
# non-finite values (the semantics are in reference.py's module docstring)
def assert_same_nonfinite(name, a, e):
    """The same NaN and the same signed infinities, entry by entry."""
    for what, f in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        bad = np.argwhere(f(a) != f(e))
        assert bad.size == 0, f"{name}: {what} differs at {tuple(bad[0])}: got {a[tuple(bad[0])]}, " \
                              f"expected {e[tuple(bad[0])]}"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's, on the NaN and overflow meant here
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("base_fun", BASE_FUNS)
@pytest.mark.parametrize("kind", ["uniform", "nonuniform"])
def test_cpu_matches_reference_on_non_finite_inputs(dtype, base_fun, kind):
    """NaN, +-inf, the largest floats and subnormals among ordinary inputs: the same
    NaN and infinities as the reference, the same values elsewhere; a sample with a
    non-finite input gets a non-finite output row, the others finite ones; bases of
    a non-finite x are 0, so dcoef and dscale_sp are those of the finite samples."""
    fi = np.finfo(dtype)
    specials = np.array([np.nan, np.inf, -np.inf, fi.max, -fi.max, fi.smallest_subnormal, -0.0], dtype)
    p, dy, start = random_layer(seed=21, B=70, I=3, O=5, G=6, k=3, kind=kind, dtype=dtype, base_fun=base_fun)
    rng = np.random.default_rng(5)
    x = p["x"]
    x[rng.random(x.shape) < 0.15] = np.nan
    x[0:7, 0] = specials   # a full tile: lanes of the vectorised span guess
    x[40:47, 2] = specials
    for i in range(3):     # and a few more NaN and inf in every column
        x[50 + i::10, i] = specials[i % 3]
    p["mask"][0, 1] = 0.0  # a pruned edge of a huge x: 0, not 0 * inf
    ref = run(reference, p, dy, start)
    fast = run(cpu, p, dy, start)
    huge = np.any(np.abs(np.where(np.isfinite(x), x, 0)) > 1e3, axis=1)
    nonfinite = ~np.all(np.isfinite(x), axis=1)
    for out in (ref, fast):
        assert not np.isfinite(out["y"][nonfinite]).any(), "a non-finite input gave a finite output"
        assert np.isfinite(out["y"][~nonfinite & ~huge]).all(), "finite inputs gave a NaN or inf output"
    tol = TOL[np.dtype(dtype)]
    for name in ref:
        assert_same_nonfinite(f"{kind} {base_fun} {name}", fast[name], ref[name])
        both = np.isfinite(ref[name])
        scale = max(float(np.max(np.abs(ref[name][both]), initial=0.0)), 1.0)
        assert_close(f"{kind} {base_fun} {name}", np.where(both, fast[name], 0), np.where(both, ref[name], 0),
                     tol["rtol"], tol["floor"] * scale)
    # dcoef and dscale_sp depend on x only through the bases: as for a finite x outside the knots
    outside = dict(p, x=np.where(np.isfinite(x), x, np.asarray(p["grid"].max() + 10, dtype)))
    for backend, out in ((reference, ref), (cpu, fast)):
        same = run(backend, outside, dy, start)
        for name in ("dcoef", "dscale_sp"):
            np.testing.assert_array_equal(out[name], same[name], err_msg=f"{backend.name} {name}")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_reference_bases_of_non_finite_inputs_are_zero():
    t = np.linspace(-1.6, 1.6, 12)[None, :]
    x = np.array([[np.nan], [np.inf], [-np.inf], [1.7e308], [-1.7e308], [0.3]])
    span, N, dN = reference.local_basis(x, t, 3, deriv=True)
    assert list(span[:5, 0]) == [-1] * 5 and span[5, 0] >= 0
    assert np.all(N[:5] == 0) and np.all(dN[:5] == 0) and N[5].sum() > 0
    for base_fun in BASE_FUNS:
        b, db = reference.base_value(x, base_fun), reference.base_deriv(x, base_fun)
        assert np.isnan(db[:3]).all(), base_fun
        assert not np.isfinite(b[:3]).any(), base_fun
        assert np.isfinite(b[3:]).all() and np.isfinite(db[3:]).all(), base_fun


# ---------------------------------------------------------------------------
# the bases against a naive full Cox-de Boor recursion
def cox_de_boor(t, x, k):
    """All bases B[m, k](x), m = 0 .. len(t) - k - 2, and their derivatives, by the full recursion.

    Written straight from the definition: order 0 is the indicator of
    [t[m], t[m+1]); each order mixes two bases of the order below, a zero
    denominator making its term 0. The derivative uses the order k-1 values.
    Plain Python floats, independent of numkan.
    """
    n = len(t)
    Bm = [1.0 if t[m] <= x < t[m + 1] else 0.0 for m in range(n - 1)]
    prev = Bm
    for p in range(1, k + 1):
        cur = []
        for m in range(n - 1 - p):
            left = (x - t[m]) / (t[m + p] - t[m]) * prev[m] if t[m + p] != t[m] else 0.0
            right = ((t[m + p + 1] - x) / (t[m + p + 1] - t[m + 1]) * prev[m + 1]
                     if t[m + p + 1] != t[m + 1] else 0.0)
            cur.append(left + right)
        if p == k:
            dcur = []
            for m in range(n - 1 - k):
                d = 0.0
                if t[m + k] != t[m]:
                    d += k / (t[m + k] - t[m]) * prev[m]
                if t[m + k + 1] != t[m + 1]:
                    d -= k / (t[m + k + 1] - t[m + 1]) * prev[m + 1]
                dcur.append(d)
        prev = cur
    return np.array(prev), np.array(dcur)


def oracle_points(rng, t):
    """Points inside, outside, on every knot, and just either side of the ends."""
    pts = list(rng.uniform(t[0], t[-1], 12)) + list(t)
    pts += [t[0] - 0.5, t[-1] + 0.5, np.nextafter(t[0], -np.inf), np.nextafter(t[-1], -np.inf)]
    return np.array(pts)


@pytest.mark.parametrize("kind", ["uniform", "nonuniform", "repeated"])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_local_basis_matches_full_cox_de_boor(kind, k):
    rng = np.random.default_rng(10 * k + len(kind))
    for G in (1, 2, 5, 12):
        t = random_knots(rng, G, k, kind)
        K = G + k
        x = oracle_points(rng, t)
        span, N, dN = reference.local_basis(x[:, None], t[None, :], k, deriv=True)
        for b, xv in enumerate(x):
            full, dfull = cox_de_boor(t, xv, k)
            assert full.shape == (K,)
            j = span[b, 0]
            local, dlocal = np.zeros(K), np.zeros(K)
            if j < 0:
                assert not (t[0] <= xv < t[-1]), f"x={xv} inside the knots got span -1"
            else:
                assert t[j] <= xv < t[j + 1], f"x={xv}: span {j} is not [t[j], t[j+1])"
                for s in range(k + 1):  # scatter the local values into the full vector
                    if 0 <= j - k + s < K:
                        local[j - k + s] = N[b, 0, s]
                        dlocal[j - k + s] = dN[b, 0, s]
                    else:
                        assert N[b, 0, s] == 0 and dN[b, 0, s] == 0
            label = f"{kind} k={k} G={G} x={xv!r} span={j}"
            assert_close(label + " bases", local, full, 1e-13, 1.0)
            assert_close(label + " derivatives", dlocal, dfull, 1e-12,
                         max(1.0, float(np.max(np.abs(dfull)))))



@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_bases_sum_to_one_on_interior_grid(k):
    """Partition of unity on [t[k], t[G+k]) for uniform, non-uniform and repeated knots."""
    rng = np.random.default_rng(k)
    for kind in ("uniform", "nonuniform", "repeated"):
        for G in (1, 3, 12):
            t = random_knots(rng, G, k, kind)
            x = np.concatenate([rng.uniform(t[k], t[G + k], 200), t[k:G + k]])
            x = x[(x >= t[k]) & (x < t[G + k])]
            if x.size == 0:  # the interior grid collapsed to one repeated knot
                continue
            _, N, dN = reference.local_basis(x[:, None], t[None, :], k, deriv=True)
            total = N.sum(axis=2)[:, 0]
            assert_close(f"{kind} k={k} G={G} sum of bases", total, np.ones_like(total), 1e-13)
            # and so their derivatives sum to zero
            scale = float(np.max(np.abs(dN)))
            assert_close(f"{kind} k={k} G={G} sum of derivatives", dN.sum(axis=2)[:, 0],
                         np.zeros_like(total), 1e-12, scale)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's, on the inf - inf meant here
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cpu_mse_loss_grad_matches_reference(dtype):
    """The compiled loss: the reference's dy bit for bit, its loss to rounding (summed in
    another order), a Python float; NaN where a prediction is not finite."""
    rng = np.random.default_rng(3)
    for B, O in ((1, 1), (7, 3), (1000, 1), (333, 5)):
        y = rng.normal(0, 2, (B, O)).astype(dtype)
        t = rng.normal(0, 2, (B, O)).astype(dtype)
        dy, dy_ref = np.full_like(y, np.nan), np.full_like(y, np.nan)
        loss, loss_ref = cpu.mse_loss_grad(dy, y, t), reference.mse_loss_grad(dy_ref, y, t)
        assert type(loss) is float
        np.testing.assert_array_equal(dy, dy_ref)
        assert abs(loss - loss_ref) <= 1e-13 * loss_ref, (B, O, loss, loss_ref)
    y[3, 1], y[5, 0] = np.nan, np.inf
    dy = np.zeros_like(y)
    assert np.isnan(cpu.mse_loss_grad(dy, y, t))
    assert np.isnan(dy[3, 1]) and np.isinf(dy[5, 0])
    assert np.isfinite(np.delete(dy.ravel(), [3 * O + 1, 5 * O])).all()
