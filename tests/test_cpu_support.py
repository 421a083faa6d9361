"""The CPU backend's support code: its vectorised exp (``_vexp``) and the kernels'
b(x), b'(x) built on it (``cpu._base_lanes``) against NumPy and the reference,
and its aligned storage (``cpu.empty``, ``zeros``, ``asarray``).

The layer kernels that use both are checked against the reference in
test_kernels.py; these tests pin the pieces down on their own, over the whole
range where exp is exact and beyond it, where it saturates.
"""
import numpy as np
import pytest

import numkan as nk
from numkan.kernels import reference

cpu = pytest.importorskip("numkan.kernels.cpu", reason="numba is not installed")
from numba import njit  # noqa: E402  (numba is there: cpu imported)

from numkan.kernels import _vexp  # noqa: E402
from numkan.kernels._scalar import BASE_CODES  # noqa: E402

# (dtype, lowest and highest x where vexp is exact, largest relative error allowed: 2 ulp)
EXP_RANGES = [(np.float64, -708.0, 709.0, 2 * np.finfo(np.float64).eps),
              (np.float32, -87.0, 88.0, 2 * np.finfo(np.float32).eps)]


@njit
def _vexp_all(out, x):
    for i in range(x.size):
        out[i] = _vexp.vexp(x[i])


def vexp(x):
    out = np.empty_like(x)
    _vexp_all(out, x)
    return out


@pytest.mark.parametrize("dtype, lo, hi, tol", EXP_RANGES)
def test_vexp_matches_exp_over_its_range(dtype, lo, hi, tol):
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(lo, hi, 400_001), rng.uniform(-3, 3, 100_000),
                        [0.0, -0.0, 1e-30, -1e-30, lo, hi]]).astype(dtype)
    exact = np.exp(x.astype(np.float64))  # float64 exp of the dtype's x, as the truth
    rel = np.abs(vexp(x).astype(np.float64) - exact) / exact
    assert rel.max() <= tol, f"{np.dtype(dtype).name}: worst relative error {rel.max():.3g} at x={x[rel.argmax()]!r}"
    assert vexp(np.array([0.0], dtype))[0] == 1.0


@pytest.mark.parametrize("dtype, lo, hi, tol", EXP_RANGES)
def test_vexp_is_inf_above_and_zero_below_its_range(dtype, lo, hi, tol):
    big = np.finfo(dtype).max
    out = vexp(np.array([np.nextafter(dtype(hi), dtype(np.inf)), 1e4, big, np.inf], dtype))
    np.testing.assert_array_equal(out, np.inf)
    out = vexp(np.array([np.nextafter(dtype(lo), dtype(-np.inf)), -1e4, -big, -np.inf], dtype))
    np.testing.assert_array_equal(out, 0.0)
    assert np.all(np.isfinite(vexp(np.array([hi, lo], dtype)))) and vexp(np.array([lo], dtype))[0] > 0


LANES = cpu.tile(4)  # lanes per call of the helper, a constant of its compiled code


@njit(fastmath={"contract", "reassoc"})  # the kernels' flags: vexp must stay exact under them
def _base_lanes_all(bv, bd, x, code):
    """b(x) and b'(x) through the kernels' lane helper, LANES lanes at a time."""
    XS = np.empty(LANES, dtype=x.dtype)
    BV = np.empty((1, LANES), dtype=x.dtype)
    BD = np.empty((1, LANES), dtype=x.dtype)
    for t0 in range(0, x.size, LANES):
        for u in range(LANES):
            XS[u] = x[t0 + u]
        cpu._base_lanes(BV, BD, 0, XS, code, True, LANES)
        for u in range(LANES):
            bv[t0 + u] = BV[0, u]
            bd[t0 + u] = BD[0, u]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("base_fun", ["silu", "identity", "zero"])
