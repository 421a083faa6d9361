"""Symbolic regression with a KAN: recover f(x, y) = exp(sin(pi x) + y^2) as a formula.

The loop scientists run with KANs (as in the KAN paper's first example):

    1. fit a [2, 5, 1] KAN with the sparsity regulariser, so unneeded edges fade;
    2. prune it (a new, smaller model: [2, 1, 1] here) and fit again;
    3. refine the grid and fit again;
    4. auto_symbolic: replace each edge by the library function that fits it
       best (the whole library: among the functions that fit as well as the
       best, the simplest wins, so the y edge is y^2, not cos(a*y + b));
    5. fit once more, now training only the formulas' (a, b, c, d);
    6. read the formula, snap its constants to simple exact values where the
       data allow it (3.14159265358979 -> pi), and check it against the truth
       on fresh points.

Run:  python examples/symbolic_regression.py   (about 10 s on two CPU cores, once the kernels are compiled)
Writes kan_before_symbolic.png and kan_symbolic.png when matplotlib is installed.
"""
import time
import warnings

import numpy as np
import sympy

import numkan as nk

TARGET = 1e-10  # formula RMSE against the truth on fresh points: the law, exactly


def truth(x):
    return np.exp(np.sin(np.pi * x[:, 0]) + x[:, 1] ** 2)


def law(x, y):
    return sympy.exp(sympy.sin(sympy.pi * x) + y ** 2)


def formula_rmse(formula, symbols, pts):
    f = sympy.lambdify(symbols, formula, "numpy")
    return float(np.sqrt(np.mean((f(*pts.T) - truth(pts)) ** 2)))


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


def run(verbose=True, plot=False):
    """The pipeline; returns a dict with the model, its formulas and their RMSE on fresh points."""
    t0 = time.perf_counter()
    say = print if verbose else (lambda *a, **k: None)
    dataset = nk.create_dataset(truth, n_var=2, train_num=1000, test_num=1000, seed=0)

    def stage(name, model):
        rmse = float(np.sqrt(np.mean((model(dataset["test_input"]) - dataset["test_label"]) ** 2)))
        say(f"{name:<34} width={model.width!s:<10} test RMSE {rmse:.3e}   "
            f"({time.perf_counter() - t0:5.1f} s)")

    model = nk.KAN([2, 5, 1], grid=5, k=3, seed=0)
    model.fit(dataset, opt="LBFGS", steps=50, lamb=0.005, lamb_entropy=2.0, log=0)
    stage("1. fit with sparsity regularisation", model)

    model.forward(dataset["train_input"])          # the data attribution and pruning look at
    model = model.prune(node_th=1e-2, edge_th=3e-2)  # a new model; the old one is unchanged
    model.fit(dataset, opt="LBFGS", steps=50, log=0)
    stage("2. prune, fit", model)

    model = model.refine(10)
    model.fit(dataset, opt="LBFGS", steps=50, log=0)
    stage("3. refine to G=10, fit", model)
    model.forward(dataset["train_input"])           # auto_symbolic fits the edges on these inputs
    if plot:
        save_plot(model, "kan_before_symbolic.png", "after pruning and refinement")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fixed = model.auto_symbolic(verbose=0)      # the whole library
    for l, i, j, name, r2, c in fixed:
        say(f"   edge ({l},{i},{j}) -> {name:<5} r^2 = {r2:.12f}")
    for w in caught:
        say("   warning:", w.message)

    model.fit(dataset, opt="LBFGS", steps=50, update_grid=False, log=0)
    stage("4. auto_symbolic, fit (a, b, c, d)", model)
    model.forward(dataset["train_input"])           # snapping checks the formula on these inputs
    if plot:
        save_plot(model, "kan_symbolic.png", "symbolic")

    x, y = sympy.symbols("x y", real=True)
    (formula,), _ = model.symbolic_formula(var=[x, y])                 # the model's numbers, exactly
    (snapped,), _ = model.symbolic_formula(var=[x, y], snap=True)     # simple constants where they fit
    pts = np.random.default_rng(123).uniform(-1, 1, (1000, 2))      # fresh points
    out = {"model": model, "formula": formula, "snapped": snapped, "symbols": (x, y),
           "law": law(x, y), "rmse": formula_rmse(formula, (x, y), pts),
           "rmse_snapped": formula_rmse(snapped, (x, y), pts), "seconds": time.perf_counter() - t0}
    say("\nformula (4 digits):", nk.symbolic.round_floats(formula, 4))
    say("formula, snapped:  ", snapped)
    say(f"RMSE against exp(sin(pi x) + y^2) on 1000 fresh points: formula {out['rmse']:.2e}, "
        f"snapped {out['rmse_snapped']:.2e}")
    return out


def main():
    out = run(verbose=True, plot=True)
    exact = sympy.simplify(out["snapped"] - out["law"]) == 0
    ok = out["rmse"] <= TARGET and out["rmse_snapped"] <= TARGET and exact and \
        out["model"].width == [2, 1, 1]
    print(f"pruned network: {out['model'].width}; snapped formula is the law: {exact}")
    print(f"target (formula RMSE <= {TARGET:g}, the law exactly, width [2, 1, 1]):",
          "reached" if ok else "NOT reached")
    print(f"total {out['seconds']:.1f} s")
    return ok


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
