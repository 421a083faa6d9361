"""Benchmark of numkan's CUDA layer kernels against a dense GPU KAN layer.

    python benchmarks/bench_cuda.py --out benchmarks/RESULTS_cuda.md
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/bench_cuda.py --quick --out /tmp/q.md

1. Checks the CUDA kernels against the NumPy reference (forward and all four
   gradients, float64 and float32, non-uniform knots) and stops if they differ.
2. Times, per case (B, I, O, G), k = 3, float32 and float64:
   forward and forward+backward of one layer (CUDA events around each call,
   median of many calls after a warm-up); edges/s = B*I*O / time; the device
   memory the numkan calls allocate beyond inputs, outputs and parameters
   (measured as the drop in free device memory while numba's deallocation is
   deferred); and the same for a dense formulation (all G+k bases as a
   (B, I, G+k) tensor, then one matrix product; autograd for the backward) in
   torch, or CuPy (forward only) when torch is missing, measured in the same run.
3. Writes a markdown table to --out.

Benchmarks are not tests: nothing here fails on a slow machine.
"""
import argparse
import datetime
import statistics
import sys
import time

import numpy as np

CASES = [(1024, 64, 64, 5), (4096, 128, 128, 10), (10000, 784, 64, 5),
         (65536, 256, 256, 10), (65536, 256, 256, 100)]
QUICK_CASES = [(40, 3, 5, 3)]
K_ORDER = 3


def layer_arrays(B, I, O, G, k, dtype, seed=0):
    """Host arrays of one layer: uniform grid on [-1, 1], inputs mostly inside it."""
    rng = np.random.default_rng(seed)
    n = G + 2 * k + 1
    h = 2.0 / G
    grid = np.tile(-1 + (np.arange(n) - k) * h, (I, 1))
    x = rng.uniform(-1.1, 1.1, (B, I))
    coef = rng.normal(size=(I, G + k, O)) * 0.1
    sb = rng.uniform(-1, 1, (I, O)) / np.sqrt(I)
    sp = np.full((I, O), 1 / np.sqrt(I))
    mask = np.ones((I, O))
    dy = rng.normal(size=(B, O)) / (B * O)
    return [a.astype(dtype) for a in (x, grid, coef, sb, sp, mask)], dy.astype(dtype)


def check_against_reference(C, R):
    """Small non-uniform cases: CUDA against the reference; exits on a mismatch."""
    worst = {}
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-5)):
        for (B, I, O, G, k) in ((70, 3, 5, 6, 3), (33, 2, 40, 4, 2)):
            arrays, dy = layer_arrays(B, I, O, G, k, dtype, seed=1)
            rng = np.random.default_rng(2)
            grid = np.sort(rng.uniform(-1.2, 1.2, arrays[1].shape), axis=1).astype(dtype)
            arrays[1] = grid
            arrays[0][0] = grid[:, 0]
            arrays[0][1] = grid[:, k + 1]
            x, grid, coef, sb, sp, mask = arrays
            y = np.zeros((B, O), dtype)
            R.spline_forward(y, *arrays, k, "silu")
            ref = [np.zeros((B, I), dtype), np.zeros_like(coef), np.zeros((I, O), dtype), np.zeros((I, O), dtype)]
            R.spline_backward(*ref, dy, *arrays, k, "silu")
            dev = [C.asarray(a, dtype) for a in arrays]
            yd = C.zeros((B, O), dtype)
            C.spline_forward(yd, *dev, k, "silu")
            got = [C.zeros(a.shape, dtype) for a in ref]
            C.spline_backward(*got, C.asarray(dy, dtype), *dev, k, "silu")
            for name, a, b in zip(("y", "dx", "dcoef", "dscale_base", "dscale_sp"),
                                  [yd] + got, [y] + ref):
                a = C.to_host(a).astype(np.float64)
                e = float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))
                key = (np.dtype(dtype).name, name)
                worst[key] = max(worst.get(key, 0.0), e)
                if not e <= tol:
                    sys.exit(f"CUDA {name} differs from the reference: {e:.3g} > {tol:g} "
                             f"(B, I, O, G, k = {B, I, O, G, k}, {np.dtype(dtype).name})")
    return worst