def test_kernel_base_values_match_reference(dtype, base_fun):
    rng = np.random.default_rng(1)
    big = float(np.finfo(dtype).max)
    x = np.concatenate([rng.uniform(-10, 10, 5000), np.linspace(-120, 120, 2401),
                        [0.0, -0.0, 1e-20, -1e-20, 700.0, -700.0, 1e30, -1e30, big, -big],
                        np.linspace(-800, 800, 1601)]).astype(dtype)
    x = np.concatenate([x, np.zeros(-x.size % LANES, dtype)])
    bv, bd = np.empty_like(x), np.empty_like(x)
    _base_lanes_all(bv, bd, x, BASE_CODES[base_fun])
    xs = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = (reference.base_value(xs, base_fun), reference.base_deriv(xs, base_fun))
    eps = np.finfo(dtype).eps
    # 4 ulp of the value, or 2^-100 (float32) / 2^-1000 (float64) absolute:
    # values that small may be flushed to 0 where exp saturates
    floor = 2.0 ** (-100 if dtype == np.float32 else -1000)
    # b' = s (1 + x (1 - s)) cancels where it crosses 0: absolute there, on the scale of its terms (1)
    for name, out, exp, scale in (("b", bv, expected[0], 0.0), ("b'", bd, expected[1], 1.0)):
        bound = np.maximum(8 * eps * np.maximum(np.abs(exp), scale), floor)
        excess = np.abs(out - exp) / bound
        assert excess.max() <= 1, f"{base_fun} {name} {np.dtype(dtype).name}: x={x[excess.argmax()]!r}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_storage_is_aligned(dtype):
    for shape in [(3, 5), 7, (2, 3, 4), (0, 4), ()]:
        for a in (cpu.empty(shape, dtype), cpu.zeros(shape, dtype)):
            assert a.dtype == dtype and a.flags.c_contiguous
            assert a.shape == ((shape,) if np.isscalar(shape) else shape)
            assert a.size == 0 or a.ctypes.data % cpu.ALIGN == 0
        assert not cpu.zeros(shape, dtype).any()


def test_kernel_scratch_is_aligned():
    """The kernels' scratch (``cpu._empty_aligned``, inside compiled code) starts on an
    ``ALIGN``-byte boundary, whatever the allocator returned (Numba's own allocations
    are 32-byte aligned): allocations of many sizes, of each dtype the kernels use."""
    from numba import njit

    @njit
    def offsets(n, width, dtype):
        out = np.empty((n, 2), dtype=np.int64)
        for t in range(n):
            a = cpu._empty_aligned((t + 1, width), dtype)
            a[...] = 1
            out[t, 0] = a.ctypes.data % cpu.ALIGN
            out[t, 1] = a.size
        return out

    for dtype in (np.float64, np.float32, np.int32):
        for width in (1, 5, 64):
            got = offsets(40, width, dtype)
            assert (got[:, 0] == 0).all(), (np.dtype(dtype).name, width, got[:, 0])
            assert (got[:, 1] == (np.arange(40) + 1) * width).all()


def test_asarray_aligns_copies_only_when_needed():
    base = np.arange(40, dtype=np.float64)
    for offset in range(0, 8):  # views starting 0..56 bytes past an aligned block
        a = cpu.asarray(base, np.float64)
        view = a[offset:offset + 30]
        out = cpu.asarray(view, np.float64)
        assert out.ctypes.data % cpu.ALIGN == 0
        np.testing.assert_array_equal(out, view)
        assert (out is view) == (view.ctypes.data % cpu.ALIGN == 0)
    # a dtype change or a non-contiguous input still gives an aligned C-contiguous copy
    m = cpu.asarray(np.arange(24.0).reshape(4, 6)[:, ::2], np.float32)
    assert m.dtype == np.float32 and m.flags.c_contiguous and m.ctypes.data % cpu.ALIGN == 0
    np.testing.assert_array_equal(m, np.arange(24.0).reshape(4, 6)[:, ::2])


def test_cpu_model_storage_is_aligned():
    model = nk.KAN(width=[3, 4, 2], grid=5, k=3, seed=0, device="cpu", dtype=np.float32)
    for group in (model.params, model.grads):
        for name, a in group.items():
            assert a.ctypes.data % cpu.ALIGN == 0, name


