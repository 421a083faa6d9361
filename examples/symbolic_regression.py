"""Symbolic regression with a KAN: recover f(x, y) = exp(sin(pi x) + y^2) as a formula.

The loop scientists run with KANs (as in the KAN paper's first example):

    1. fit a [2, 5, 1] KAN with the sparsity regulariser, so unneeded edges fade;
    2. prune it (a new, smaller model: [2, 1, 1] here) and fit again;
    3. refine the grid and fit again;
    4. auto_symbolic: replace each edge by the library function that fits it best;
    5. fit once more, now training only the formulas' (a, b, c, d);
    6. read the formula and check it against the truth on fresh points.

Run:  python examples/symbolic_regression.py   (about a minute on two CPU cores)
Writes kan_before_symbolic.png and kan_symbolic.png when matplotlib is installed.
"""
import time
import warnings

import numpy as np
import sympy

import numkan as nk


def truth(x):
    return np.exp(np.sin(np.pi * x[:, 0]) + x[:, 1] ** 2)


def stage(name, t0, model, dataset):
    rmse = float(np.sqrt(np.mean((model(dataset["test_input"]) - dataset["test_label"]) ** 2)))
    print(f"{name:<34} width={model.width!s:<10} test RMSE {rmse:.3e}   ({time.perf_counter() - t0:5.1f} s)")


def save_plot(model, path, title):
    try:
        import matplotlib
    except ImportError:
        print(f"(matplotlib not installed: {path} not written)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = model.plot(path=path, in_vars=["$x$", "$y$"], out_vars=["$f$"], title=title)
    plt.close(fig)
    print(f"wrote {path}")


def main():
    t0 = time.perf_counter()
    dataset = nk.create_dataset(truth, n_var=2, train_num=1000, test_num=1000, seed=0)

    model = nk.KAN([2, 5, 1], grid=5, k=3, seed=0)
    model.fit(dataset, opt="LBFGS", steps=50, lamb=0.005, lamb_entropy=2.0, log=0)
    stage("1. fit with sparsity regularisation", t0, model, dataset)

    model.forward(dataset["train_input"])          # the data attribution and pruning look at
    model = model.prune(node_th=1e-2, edge_th=3e-2)  # a new model; the old one is unchanged
    model.fit(dataset, opt="LBFGS", steps=50, log=0)
    stage("2. prune, fit", t0, model, dataset)

    model = model.refine(10)
    model.fit(dataset, opt="LBFGS", steps=50, log=0)
    stage("3. refine to G=10, fit", t0, model, dataset)
    model.forward(dataset["train_input"])
    save_plot(model, "kan_before_symbolic.png", "after pruning and refinement")

    lib = ["x", "x^2", "x^3", "x^4", "exp", "log", "sqrt", "tanh", "sin", "abs"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fixed = model.auto_symbolic(lib=lib, verbose=0)
    for l, i, j, name, r2, c in fixed:
        print(f"   edge ({l},{i},{j}) -> {name:<5} r^2 = {r2:.8f}")
    for w in caught:
        print("   warning:", w.message)

    model.fit(dataset, opt="LBFGS", steps=50, update_grid=False, log=0)
    stage("4. auto_symbolic, fit (a, b, c, d)", t0, model, dataset)
    model.forward(dataset["train_input"])
    save_plot(model, "kan_symbolic.png", "symbolic")

    (formula,) = model.symbolic_formula(var=["x", "y"], floating_digits=None)
    print("\nformula (4 digits):", nk.symbolic.round_floats(formula, 4))

    x, y = sympy.symbols("x y", real=True)
    f = sympy.lambdify((x, y), formula, "numpy")
    pts = np.random.default_rng(123).uniform(-1, 1, (1000, 2))
    rmse = float(np.sqrt(np.mean((f(pts[:, 0], pts[:, 1]) - truth(pts)) ** 2)))
    print(f"formula vs exp(sin(pi x) + y^2) on 1000 random points: RMSE {rmse:.2e}")
    print(f"pruned network: {model.width}")
    ok = rmse < 1e-6 and model.width == [2, 1, 1]
    print("target (RMSE < 1e-6, width [2, 1, 1]):", "reached" if ok else "NOT reached")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return ok


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
