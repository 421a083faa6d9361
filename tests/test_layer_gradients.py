"""Hand-written gradients against central finite differences of the loss.

For random float64 models (depth 1-3, widths 1-6, G 1-12, k 1-5, random
non-uniform knots that differ per input, random coefficients and scales, a
mask with zeros, every base_fun) every entry of every parameter gradient from
``loss_and_grad`` and every entry of ``dx`` from ``backward`` must match the
6-point central difference of the loss ``mean((model(x) - y_true)**2)``.

Each layer's inputs are kept away from that layer's knots, and any evaluation
in which a perturbation moves a layer input into another knot span is
rejected, so the loss is smooth along every difference taken.

Speed: a difference needs six loss evaluations per entry, thousands per
model. They are evaluated in batches through the same kernels:
- perturbing ``x[b, i]`` changes only row b, so all perturbed rows go through
  the model as one batch;
- perturbing a parameter of edge (i, o) in layer l changes only output column
  o of that layer, so layer l is evaluated once with one output column per
  perturbation (the column copies o's parameters, with one entry moved), and
  the resulting perturbed layer outputs go through the later layers as one batch.
"""
import numpy as np
import pytest
from hypothesis import given, reject, strategies as st

import numkan as nk
from numkan.kernels import reference

from conftest import HOST_DEVICES, worst

RTOL = 1e-6       # allowed relative error of each gradient entry
FLOOR = 1e-3      # entries below FLOOR * max(largest gradient entry, loss) count absolutely
STEP = 2e-6       # finite-difference step (parameters and inputs are O(1))
# 6-point central stencil, error O(STEP**6): splines of order 5 on knots 0.01
# apart, composed over three layers, have derivatives large enough that the
# 4-point stencil's O(STEP**4) error exceeds RTOL at any step rounding allows.
STENCIL = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
WEIGHTS = np.array([-1.0, 9.0, -45.0, 45.0, -9.0, 1.0]) / (60.0 * STEP)


def random_knots(rng, v, G, k):
    """A strictly increasing knot row (G + 2k + 1,) around the values v, away from every v.

    Gaps vary by a factor of up to ~6; the knot range may leave some of v
    outside the knots on either side. No value of v lies within 2% of the
    mean gap of any knot.
    """
    n = G + 2 * k + 1
    lo, hi = float(v.min()), float(v.max())
    spread = max(hi - lo, 1.0)
    for _ in range(1000):
        a = lo - spread * rng.uniform(-0.3, 0.6)
        b = hi + spread * rng.uniform(-0.3, 0.6)
        if b - a < 0.5 * spread:
            continue
        gaps = rng.uniform(0.3, 1.7, n - 1)
        t = a + (b - a) * np.concatenate([[0.0], np.cumsum(gaps)]) / gaps.sum()
        if np.min(np.abs(v[:, None] - t[None, :])) >= 0.02 * (b - a) / (n - 1):
            return t
    raise AssertionError("could not place knots away from the inputs")


@st.composite
def random_models(draw):
    depth = draw(st.integers(1, 3))
    width = draw(st.lists(st.integers(1, 6), min_size=depth + 1, max_size=depth + 1))
    return dict(width=width, G=draw(st.integers(1, 12)), k=draw(st.integers(1, 5)),
                base_fun=draw(st.sampled_from(["silu", "identity", "zero"])),
                batch=draw(st.integers(1, 5)), seed=draw(st.integers(0, 2**32 - 1)))


def build(device, width, G, k, base_fun, batch, seed):
    """A float64 model with random knots and parameters, inputs x and a target."""
    rng = np.random.default_rng(seed)
    model = nk.KAN(width, grid=G, k=k, seed=seed % 1000, base_fun=base_fun, device=device)
    x = rng.uniform(-2.0, 2.0, (batch, width[0]))
    h = x
    for layer in model.layers:
        for i in range(layer.in_dim):  # each input gets its own knots, placed around its values
            layer.knots[i] = random_knots(rng, h[:, i], G, k)
        layer.coef[...] = rng.normal(0.0, 0.5, layer.coef.shape)
        layer.scale_base[...] = rng.uniform(-1.5, 1.5, layer.scale_base.shape)
        layer.scale_sp[...] = rng.uniform(-1.5, 1.5, layer.scale_sp.shape)
        layer.mask[...] = rng.random(layer.mask.shape) > 0.2
        h = model.backend.to_host(layer.forward(model.backend.asarray(h, model.dtype), keep=False))
    target = h + rng.normal(0.0, 1.0, h.shape)
    return model, x, target


