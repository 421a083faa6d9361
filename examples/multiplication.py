"""Multiplication nodes: recover f = x1 x2 and f = x1 x2 x3 exactly.

A sum-only KAN can represent a product only approximately (xy = ((x+y)^2 -
(x-y)^2) / 4 needs two squares and a subtraction); a multiplication node (pykan's
MultKAN, ``width=[n, [0, 1], 1]``) multiplies its subnodes, so the law is one
node away:

    1. fit a [n, [0, 1], 1] KAN (one product node of arity n);
    2. prune the edges the product does not need and fit again;
    3. auto_symbolic: every kept edge becomes the identity x;
    4. fit the formulas' (a, b, c, d);
    5. read the formula with its constants snapped to simple exact values and
       check it against the truth on fresh points.

No sparsity regulariser in step 1: at initialisation every factor of the
product is small, and the penalty pulls them all to zero together (a saddle
the fit does not leave); pruning by score does the selection instead.

Run:  python examples/multiplication.py   (a few seconds on two CPU cores)
"""
import time
import warnings

import numpy as np
import sympy

import numkan as nk

TARGET = 1e-10  # formula RMSE against the truth on fresh points: the law, exactly
CASES = {
    "x1*x2": (2, lambda x: x[:, 0] * x[:, 1]),
    "x1*x2*x3": (3, lambda x: x[:, 0] * x[:, 1] * x[:, 2]),
}


def run(name, verbose=True):
    """The pipeline for one case; returns a dict with the model, its formulas and their RMSE."""
    n, f = CASES[name]
    t0 = time.perf_counter()
    say = print if verbose else (lambda *a, **k: None)
    dataset = nk.create_dataset(lambda x: f(x)[:, None], n_var=n, train_num=1000, test_num=1000,
                                seed=0)

    def stage(label, model):
        rmse = float(np.sqrt(np.mean((model(dataset["test_input"]) - dataset["test_label"]) ** 2)))
        say(f"{label:<30} width={model.width_spec!s:<14} test RMSE {rmse:.3e}   "
            f"({time.perf_counter() - t0:4.1f} s)")

    model = nk.KAN([n, [0, 1], 1], mult_arity=n, grid=5, k=3, seed=0)
    model.fit(dataset, steps=50, log=0)
    stage("1. fit", model)

    model = model.prune(edge_th=0.05)
    model.fit(dataset, steps=50, log=0)
    stage("2. prune edges, fit", model)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fixed = model.auto_symbolic(lib=["x", "x^2", "sin", "exp", "0"], verbose=0)
    for l, i, j, fun, r2, c in fixed:
        say(f"   edge ({l},{i},{j}) -> {fun:<3} r^2 = {r2:.12f}")
    for w in caught:
        say("   warning:", w.message)
    model.fit(dataset, steps=50, update_grid=False, log=0)
    stage("3. auto_symbolic, fit (a,b,c,d)", model)

    (formula,), syms = model.symbolic_formula()
    (snapped,), _ = model.symbolic_formula(snap=True)
    pts = np.random.default_rng(123).uniform(-1, 1, (1000, n))
    rmse = lambda e: float(np.sqrt(np.mean((sympy.lambdify(syms, e, "numpy")(*pts.T) - f(pts)) ** 2)))
    law = sympy.Mul(*syms)
    out = {"model": model, "formula": formula, "snapped": snapped, "law": law,
           "rmse": rmse(formula), "rmse_snapped": rmse(snapped),
           "exact": sympy.simplify(snapped - law) == 0, "seconds": time.perf_counter() - t0}
    say("formula (4 digits):", nk.symbolic.round_floats(formula, 4))
    say("formula, snapped:  ", snapped)
    say(f"RMSE against {law} on 1000 fresh points: formula {out['rmse']:.2e}, "
        f"snapped {out['rmse_snapped']:.2e}\n")
    return out


def main():
    ok = True
    for name in CASES:
        print(f"--- {name}")
        out = run(name)
        ok &= out["rmse"] <= TARGET and out["rmse_snapped"] <= TARGET and out["exact"]
    print(f"target (each law exactly, formula RMSE <= {TARGET:g}):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