def time_calls(cuda, fn, reps, warmup):
    """Median milliseconds of fn() over reps calls, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = cuda.event(), cuda.event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def numkan_case(cuda, C, arrays, dy, k, dtype, reps, warmup):
    B, I = arrays[0].shape
    O = arrays[2].shape[2]
    dev = [C.asarray(a, dtype) for a in arrays]
    x, grid, coef, sb, sp, mask = dev
    y = C.zeros((B, O), dtype)
    grads = [C.zeros((B, I), dtype), C.zeros(coef.shape, dtype), C.zeros((I, O), dtype), C.zeros((I, O), dtype)]
    g = C.asarray(dy, dtype)

    def fwd():
        C.spline_forward(y, *dev, k, "silu")

    def fwd_bwd():
        C.spline_forward(y, *dev, k, "silu")
        C.spline_backward(*grads, g, *dev, k, "silu")

    t_f = time_calls(cuda, fwd, reps, warmup)
    t_fb = time_calls(cuda, fwd_bwd, reps, warmup)
    # memory the calls allocate: freed only after the deferred block, so the
    # drop in free memory over one forward+backward is its peak extra use
    cuda.synchronize()
    try:
        ctx = cuda.current_context()
        ctx.deallocations.clear()
        free0 = ctx.get_memory_info()[0]
    except Exception:  # the simulator has no memory information
        return t_f, t_fb, None
    with cuda.defer_cleanup():
        fwd_bwd()
        cuda.synchronize()
        extra = free0 - ctx.get_memory_info()[0]
    return t_f, t_fb, max(extra, 0)


def dense_torch(torch, arrays, dy, k, dtype, reps, warmup):
    """A dense KAN layer: all K = G + k bases (B, I, K), then (B, I*K) @ (I*K, O); autograd backward."""
    dev = torch.device("cuda")
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    x, grid, coef, sb, sp, mask = (torch.tensor(a, device=dev, dtype=tdt) for a in arrays)
    g = torch.tensor(dy, device=dev, dtype=tdt)
    coef.requires_grad_(True)
    sb.requires_grad_(True)
    sp.requires_grad_(True)
    x.requires_grad_(True)
    B, I = x.shape
    K, O = coef.shape[1], coef.shape[2]

    def bases(xx):
        t = grid[None]                           # (1, I, n)
        v = xx[:, :, None]                       # (B, I, 1)
        N = ((v >= t[:, :, :-1]) & (v < t[:, :, 1:])).to(tdt)
        for p in range(1, k + 1):
            left = (v - t[:, :, :-(p + 1)]) / (t[:, :, p:-1] - t[:, :, :-(p + 1)]) * N[:, :, :-1]
            right = (t[:, :, p + 1:] - v) / (t[:, :, p + 1:] - t[:, :, 1:-p]) * N[:, :, 1:]
            N = left + right
        return N                                 # (B, I, K)

    def forward():
        W = coef * (sp * mask)[:, None, :]
        y = bases(x).reshape(B, I * K) @ W.reshape(I * K, O)
        return y + torch.nn.functional.silu(x) @ (sb * mask)

    def fwd():
        with torch.no_grad():
            forward()

    def fwd_bwd():
        forward().backward(g)

    def timed(fn):
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
        return statistics.median(times)

    base_mem = torch.cuda.memory_allocated()
    t_f = timed(fwd)
    t_fb = timed(fwd_bwd)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fwd_bwd()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base_mem
    return t_f, t_fb, peak


def dense_cupy(cp, arrays, dy, k, dtype, reps, warmup):
    """The same dense forward in CuPy (no backward: CuPy has no autograd)."""
    x, grid, coef, sb, sp, mask = (cp.asarray(a) for a in arrays)
    B, I = x.shape
    K, O = coef.shape[1], coef.shape[2]

    def fwd():
        t = grid[None]
        v = x[:, :, None]
        N = ((v >= t[:, :, :-1]) & (v < t[:, :, 1:])).astype(x.dtype)
        for p in range(1, k + 1):
            left = (v - t[:, :, :-(p + 1)]) / (t[:, :, p:-1] - t[:, :, :-(p + 1)]) * N[:, :, :-1]
            right = (t[:, :, p + 1:] - v) / (t[:, :, p + 1:] - t[:, :, 1:-p]) * N[:, :, 1:]
            N = left + right
        W = coef * (sp * mask)[:, None, :]
        return N.reshape(B, I * K) @ W.reshape(I * K, O) + (x / (1 + cp.exp(-x))) @ (sb * mask)

    for _ in range(warmup):
        fwd()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(reps):
        s, e = cp.cuda.Event(), cp.cuda.Event()
        s.record()
        fwd()
        e.record()
        e.synchronize()
        times.append(cp.cuda.get_elapsed_time(s, e))
    return statistics.median(times), None, None


def fmt_bytes(n):
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="markdown file for the table")
    ap.add_argument("--quick", action="store_true", help="one tiny case, few repetitions (simulator smoke run)")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--no-dense", action="store_true", help="skip the dense baseline")
    args = ap.parse_args(argv)

    from numba import cuda

    from numkan.kernels import cuda as C
    from numkan.kernels import reference as R

    C.check_available()
    worst = check_against_reference(C, R)
    print("check against the reference passed; worst relative errors:")
    for (dt, name), e in sorted(worst.items()):
        print(f"  {dt:8s} {name:12s} {e:.2e}")

    cases = QUICK_CASES if args.quick else CASES
    reps, warmup = (2, 1) if args.quick else (args.reps, 5)
    torch = cp = None
    if not args.no_dense and not args.quick:
        try:
            import torch
            if not torch.cuda.is_available():
                torch = None
        except ImportError:
            torch = None
        if torch is None:
            try:
                import cupy as cp
            except ImportError:
                cp = None
    dense_name = "torch" if torch is not None else ("cupy (forward only)" if cp is not None else "none")
    try:
        device_name = cuda.get_current_device().name
        device_name = device_name.decode() if isinstance(device_name, bytes) else str(device_name)
    except Exception:
        device_name = "unknown"

    rows = []
    for (B, I, O, G) in cases:
        for dtype in (np.float32, np.float64):
            arrays, dy = layer_arrays(B, I, O, G, K_ORDER, dtype)
            edges = B * I * O
            t_f, t_fb, extra = numkan_case(cuda, C, arrays, dy, K_ORDER, dtype, reps, warmup)
            d_f = d_fb = d_mem = None
            note = ""
            try:
                if torch is not None:
                    d_f, d_fb, d_mem = dense_torch(torch, arrays, dy, K_ORDER, dtype, max(5, reps // 5), 2)
                elif cp is not None:
                    d_f, d_fb, d_mem = dense_cupy(cp, arrays, dy, K_ORDER, dtype, max(5, reps // 5), 2)
            except Exception as exc:  # typically out of memory at G = 100
                note = f"dense failed: {type(exc).__name__}"
                if torch is not None:
                    torch.cuda.empty_cache()
            row = dict(B=B, I=I, O=O, G=G, dtype=np.dtype(dtype).name, t_f=t_f, t_fb=t_fb,
                       eps_f=edges / (t_f * 1e-3), eps_fb=edges / (t_fb * 1e-3), extra=extra,
                       d_f=d_f, d_fb=d_fb, d_mem=d_mem, note=note)
            rows.append(row)
            print(f"B={B:6d} I={I:4d} O={O:4d} G={G:4d} {row['dtype']:8s} "
                  f"fwd {t_f:8.3f} ms {row['eps_f']:.3g} e/s | fwd+bwd {t_fb:8.3f} ms {row['eps_fb']:.3g} e/s | "
                  f"extra mem {fmt_bytes(extra)} | dense fwd {d_f} fwd+bwd {d_fb} mem {fmt_bytes(d_mem)} {note}",
                  flush=True)

    def ms(v):
        return "n/a" if v is None else f"{v:.3f}"

    def ratio(a, b):
        return "n/a" if a is None or b is None else f"{a / b:.1f}x"

    lines = [
        f"# numkan CUDA layer benchmark ({datetime.date.today().isoformat()})",
        "",
        f"Device: {device_name}. k = {K_ORDER}, uniform grid, silu base. Times are medians over "
        f"{reps} calls after {warmup} warm-up calls (CUDA events). Edges/s = B*I*O / time. "
        "'extra' is device memory allocated by the numkan calls beyond inputs, outputs and parameters "
        f"(forward+backward). Dense baseline: {dense_name}, all G+k bases then a matrix product, "
        "autograd backward; 'dense peak' is its peak allocation during forward+backward. "
        "Speed-up = dense time / numkan time." + (" QUICK RUN (not a measurement)." if args.quick else ""),
        "",
        "| B | I | O | G | dtype | fwd ms | fwd edges/s | fwd+bwd ms | fwd+bwd edges/s | extra | "
        "dense fwd ms | dense fwd+bwd ms | dense peak | speed-up fwd | speed-up fwd+bwd | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['B']} | {r['I']} | {r['O']} | {r['G']} | {r['dtype']} | {ms(r['t_f'])} | {r['eps_f']:.3g} | "
            f"{ms(r['t_fb'])} | {r['eps_fb']:.3g} | {fmt_bytes(r['extra'])} | {ms(r['d_f'])} | {ms(r['d_fb'])} | "
            f"{fmt_bytes(r['d_mem'])} | {ratio(r['d_f'], r['t_f'])} | {ratio(r['d_fb'], r['t_fb'])} | {r['note']} |")
    lines += ["", "Targets (H200, float32, (65536, 256, 256), G = 10 and 100): forward >= 1e12 edges/s, "
              "forward+backward >= 4e11 edges/s, extra memory < 1 GiB; (1024, 64, 64, 5) forward+backward < 0.2 ms.", ""]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"total {time.time() - t0:.1f} s")
