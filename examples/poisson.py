"""Solve Poisson's equation with a physics-informed KAN (pykan's PDE tutorial problem).

    laplace(u) = -2 pi^2 sin(pi x) sin(pi y)   on [-1, 1]^2,    u = 0 on the boundary

whose solution is u = sin(pi x) sin(pi y). A [2, 10, 1] KAN is trained on the
mean squared residual at random interior points plus the squared error at
boundary points, with L-BFGS; its grid is extended 5 -> 10 -> 20 along the way
(``refine``: the finer splines start from the coarse ones). The Laplacian and
the gradient of the loss for every parameter are numkan's hand-written input
derivatives (``numkan.pde``), no autograd.

Prints the mean squared error against the exact solution on a fresh
100 x 100 grid of points after each grid, and the time taken.

    python examples/poisson.py
"""
import time

import numpy as np

import numkan as nk

N_INTERIOR = 41     # interior points: 41^2 uniform random points in the square
N_BOUNDARY = 41     # boundary points per side, evenly spaced
GRIDS = (5, 10, 20)
STEPS = 100         # L-BFGS steps per grid
BC_WEIGHT = 100.0   # pykan's tutorial weighs the residual by alpha = 0.01: the same objective x 100


def source(x):
    return -2.0 * np.pi ** 2 * np.sin(np.pi * x[:, 0]) * np.sin(np.pi * x[:, 1])


def exact(x):
    return np.sin(np.pi * x[:, [0]]) * np.sin(np.pi * x[:, [1]])


def main():
    rng = np.random.default_rng(0)
    x_interior = rng.uniform(-1.0, 1.0, (N_INTERIOR ** 2, 2))
    t, one = np.linspace(-1.0, 1.0, N_BOUNDARY), np.ones(N_BOUNDARY)
    x_boundary = np.concatenate([np.stack(p, 1) for p in ((t, -one), (t, one), (-one, t), (one, t))])
    g = np.linspace(-1.0, 1.0, 100)  # the test points: none of them was trained on
    X, Y = np.meshgrid(g, g, indexing="ij")
    x_test = np.stack([X.ravel(), Y.ravel()], 1)

    # laplace(u) - f: a = 1 on both second derivatives, no first-order or u term
    residual = nk.pde.linear_residual(a=1.0, f=source)
    model = nk.KAN([2, 10, 1], grid=GRIDS[0], k=3, seed=1)
    start, cpu = time.perf_counter(), time.process_time()
    for G in GRIDS:
        if G != model.grid:
            model = model.refine(G, x=np.concatenate([x_interior, x_boundary]))
        hist = model.fit_pde(x_interior, residual, x_boundary=x_boundary, u_boundary=0.0,
                             bc_weight=BC_WEIGHT, steps=STEPS, log=0)
        mse = float(np.mean((model(x_test) - exact(x_test)) ** 2))
        print(f"grid {G:2d}: residual loss {hist['pde_loss'][-1]:.2e}  boundary loss "
              f"{hist['bc_loss'][-1]:.2e}  test MSE {mse:.2e}  ({time.perf_counter() - start:.0f} s)",
              flush=True)
    print(f"mean squared error against the exact solution on a 100 x 100 grid: {mse:.2e} "
          f"(target 1e-7: {'met' if mse <= 1e-7 else 'NOT met'}); {time.perf_counter() - start:.0f} s "
          f"({time.process_time() - cpu:.0f} s of CPU time)")


if __name__ == "__main__":
    main()
