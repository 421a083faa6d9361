"""Physics-informed training: a network's input derivatives, their hand-written
backward, and fitting a KAN to a differential equation.

For a batch x (B, D) of points, with D = width[0] the network's inputs, this
module computes the network's outputs u (B, n_out), their gradient
du[b,o,d] = du_o/dx_d and the diagonal of their Hessian d2u[b,o,d] =
d^2 u_o / dx_d^2 (the Laplacian is d2u.sum(-1)), and the gradient of any loss
L(u, du, d2u) with respect to every parameter, without autograd.

Forward mode: the tape
----------------------
Carry through the layers, for each layer's input h (B, I), its "jet" with
respect to the network's inputs x:

    J[b,i,d] = dh[b,i] / dx[b,d]          H[b,i,d] = d^2 h[b,i] / dx[b,d]^2

The first layer's input is x itself: J = identity (J[b,i,d] = [i == d]), H = 0.
A layer's outputs are y[b,o] = sum_i phi[i,o](h[b,i]), so by the chain rule
(for one sample; phi, phi', phi'' are taken at h[b,i])

    y[o]      = sum_i phi[i,o](h[i])
    Jy[o,d]   = sum_i phi'[i,o] J[i,d]
    Hy[o,d]   = sum_i phi''[i,o] J[i,d]^2 + phi'[i,o] H[i,d]

and the network's (u, du, d2u) is the last layer's (y, Jy, Hy). Every edge
needs the derivatives of its function,

    phi^(q)[i,o](h) = mask * (scale_base * b^(q)(h) + scale_sp * s^(q)[i,o](h)),
    s^(q)[i,o](h)   = sum_m coef[i,m,o] * B^(q)[m,k](h),

from the same k+1 local bases as the spline itself: the q-th derivative of
an order-k B-spline comes from the order k-q bases by q applications of

    d^q B[a,r] = r * (d^(q-1) B[a,r-1] / (t[a+r] - t[a]) - d^(q-1) B[a+1,r-1] / (t[a+r+1] - t[a+1]))

(KAN_MATH's derivative rule, which is linear in the lower-order functions,
so it holds for every q). The base function's derivatives are written out in
``reference.base_derivs``. phi'' of a linear spline (k = 1) is 0 inside
every span and undefined at its knots, so input derivatives need k >= 2.
The tape keeps each layer's (h, J, H): O(B * I * D) numbers per layer, and
the forward costs about D times a plain forward pass.

Backward: reverse mode through the tape
---------------------------------------
A loss L(u, du, d2u) gives the upstream gradients gy = dL/du (B, n_out),
gJ = dL/ddu and gH = dL/dd2u (B, n_out, D). Going back through one layer,
with (gy, gJ, gH) the gradients of its outputs (y, Jy, Hy), the three
outputs reach phi, phi' and phi'' of edge (i, o) at sample b with weights

    a0[b,i,o] = gy[b,o]
    a1[b,i,o] = sum_d gJ[b,o,d] J[b,i,d] + gH[b,o,d] H[b,i,d]     (Jy and Hy are linear in phi')
    a2[b,i,o] = sum_d gH[b,o,d] J[b,i,d]^2                         (Hy is linear in phi'')

phi, phi' and phi'' are each linear in coef, scale_base and scale_sp, so

    dcoef[i,m,o]     += sum_b mask scale_sp (a0 B[m] + a1 B'[m] + a2 B''[m])(h[b,i])
    dscale_base[i,o] += sum_b mask (a0 b + a1 b' + a2 b'')(h[b,i])
    dscale_sp[i,o]   += sum_b mask (a0 s + a1 s' + a2 s'')[i,o](h[b,i])

and the gradients of the layer's input jet, for the layer before, are

    dh[b,i]   = sum_o a0 phi' + a1 phi'' + a2 phi'''      (d/dh of phi, phi', phi'')
    dJ[b,i,d] = sum_o gJ[b,o,d] phi' + 2 gH[b,o,d] phi'' J[b,i,d]
    dH[b,i,d] = sum_o gH[b,o,d] phi'

so the backward needs B, B', B'' and B''' (B''' is 0 for k = 2, where B'' is
constant on each span: phi''' is then just b''' of the base branch) and
b, ..., b'''. At the first layer dh, dJ, dH are not needed (x is data).

The backend ops are ``spline_jet_forward`` and ``spline_jet_backward``
(reference: ``numkan.kernels.reference``; compiled: ``kernels/cpu_pde.py``).
Symbolic edges and multiplication nodes are not supported here (a
ValueError says so). Non-finite values follow the layer kernels: a point
outside a layer's knots has no spline terms, its edges are their base
branches alone.

Training
--------
``fit_pde`` minimises, over the parameters,

    objective = loss_fn(x, u, du, d2u) + mean_b(bc_weight * (u(x_boundary) - u_boundary)^2)

with the same L-BFGS and Adam as ``numkan.train.fit`` and the same grid
schedule. ``loss_fn(x, u, du, d2u) -> (loss, (dL/du, dL/ddu, dL/dd2u))``
returns its own partial derivatives (any of them may be None for 0), as
``fit``'s ``loss_fn(pred, target)`` does; ``linear_residual`` builds the
mean squared residual of a linear second-order operator.
"""
import numbers
import warnings

