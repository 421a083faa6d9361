"""Benchmark of training: one loss_and_grad at the widths scientists use, the hellokan
ladder beside pykan, and wall time per L-BFGS and Adam step.

A script, not a test. Three parts (``--parts``, default all three):

- ``lag``: one ``model.loss_and_grad`` (forward + loss + backward, float64) for
  [2, 5, 1], [4, 4, 2, 1] and [100, 1, 1] on 1000 samples at G = 5 and 50:
  time per call (the fastest of ``--rounds`` rounds, each the mean of many
  calls, and the median), ns per (sample, input) = time / (samples x the
  inputs of all layers), and the share of the time spent inside the compiled
  layer kernels (the backend's ``spline_forward`` / ``spline_backward``).
  The same for one evaluation of ``fit``'s objective (``train.Objective``).
  Each number is the median over ``--lag-processes`` fresh processes (default
  3): on a shared machine a whole process sometimes runs 1.5-2x slower.
  Target (issue 22): <= 8 ns per (sample, input).
- ``ladder``: hellokan's grid-extension ladder, [2, 5, 1] fitted to
  exp(sin(pi x) + y^2) (1000 train / 1000 test points), G = 5 -> 10 -> 20
  with 50 and with 200 L-BFGS steps per grid, ``fit``'s defaults; with pykan
  (``--pykan-python``, default $PYKAN_PYTHON or /work/pykan-venv/bin/python)
  on the same data in a separate process, in the same run
  (``paper_fits.run_pykan``): seconds, ratio, and the test RMSE after each grid
  side by side. Target: >= 30x pykan's speed at no worse test RMSE. With
  ``--ladder-seeds 0,1,2`` both libraries run each model seed on the same data,
  and a last row gives the medians (the test RMSE of a single seed varies
  about 2x from seed to seed, in both libraries). pykan runs
  with ``--pykan-threads`` torch threads (default 1: numkan's kernels run on one
  thread at this size, and on a shared machine torch's thread pool, waiting on
  busy cores, made pykan 9x slower in one run).
- ``mlp``: a KAN layer against an MLP with the same number of parameters, forward
  + backward on the same batch: numkan's (B, I, O) = (1024, 64, 64) layer at G = 5
  and 50 (I O (G + k + 2) parameters: coef and the two scales) against torch's
  Linear(64, h) + SiLU + Linear(h, 64), h chosen to match, float32 and float64,
  and, for scale, one Linear(64, 64) + SiLU (the MLP layer of the same width);
  torch in its own process (``--pykan-python``'s interpreter, which has torch)
  with as many threads as Numba's, one after the other in the same run.
- ``steps``: hellokan's model at G = 5, 20, 100 and a [16, 32, 32, 1] model on
  10,000 samples: seconds per L-BFGS step (up to 20 iterations) and per Adam
  step, against the same fit on device="numpy" in the same run.

    python benchmarks/bench_fit.py [--parts lag,ladder,mlp,steps] [--append benchmarks/RESULTS.md]
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numba
import numpy as np

import numkan as nk
from numkan import train

from paper_fits import run_numkan, run_pykan

# count objective evaluations (forward + backward) per step
_EVALS = [0]
_call = train.Objective.__call__


def _counted(self):
    _EVALS[0] += 1
    return _call(self)


train.Objective.__call__ = _counted

CASES = [("hellokan [2,5,1]", [2, 5, 1], 5, 1000), ("hellokan [2,5,1]", [2, 5, 1], 20, 1000),
         ("hellokan [2,5,1]", [2, 5, 1], 100, 1000), ("[16,32,32,1]", [16, 32, 32, 1], 5, 10000)]


def dataset(n_in, n):
    """Inputs uniform in [-1, 1]^n_in; label exp(sin(pi x0) + x1^2) plus a smooth sum of the rest."""
    def f(x):
        y = np.exp(np.sin(np.pi * x[:, 0]) + x[:, 1] ** 2)
        if x.shape[1] > 2:
            y = y + np.sin(x[:, 2:]).sum(axis=1) / x.shape[1]
        return y
    return nk.create_dataset(f, n_var=n_in, train_num=n, test_num=min(n, 1000), seed=0)


def time_per_step(width, G, data, device, opt, steps, repeats):
    """Median seconds per step over ``repeats`` fits of ``steps`` steps (after one warm-up fit)."""
    model = nk.KAN(width, grid=G, k=3, seed=0, device=device)
    kw = dict(opt=opt, steps=steps, update_grid=False, log=0)
    if opt == "Adam":
        kw["lr"] = 1e-3
    model.fit(data, **dict(kw, steps=1))
    times, evals = [], []
    for _ in range(repeats):
        before = _EVALS[0]
        t0 = time.perf_counter()
        res = model.fit(data, **kw)
        times.append((time.perf_counter() - t0) / len(res["train_loss"]))
        evals.append((_EVALS[0] - before) / len(res["train_loss"]))
    return statistics.median(times), statistics.median(evals)


def steps_table(args):
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "## Training: time per step (benchmarks/bench_fit.py)",
        "",
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, numba threads {numba.get_num_threads()}, "
        f"load average {load:.1f} at start; numkan {nk.__version__}, numpy {np.__version__}, "
        f"numba {numba.__version__}. float64, k = 3, grid updates off. One L-BFGS step = up to "
        "20 iterations (evals = objective+gradient evaluations per step); one Adam step = one "
        "evaluation and one update. Baseline: the same fit on device='numpy' (the reference "
        "kernels), in the same run; ratio = numpy / cpu.",
        "",
        "| model | G | samples | L-BFGS s/step | evals/step | numpy s/step | ratio "
        "| Adam ms/step | numpy ms/step | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    rows = []
    for name, width, G, n in CASES:
        data = dataset(width[0], n)
        heavy = n * sum(a * b for a, b in zip(width[:-1], width[1:])) > 1e6
        reps = 1 if heavy else args.repeats
        lb, ev = time_per_step(width, G, data, "cpu", "LBFGS", args.lbfgs_steps, reps)
        ad, _ = time_per_step(width, G, data, "cpu", "Adam", args.adam_steps, reps)
        lb0 = ad0 = float("nan")
        if not args.no_baseline:  # fewer steps on the slow reference
            if not heavy or args.full_baseline:
                lb0, _ = time_per_step(width, G, data, "numpy", "LBFGS", 1, 1)
            ad0, _ = time_per_step(width, G, data, "numpy", "Adam", 5, 1)
        fmt = lambda v, scale=1.0, d=3: "—" if np.isnan(v) else f"{v * scale:.{d}f}"
        ratio = lambda a, b: "—" if np.isnan(a) else f"{a / b:.1f}x"
        row = (f"| {name} | {G} | {n} | {fmt(lb)} | {ev:.1f} | {fmt(lb0)} | {ratio(lb0, lb)} "
               f"| {fmt(ad, 1e3, 2)} | {fmt(ad0, 1e3, 2)} | {ratio(ad0, ad)} |")
        rows.append(row)
        print(row, flush=True)
    return lines + rows



# ---------------------------------------------------------------------------
# loss_and_grad at narrow widths
LAG_CASES = [([2, 5, 1], 5), ([2, 5, 1], 50), ([4, 4, 2, 1], 5), ([4, 4, 2, 1], 50),
             ([100, 1, 1], 5), ([100, 1, 1], 50)]


class _KernelClock:
    """Seconds spent inside the backend's layer kernels, while installed."""

    def __init__(self, backend):
        self.backend, self.seconds, self.saved = backend, 0.0, {}

    def __enter__(self):
        for name in ("spline_forward", "spline_backward", "fixed_forward", "fixed_backward", "spline_mse"):
            real = self.saved[name] = getattr(self.backend, name)

            def timed(*a, _real=real):
                t0 = time.perf_counter()
                out = _real(*a)
                self.seconds += time.perf_counter() - t0
                return out
            setattr(self.backend, name, timed)
        return self

    def __exit__(self, *exc):
        for name, real in self.saved.items():
            setattr(self.backend, name, real)


