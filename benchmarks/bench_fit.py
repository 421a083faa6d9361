"""Benchmark of training: wall time per L-BFGS step and per Adam step.

A script, not a test. Cases:

- hellokan's model, [2, 5, 1] on 1000 samples, at G = 5, 20, 100;
- a [16, 32, 32, 1] model on 10,000 samples, G = 5.

One L-BFGS step is up to 20 L-BFGS iterations (about 21 objective and
gradient evaluations); one Adam step is one evaluation and one update. Times
are medians over a few fits of ``--lbfgs-steps`` / ``--adam-steps`` steps each
(grid updates off, ``log=0``), after a warm-up fit that compiles the kernels;
the large case runs once. The baseline is the same fit on the pure-NumPy reference backend
(device="numpy"), measured in the same run; ratio = numpy time / cpu time
(its L-BFGS step on the large case takes minutes: only with --full-baseline).

    python benchmarks/bench_fit.py                        # prints a markdown table
    python benchmarks/bench_fit.py --append benchmarks/RESULTS.md
"""
import argparse
import datetime
import os
import platform
import statistics
import time

import numba
import numpy as np

import numkan as nk
from numkan import train

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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lbfgs-steps", type=int, default=3)
    ap.add_argument("--adam-steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-baseline", action="store_true", help="skip the device='numpy' runs")
    ap.add_argument("--full-baseline", action="store_true",
                    help="also time the reference's L-BFGS step on the large case (minutes)")
    ap.add_argument("--append", help="append the table to this markdown file")
    args = ap.parse_args()

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
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + "\n".join(lines + rows) + "\n")
        print(f"appended to {args.append}")


if __name__ == "__main__":
    main()