import numpy as np

from . import _validate as v
from .train import (ADAM_LR, _check_model_finite, _Flat, _frozen_names, _Kept, _lbfgs_run,
                    _NonFinite, _Progress, _single_thread_blas, _Snapshot, _State, adam_loop,
                    check_options, guarded_grid_update)


# ---------------------------------------------------------------------------
# the tape: forward and backward
def check_supported(model):
    """ValueError unless every layer has k >= 2, no product node and no symbolic edge."""
    for l, L in enumerate(model.layers):
        if L.k < 2:
            raise ValueError(f"input derivatives need spline order k >= 2 (the second derivative of "
                             f"a linear spline is 0 inside every span and undefined at its knots); "
                             f"layer {l} has k={L.k}: build the model with k=2 or more")
        if L.mult_arity:
            raise ValueError(f"input derivatives do not support multiplication nodes yet; layer {l} "
                             f"has mult_arity={L.mult_arity}")
        if L.has_symbolic:
            raise ValueError(f"input derivatives do not support symbolic edges yet; layer {l} has "
                             "symbolic edges (model.unfix_symbolic them, or train before fix_symbolic)")


class Tape:
    """Each layer's input jet (h, J, H), backend arrays, from ``jet_forward``."""

    def __init__(self):
        self.jets = []


def jet_forward(model, x):
    """(u, du, d2u, tape) for x, a backend array (B, D) in the model's dtype.

    u (B, n_out), du and d2u (B, n_out, D) are backend arrays; ``tape`` holds
    what ``jet_backward`` needs. The model must pass ``check_supported``.
    """
    be, dt = model.backend, model.dtype
    B, D = x.shape
    J = be.asarray(np.broadcast_to(np.eye(D), (B, D, D)), dt)
    H = be.zeros((B, D, D), dt)
    tape = Tape()
    h = x
    for L in model.layers:
        tape.jets.append((h, J, H))
        y = be.zeros((B, L.out_dim), dt)
        Jy = be.zeros((B, L.out_dim, D), dt)
        Hy = be.zeros((B, L.out_dim, D), dt)
        be.spline_jet_forward(y, Jy, Hy, h, J, H, L.knots, L.coef, L.scale_base, L.scale_sp,
                              L.mask, L.k, L.base_fun)
        h, J, H = y, Jy, Hy
    return h, J, H, tape