def _time_calls(fn, calls, rounds, clock):
    """Seconds per call over ``rounds`` rounds of ``calls`` calls: (fastest wall, median wall,
    fastest CPU time of this thread), and the kernels' share of the fastest round's wall
    time. The kernels run on the calling thread at these sizes, so the thread's CPU
    time is what the call costs when the machine is not shared (wall time counts the
    time other processes hold the cores)."""
    fn()
    per, cpu, share = [], [], []
    for _ in range(rounds):
        clock.seconds = 0.0
        c0 = time.thread_time()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t = time.perf_counter() - t0
        cpu.append((time.thread_time() - c0) / calls)
        per.append(t / calls)
        share.append(clock.seconds / t)
    best = int(np.argmin(per))
    return per[best], statistics.median(per), min(cpu), share[best]


def _lag_rows(args):
    """Per case: (width, G, loss_and_grad timings, objective timings), in this process."""
    rows = []
    rng = np.random.default_rng(0)
    for width, G in LAG_CASES:
        x = rng.uniform(-1, 1, (1000, width[0]))
        y = rng.uniform(-1, 1, (1000, width[-1]))
        model = nk.KAN(width, grid=G, k=3, seed=0)
        si = 1000 * sum(width[:-1])
        calls = max(5, int(2e5 // si))
        obj = train.Objective(model, x, y, 0.0, None)
        with _KernelClock(model.backend) as clock:
            lag = _time_calls(lambda: model.loss_and_grad(x, y), calls, args.rounds, clock)
            ob = _time_calls(lambda: _call(obj), calls, args.rounds, clock)  # uncounted
        rows.append((width, G, lag, ob))
    return rows


def lag_table(args):
    n = args.lag_processes
    lines = [
        "## One loss_and_grad at narrow widths (benchmarks/bench_fit.py --parts lag)",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {_machine()}. float64, k = 3, "
        "1000 samples. ns/(s,i) = time / (samples x inputs of all layers). kernels = share of the "
        "time inside the compiled layer kernels (spline_forward/backward, fixed_forward/backward). 'objective' = one "
        "evaluation of fit's objective (train.Objective), the call L-BFGS repeats. Wall: fastest of "
        f"{args.rounds} rounds (median in brackets); CPU: the fastest round's CPU time of the calling "
        "thread (what the call costs on an idle machine; the kernels run on that thread here). "
        f"Each number is the median over {n} fresh processes (on this shared machine a whole "
        "process sometimes runs 1.5-2x slower than the next one).",
        "",
        "| width | G | loss_and_grad wall us | CPU us | ns/(s,i) wall | ns/(s,i) CPU | kernels "
        "| objective wall us | CPU us | ns/(s,i) wall | ns/(s,i) CPU | kernels |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    if args.lag_child:
        print(json.dumps(_lag_rows(args)))
        return []
    runs = []
    for _ in range(n):
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--parts", "lag", "--lag-child",
                               "--rounds", str(args.rounds)], capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rows = []
    for c, (width, G) in enumerate(LAG_CASES):
        si = 1000 * sum(width[:-1])
        med = lambda part: [statistics.median(run[c][part][q] for run in runs) for q in range(4)]
        cell = lambda r: (f"{r[0] * 1e6:.0f} ({r[1] * 1e6:.0f}) | {r[2] * 1e6:.0f} | {r[0] / si * 1e9:.1f} "
                          f"({r[1] / si * 1e9:.1f}) | {r[2] / si * 1e9:.1f} | {r[3] * 100:.0f}%")
        row = f"| {width} | {G} | {cell(med(2))} | {cell(med(3))} |"
        rows.append(row)
        print(row, flush=True)
    return lines + rows


# ---------------------------------------------------------------------------
# the hellokan ladder beside pykan
def ladder_table(args):
    grids = (5, 10, 20)
    f = lambda x: np.exp(np.sin(np.pi * x[:, :1]) + x[:, 1:2] ** 2)
    ds = nk.create_dataset(f, n_var=2, train_num=1000, test_num=1000, seed=0)
    lines = [
        "## hellokan ladder beside pykan (benchmarks/bench_fit.py --parts ladder)",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {_machine()}. [2, 5, 1], "
        "exp(sin(pi x) + y^2), 1000 train / 1000 test points (the same for both), float64, "
        f"G = {' -> '.join(map(str, grids))}, L-BFGS, fit's defaults (grid updates on), model seed(s) "
        f"{', '.join(map(str, args.ladder_seeds))}; "
        f"pykan 0.2.8 (torch, CPU, {args.pykan_threads or 'default'} thread(s)) in its own process, in the "
        "same run; numkan's kernels run on one thread at this size. Test RMSE after each grid.",
        "",
        "| steps/grid | library | seconds | speed-up | " + " | ".join(f"test RMSE G={G}" for G in grids) + " |",
        "|---:|---|---:|---:|" + "---:|" * len(grids),
    ]
    print("\n".join(lines), flush=True)
    if args.pykan_threads:  # inherited by the pykan process (numkan's threads are set already)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.pykan_threads)
    rows = []
    run_numkan(ds, [2, 5, 1], 0, grids, 2)  # compiles (or loads) every kernel the ladder uses, outside the timing
    for steps in args.ladder_steps:
        ratios, ours_all, theirs_all = [], [], []
        for seed in args.ladder_seeds:
            ours, t_ours = run_numkan(ds, [2, 5, 1], seed, grids, steps)
            theirs, t_theirs = (None, float("nan"))
            if args.pykan_python and os.path.exists(args.pykan_python):
                theirs, t_theirs = run_pykan(args.pykan_python, ds, [2, 5, 1], seed, grids, steps)
            fmt = lambda v: " | ".join(f"{a:.2e}" for a in v)
            tag = f" (seed {seed})" if len(args.ladder_seeds) > 1 else ""
            out = [f"| {steps} | numkan{tag} | {t_ours:.2f} | {t_theirs / t_ours:.1f}x | {fmt(ours)} |"]
            if theirs is not None:
                out.append(f"| {steps} | pykan{tag} | {t_theirs:.2f} | 1x | {fmt(theirs)} |")
                ratios.append(t_theirs / t_ours)
                theirs_all.append(theirs)
            ours_all.append(ours)
            rows += out
            print("\n".join(out), flush=True)
        if len(args.ladder_seeds) > 1 and theirs_all:
            # the test RMSE of one seed is one draw of a noisy quantity: the medians over the seeds
            med = lambda runs: " | ".join(f"{statistics.median(v):.2e}" for v in zip(*runs))
            out = [f"| {steps} | numkan, median of {len(ratios)} | | {statistics.median(ratios):.1f}x | "
                   f"{med(ours_all)} |",
                   f"| {steps} | pykan, median of {len(ratios)} | | 1x | {med(theirs_all)} |"]
            rows += out
            print("\n".join(out), flush=True)
    return lines + rows


# ---------------------------------------------------------------------------
# a KAN layer against an MLP of the same size
MLP_RUNNER = r"""
import json, sys, time
import torch
B, I, O, h, dtype, rounds = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                             getattr(torch, sys.argv[5]), int(sys.argv[6]))
torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[7]))
layers = [torch.nn.Linear(I, h), torch.nn.SiLU(), torch.nn.Linear(h, O)] if h else [torch.nn.Linear(I, O), torch.nn.SiLU()]
net = torch.nn.Sequential(*layers).to(dtype)
x = torch.rand(B, I, dtype=dtype) * 2 - 1
dy = torch.randn(B, O, dtype=dtype)
def step():
    net.zero_grad(set_to_none=False)
    net(x).backward(dy)
step()
best = 1e9
for _ in range(rounds):
    t0 = time.perf_counter()
    for _ in range(20):
        step()
    best = min(best, (time.perf_counter() - t0) / 20)
print(json.dumps({"seconds": best, "params": sum(p.numel() for p in net.parameters()),
                  "threads": torch.get_num_threads()}))
"""


def mlp_table(args):
    from numkan.kernels import cpu
    B, I, O, k = 1024, 64, 64, 3
    lines = [
        "## A KAN layer against an MLP of the same size (benchmarks/bench_fit.py --parts mlp)",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {_machine()}. Forward + "
        f"backward of one batch (B = {B}), fastest of {args.rounds} rounds of 20: numkan's cpu layer "
        f"kernels ({I} -> {O}, k = {k}) and torch's Linear({I}, h) + SiLU + Linear(h, {O}) with h "
        f"chosen for the same number of parameters; and, for scale, one Linear({I}, {O}) + SiLU, the "
        "MLP layer of the same width (torch in its own process with as many threads as Numba's).",
        "",
        "| dtype | G | parameters | numkan ms | MLP h | MLP params | torch ms | numkan / torch "
        f"| Linear({I},{O})+SiLU ms | numkan / it |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    rows = []
    rng = np.random.default_rng(0)
    threads = numba.get_num_threads()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))

    def torch_time(h, dt):
        proc = subprocess.run([args.pykan_python, "-c", MLP_RUNNER, str(B), str(I), str(O), str(h), dt,
                               str(args.rounds), str(threads)], capture_output=True, text=True, env=env)
        if proc.returncode:
            return float("nan"), "—"
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        return out["seconds"], out["params"]
    for dt in ("float32", "float64"):
        for G in (5, 50):
            K = G + k
            params = I * O * (K + 2)
            h = max(1, round((params - O) / (I + 1 + O)))  # (I+1) h + (h+1) O parameters
            x = cpu.asarray(rng.uniform(-1, 1, (B, I)), dt)
            knots = cpu.asarray(np.tile(-1 + (np.arange(G + 2 * k + 1) - k) * (2 / G), (I, 1)), dt)
            coef = cpu.asarray(rng.normal(0, 0.1, (I, K, O)), dt)
            sb, ssp, mask = (cpu.asarray(np.ones((I, O)), dt) for _ in range(3))
            y, dy = cpu.zeros((B, O), dt), cpu.asarray(rng.normal(size=(B, O)), dt)
            dx, dc = cpu.zeros((B, I), dt), cpu.zeros((I, K, O), dt)
            d1, d2 = cpu.zeros((I, O), dt), cpu.zeros((I, O), dt)

            def step():
                cpu.spline_forward(y, x, knots, coef, sb, ssp, mask, k, "silu")
                dx.fill(0)
                cpu.spline_backward(dx, dc, d1, d2, dy, x, knots, coef, sb, ssp, mask, k, "silu")
            step()
            ours = 1e9
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                for _ in range(20):
                    step()
                ours = min(ours, (time.perf_counter() - t0) / 20)
            theirs = lin = float("nan")
            tp = "—"
            if args.pykan_python and os.path.exists(args.pykan_python):
                theirs, tp = torch_time(h, dt)
                lin = torch_time(0, dt)[0]
            row = (f"| {dt} | {G} | {params} | {ours * 1e3:.3f} | {h} | {tp} | {theirs * 1e3:.3f} | "
                   f"{ours / theirs:.2f}x | {lin * 1e3:.3f} | {ours / lin:.1f}x |")
            rows.append(row)
            print(row, flush=True)
    return lines + rows


def _machine():
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numba threads "
            f"{numba.get_num_threads()}, load average {load:.1f} at start; numkan {nk.__version__}, "
            f"numba {numba.__version__}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="lag,ladder,mlp,steps", help="comma-separated: lag, ladder, mlp, steps")
    ap.add_argument("--rounds", type=int, default=7, help="lag: rounds of calls")
    ap.add_argument("--lag-processes", type=int, default=3, help="lag: fresh processes, each timing every case")
    ap.add_argument("--lag-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ladder-steps", type=lambda s: [int(v) for v in s.split(",")], default=[50, 200],
                    help="ladder: L-BFGS steps per grid (comma-separated)")
    ap.add_argument("--ladder-seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0],
                    help="ladder: model seeds (comma-separated; several add a row of medians)")
    ap.add_argument("--pykan-python", default=os.environ.get("PYKAN_PYTHON", "/work/pykan-venv/bin/python"))
    ap.add_argument("--pykan-threads", type=int, default=1,
                    help="ladder: torch threads of the pykan process (OMP_NUM_THREADS; 0 = torch's default)")
    ap.add_argument("--lbfgs-steps", type=int, default=3)
    ap.add_argument("--adam-steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-baseline", action="store_true", help="steps: skip the device='numpy' runs")
    ap.add_argument("--full-baseline", action="store_true",
                    help="steps: also time the reference's L-BFGS step on the large case (minutes)")
    ap.add_argument("--append", help="append the tables to this markdown file")
    args = ap.parse_args()
    parts = {"lag": lag_table, "ladder": ladder_table, "mlp": mlp_table, "steps": steps_table}
    out = []
    for name in args.parts.split(","):
        out += parts[name](args) + [""]
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + "\n".join(out) + "\n")
        print(f"appended to {args.append}")


if __name__ == "__main__":
    main()
