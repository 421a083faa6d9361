"""The KAN paper's toy functions: test RMSE per grid on the grid-extension ladder, numkan beside pykan.

Each case fits 1000 training points and is scored on 1000 fresh test points
(``numkan.create_dataset``, inputs uniform on [-1, 1], float64), starting at
G = 3 and refined (``refine``) along the ladder 3 -> 5 -> 10 -> 20 -> 50, with
100 L-BFGS steps per grid and no regularisation. numkan runs with ``fit``'s
defaults (grid updates included); the printed RMSE is the test RMSE after the
last step of each grid, "best" the lowest over the ladder.

With ``--pykan`` the same data sets (written to a temporary .npz) are fitted
by pykan in a separate process, run by another Python interpreter
(``--pykan-python``, default $PYKAN_PYTHON or /work/pykan-venv/bin/python)
that has pykan and torch installed: neither is a dependency of numkan. pykan
runs its own defaults (``KAN(width, grid=3, k=3, seed)``, ``fit(opt="LBFGS",
steps=100, lamb=0)``, ``refine(G)``) in float64 on the CPU.

pykan needs tens of minutes for the [100, 1, 1] and [4, 4, 2, 1] ladders on a
2-core machine. ``--pykan-cache FILE`` keeps its results in a JSON file, keyed
by case, seed, ladder, steps and a hash of the data set, so numkan can be re-run
against them; a reused pykan row says "(cached)".

Run:  python benchmarks/paper_fits.py [--pykan] [--pykan-cache FILE] [--quick] [--cases xy,j0] [--seed 0]
``--quick`` (under a minute, numkan only unless --pykan is given) runs the
four small cases on the ladder 3 -> 10 with 20 steps per grid.
"""
import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
from scipy.special import j0

import numkan as nk


def _f_j0(x):
    return j0(20 * x[:, :1])


def _f_expsin(x):
    return np.exp(np.sin(np.pi * x[:, :1]) + x[:, 1:2] ** 2)


def _f_xy(x):
    return x[:, :1] * x[:, 1:2]


def _f_mean100(x):
    return np.exp(np.mean(np.sin(np.pi * x / 2) ** 2, axis=1, keepdims=True))


def _f_four(x):
    return np.exp(0.5 * (np.sin(np.pi * (x[:, :1] ** 2 + x[:, 1:2] ** 2))
                         + np.sin(np.pi * (x[:, 2:3] ** 2 + x[:, 3:4] ** 2))))


# name: (formula, width, function)
CASES = {
    "j0": ("J0(20x)", [1, 1], _f_j0),
    "expsin": ("exp(sin(pi x)+y^2)", [2, 1, 1], _f_expsin),
    "xy": ("xy", [2, 2, 1], _f_xy),
    "mean100": ("exp(mean sin^2(pi x_i/2)), 100 inputs", [100, 1, 1], _f_mean100),
    "four": ("exp((sin(pi(x1^2+x2^2))+sin(pi(x3^2+x4^2)))/2)", [4, 4, 2, 1], _f_four),
}

# run by the pykan interpreter: argv = data.npz, width (JSON), seed, grids (JSON), steps
PYKAN_RUNNER = r"""
import json, os, sys, time
import numpy as np, torch
from kan import KAN
torch.set_default_dtype(torch.float64)
path, width, seed, grids, steps = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5])
d = np.load(path)
ds = {k: torch.tensor(d[k]) for k in ("train_input", "train_label", "test_input", "test_label")}
os.makedirs("model", exist_ok=True)  # pykan logs its history there even with auto_save=False
t0 = time.perf_counter()
model = KAN(width=width, grid=grids[0], k=3, seed=seed, auto_save=False, ckpt_path="model")
test = []
for n, G in enumerate(grids):
    if n:
        model = model.refine(G)
    res = model.fit(ds, opt="LBFGS", steps=steps, lamb=0.0)
    test.append(float(res["test_loss"][-1]))
print(json.dumps({"test": test, "seconds": time.perf_counter() - t0}))
"""


def run_numkan(dataset, width, seed, grids, steps):
    """Test RMSE after each grid of the ladder, and the seconds the whole ladder took."""
    t0 = time.perf_counter()
    model = nk.KAN(width=width, grid=grids[0], k=3, seed=seed, dtype=np.float64)
    test = []
    for n, G in enumerate(grids):
        if n:
            model = model.refine(G, x=dataset["train_input"])
        res = model.fit(dataset, steps=steps, log=0)
        test.append(res["test_loss"][-1])
    return test, time.perf_counter() - t0


