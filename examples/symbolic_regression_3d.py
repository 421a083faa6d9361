"""Symbolic regression in three variables: recover f = sin(pi x1) + exp(x2) + x3^2.

The same loop as symbolic_regression.py, on a law with three inputs and three
different functions, one per input:

    1. fit a [3, 5, 1] KAN with the sparsity regulariser;
    2. prune it to the network the law needs ([3, 1, 1]: one sum node) and fit again;
    3. refine the grid to G = 10 and fit again;
    4. auto_symbolic with the whole library: the three inner edges become sin,
       exp and x^2, the outer edge the identity x (the simplest function that
       fits it as well as any);
    5. fit the formulas' (a, b, c, d);
    6. read the formula with its constants snapped to simple exact values and
       check it against the truth on fresh points.

Run:  python examples/symbolic_regression_3d.py   (about 10 s on two CPU cores, once the kernels are compiled)
"""
import time
import warnings

import numpy as np
import sympy

import numkan as nk

TARGET = 1e-10  # formula RMSE against the truth on fresh points: the law, exactly


def truth(x):
    return np.sin(np.pi * x[:, 0]) + np.exp(x[:, 1]) + x[:, 2] ** 2


def law(x1, x2, x3):
    return sympy.sin(sympy.pi * x1) + sympy.exp(x2) + x3 ** 2


def formula_rmse(formula, symbols, pts):
    f = sympy.lambdify(symbols, formula, "numpy")
    return float(np.sqrt(np.mean((f(*pts.T) - truth(pts)) ** 2)))


def run(verbose=True):
    """The pipeline; returns a dict with the model, its formulas and their RMSE on fresh points."""
    t0 = time.perf_counter()
    say = print if verbose else (lambda *a, **k: None)
    dataset = nk.create_dataset(truth, n_var=3, train_num=1000, test_num=1000, seed=0)

    def stage(name, model):
        rmse = float(np.sqrt(np.mean((model(dataset["test_input"]) - dataset["test_label"]) ** 2)))
        say(f"{name:<34} width={model.width!s:<10} test RMSE {rmse:.3e}   "
            f"({time.perf_counter() - t0:5.1f} s)")

    model = nk.KAN([3, 5, 1], grid=5, k=3, seed=0)
    model.fit(dataset, opt="LBFGS", steps=50, lamb=0.005, lamb_entropy=2.0, log=0)
    stage("1. fit with sparsity regularisation", model)

    model.forward(dataset["train_input"])
    model = model.prune(node_th=1e-2, edge_th=3e-2)
    model.fit(dataset, opt="LBFGS", steps=50, log=0)
    stage("2. prune, fit", model)

    model = model.refine(10)
    model.fit(dataset, opt="LBFGS", steps=50, log=0)
    stage("3. refine to G=10, fit", model)

    model.forward(dataset["train_input"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fixed = model.auto_symbolic(verbose=0)
    for l, i, j, name, r2, c in fixed:
        say(f"   edge ({l},{i},{j}) -> {name:<5} r^2 = {r2:.12f}")
    for w in caught:
        say("   warning:", w.message)

    model.fit(dataset, opt="LBFGS", steps=50, update_grid=False, log=0)
    stage("4. auto_symbolic, fit (a, b, c, d)", model)

    model.forward(dataset["train_input"])
    syms = sympy.symbols("x_1 x_2 x_3", real=True)
    (formula,), _ = model.symbolic_formula()
    (snapped,), _ = model.symbolic_formula(snap=True)
    pts = np.random.default_rng(123).uniform(-1, 1, (1000, 3))
    out = {"model": model, "formula": formula, "snapped": snapped, "symbols": syms,
           "law": law(*syms), "rmse": formula_rmse(formula, syms, pts),
           "rmse_snapped": formula_rmse(snapped, syms, pts), "seconds": time.perf_counter() - t0}
    say("\nformula (4 digits):", nk.symbolic.round_floats(formula, 4))
    say("formula, snapped:  ", snapped)
    say(f"RMSE against sin(pi x1) + exp(x2) + x3^2 on 1000 fresh points: formula {out['rmse']:.2e}, "
        f"snapped {out['rmse_snapped']:.2e}")
    return out


def main():
    out = run(verbose=True)
    exact = sympy.simplify(out["snapped"] - out["law"]) == 0
    ok = out["rmse"] <= TARGET and out["rmse_snapped"] <= TARGET and exact and \
        out["model"].width == [3, 1, 1]
    print(f"pruned network: {out['model'].width}; snapped formula is the law: {exact}")
    print(f"target (formula RMSE <= {TARGET:g}, the law exactly, width [3, 1, 1]):",
          "reached" if ok else "NOT reached")
    print(f"total {out['seconds']:.1f} s")
    return ok


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
