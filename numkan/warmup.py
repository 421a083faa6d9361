"""Compile numkan's CPU kernels ahead of time: ``python -m numkan.warmup``.

numkan's kernels are compiled by Numba on first use and kept in Numba's on-disk
cache (next to the installed package, or under ``NUMBA_CACHE_DIR``), so only the
first process after an install or an upgrade pays for compilation. Running this
module once after installing moves that cost out of the user's first script: it
trains two small models for one step each, a narrow one ([2, 5, 1]) and a wide
one ([8, 64, 1]), in every dtype asked for, with and without the sparsity
regulariser, which compiles the forward, backward and training kernels those
layers use. Other spline orders and shapes compile on their own first use.

    python -m numkan.warmup                 # float64 and float32, k = 3
    python -m numkan.warmup --k 2 3 --dtype float64
"""
import argparse
import sys
import time

import numpy as np

from .model import KAN

WIDTHS = ([2, 5, 1], [8, 64, 1])  # a narrow model and a wide one: their layers use different kernels


def warm(k=(3,), dtypes=("float64", "float32"), widths=WIDTHS, out=sys.stderr):
    """Fit each model of ``widths`` for one step per spline order and dtype (with and
    without the regulariser), which compiles the kernels it needs; returns the seconds taken."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    for dtype in dtypes:
        for order in k:
            for width in widths:
                x = rng.uniform(-1, 1, (64, width[0]))
                data = {"train_input": x, "train_label": np.sin(x).sum(axis=1, keepdims=True)}
                data["test_input"], data["test_label"] = data["train_input"], data["train_label"]
                t = time.perf_counter()
                model = KAN(width, grid=5, k=order, seed=0, dtype=dtype)
                model.fit(data, steps=1, log=0)
                model.fit(data, steps=1, lamb=1e-3, log=0, update_grid=False)
                print(f"numkan.warmup: {dtype}, k = {order}, width {width}: "
                      f"{time.perf_counter() - t:.1f} s", file=out)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m numkan.warmup", description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, nargs="+", default=[3], help="spline orders (default: 3)")
    ap.add_argument("--dtype", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    args = ap.parse_args(argv)
    total = warm(tuple(args.k), tuple(args.dtype))
    print(f"numkan.warmup: done in {total:.1f} s; later processes load these kernels from "
          "Numba's cache", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