def test_kernel_builds_hold_their_constants_in_their_closures():
    """Numba's on-disk cache tells compiled functions with the same code and argument
    types apart by the contents of their closures alone (``cpu._CACHE_KEY``). Every
    kernel build, and the serial part it calls, must hold all of its constants
    there, or a build for one (k, OB, T, FULL) could be loaded for another."""
    for make, part in ((cpu._forward_kernel, "_chunk"), (cpu._backward_kernel, "_task")):
        kernel = make(2, cpu.OUTPUT_BLOCK, cpu.tile(8), False)
        for f in (kernel.py_func, kernel.py_func.__globals__[part].py_func):
            held = dict(zip(f.__code__.co_freevars, (c.cell_contents for c in f.__closure__)))
            assert {name: held.get(name) for name in cpu._CACHE_KEY} == \
                {"k": 2, "OB": cpu.OUTPUT_BLOCK, "T": cpu.tile(8), "FULL": False}, (make.__name__, f.__name__)


@njit
def _fill_tables(grid, k):
    I = grid.shape[0]
    inv, lo, scale, span, spm, Wb = cpu._input_arrays(grid, 3, k, grid.dtype)
    ones = np.ones((I, 3), dtype=grid.dtype)
    for i in range(I):
        cpu._setup_input(inv, lo, scale, span, spm, Wb, grid, ones, ones, ones, i, k)
    return lo, scale, span


def _span_table(grid, k):
    return _fill_tables(cpu.asarray(grid, grid.dtype), k)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [1, 3])
def test_span_guess_table(dtype, k):
    """Each bucket of the span guess holds the span (clamped to the interior ones) at
    its middle, and the last column flags exactly the uniform grids."""
    rng = np.random.default_rng(k)
    G = 7
    uniform = np.linspace(-1 - k * 2 / G, 1 + k * 2 / G, G + 2 * k + 1)
    sampled = np.sort(np.concatenate([[-1.3, 1.3], rng.normal(0, 0.3, G + 2 * k - 1)]))
    grid = np.array([uniform, sampled]).astype(dtype)
    lo, scale, span = _span_table(grid, k)
    n = grid.shape[1]
    M = span.shape[1] - 1
    assert M == cpu.SPAN_BUCKETS * (n - 1)
    for i in range(2):
        t = grid[i].astype(np.float64)
        mids = t[0] + (np.arange(M) + 0.5) * ((t[-1] - t[0]) / M)
        want = np.clip(np.searchsorted(t, mids, side="right") - 1, k, n - 2 - k)
        np.testing.assert_array_equal(span[i, :M], want)
    assert span[0, M] == 1 and span[1, M] == 0
    assert lo[1] == grid[1, 0] and scale[1] == np.asarray(M / (t[-1] - t[0]), dtype)


def test_span_guess_hits_on_grids_placed_by_samples():
    """On knots at sample quantiles the table's guess is the span for most samples
    (the arithmetic guess of a uniform grid would miss for most of them)."""
    rng = np.random.default_rng(0)
    k, G, I = 3, 20, 4
    rows = []
    for _ in range(I):
        core = np.quantile(np.clip(rng.normal(0, 0.3, 5000), -1, 1), np.linspace(0, 1, G + 1))
        rows.append(np.concatenate([core[0] - (core[1] - core[0]) * np.arange(k, 0, -1), core,
                                    core[-1] + (core[-1] - core[-2]) * np.arange(1, k + 1)]))
    grid = np.array(rows)
    lo, scale, span = _span_table(grid, k)
    x = np.clip(rng.normal(0, 0.3, (2000, I)), -1, 1)
    M = span.shape[1] - 1
    b = np.clip((x - lo) * scale, 0, M - 1).astype(np.int64)
    j = span[np.arange(I), b]
    hit = (np.take_along_axis(grid.T, j, 0) <= x) & (x < np.take_along_axis(grid.T, j + 1, 0))
    assert hit.mean() > 0.75
    assert span[:, M].max() == 0
