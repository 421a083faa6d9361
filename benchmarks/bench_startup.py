"""Start-up time: a fresh process from ``import numkan`` to its first forward and
its first fit step, with an empty kernel cache (cold) and with a filled one (warm).

Each run is a new interpreter with ``NUMBA_CACHE_DIR`` pointing at a temporary
folder: the first run of a repeat finds it empty and compiles, the later
ones load from it. Times are from the start of the child's ``import numkan``
(interpreter start-up itself, ~20 ms, is not counted).

    python benchmarks/bench_startup.py [--repeats 3] [--warm-runs 2]

Targets (issue 23): cold, first fit step <= 10 s; warm, first forward <= 1 s.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import time, json
t0 = time.perf_counter()
import numpy as np
import numkan as nk
t_import = time.perf_counter() - t0
dataset = nk.create_dataset(lambda X: np.exp(np.sin(np.pi * X[:, [0]]) + X[:, [1]] ** 2), n_var=2)
model = nk.KAN([2, 5, 1], grid=5, k=3, seed=0)
model(dataset["train_input"])
t_forward = time.perf_counter() - t0
model.fit(dataset, steps=1, log=0)
t_fit = time.perf_counter() - t0
print(json.dumps({"import": t_import, "forward": t_forward, "fit_step": t_fit}))
"""


def child(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env,
                       timeout=900)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="cold starts (each with a new empty cache)")
    ap.add_argument("--warm-runs", type=int, default=2, help="warm starts after each cold one")
    args = ap.parse_args()
    cold, warm, notes = [], [], set()
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="numkan-cache-") as d:
            t, err = child(d)
            cold.append(t)
            notes.update(line for line in err.splitlines() if line.startswith("numkan:"))
            for _ in range(args.warm_runs):
                warm.append(child(d)[0])
    med = lambda rows, key: statistics.median(r[key] for r in rows)
    print(f"{'':6} {'import':>8} {'first forward':>14} {'first fit step':>15}   (median s, "
          f"{len(cold)} cold / {len(warm)} warm processes)")
    for name, rows in (("cold", cold), ("warm", warm)):
        print(f"{name:6} {med(rows, 'import'):8.2f} {med(rows, 'forward'):14.2f} {med(rows, 'fit_step'):15.2f}")
    for line in sorted(notes):
        print("stderr of a cold start:", line)


if __name__ == "__main__":
    main()
