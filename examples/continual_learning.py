"""Continual learning without forgetting: five Gaussian peaks, shown one region at a time.

As in the KAN paper's toy example: a [1, 1] KAN with G = 200, base_fun="zero"
and frozen spline scales, so the only trained parameters are spline
coefficients, each of which lives on a few grid intervals. The target is a sum
of five peaks exp(-300 (x - c)^2), c = -0.8, -0.4, 0, 0.4, 0.8; phase p trains
only on the region around peak p. Training on one region cannot move the
coefficients of regions far away, so what was learnt earlier stays. After each
phase the script prints the RMSE on every region seen so far.
Run:  python examples/continual_learning.py
"""
import time

import numpy as np

import numkan as nk

CENTERS = np.array([-0.8, -0.4, 0.0, 0.4, 0.8])
PER_PEAK = 100


def target(x):
    return np.exp(-300.0 * (x[:, :1] - CENTERS[None, :]) ** 2).sum(axis=1, keepdims=True)


def regions():
    """PER_PEAK evenly spaced inputs in [c - 0.2, c + 0.2] for every peak c, with labels."""
    out = []
    for c in CENTERS:
        x = np.linspace(c - 0.2, c + 0.2, PER_PEAK)[:, None]
        out.append((x, target(x)))
    return out


def main(steps=100, log=0):
    model = nk.KAN(width=[1, 1], grid=200, k=3, seed=0, noise_scale=0.1, base_fun="zero",
                   sp_trainable=False, sb_trainable=False)
    data = regions()
    worst_earlier = 0.0
    for p, (x, y) in enumerate(data):
        t0 = time.perf_counter()
        model.fit({"train_input": x, "train_label": y, "test_input": x, "test_label": y},
                  opt="LBFGS", steps=steps, update_grid=False, log=log)
        rmse = [float(np.sqrt(np.mean((model(xr) - yr) ** 2))) for xr, yr in data[:p + 1]]
        if p:
            worst_earlier = max(worst_earlier, max(rmse[:-1]))
        print(f"phase {p + 1} (peak at {CENTERS[p]:+.1f}, {time.perf_counter() - t0:.1f} s): RMSE on "
              + ", ".join(f"region {r + 1} {e:.1e}" for r, e in enumerate(rmse)), flush=True)
    print(f"largest RMSE on an earlier region after a later phase: {worst_earlier:.1e} "
          f"(target < 1e-3)")
    return model, worst_earlier


if __name__ == "__main__":
    main()