def jet_backward(model, tape, gu, gdu, gd2u):
    """Add the gradient of a loss with dL/du = gu (B, n_out), dL/ddu = gdu and
    dL/dd2u = gd2u (B, n_out, D) (backend arrays) into ``model.grads``."""
    be, dt = model.backend, model.dtype
    gy, gJ, gH = gu, gdu, gd2u
    for L, (h, J, H) in zip(reversed(model.layers), reversed(tape.jets)):
        dh, dJ, dH = be.zeros(h.shape, dt), be.zeros(J.shape, dt), be.zeros(H.shape, dt)
        be.spline_jet_backward(dh, dJ, dH, L.dcoef, L.dscale_base, L.dscale_sp, gy, gJ, gH, h, J, H,
                               L.knots, L.coef, L.scale_base, L.scale_sp, L.mask, L.k, L.base_fun)
        gy, gJ, gH = dh, dJ, dH


def input_derivatives(model, x):
    """(u, du, d2u) of ``model`` at the points x (B, width[0]), host arrays:

        u[b,o] = model(x)[b,o]      du[b,o,d] = du_o/dx_d      d2u[b,o,d] = d^2 u_o/dx_d^2

    The Laplacian of output o is ``d2u[:, o].sum(-1)``. Needs k >= 2 and no
    symbolic edge or multiplication node (ValueError). Changes nothing in the model.
    """
    check_supported(model)
    be = model.backend
    xd = be.asarray(v.check_array("x", x, model.width[0], model.dtype), model.dtype)
    u, du, d2u, _ = jet_forward(model, xd)
    return be.to_host(u), be.to_host(du), be.to_host(d2u)


# ---------------------------------------------------------------------------
# losses on (u, du, d2u)
def _per_point(name, value, x, shape):
    """A coefficient at the points x (B, D) as a float64 array broadcast to ``shape``:
    None (0), a number, an array, or a callable of x returning one."""
    if value is None:
        return np.zeros(shape)
    if callable(value):
        value = value(x)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number, an array or a callable of x, got "
                         f"{type(value).__name__}: {exc}") from None
    if arr.ndim == 1 and len(shape) == 2 and arr.shape[0] == shape[0] != shape[1]:
        arr = arr[:, None]  # one value per point, (B,) -> (B, 1)
    try:
        out = np.broadcast_to(arr, shape)
    except ValueError:
        raise ValueError(f"{name} must broadcast to {shape} at {shape[0]} points, got shape "
                         f"{arr.shape}") from None
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} must be finite at every point, got a NaN or inf")
    return out


class LinearResidual:
    """The mean squared residual of a linear second-order operator, a ``loss_fn`` for ``fit_pde``:

        r[b,o] = sum_d a_d(x) d2u[b,o,d] + sum_d b_d(x) du[b,o,d] + c(x) u[b,o] - f(x)
        loss   = weight * mean(r^2)

    (the same operator on every output o). Each of a, b (per dimension d) and
    c, f is None (0), a number, an array broadcastable to (B, D) for a and b
    and to (B,) or (B, n_out) for c and f, or a callable of the points x
    (B, D) returning one of those. Per-point arrays fix the points; callables
    follow the points they are called with (grid updates and refine do not
    move points, but a new point set only works with callables).

    Poisson's equation, laplace(u) = f: ``LinearResidual(a=1.0, f=source)``.
    """

    def __init__(self, a=None, b=None, c=None, f=None, weight=1.0):
        for name, val in (("a", a), ("b", b), ("c", c), ("f", f)):
            if not (val is None or callable(val) or isinstance(val, (numbers.Real, np.ndarray, list, tuple))):
                raise TypeError(f"{name} must be None, a number, an array or a callable of x, got "
                                f"{type(val).__name__}")
        self.a, self.b, self.c, self.f = a, b, c, f
        self.weight = v.check_float("weight", weight, minimum=0)

    def residual(self, x, u, du, d2u):
        """r (B, n_out) at the points x (B, D), host arrays."""
        B, O, D = du.shape
        a = _per_point("a", self.a, x, (B, D))
        b = _per_point("b", self.b, x, (B, D))
        c = _per_point("c", self.c, x, (B, O) if O > 1 else (B, 1))
        f = _per_point("f", self.f, x, (B, O) if O > 1 else (B, 1))
        self._abc = (a, b, c)
        return np.einsum("bod,bd->bo", d2u, a) + np.einsum("bod,bd->bo", du, b) + c * u - f

    def __call__(self, x, u, du, d2u):
        """(loss, (dL/du, dL/ddu, dL/dd2u)) at the points x."""
        r = self.residual(x, u, du, d2u)
        a, b, c = self._abc
        g = (2.0 * self.weight / r.size) * r                                 # dL/dr (B, O)
        return (self.weight * float(np.mean(r * r)),
                (g * c, g[:, :, None] * b[:, None, :], g[:, :, None] * a[:, None, :]))


