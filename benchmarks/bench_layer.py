"""Benchmark of one KAN layer: numkan's local-support kernels against dense baselines.

A script, not a test. For each case (B, I, O, G), k = 3, float32 and float64:

- median time of the forward pass and of forward + backward, through the
  backend kernels with preallocated outputs (``spline_forward`` then
  ``spline_backward``);
- edges/s = B * I * O / time;
- GFLOP/s counting 2 * (k+1) flops per edge per pass; forward + backward
  counts three passes (forward, and a backward about twice the forward);
- the same FLOP rate as a share of numpy's matrix product on a square
  ``--gemm`` x ``--gemm`` matrix of the same dtype, measured in this run, in
  turns with the case's own calls (``ROUNDS`` rounds of each, medians over
  all): on a shared machine whose speed drifts within minutes, both sides of
  the ratio then see the same machine;
- peak extra memory during forward + backward: allocations beyond x, y, dy,
  the parameters and all gradient buffers (all preallocated), seen by
  tracemalloc, which traces NumPy's and also those made inside Numba's
  compiled code (its runtime allocates through Python's raw allocator), in
  numbers of the dtype, next to the budget B * I * (k+2); the kernels' stack
  arrays are not counted (a few KB per thread);
- a dense formulation of the same layer: all K = G + k bases of every input
  in a (B, I*K) matrix (from ``reference.local_basis``, built once outside the
  timing, so the dense times are a lower bound for a dense layer), then
  ``A @ W`` with W = coef * scale_sp * mask reshaped (I*K, O) plus the base term;
  its backward is the matching products A.T @ g and g @ W.T, the basis
  derivatives applied to the latter, and the base term's products.

Then cold start (a fresh process with an empty Numba cache directory, so the
kernels compile) and warm start (a second fresh process on that cache): wall
time from process start to the first forward + backward done.

    python benchmarks/bench_layer.py --out /tmp/bench.md
    python benchmarks/bench_layer.py --quick            # tiny smoke run

Where the environment pins OpenBLAS (``OPENBLAS_CORETYPE`` or
``OPENBLAS_L2_SIZE`` set), numpy's matrix product runs the kernel that the pin
names, which may be slower than the one OpenBLAS would pick for the CPU (on an
AVX-512 CPU pinned to "Haswell": the AVX2 kernel). The rate of numpy as the
environment has it is the baseline (column "GEMM"); a second baseline,
"unpinned", is numpy's product in a child process started without those
variables, timed there in the same turns (``UnpinnedGemm``), and the report
gives both shares and the targets against both. The header records the
variables and each process's BLAS kernel.
"""
import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc

import numpy as np

import numkan as nk
from numkan.kernels import get_backend, reference

CASES = [(1024, 64, 64, 5), (1024, 64, 64, 50), (4096, 128, 128, 10), (10000, 784, 64, 5)]
QUICK_CASES = [(256, 16, 16, 5), (256, 16, 16, 50)]
K_ORDER = 3
ROUNDS = 5  # rounds in which a case's calls and the GEMM baseline take turns
PAUSE = 0.3  # seconds between turns: OpenBLAS's threads spin for a while after a product
             # (and Numba's OpenMP threads after a kernel), taking the cores from the next turn

TARGETS = dict(g50_over_g5=1.3, fwd_gemm=0.30, fwdbwd_gemm=0.20)
PIN_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # pin OpenBLAS's kernel (see the module docstring)