class Chain:
    """Layer-by-layer evaluation of the model on stacked batches, with the smoothness guard."""

    def __init__(self, model, x):
        self.model, self.be = model, model.backend
        self.inputs, self.spans = [], []   # each layer's input and its knot spans at x
        h = x
        for layer in model.layers:
            self.inputs.append(h)
            self.spans.append(reference.find_span(h, np.asarray(layer.knots)))
            h = self.layer(layer, h)
        self.y = h

    def layer(self, layer, h):
        return self.be.to_host(layer.forward(self.be.asarray(h, self.model.dtype), keep=False))

    def run(self, start, h, rows):
        """Layers start.. on h, whose row r is a perturbed copy of row ``rows[r]`` of layer start's input."""
        for l in range(start, len(self.model.layers)):
            layer = self.model.layers[l]
            if not np.array_equal(reference.find_span(h, np.asarray(layer.knots)),
                                  self.spans[l][rows]):
                reject()  # a perturbation moved an input across a knot: not smooth there
            h = self.layer(layer, h)
        return h

    def perturbed_layer(self, l, name):
        """Outputs of layer l (P, S, B, O) with entry p of parameter ``name`` moved by STENCIL * STEP.

        One kernel call: output column q copies the parameters of column
        o = p[-1] with one entry moved, so y_wide[:, q] is that edge column's
        perturbed output; all other columns keep their unperturbed values.
        """
        layer = self.model.layers[l]
        h = self.inputs[l]
        base = self.inputs[l + 1] if l + 1 < len(self.inputs) else self.y
        shape = getattr(layer, name).shape
        entries = list(np.ndindex(shape))
        cols = np.repeat([p[-1] for p in entries], len(STENCIL))        # (Q,), Q = S * P
        host = {n: np.asarray(getattr(layer, n)) for n in ("coef", "scale_base", "scale_sp", "mask")}
        wide = {n: np.ascontiguousarray(a[..., cols]) for n, a in host.items()}
        for n_p, p in enumerate(entries):
            for n_m, m in enumerate(STENCIL):
                wide[name][p[:-1] + (n_p * len(STENCIL) + n_m,)] = host[name][p] + m * STEP
        be, dt = self.be, self.model.dtype
        y_wide = be.zeros((h.shape[0], cols.size), dt)
        be.spline_forward(y_wide, be.asarray(h, dt), layer.knots, be.asarray(wide["coef"], dt),
                          be.asarray(wide["scale_base"], dt), be.asarray(wide["scale_sp"], dt),
                          be.asarray(wide["mask"], dt), layer.k, layer.base_fun)
        y_wide = be.to_host(y_wide)
        out = np.broadcast_to(base, (cols.size,) + base.shape).copy()   # (Q, B, O)
        out[np.arange(cols.size), :, cols] = y_wide.T
        return out.reshape(len(entries), len(STENCIL), *base.shape), shape


def mse(y, target):
    d = y - target
    return np.mean(d * d, axis=(-2, -1))


@pytest.mark.parametrize("device", HOST_DEVICES)
@given(case=random_models())
def test_gradients_match_finite_differences(device, case):
    model, x, target = build(device, **case)
    chain = Chain(model, x)
    n_layers, (B, I) = len(model.layers), x.shape

    loss, grads = model.loss_and_grad(x, target)
    assert abs(loss - float(mse(chain.y, target))) <= 1e-14 * max(1.0, loss), \
        "loss_and_grad's loss is not mean((model(x) - y_true)**2)"

    # dx from model.backward with dy = dL/dy of the same loss
    model.zero_grad()
    y = model.forward(x)
    dx = model.backward((2.0 / y.size) * (y - target))  # as mse_loss_grad rounds it
    for name, g in model.grads.items():  # backward left the gradients loss_and_grad returned
        np.testing.assert_array_equal(np.asarray(g), grads[name], err_msg=name)

    analytic, numeric = {"dx": dx}, {}
    # dL/dx[b, i]: only row b of the output moves, so difference that row's share of the loss
    rows = np.repeat(x[:, None, None, :], len(STENCIL), axis=2).repeat(I, axis=1)  # (B, I, S, I)
    for i in range(I):
        rows[:, i, :, i] += STENCIL * STEP
    y_rows = chain.run(0, rows.reshape(-1, I), np.repeat(np.arange(B), I * len(STENCIL)))
    y_rows = y_rows.reshape(B, I, len(STENCIL), -1)
    row_loss = np.sum((y_rows - target[:, None, None, :]) ** 2, axis=-1) / target.size
    numeric["dx"] = row_loss @ WEIGHTS

    for name in model.params:
        l, pname = int(name.split(".")[1]), name.split(".")[2]
        h, shape = chain.perturbed_layer(l, pname)                   # (P, S, B, O)
        P = h.shape[0]
        y_p = chain.run(l + 1, h.reshape(P * len(STENCIL) * B, -1), np.tile(np.arange(B), P * len(STENCIL)))
        losses = mse(y_p.reshape(P, len(STENCIL), B, -1), target)   # (P, S)
        numeric[name] = (losses @ WEIGHTS).reshape(shape)
        analytic[name] = grads[name]

    # the scale of near-zero entries: a difference of the loss carries rounding ~ eps * loss / STEP
    scale = max(max(float(np.max(np.abs(v), initial=0.0)) for v in numeric.values()), loss)
    for name in numeric:
        err, idx, a, e = worst(analytic[name], numeric[name], FLOOR * scale)
        assert err <= RTOL, (f"{device} {case}: d loss / d {name}{list(idx)}: hand-written {a!r}, "
                             f"finite difference {e!r}, relative error {err:.3g} > {RTOL:g}")