def linear_residual(a=None, b=None, c=None, f=None, weight=1.0):
    """``LinearResidual(a, b, c, f, weight)``: the loss weight * mean(r^2) of

        r = sum_d a_d d2u/dx_d^2 + sum_d b_d du/dx_d + c u - f."""
    return LinearResidual(a, b, c, f, weight)


def _call_loss_fn(loss_fn, x, u, du, d2u):
    out = loss_fn(x, u, du, d2u)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], (tuple, list))
            and len(out[1]) == 3):
        raise TypeError("loss_fn(x, u, du, d2u) must return (loss, (dL/du, dL/ddu, dL/dd2u)), got "
                        f"{type(out).__name__}")
    grads = []
    for name, g, ref in zip(("dL/du", "dL/ddu", "dL/dd2u"), out[1], (u, du, d2u)):
        g = np.zeros(ref.shape) if g is None else np.asarray(g, dtype=np.float64)
        if g.shape != ref.shape:
            raise ValueError(f"loss_fn's {name} must have shape {ref.shape}, got {g.shape}")
        grads.append(g)
    return float(out[0]), grads


# ---------------------------------------------------------------------------
# the objective
class PDEObjective:
    """loss_fn on the interior points plus the weighted boundary error, with the
    gradient left in ``model.grads``; calling it returns (objective, 0.0), the
    shape ``numkan.train``'s L-BFGS driver expects (no regulariser)."""

    def __init__(self, model, x, loss_fn, x_boundary=None, u_boundary=None, bc_weight=None):
        be, dt = model.backend, model.dtype
        self.model, self.loss_fn = model, loss_fn
        self.x_host, self.x = x, be.asarray(x, dt)
        self.xb = None if x_boundary is None else be.asarray(x_boundary, dt)
        self.ub, self.wb = u_boundary, bc_weight
        self.frozen = _frozen_names(model)
        self.parts = (np.nan, np.nan)

    def __call__(self):
        m, be, dt = self.model, self.model.backend, self.model.dtype
        m.zero_grad()
        u, du, d2u, tape = jet_forward(m, self.x)
        host = [np.asarray(be.to_host(a), dtype=np.float64) for a in (u, du, d2u)]
        with np.errstate(all="ignore"):  # a non-finite network output is reported just below
            lp, grads = _call_loss_fn(self.loss_fn, self.x_host, *host)
        lb, gb = 0.0, None
        if self.xb is not None:
            h = self.xb
            for L in m.layers:
                h = L.forward(h, keep=True)
            with np.errstate(all="ignore"):
                diff = np.asarray(be.to_host(h), dtype=np.float64) - self.ub
                lb = float(np.mean(self.wb * diff * diff))
                gb = (2.0 / diff.size) * self.wb * diff
        f = lp + lb
        self.parts = (lp, lb)
        # checked before the backward passes, which would spread a NaN into every gradient
        if not np.isfinite(f):
            raise _NonFinite(f"the PDE objective is not finite (loss_fn {lp}, boundary {lb})")
        jet_backward(m, tape, *(be.asarray(g, dt) for g in grads))
        if gb is not None:
            g = be.asarray(gb, dt)
            for L in reversed(m.layers):
                g = L.backward(g)
        for L in m.layers:
            for n in self.frozen:
                be.fill(getattr(L, "d" + n), 0)
        return f, 0.0


