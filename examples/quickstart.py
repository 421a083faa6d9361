"""Quickstart: fit f(x, y) = exp(sin(pi x) + y^2) with a [2, 5, 1] KAN and a
plain gradient loop written against ``loss_and_grad``: no optimiser library,
just the hand-written gradients of numkan's kernels.

    python examples/quickstart.py
"""
import time

import numpy as np

import numkan as nk


def f(X):
    return np.exp(np.sin(np.pi * X[:, 0]) + X[:, 1] ** 2)[:, None]


rng = np.random.default_rng(0)
x_train = rng.uniform(-1, 1, size=(1000, 2))
x_test = rng.uniform(-1, 1, size=(1000, 2))
y_train, y_test = f(x_train), f(x_test)

model = nk.KAN(width=[2, 5, 1], grid=5, k=3, seed=0)


def rmse(x, y):
    return float(np.sqrt(np.mean((model(x) - y) ** 2)))


print(f"{model}")
print(f"before: train loss {np.mean((model(x_train) - y_train) ** 2):.4e}, test RMSE {rmse(x_test, y_test):.4e}")

# Gradient descent with momentum on the raw gradients. model.params holds the
# live parameter arrays, so updating them in place updates the model.
lr, beta, steps = 0.05, 0.9, 3000
velocity = {name: np.zeros_like(p) for name, p in model.params.items()}
t0 = time.perf_counter()
for step in range(1, steps + 1):
    loss, grads = model.loss_and_grad(x_train, y_train)
    for name, p in model.params.items():
        velocity[name] = beta * velocity[name] - lr * grads[name]
        p += velocity[name]
    if step % 500 == 0:
        print(f"step {step:5d}  train loss {loss:.4e}")
elapsed = time.perf_counter() - t0

print(f"after:  train loss {model.loss_and_grad(x_train, y_train)[0]:.4e}, "
      f"test RMSE {rmse(x_test, y_test):.4e}  ({steps} steps in {elapsed:.1f} s)")