def run_pykan(python, dataset, width, seed, grids, steps):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.npz")
        np.savez(path, **{k: np.asarray(v, dtype=np.float64) for k, v in dataset.items()})
        proc = subprocess.run([python, "-c", PYKAN_RUNNER, path, json.dumps(width), str(seed),
                               json.dumps(list(grids)), str(steps)],
                              capture_output=True, text=True, cwd=tmp)
    if proc.returncode:
        raise RuntimeError(f"pykan run failed ({python}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["test"], out["seconds"]


def _data_hash(dataset):
    h = hashlib.sha256()
    for k in sorted(dataset):
        h.update(k.encode())
        h.update(np.ascontiguousarray(dataset[k], dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def run_pykan_cached(python, cache, name, dataset, width, seed, grids, steps):
    """run_pykan, or its stored result for exactly this data, ladder and step count."""
    if cache is None:
        return run_pykan(python, dataset, width, seed, grids, steps) + ("pykan",)
    key = f"{name}|seed={seed}|grids={list(grids)}|steps={steps}|data={_data_hash(dataset)}"
    store = {}
    if os.path.exists(cache):
        with open(cache) as fh:
            store = json.load(fh)
    if key in store:
        return store[key]["test"], store[key]["seconds"], "pykan (cached)"
    test, sec = run_pykan(python, dataset, width, seed, grids, steps)
    store[key] = {"test": test, "seconds": sec, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}
    with open(cache, "w") as fh:
        json.dump(store, fh, indent=1)
    return test, sec, "pykan"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pykan", action="store_true", help="also run pykan on the same data")
    p.add_argument("--pykan-python", default=os.environ.get("PYKAN_PYTHON", "/work/pykan-venv/bin/python"))
    p.add_argument("--pykan-cache", default=None, metavar="FILE",
                   help="reuse pykan results stored in FILE for identical data, ladder and steps; store new ones")
    p.add_argument("--quick", action="store_true", help="small cases, ladder 3 -> 10, 20 steps")
    p.add_argument("--cases", default=None, help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--seed", type=int, default=0, help="data and model seed")
    a = p.parse_args(argv)
    grids, steps = ((3, 10), 20) if a.quick else ((3, 5, 10, 20, 50), 100)
    names = [n for n in CASES if not (a.quick and n == "mean100")]
    if a.cases:
        names = a.cases.split(",")
        unknown = [n for n in names if n not in CASES]
        if unknown:
            p.error(f"--cases: unknown case(s) {unknown}; expected some of {list(CASES)}")
    print(f"# paper_fits: {len(names)} cases, grids {list(grids)}, {steps} L-BFGS steps per grid, "
          f"1000 train / 1000 test points, float64, seed {a.seed}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, numpy {np.__version__}, numkan defaults")
    cols = " | ".join(f"G={G}" for G in grids)
    print(f"| case | width | library | {cols} | best | seconds |")
    print("|---|---|---|" + "---|" * len(grids) + "---|---|")
    summary = []
    for name in names:
        formula, width, f = CASES[name]
        ds = nk.create_dataset(f, n_var=width[0], train_num=1000, test_num=1000, seed=a.seed)
        rows = [("numkan",) + run_numkan(ds, width, a.seed, grids, steps)]
        if a.pykan:
            test, sec, lib = run_pykan_cached(a.pykan_python, a.pykan_cache, name, ds, width, a.seed,
                                              grids, steps)
            rows.append((lib, test, sec))
        for lib, test, sec in rows:
            vals = " | ".join(f"{v:.2e}" for v in test)
            print(f"| {formula} | {width} | {lib} | {vals} | {min(test):.2e} | {sec:.1f} |", flush=True)
        if a.pykan:
            summary.append((name, min(rows[0][1]), min(rows[1][1])))
    for name, ours, theirs in summary:
        print(f"# {name}: numkan best {ours:.2e}, pykan best {theirs:.2e}: "
              f"{'at or below' if ours <= theirs else 'ABOVE'} pykan")


if __name__ == "__main__":
    sys.exit(main())