# ---------------------------------------------------------------------------
def _check_points(model, x, x_boundary, u_boundary, bc_weight):
    D, O = model.width[0], model.width[-1]
    x = v.check_array("x", x, D, np.float64)
    if x_boundary is None:
        if u_boundary is not None:
            raise ValueError("u_boundary was given without x_boundary")
        return x, None, None, None
    xb = v.check_array("x_boundary", x_boundary, D, np.float64)
    nb = xb.shape[0]
    if u_boundary is None:
        raise ValueError("x_boundary needs u_boundary: the values of u at those points")
    ub = u_boundary(xb) if callable(u_boundary) else u_boundary
    ub = np.asarray(ub, dtype=np.float64)
    if ub.ndim == 1 and ub.shape[0] == nb:
        ub = ub[:, None]
    try:
        ub = np.array(np.broadcast_to(ub, (nb, O)))
    except ValueError:
        raise ValueError(f"u_boundary must be a number, an array of shape ({nb},) or ({nb}, {O}), "
                         f"or a callable of x_boundary returning one; got shape {ub.shape}") from None
    if not np.all(np.isfinite(ub)):
        raise ValueError("u_boundary must be finite, got a NaN or inf")
    w = np.asarray(bc_weight, dtype=np.float64)
    if w.ndim == 1 and w.shape[0] == nb:
        w = w[:, None]
    if w.ndim > 2 or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"bc_weight must be a finite number >= 0 or ({nb},) such numbers, got {bc_weight!r}")
    try:
        w = np.array(np.broadcast_to(w, (nb, O)))
    except ValueError:
        raise ValueError(f"bc_weight must be a number or an array of shape ({nb},), got shape "
                         f"{w.shape}") from None
    return x, xb, ub, w


