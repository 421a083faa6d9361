"""Hello, KAN: fit f(x, y) = exp(sin(pi x) + y^2) with a [2, 5, 1] KAN, then refine its grid.

pykan's "hello KAN" with grid extension: 200 L-BFGS steps at G = 5, then the
model is refined to G = 10 and G = 20 (each spline re-fitted on the finer
grid) with 200 more steps each. Prints the train and test RMSE and the wall
time of every stage. Run:  python examples/hellokan.py
"""
import time

import numpy as np

import numkan as nk


def f(x):
    return np.exp(np.sin(np.pi * x[:, 0]) + x[:, 1] ** 2)


def main(steps=200, grids=(5, 10, 20), seed=0, log=1):
    dataset = nk.create_dataset(f, n_var=2, train_num=1000, test_num=1000, seed=0)
    model = nk.KAN(width=[2, 5, 1], grid=grids[0], k=3, seed=seed)
    print(f"{'G':>4} {'train RMSE':>12} {'test RMSE':>12} {'seconds':>8}")
    rows = []
    for n, G in enumerate(grids):
        t0 = time.perf_counter()
        if n:
            # fit the new splines to the old ones at the grid and at the training inputs
            model = model.refine(G, x=dataset["train_input"])
        res = model.fit(dataset, opt="LBFGS", steps=steps, log=log)
        seconds = time.perf_counter() - t0
        rows.append((G, res["train_loss"][-1], res["test_loss"][-1], seconds))
        print(f"{G:>4} {rows[-1][1]:>12.3e} {rows[-1][2]:>12.3e} {seconds:>8.1f}", flush=True)
    print(f"total {sum(r[3] for r in rows):.1f} s; final test RMSE {rows[-1][2]:.2e} "
          f"(target <= 1e-4 at G = {grids[-1]})")
    return model, rows


if __name__ == "__main__":
    main()
