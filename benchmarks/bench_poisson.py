"""Poisson's equation: numkan's hand-written input derivatives against pykan's PDE recipe.

    laplace(u) = -2 pi^2 sin(pi x) sin(pi y) on [-1, 1]^2,  u = 0 on the boundary,
    exact solution u = sin(pi x) sin(pi y)

Both libraries train a [2, 10, 1] KAN (k = 3, seed 1) on the same points
(random interior points and a boundary mesh, from a fixed seed) with the same
objective, alpha * mean(residual^2) + mean(u_boundary^2) with pykan's
alpha = 0.01 (numkan: bc_weight = 1 / alpha, the same objective times 100),
the same optimiser (L-BFGS, 20 iterations per step, history 10, strong Wolfe
line search), the same grid schedule (grid 5, then refined to 10 and 20;
grid updates every 5 steps of the first 50 of each stage) and the same number
of steps per grid.

pykan runs its PDE tutorial's recipe: the Laplacian by torch autograd
(``batch_jacobian`` twice with ``create_graph=True``), pykan's own LBFGS, in
speed mode (``symbolic_enabled = save_act = auto_save = False``: its fastest
setting). It runs in a separate process with pykan's own environment
(``--python``, default /work/pykan-venv/bin/python): numkan never imports torch.

After every step each side records its training time so far (the error
evaluation is not timed) and the mean squared error against the exact
solution on a 100 x 100 grid of points. The table gives the time each side
needs to first reach a few error levels, and the ratio.

    python benchmarks/bench_poisson.py [--n-interior 41] [--steps 100] [--python PATH]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ALPHA = 0.01
GRIDS = (5, 10, 20)


def problem(n_interior, n_boundary, seed=0):
    """Interior points (n_interior^2, 2) uniform in [-1, 1]^2, boundary mesh (4 n_boundary, 2),
    and the 100 x 100 test grid."""
    rng = np.random.default_rng(seed)
    xi = rng.uniform(-1.0, 1.0, (n_interior * n_interior, 2))
    t = np.linspace(-1.0, 1.0, n_boundary)
    one = np.ones(n_boundary)
    xb = np.concatenate([np.stack(p, 1) for p in ((t, -one), (t, one), (-one, t), (one, t))])
    g = np.linspace(-1.0, 1.0, 100)
    X, Y = np.meshgrid(g, g, indexing="ij")
    xt = np.stack([X.ravel(), Y.ravel()], 1)
    return xi, xb, xt


def exact(x):
    return np.sin(np.pi * x[:, [0]]) * np.sin(np.pi * x[:, [1]])


def source(x):
    return -2.0 * np.pi ** 2 * np.sin(np.pi * x[:, 0]) * np.sin(np.pi * x[:, 1])


# ---------------------------------------------------------------------------
def run_numkan(xi, xb, xt, steps):
    import numkan as nk
    from numkan import pde

    # compile (or load from Numba's cache) before the clock starts, as pykan's torch is warm
    warm = nk.KAN([2, 10, 1], grid=5, k=3, seed=1)
    warm.fit_pde(xi[:20], pde.linear_residual(a=1.0, f=source), x_boundary=xb[:8], u_boundary=0.0,
                 steps=1, log=0)

    res = pde.linear_residual(a=1.0, f=source)
    model = nk.KAN([2, 10, 1], grid=GRIDS[0], k=3, seed=1)
    u_exact = exact(xt)
    trace, clock = [], [0.0]
    t0 = [time.perf_counter()]

    def callback(step, results):
        clock[0] += time.perf_counter() - t0[0]
        trace.append((clock[0], float(np.mean((model(xt) - u_exact) ** 2))))
        t0[0] = time.perf_counter()

    pts = np.concatenate([xi, xb])
    for G in GRIDS:
        t0[0] = time.perf_counter()
        if G != model.grid:
            model = model.refine(G, x=pts)
        model.fit_pde(xi, res, x_boundary=xb, u_boundary=0.0, bc_weight=1.0 / ALPHA, steps=steps,
                      log=0, callback=callback)
    return trace


def run_pykan(xi, xb, xt, steps):
    import torch
    from torch import autograd
    from kan import KAN
    from kan.LBFGS import LBFGS

    torch.set_default_dtype(torch.float64)
    x_i, x_b, x_t = (torch.tensor(a) for a in (xi, xb, xt))
    u_exact = torch.tensor(exact(xt))
    sol_fun = lambda x: torch.sin(torch.pi * x[:, [0]]) * torch.sin(torch.pi * x[:, [1]])  # noqa: E731
    source_fun = lambda x: -2 * torch.pi ** 2 * torch.sin(torch.pi * x[:, [0]]) * torch.sin(torch.pi * x[:, [1]])  # noqa: E731,E501

    def batch_jacobian(func, x, create_graph=False):
        def _func_sum(x):
            return func(x).sum(dim=0)
        return autograd.functional.jacobian(_func_sum, x, create_graph=create_graph).permute(1, 0, 2)

    ckpt = tempfile.mkdtemp(prefix="pykan_ckpt_")
    model = KAN(width=[2, 10, 1], grid=GRIDS[0], k=3, seed=1, auto_save=False, ckpt_path=ckpt)
    model.speed()
    trace, clock = [], 0.0
    for G in GRIDS:
        t0 = time.perf_counter()
        if G != model.grid:
            model.save_act = True  # refine re-reads the activations of its cached data
            model.get_act(x_i)
            model = model.refine(G)
            model.speed()
        optimizer = LBFGS(model.parameters(), lr=1, history_size=10, line_search_fn="strong_wolfe",
                          tolerance_grad=1e-32, tolerance_change=1e-32, tolerance_ys=1e-32)
        for step in range(steps):
            def closure():
                optimizer.zero_grad()
                sol_D1_fun = lambda x: batch_jacobian(model, x, create_graph=True)[:, 0, :]  # noqa: E731
                sol_D2 = batch_jacobian(sol_D1_fun, x_i, create_graph=True)[:, :, :]
                lap = torch.sum(torch.diagonal(sol_D2, dim1=1, dim2=2), dim=1, keepdim=True)
                pde_loss = torch.mean((lap - source_fun(x_i)) ** 2)
                bc_loss = torch.mean((model(x_b) - sol_fun(x_b)) ** 2)
                loss = ALPHA * pde_loss + bc_loss
                loss.backward()
                return loss
            if step % 5 == 0 and step < 50:
                model.update_grid_from_samples(x_i)
            optimizer.step(closure)
            clock += time.perf_counter() - t0
            with torch.no_grad():
                trace.append((clock, float(torch.mean((model(x_t) - u_exact) ** 2))))
            print(f"  pykan grid {G} step {step + 1}: {clock:.1f} s, MSE {trace[-1][1]:.2e}",
                  file=sys.stderr, flush=True)
            t0 = time.perf_counter()
    return trace


# ---------------------------------------------------------------------------
def first_reach(trace, level):
    return next((t for t, e in trace if e <= level), None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-interior", type=int, default=41, help="interior points per side (n^2 points)")
    ap.add_argument("--n-boundary", type=int, default=41, help="boundary points per side")
    ap.add_argument("--steps", type=int, default=100, help="L-BFGS steps per grid")
    ap.add_argument("--pykan-steps", type=int, default=None, help="pykan's steps per grid (default --steps)")
    ap.add_argument("--python", default="/work/pykan-venv/bin/python", help="python with pykan and torch")
    ap.add_argument("--side", choices=["both", "numkan", "pykan"], default="both")
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)  # the child's result file
    a = ap.parse_args()
    xi, xb, xt = problem(a.n_interior, a.n_boundary)
    if a.side != "both":
        steps = a.steps if a.side == "numkan" or a.pykan_steps is None else a.pykan_steps
        trace = (run_numkan if a.side == "numkan" else run_pykan)(xi, xb, xt, steps)
        with open(a.out, "w") as f:
            json.dump(trace, f)
        return
    traces = {}
    for side, py in (("numkan", sys.executable), ("pykan", a.python)):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = f.name
        cmd = [py, os.path.abspath(__file__), "--side", side, "--out", out, "--n-interior", str(a.n_interior),
               "--n-boundary", str(a.n_boundary), "--steps", str(a.steps)]
        if a.pykan_steps is not None:
            cmd += ["--pykan-steps", str(a.pykan_steps)]
        print(f"running {side} ...", flush=True)
        subprocess.run(cmd, check=True)
        with open(out) as f:
            traces[side] = json.load(f)
        os.unlink(out)
    print(f"\nPoisson, [2, 10, 1] k=3, grids {GRIDS}, {len(xi)} interior + {len(xb)} boundary points, "
          f"{a.steps} L-BFGS steps per grid (pykan {a.pykan_steps or a.steps})")
    for side, tr in traces.items():
        best = min(e for _, e in tr)
        print(f"  {side:7s} final MSE {tr[-1][1]:.3e}  best {best:.3e}  total training time {tr[-1][0]:.1f} s "
              f"({len(tr)} steps, {tr[-1][0] / len(tr) * 1e3:.1f} ms/step)")
    pk_best = min(e for _, e in traces["pykan"])
    levels = sorted({1e-3, 1e-4, 1e-5, 1e-6, 1e-7, pk_best}, reverse=True)
    print(f"\n  {'MSE <=':>10s} {'numkan s':>10s} {'pykan s':>10s} {'speed-up':>9s}")
    for lv in levels:
        tn, tp = first_reach(traces["numkan"], lv), first_reach(traces["pykan"], lv)
        ratio = f"{tp / tn:8.1f}x" if tn and tp else "       -"
        fmt = lambda t: f"{t:10.2f}" if t is not None else f"{'never':>10s}"  # noqa: E731
        print(f"  {lv:10.2e} {fmt(tn)} {fmt(tp)} {ratio}")


if __name__ == "__main__":
    main()