def fit_pde(model, x, loss_fn, x_boundary=None, u_boundary=None, bc_weight=1.0, opt="LBFGS",
            steps=100, lr=None, update_grid=True, grid_update_num=10, start_grid_update_step=-1,
            stop_grid_update_step=50, grid_margin=0.0, log=1, callback=None,
            beta1=0.9, beta2=0.999, eps=1e-8):
    """Train ``model`` in place on a differential equation; returns per-step
    ``loss`` (the objective), ``pde_loss`` (loss_fn's part) and ``bc_loss``.

        objective = loss_fn(x, u, du, d2u) + mean(bc_weight * (model(x_boundary) - u_boundary)^2)

    x : (N, width[0]) collocation points, where ``loss_fn`` is evaluated with
        u (N, n_out), du and d2u (N, n_out, width[0]) (see ``input_derivatives``).
    loss_fn : callable ``loss_fn(x, u, du, d2u) -> (loss, (dL/du, dL/ddu, dL/dd2u))``
        on host float64 arrays (None for a part that is 0); numkan chains
        the three into the parameters by hand. ``linear_residual`` builds one.
    x_boundary, u_boundary : boundary points (Nb, width[0]) and their values:
        a number, (Nb,), (Nb, n_out), or a callable of x_boundary.
    bc_weight : number >= 0 or (Nb,) per-point weights.
    opt, steps, lr, update_grid, grid_update_num, start_grid_update_step,
    stop_grid_update_step, grid_margin, log, callback, beta1, beta2, eps
        As in ``numkan.train.fit``: the same L-BFGS (20 iterations per step,
        history 10, strong Wolfe line search) and Adam, the same grid
        schedule (grids adapted to the interior and boundary points; an
        update is kept only when the objective does not rise), the same
        stopping rules (callback, Ctrl-C, a non-finite objective). The whole
        point set is used at every step (no minibatches) and there is no
        sparsity regulariser.

    Needs k >= 2 and no symbolic edge or multiplication node (ValueError);
    device="cuda" raises NotImplementedError at the first evaluation. Any
    error leaves the model as it was.
    """
    (opt, steps, lr, update_grid, grid_update_num, start_grid_update_step, stop_grid_update_step,
     grid_margin, log, beta1, beta2, eps) = check_options(
        opt, steps, lr, update_grid, grid_update_num, start_grid_update_step, stop_grid_update_step,
        grid_margin, log, beta1, beta2, eps)
    for name, fn in (("loss_fn", loss_fn), ("callback", callback)):
        if (fn is not None or name == "loss_fn") and not callable(fn):
            raise TypeError(f"{name} must be callable{' or None' if name == 'callback' else ''}, "
                            f"got {type(fn).__name__}")
    check_supported(model)
    x, xb, ub, wb = _check_points(model, x, x_boundary, u_boundary, bc_weight)
    grid_points = x if xb is None else np.concatenate([x, xb])
    freq = max(1, stop_grid_update_step // grid_update_num)

    def grid_step(s):
        return update_grid and s % freq == 0 and start_grid_update_step <= s < stop_grid_update_step

    if grid_points.shape[0] < 2 and any(grid_step(s) for s in range(min(steps, stop_grid_update_step))):
        raise ValueError("the grid updates (update_grid=True) need at least 2 points; pass more "
                         "points or update_grid=False")
    _check_model_finite(model)
    if lr is None:
        lr = ADAM_LR

    obj = PDEObjective(model, x, loss_fn, xb, ub, wb)
    results = {"loss": [], "pde_loss": [], "bc_loss": []}
    progress = _Progress(steps, log)
    kept = _Kept(model)
    start = _Snapshot(model)
    st = _State(model, start)

    def record(loss, reg, test_ids):
        # the objective at the step's final parameters: obj was last evaluated there
        results["loss"].append(float(loss))
        results["pde_loss"].append(float(obj.parts[0]))
        results["bc_loss"].append(float(obj.parts[1]))
        if loss < st.best_obj:
            st.save_best(model, loss)
        step = len(results["loss"])
        progress.update(step, (("loss", loss), ("pde", obj.parts[0]), ("bc", obj.parts[1])),
                        force=step == steps)
        if callback is None:
            return False
        try:
            return bool(callback(step, results))
        except StopIteration:
            return True

    try:
        with _single_thread_blas():
            if opt == "LBFGS":
                _pde_lbfgs(model, obj, steps, grid_step, grid_points, grid_margin, record, st)
            else:
                _pde_adam(model, obj, steps, grid_step, grid_points, grid_margin, record, st,
                          lr, beta1, beta2, eps)
    except KeyboardInterrupt:
        (st.best if st.best is not None else start).restore(model)
        progress.close()
        warnings.warn(f"fit_pde interrupted after {len(results['loss'])} of {steps} steps; the model "
                      "keeps the parameters with the lowest objective seen", stacklevel=2)
        return results
    except _NonFinite as exc:
        st.restore_last_finite(model)
        progress.close()
        warnings.warn(f"fit_pde stopped at step {len(results['loss']) + 1} of {steps}: {exc}; "
                      "restored the last finite parameters", RuntimeWarning, stacklevel=2)
        return results
    except BaseException:
        start.restore(model)
        kept.restore(model)
        progress.close()
        raise
    progress.close()
    return results


def _pde_lbfgs(model, obj, steps, grid_step, points, margin, record, st):
    flat = _Flat(model)
    no_draw = lambda: (None, None)  # noqa: E731  (whole point set: no test batches to draw)
    def update(step, before=None):  # the guarded grid update scheduled at step; True when kept
        return guarded_grid_update(model, obj, 0.0, points, margin, step, before)[2]

    s, updated = 0, None  # updated: a step whose grid update the last run already made
    while s < steps:
        if grid_step(s) and updated != s:
            update(s)
        # one run, which only a kept grid update ends (``_lbfgs_run``)
        s, stop, updated = _lbfgs_run(model, flat, obj, 0.0, s, steps - s, None, no_draw, record, st,
                                      grid_step, update)
        if stop:
            return


def _pde_adam(model, obj, steps, grid_step, points, margin, record, st, lr, beta1, beta2, eps):
    def step(s):
        if grid_step(s):
            guarded_grid_update(model, obj, 0.0, points, margin, s)
        return obj, None

    adam_loop(model, steps, step, record, st, lr, beta1, beta2, eps)