# ---------------------------------------------------------------------------
# measurement helpers
def median_time(fn, min_repeats, min_seconds, max_repeats, warmup=2):
    """Median wall time of fn() after ``warmup`` calls; repeats until both minimums are met."""
    for _ in range(warmup):
        fn()
    times = []
    while len(times) < max_repeats and (len(times) < min_repeats or sum(times) < min_seconds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_extra_bytes(fn):
    """Peak of NumPy/Python allocations made while fn() runs (tracemalloc)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def interleaved_medians(fns, rounds, min_repeats, min_seconds, max_repeats, warmup=2, self_timed=()):
    """Median wall time of each of ``fns`` (name -> callable), the callables taking
    turns: ``rounds`` rounds, each giving every callable at least
    min_repeats / rounds calls and min_seconds / rounds seconds (at most
    max_repeats / rounds calls), with a pause of ``PAUSE`` seconds before each
    turn. A change of the machine's speed during the measurement then reaches
    all of them alike. The callables named in ``self_timed`` return their own
    time in seconds (work done in another process, timed there), which is
    taken instead of the wall time around the call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    per_min = max(1, -(-min_repeats // rounds))
    per_max = max(per_min, max_repeats // rounds)
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(PAUSE)
            fn()  # a first call after the pause, untimed
            n, spent = 0, 0.0
            while n < per_max and (n < per_min or spent < min_seconds / rounds):
                t0 = time.perf_counter()
                own = fn()
                dt = time.perf_counter() - t0
                if name in self_timed:
                    dt = own
                times[name].append(dt)
                spent += dt
                n += 1
    return {name: statistics.median(t) for name, t in times.items()}


def gemm_call(n, dtype):
    """numpy's n x n matrix product (2 n^3 flops) as a callable, and its flop count."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype)
    return (lambda: np.matmul(a, b, out=out)), 2.0 * n ** 3


GEMM_CHILD = textwrap.dedent("""
    import sys, time
    from bench_layer import blas_info, gemm_call  # this script, found through PYTHONPATH
    print(blas_info(), flush=True)
    products = {}
    for line in sys.stdin:  # a request "n dtype": one product, answered with its seconds
        n, dtype = line.split()
        if (n, dtype) not in products:
            products[n, dtype] = gemm_call(int(n), dtype)[0]
        t0 = time.perf_counter()
        products[n, dtype]()
        print(time.perf_counter() - t0, flush=True)
""")


class UnpinnedGemm:
    """numpy's n x n matrix product in a child process whose environment lacks
    ``PIN_VARS``, so that OpenBLAS picks its kernel for the CPU itself. ``call``
    gives a callable that has the child run and time one product and returns
    the child's seconds (``interleaved_medians``'s ``self_timed``): the pipe's
    round trip is not in the time."""

    def __init__(self):
        env = {v: x for v, x in os.environ.items() if v not in PIN_VARS}
        env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.dirname(os.path.abspath(__file__)),
                                                        env.get("PYTHONPATH")] if p)
        self.proc = subprocess.Popen([sys.executable, "-c", GEMM_CHILD], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.blas = self.proc.stdout.readline().strip()
        if not self.blas:
            raise RuntimeError("the unpinned GEMM process did not start")

    def call(self, n, dtype):
        request = f"{n} {np.dtype(dtype).name}\n"

        def product():
            self.proc.stdin.write(request)
            self.proc.stdin.flush()
            return float(self.proc.stdout.readline())

        return product

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


# ---------------------------------------------------------------------------
# one case
def make_case(B, I, O, G, dtype, seed=0):
    layer = nk.KAN([I, O], grid=G, k=K_ORDER, seed=seed, dtype=dtype, device="cpu").layers[0]
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (B, I)).astype(dtype)   # inside the grid: every edge uses its spline
    dy = rng.standard_normal((B, O)).astype(dtype)
    return layer, x, dy


def numkan_calls(be, layer, x, dy):
    """The two timed calls, on the backend's own storage (as a layer holds it)."""
    B, I = x.shape
    x, dy = be.asarray(x, x.dtype), be.asarray(dy, dy.dtype)
    y = be.zeros((B, layer.out_dim), x.dtype)
    dx = be.zeros(x.shape, x.dtype)
    args = (layer.knots, layer.coef, layer.scale_base, layer.scale_sp, layer.mask, layer.k, layer.base_fun)

    def forward():
        be.spline_forward(y, x, *args)

    def forward_backward():
        be.spline_forward(y, x, *args)
        be.spline_backward(dx, layer.dcoef, layer.dscale_base, layer.dscale_sp, dy, x, *args)

    return forward, forward_backward


def dense_calls(layer, x, dy):
    """The same layer evaluated densely: all K bases, then matrix products."""
    B, I = x.shape
    k, O = layer.k, layer.out_dim
    K = layer.coef.shape[1]
    dt = x.dtype
    t0 = time.perf_counter()
    span, N, dN = reference.local_basis(x, layer.knots, k, deriv=True)
    A = np.zeros((B, I, K), dtype=dt)    # every basis of every input, zeros included
    dA_basis = np.zeros((B, I, K), dtype=dt)
    bb, ii = np.indices((B, I))
    for s in range(k + 1):
        a = span - k + s
        ok = (span >= 0) & (a >= 0) & (a < K)
        a = np.clip(a, 0, K - 1)
        A[bb, ii, a] += np.where(ok, N[:, :, s], 0)
        dA_basis[bb, ii, a] += np.where(ok, dN[:, :, s], 0)
    A = A.reshape(B, I * K)
    basis_seconds = time.perf_counter() - t0
    del span, N, dN, bb, ii
    spm = layer.scale_sp * layer.mask
    W = (layer.coef * spm[:, None, :]).reshape(I * K, O)
    Wb = layer.scale_base * layer.mask
    base_fun = layer.base_fun

    def forward():
        bx = reference.base_value(x, base_fun)
        return A @ W + bx @ Wb

    def forward_backward():
        bx = reference.base_value(x, base_fun)
        y = A @ W + bx @ Wb
        g = dy
        dW = A.T @ g                                   # (I*K, O): coefficient gradient
        dsb = (bx.T @ g) * layer.mask                  # base-scale gradient
        dA = g @ W.T                                   # (B, I*K)
        dx = np.einsum("bik,bik->bi", dA.reshape(B, I, K), dA_basis)
        dx += (g @ Wb.T) * reference.base_deriv(x, base_fun)
        return y, dW, dsb, dx

    return forward, forward_backward, basis_seconds


def run_case(B, I, O, G, dtype, be, reps, gemm_n, unpinned=None):
    layer, x, dy = make_case(B, I, O, G, dtype)
    k = layer.k
    fwd, fwdbwd = numkan_calls(be, layer, x, dy)
    gemm_fn, gemm_flops = gemm_call(gemm_n, dtype)
    fns = dict(f=fwd, fb=fwdbwd, gemm=gemm_fn)
    if unpinned is not None:
        fns["gemm_u"] = unpinned.call(gemm_n, dtype)
    t = interleaved_medians(fns, ROUNDS, reps["min"], reps["sec"], reps["max"], self_timed=("gemm_u",))
    t_f, t_fb = t["f"], t["fb"]
    gemm = gemm_flops / t["gemm"]
    gemm_u = gemm_flops / t["gemm_u"] if unpinned is not None else None
    # NumPy's allocations and Numba's (tracemalloc sees both)
    extra = peak_extra_bytes(fwdbwd) / np.dtype(dtype).itemsize
    d_fwd, d_fwdbwd, basis_s = dense_calls(layer, x, dy)
    td_f = median_time(d_fwd, reps["min"], reps["sec"], reps["max"])
    td_fb = median_time(d_fwdbwd, reps["min"], reps["sec"], reps["max"])
    edges = B * I * O
    flops = 2 * (k + 1) * edges
    unpinned_shares = (flops / t_f / gemm_u, 3 * flops / t_fb / gemm_u) if gemm_u else (None, None)
    return dict(
        dtype=np.dtype(dtype).name, B=B, I=I, O=O, G=G,
        t_f=t_f, t_fb=t_fb, edges_f=edges / t_f, edges_fb=edges / t_fb,
        gf_f=flops / t_f / 1e9, gf_fb=3 * flops / t_fb / 1e9,
        gemm=gemm, gemm_f=flops / t_f / gemm, gemm_fb=3 * flops / t_fb / gemm,
        gemm_u=gemm_u, gemm_u_f=unpinned_shares[0], gemm_u_fb=unpinned_shares[1],
        td_f=td_f, td_fb=td_fb, basis_s=basis_s,
        extra=extra, budget=B * I * (k + 2),
    )


# ---------------------------------------------------------------------------
# cold and warm start
STARTUP = textwrap.dedent("""
    import numpy as np, numkan as nk
    layer = nk.KAN([64, 64], grid=5, k={k}, seed=0, dtype=np.{dtype}, device="cpu").layers[0]
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (1024, 64)).astype(np.{dtype})
    layer.forward(x)
    layer.backward(rng.standard_normal((1024, 64)).astype(np.{dtype}))
    assert layer.backend.name == "cpu"
""")


def startup_times(dtype):
    """(cold, warm, bare) wall seconds: fresh process to first forward + backward done.

    ``bare`` is a process that only imports numpy, for scale.
    """
    code = STARTUP.format(k=K_ORDER, dtype=np.dtype(dtype).name)
    out = []
    with tempfile.TemporaryDirectory(prefix="numkan-bench-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for _ in range(2):  # cold (empty cache), then warm (the cache the first one wrote)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True)
            out.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import numpy"], check=True)
    out.append(time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------------
# report
def blas_info():
    try:
        from threadpoolctl import threadpool_info
        blas = [d for d in threadpool_info() if d.get("user_api") == "blas"]
        blas = [d for d in blas if "numpy" in d.get("filepath", "")] or blas  # numpy's own, not scipy's
        libs = [f"{d.get('internal_api')} {d.get('version')} ({d.get('architecture')}, "
                f"{d.get('num_threads')} threads)" for d in blas]
        if libs:
            return "; ".join(libs) + " [threadpoolctl]"
    except ImportError:
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')} [numpy build config; kernel not checked]"
    except Exception:  # older numpy
        return "unknown (install threadpoolctl)"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gemm_ranges(rows, key):
    return ", ".join(f"{d} {min(r[key] for r in rows if r['dtype'] == d) / 1e9:.1f}"
                     f"-{max(r[key] for r in rows if r['dtype'] == d) / 1e9:.1f} GFLOP/s"
                     for d in dict.fromkeys(r["dtype"] for r in rows))


def header(rows, gemm_n, load, unpinned_blas):
    import numba
    env = {v: os.environ.get(v, "unset") for v in PIN_VARS}
    return "\n".join([
        f"# numkan layer benchmark ({datetime.date.today().isoformat()})",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical cores; Python {platform.python_version()}, "
        f"numpy {np.__version__}, numba {numba.__version__} ({numba.get_num_threads()} threads, "
        f"layer {numba.threading_layer() if hasattr(numba, 'threading_layer') else '?'})",
        f"- numpy BLAS: {blas_info()}; OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}, "
        f"OPENBLAS_L2_SIZE={env['OPENBLAS_L2_SIZE']}",
        f"- 1-minute load average at start / end of the run: {load[0]:.1f} / {load[1]:.1f}"
        + (" (above the core count: other processes shared the cores and the times are inflated)"
           if max(load) > (os.cpu_count() or 1) else ""),
        f"- numpy GEMM ({gemm_n}x{gemm_n}), measured in turns with each case's calls (column "
        "'GEMM GFLOP/s'; the '% GEMM' columns are shares of that row's rate): " + gemm_ranges(rows, "gemm"),
    ] + ([
        f"- unpinned GEMM: the same product in a child process without {' / '.join(PIN_VARS)}, "
        f"in the same turns (columns 'unpinned'): {gemm_ranges(rows, 'gemm_u')}; its BLAS: {unpinned_blas}",
    ] if unpinned_blas else []) + [
        f"- k = {K_ORDER}; flops counted as 2(k+1) = {2 * (K_ORDER + 1)} per edge per pass, "
        "forward + backward = 3 passes; times are medians; 'dense' = all G+k bases in a (B, I*K) "
        "matrix (built outside the timing) and numpy matrix products; memory in numbers of the dtype",
    ])


def table(rows):
    unpinned = rows[0]["gemm_u"] is not None
    cols = ["dtype", "B", "I", "O", "G", "fwd ms", "fwd+bwd ms", "Gedge/s fwd", "Gedge/s f+b",
            "GFLOP/s fwd", "GFLOP/s f+b", "GEMM GFLOP/s", "% GEMM fwd", "% GEMM f+b"]
    cols += ["unpinned GEMM GFLOP/s", "% unpinned fwd", "% unpinned f+b"] if unpinned else []
    cols += ["dense fwd ms", "x dense fwd", "dense f+b ms", "x dense f+b", "extra mem", "budget B·I·(k+2)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [
            r["dtype"], str(r["B"]), str(r["I"]), str(r["O"]), str(r["G"]),
            f"{r['t_f'] * 1e3:.3f}", f"{r['t_fb'] * 1e3:.3f}",
            f"{r['edges_f'] / 1e9:.2f}", f"{r['edges_fb'] / 1e9:.2f}",
            f"{r['gf_f']:.1f}", f"{r['gf_fb']:.1f}", f"{r['gemm'] / 1e9:.1f}",
            f"{100 * r['gemm_f']:.0f}%", f"{100 * r['gemm_fb']:.0f}%",
        ]
        if unpinned:
            cells += [f"{r['gemm_u'] / 1e9:.1f}", f"{100 * r['gemm_u_f']:.0f}%", f"{100 * r['gemm_u_fb']:.0f}%"]
        cells += [
            f"{r['td_f'] * 1e3:.3f}", f"{r['td_f'] / r['t_f']:.2f}x",
            f"{r['td_fb'] * 1e3:.3f}", f"{r['td_fb'] / r['t_fb']:.2f}x",
            f"{r['extra']:,.0f}", f"{r['budget']:,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("'x dense' = dense time / numkan time (above 1: numkan is faster). "
                 "Dense basis construction, not timed above, took "
                 + ", ".join(f"{r['basis_s'] * 1e3:.0f} ms" for r in rows) + " (once per row).")
    return "\n".join(lines)


def targets(rows):
    f32 = [r for r in rows if r["dtype"] == "float32"]
    out = ["", "## Targets (float32)", "", "| target | measured | met |", "|---|---|---|"]
    by = {(r["B"], r["I"], r["O"], r["G"]): r for r in f32}
    pairs = [(by[c5], by[c50]) for c5 in by for c50 in by
             if c5[:3] == c50[:3] and c5[3] == 5 and c50[3] == 50]
    for r5, r50 in pairs:
        ratio = r50["t_fb"] / r5["t_fb"]
        out.append(f"| fwd+bwd time G=50 / G=5 (B,I,O={r5['B']},{r5['I']},{r5['O']}) <= "
                   f"{TARGETS['g50_over_g5']} | {ratio:.2f} | {'yes' if ratio <= TARGETS['g50_over_g5'] else 'no'} |")
    baselines = [("gemm", "GEMM rate")] + ([("gemm_u", "unpinned GEMM rate")] if f32 and f32[0]["gemm_u"] else [])
    for r in f32:
        case = f"({r['B']}, {r['I']}, {r['O']}, {r['G']})"
        for key, name in baselines:
            for part, label in (("f", "forward"), ("fb", "fwd+bwd")):
                share, goal = r[f"{key}_{part}"], TARGETS["fwd_gemm" if part == "f" else "fwdbwd_gemm"]
                out.append(f"| {label} >= {goal:.0%} of {name} {case} | {share:.0%} | "
                           f"{'yes' if share >= goal else 'no'} |")
        out.append(f"| extra memory <= B·I·(k+2) = {r['budget']:,} {case} | {r['extra']:,.0f} | "
                   f"{'yes' if r['extra'] <= r['budget'] else 'no'} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny cases and few repeats: a smoke run")
    p.add_argument("--out", help="also write the markdown report to this path")
    p.add_argument("--gemm", type=int, default=None, help="size of the square GEMM baseline (default 2048)")
    p.add_argument("--seconds", type=float, default=None, help="minimum timed seconds per measurement")
    p.add_argument("--no-startup", action="store_true", help="skip the cold/warm start measurement")
    p.add_argument("--dtypes", default="float32,float64")
    args = p.parse_args(argv)

    cases = QUICK_CASES if args.quick else CASES
    gemm_n = args.gemm or (256 if args.quick else 2048)
    reps = dict(min=3 if args.quick else 5, max=1000,
                sec=args.seconds if args.seconds is not None else (0.05 if args.quick else 1.0))
    dtypes = [np.dtype(d) for d in args.dtypes.split(",")]
    be = get_backend("cpu")
    if be.name != "cpu":
        sys.exit("numba is not available: device='cpu' fell back to the reference")

    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    unpinned = UnpinnedGemm() if any(v in os.environ for v in PIN_VARS) else None
    rows = []
    try:
        for dtype in dtypes:
            for B, I, O, G in cases:
                r = run_case(B, I, O, G, dtype, be, reps, gemm_n, unpinned)
                print(f"  {r['dtype']} {(B, I, O, G)}: fwd {r['t_f'] * 1e3:.3f} ms, "
                      f"fwd+bwd {r['t_fb'] * 1e3:.3f} ms", file=sys.stderr, flush=True)
                rows.append(r)
    finally:
        if unpinned is not None:
            unpinned.close()
    load = (load_start, os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
    report = [header(rows, gemm_n, load, unpinned and unpinned.blas), "", table(rows), targets(rows)]
    if not (args.no_startup or args.quick):
        cold, warm, bare = startup_times(np.float32)
        report += ["", "## Start-up (float32, k=3, case (1024, 64, 64, 5))", "",
                   "| process start to first forward+backward | seconds |", "|---|---|",
                   f"| cold: empty Numba cache dir (compiles) | {cold:.2f} |",
                   f"| warm: second process on that cache | {warm:.2f} |",
                   f"| for scale: a process that only imports numpy | {bare:.2f} |"]
    text = "\n".join(report) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
