"""fit(): training a KAN with L-BFGS or Adam, the sparsity regulariser and pykan's grid schedule.

One evaluation of the objective is a forward pass through the layers (keeping
each layer's input), the loss and its gradient dy, then the backward pass; when
``lamb > 0`` every layer also accumulates the regulariser's batch moments on
its input (``edge_moments_forward``) and adds the regulariser's gradient on the
way back (``edge_moments_backward``), so the penalty reaches earlier layers
through x as well:

    objective = loss(model(x), y) + lamb * reg(model, x)

Everything device-specific is a backend op (``spline_*``, ``mse_loss_grad``,
``adam_step``, ``edge_moments_*``, ``all_finite``, ``copy_into``,
``asarray``/``to_host``); this module never asks which device it runs on.
L-BFGS runs on the host on a flat float64 vector (scipy), Adam updates the
arrays where they live; the data set, the saved parameters (start, last
finite, best) and the optimiser state stay with the backend as well.
"""
import contextlib
import sys
import time
import warnings

import numpy as np
from scipy.optimize import minimize

from . import _validate as v
from .datasets import check_dataset
from .grids import update_grid as _update_grid
from .layer import ARRAY_NAMES
from .regularization import LayerReg, check_weights

try:  # BLAS threads only add synchronisation to the optimiser's small vector ops
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - threadpoolctl is a dependency
    ThreadpoolController = None

LBFGS_ITERS_PER_STEP = 20   # pykan: torch.optim.LBFGS(max_iter=20) per step
LBFGS_HISTORY = 10          # pykan: history_size=10
ADAM_LR = 1e-3              # Adam's learning rate when fit is given none
GRID_UPDATE_RTOL = 1e-12    # a grid update may raise the objective by rounding only
GRID_MARGIN = 0.01          # fit's grid updates widen each grid by 1% of its samples' range per side
N_INIT = 12                 # fit's restarts: draws tried on a model as its constructor drew it
INIT_STEPS = 1              # steps each of them is trained before the best is kept
MIN_RESTART_STEPS = 20      # shorter fits train the model's own draw (see fit, n_init)


class _NonFinite(Exception):
    """The objective or its gradient stopped being finite."""


# ---------------------------------------------------------------------------
# parameters <-> flat vectors and snapshots
def trainable_names(model, layer):
    """The arrays of ``layer`` the optimiser moves: the layer's parameters
    (``layer.param_names()``: coef, the scales, and any symbolic parameters)
    minus the scales the model freezes."""
    names = layer.param_names()
    frozen = _frozen_names(model)
    return [n for n in names if n not in frozen]


def _frozen_names(model):
    return [n for n, on in (("scale_base", model.sb_trainable),
                            ("scale_sp", model.sp_trainable)) if not on]


class _Snapshot:
    """Backend copies of everything training changes: knots and all parameters.

    The copies are allocated once and refreshed in place (``capture``) with
    the backend's ``copy_into``, so on a device a snapshot never leaves it.
    A capture that is interrupted leaves a mix of two states, so a snapshot
    that must stay whole while it is refreshed (the best parameters, which a
    Ctrl-C restores) is refreshed in a spare and swapped in (``_State.save_best``).
    """

    def __init__(self, model):
        be = model.backend
        self.arrays = [{n: be.zeros(getattr(L, n).shape, getattr(L, n).dtype)
                        for n in ("knots",) + tuple(L.param_names())} for L in model.layers]
        self.capture(model)

    def capture(self, model):
        be = model.backend
        for L, arrays in zip(model.layers, self.arrays):
            for n, a in arrays.items():
                be.copy_into(a, getattr(L, n))

    def restore(self, model):
        """Put fresh copies of the saved arrays into the model (the snapshot stays reusable).

        Every copy is made before any is installed, so that the window in which
        the model holds a mix is a few attribute assignments, not the copies."""
        be = model.backend
        fresh = []
        for arrays in self.arrays:
            copies = {}
            for n, a in arrays.items():
                copies[n] = be.zeros(a.shape, a.dtype)
                be.copy_into(copies[n], a)
            fresh.append(copies)
        for L, copies in zip(model.layers, fresh):
            for n, a in copies.items():
                setattr(L, n, a)


class _Kept:
    """What fit changes besides the parameters and knots, put back when it fails
    (an error leaves the model as it was): the gradient buffers, which fit's
    objective overwrites, and each layer's input kept for ``backward``, which
    fit's forward passes replace. They are restored into the same buffers
    (``model.grads`` hands them out live).

    A fit that returns keeps its last forward's inputs and gradients (for
    ``backward``); ``KAN.fit`` then makes the training inputs the model's
    data (``cache_data``)."""

    GRADS = tuple(n for n in ARRAY_NAMES if n.startswith("d"))

    def __init__(self, model):
        be = model.backend
        self.grads = []
        for L in model.layers:
            saved = {}
            for n in self.GRADS:
                a = getattr(L, n)
                saved[n] = be.zeros(a.shape, a.dtype)
                be.copy_into(saved[n], a)
            self.grads.append(saved)
        self.inputs = [(L._x, L._y) for L in model.layers]

    def restore(self, model):
        be = model.backend
        for L, saved, (x, y) in zip(model.layers, self.grads, self.inputs):
            for n, a in saved.items():
                be.copy_into(getattr(L, n), a)
            L._x, L._y = x, y


class _Flat:
    """The trainable arrays of a model as one flat float64 vector (host).

    ``set`` writes into the model's arrays in place (an ``upload_into`` per array,
    from slices of the vector): L-BFGS calls it at every evaluation, and a new
    array per parameter costs more than the copy on small models."""

    def __init__(self, model):
        self.model = model
        self.slots = [(L, n) for L in model.layers for n in trainable_names(model, L)]
        shapes = [getattr(L, n).shape for L, n in self.slots]
        ends = np.cumsum([0] + [int(np.prod(s)) for s in shapes]).tolist()
        # what set copies: (layer, name, start, stop, shape) of each array
        self.plan = [(L, n, a, b, shape) for (L, n), a, b, shape in zip(self.slots, ends, ends[1:], shapes)]

    def get(self):
        be = self.model.backend
        return np.concatenate([be.to_host(getattr(L, n)).ravel() for L, n in self.slots]
                              ).astype(np.float64, copy=False)

    def set(self, theta):
        """Install theta (float64) as the model's arrays, in the model's dtype.

        Raises ``_NonFinite`` (and installs nothing) when theta has a NaN or
        inf, or a value beyond the dtype's range (a float32 model: |v| > 3.4e38)."""
        dt = self.model.dtype
        if dt == np.float64:
            cast = theta
        else:
            with np.errstate(over="ignore"):
                cast = theta.astype(dt)
        if not np.isfinite(cast).all():
            raise _NonFinite(f"the L-BFGS iterate has a parameter that is not finite in {dt.name}")
        upload = self.model.backend.upload_into
        for L, n, a, b, shape in self.plan:
            upload(getattr(L, n), cast[a:b].reshape(shape))

    def grad(self):
        be = self.model.backend
        return np.concatenate([be.to_host(getattr(L, "d" + n)).ravel() for L, n in self.slots]
                              ).astype(np.float64, copy=False)


# ---------------------------------------------------------------------------
# the objective on one batch
class Objective:
    """loss + lamb * reg of ``model`` on a fixed batch, with the gradient left in ``model.grads``.

    ``loss_fn(pred, target) -> (loss, dloss/dpred)`` on host arrays replaces the
    mean squared error when given (numkan has no autograd: the function returns
    its own gradient). ``x`` and ``y`` are host arrays; ``xd``, ``yd``, when
    given, are their backend copies in the model's dtype (fit uploads the data
    set once and passes them), otherwise they are made here.
    """

    def __init__(self, model, x, y, lamb, weights, loss_fn=None, xd=None, yd=None):
        be = model.backend
        self.model, self.lamb, self.weights, self.loss_fn = model, lamb, weights, loss_fn
        self.x = be.asarray(x, model.dtype) if xd is None else xd
        self.y_host = y
        self.y = be.asarray(y, model.dtype) if yd is None else yd
        self.frozen = _frozen_names(model)
        self._bufs = None  # what the passes write into (``_buffers``)
        # the batch through the first layer is the same at every evaluation: the backend
        # may keep what depends on it alone (the compiled CPU backend: each sample's span)
        self.fixed = be.fixed_input(self.x)

    def _buffers(self):
        """Backend arrays the passes write into, allocated at the first call and reused by
        every later one (the batch and the layers' sizes stay fixed while an objective
        lives; they are checked, and a change allocates anew): per layer its edge sums
        (B, O) and dx (B, I), and the loss gradient dy (B, n_out). A layer keeps the
        sums of the layer before it as its input for ``backward``, so after an
        evaluation the model holds that evaluation's values, as with new arrays."""
        m, be, B = self.model, self.model.backend, self.x.shape[0]
        shapes = [(B, L.out_dim, L.in_dim) for L in m.layers]
        if self._bufs is None or self._bufs[0] != shapes:
            bufs = [(be.zeros((b, O), m.dtype), be.zeros((b, I), m.dtype)) for b, O, I in shapes]
            self._bufs = (shapes, bufs, be.zeros((B, m.layers[-1].n_nodes), m.dtype))
        return self._bufs[1], self._bufs[2]

    def __call__(self):
        """(loss, reg) at the current parameters; gradients of loss + lamb * reg in the grad buffers."""
        m, be = self.model, self.model.backend
        bufs, dy = self._buffers()
        m.zero_grad()
        regs, reg, hidden = [], 0.0, []
        h = self.x
        last = len(m.layers) - 1
        # the last layer, the mean squared error and that layer's backward in one call (the
        # backend keeps what both passes need between them); not the first layer, which has
        # its fixed input
        fused = self.loss_fn is None and last > 0
        for l, (L, (ybuf, dxbuf)) in enumerate(zip(m.layers, bufs)):
            if self.lamb > 0:
                r = LayerReg(L, *self.weights)
                reg += r.forward(h)
                regs.append(r)
            if fused and l == last:
                h, loss, dy = L.forward_mse_backward(h, self.y, out=ybuf, dx_out=dxbuf)
            else:
                h = L.forward(h, keep=True, out=ybuf, fixed=self.fixed if h is self.x else None)
            hidden.append(h)
        if not fused and self.loss_fn is None:
            loss = be.mse_loss_grad(dy, h, self.y)
        elif not fused:
            loss, g = _call_loss_fn(self.loss_fn, be.to_host(h), self.y_host)
            dy = be.asarray(g, m.dtype)
        # checked before the backward pass, which would spread a NaN or inf
        # into every gradient. The kernels never hide one (a sample with a
        # non-finite input gives a non-finite output), so a NaN or inf that
        # appeared in any layer reaches the loss, and one check per evaluation
        # (a number that comes back anyway) finds it; the layers are searched
        # only then, to say where it appeared.
        f = loss + self.lamb * reg
        if not np.isfinite(f):
            if fused:  # its backward ran: the gradients are those of no pass
                m.zero_grad()
            l = next((l for l, a in enumerate(hidden) if not be.all_finite(a)), None)
            raise _NonFinite(f"the training objective is not finite ({f})" if l is None else
                             f"the outputs of layer {l} are not finite")
        for l in range(last, -1, -1):
            if not (fused and l == last):
                # the first layer's input gradient is read only by its regulariser term
                dy = m.layers[l].backward(dy, out=bufs[l][1], need_dx=l > 0 or self.lamb > 0)
            if self.lamb > 0:
                regs[l].backward(dy, self.lamb)
        for L in m.layers:
            for n in self.frozen:
                be.fill(getattr(L, "d" + n), 0)
        return loss, reg


def _call_loss_fn(loss_fn, pred, target):
    out = loss_fn(pred, target)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError("loss_fn(pred, target) must return (loss, dloss/dpred), "
                        f"got {type(out).__name__}")
    loss, g = float(out[0]), np.asarray(out[1], dtype=np.float64)
    if g.shape != pred.shape:
        raise ValueError(f"loss_fn's gradient must have the shape of pred {pred.shape}, got {g.shape}")
    return loss, g


def _eval_rmse(model, xd, yd, y_host, loss_fn):
    """sqrt(loss) of the model on backend arrays (xd, yd), as pykan reports it.

    With the default loss only the scalar comes back from the backend
    (``mse_loss_grad``); a ``loss_fn`` gets the predictions on the host.
    """
    be = model.backend
    h = xd
    for L in model.layers:
        h = L.forward(h, keep=False)
    if loss_fn is None:
        loss = be.mse_loss_grad(be.zeros(h.shape, model.dtype), h, yd)
    else:
        loss = _call_loss_fn(loss_fn, be.to_host(h), y_host)[0]
    return float(np.sqrt(loss)) if loss >= 0 else float("nan")


class _Data:
    """The checked data set on the host and on the model's backend.

    A whole split is copied to the backend once and reused by every step; a
    minibatch (``batch > 0``) is gathered on the host and copied over (host to
    backend only) at its step.
    """

    def __init__(self, model, data):
        self.model, self.data, self.whole = model, data, {}

    def host(self, split, ids):
        x, y = self.data[f"{split}_input"], self.data[f"{split}_label"]
        return (x, y) if ids is None else (x[ids], y[ids])

    def backend(self, split, ids):
        """(x, y, xd, yd): host arrays and their backend copies in the model's dtype."""
        be, dt = self.model.backend, self.model.dtype
        x, y = self.host(split, ids)
        if ids is not None:
            return x, y, be.asarray(x, dt), be.asarray(y, dt)
        if split not in self.whole:
            self.whole[split] = (be.asarray(x, dt), be.asarray(y, dt))
        return (x, y) + self.whole[split]


# ---------------------------------------------------------------------------
# progress display
class _Progress:
    """Progress on stderr: one line rewritten in place at most ten times a
    second on a terminal; elsewhere (a log file, a pipe) a new line at most
    every ten seconds, and the last step."""

    def __init__(self, steps, every):
        self.steps, self.every = steps, every
        self.t0 = self.last = time.perf_counter()
        self.shown = False
        self.tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()

    def update(self, step, fields, force=False):
        """Show step and ``fields``, (name, value) pairs such as (("train", 0.1), ...)."""
        if not self.every or (step % self.every and not force):
            return
        now = time.perf_counter()
        if not force and now - self.last < (0.1 if self.tty else 10.0):
            return
        self.last = now
        rate = step / max(now - self.t0, 1e-9)
        line = " | ".join([f"step {step:>{len(str(self.steps))}}/{self.steps}"]
                          + [f"{name} {value:.3e}" for name, value in fields] + [f"{rate:.3g} steps/s"])
        sys.stderr.write("\r" + line + " " if self.tty else line + "\n")
        sys.stderr.flush()
        self.shown = self.tty

    def close(self):
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ---------------------------------------------------------------------------
def check_options(opt, steps, lr, update_grid, grid_update_num, start_grid_update_step,
                  stop_grid_update_step, grid_margin, log, beta1, beta2, eps):
    """The optimiser and grid-schedule arguments of ``fit`` (and of the fits built on
    its loops), checked and normalised, in the same order; ValueError or TypeError
    naming the first bad one."""
    if opt not in ("LBFGS", "Adam"):
        raise ValueError(f"opt must be 'LBFGS' or 'Adam', got {opt!r}")
    steps = v.check_int("steps", steps, 0)
    lr = None if lr is None else v.check_float("lr", lr, positive=True)
    if not isinstance(update_grid, (bool, np.bool_)):
        raise TypeError(f"update_grid must be True or False, got {update_grid!r}")
    grid_update_num = v.check_int("grid_update_num", grid_update_num, 1)
    start_grid_update_step = v.check_int("start_grid_update_step", start_grid_update_step)
    stop_grid_update_step = v.check_int("stop_grid_update_step", stop_grid_update_step, 0)
    grid_margin = v.check_float("grid_margin", grid_margin, minimum=0)
    log = v.check_int("log", log, 0)
    beta1 = v.check_float("beta1", beta1, minimum=0)
    beta2 = v.check_float("beta2", beta2, minimum=0)
    if beta1 >= 1 or beta2 >= 1:
        raise ValueError(f"beta1 and beta2 must be in [0, 1), got {beta1}, {beta2}")
    eps = v.check_float("eps", eps, positive=True)
    return (opt, steps, lr, update_grid, grid_update_num, start_grid_update_step,
            stop_grid_update_step, grid_margin, log, beta1, beta2, eps)


def fit(model, dataset, opt="LBFGS", steps=100, lr=None, batch=-1, lamb=0.0, lamb_l1=1.0,
        lamb_entropy=2.0, lamb_coef=0.0, lamb_coefdiff=0.0, update_grid=True, grid_update_num=10,
        start_grid_update_step=-1, stop_grid_update_step=50, loss_fn=None, log=1, callback=None,
        beta1=0.9, beta2=0.999, eps=1e-8, grid_margin=GRID_MARGIN, n_init=N_INIT, init_steps=INIT_STEPS):
    """Train ``model`` on ``dataset`` in place; returns per-step ``train_loss``, ``test_loss``, ``reg``.

    Parameters (pykan's names and meanings)
    ---------------------------------------
    dataset : dict
        ``train_input`` (N, n_in), ``train_label`` (N, n_out), ``test_input``,
        ``test_label``, e.g. from ``numkan.create_dataset``.
    opt : {"LBFGS", "Adam"}
        "LBFGS": one step is up to 20 L-BFGS iterations with history 10, as
        pykan's ``torch.optim.LBFGS(max_iter=20, history_size=10,
        line_search_fn="strong_wolfe")``. It runs scipy's L-BFGS-B without
        bounds (``scipy.optimize.minimize(method="L-BFGS-B", jac=True)``, i.e.
        plain L-BFGS) on a flat float64 vector of the trainable parameters,
        with the hand-written gradient; on device="cuda" that vector lives on
        the host, so every evaluation copies the parameters to the device and
        the gradient back. Its line search is Moré and Thuente's
        (MINPACK-2 ``dcsrch``, called with ftol = 1e-3, gtol = 0.9), which
        returns a step satisfying the strong Wolfe conditions
        f(x + a d) <= f(x) + 1e-3 a g.d and |g(x + a d).d| <= 0.9 |g.d|
        (Byrd, Lu, Nocedal, Zhu 1995; Moré, Thuente 1994; a test checks it
        on every accepted step). Convergence tolerances are 0, as pykan's are
        1e-32, so every step runs its 20 iterations unless the line search
        can make no more progress. As in torch, the curvature history carries
        over from one step to the next: consecutive steps on the same
        objective form one scipy run, restarted only when the objective
        changes (a grid update, or a new minibatch when ``batch > 0``).
        ``lr`` is not used (the line search picks the step length; pykan's
        ``lr=1`` is accepted silently, any other value with a warning).
        "Adam": one step is one Adam update of the whole batch with
        learning rate ``lr`` (default 1e-3: pykan's ``lr=1`` is meant for
        L-BFGS) and ``beta1``, ``beta2``, ``eps``.
    steps : int
        Number of steps.
    batch : int
        Samples per step; -1 (or more than the data) uses the whole training
        set. Minibatches (and test subsets of the same size) are drawn from a
        ``numpy.random.Generator`` seeded with ``model.seed``: the same model
        and data give the same fit.
    lamb, lamb_l1, lamb_entropy, lamb_coef, lamb_coefdiff : float
        Objective = loss + lamb * reg, with ``reg`` the sparsity regulariser
        of KAN_MATH (see ``numkan.regularization``). When ``lamb == 0`` the
        regulariser is not evaluated and ``reg`` is reported as 0.
    update_grid, grid_update_num, start_grid_update_step, stop_grid_update_step
        When ``update_grid``, the grids are re-fitted to the step's training
        inputs (``model.update_grid``) at every step s with
        ``s % (stop_grid_update_step // grid_update_num) == 0`` and
        ``start_grid_update_step <= s < stop_grid_update_step`` (pykan's schedule).
        An update at the run's first step (s = 0) adapts only the first
        layer's knots (``update_grid(..., hidden=False)``): the hidden layers'
        inputs are then those of a network this run has not trained yet, and
        knots that follow them lock the hidden values at their initial, small
        scale (pykan adapts every layer there; that slowed training on the
        paper's functions, see benchmarks/RESULTS.md). Unless some hidden
        layer has samples outside its grid's interior (beyond its first or
        last interior knot, where its splines lose bases and fade out): then
        that update adapts every layer and is kept whatever the objective
        does (a hidden layer whose inputs have outgrown its grid cannot fit
        them, and ``refine`` cannot carry its splines over exactly there).
        Every later update adapts all layers. Other than that first-step
        case, an update is kept only when the training objective on the
        step's batch does not rise (the least-squares refit onto the new
        knots keeps each spline only up to its error); otherwise the old
        knots and coefficients are put back, and L-BFGS goes on as if the
        update had not been tried.
    grid_margin : float >= 0
        The ``margin`` of those grid updates (``model.update_grid``): each
        input's grid is widened by this fraction of its samples' range on both
        sides. The default, 0.01, keeps inputs just beyond the training
        samples' range (test points, and their hidden values) inside every
        grid, where they have all k+1 local bases; at 0 (pykan's rule) a spline
        fades out right past the extreme samples, and those few points set the
        test error of an accurate fit: on f = xy with [2, 2, 1], G = 20, the 8
        of 1000 test points outside the training box give 8.6e-5 RMSE against
        3.8e-7 inside. Chosen by measurement among 0, 0.005, 0.01, 0.02 and
        0.05 (benchmarks/RESULTS.md, "Restarts and grid margin").
    n_init, init_steps : int
        Restarts (numkan's; pykan has none). Which basin a KAN trains into is
        settled in its first L-BFGS steps by the initial draw: on
        exp(sin(pi x) + y^2) with [2, 1, 1], 5 of 8 seeds end with a hidden
        node that ignores y (test RMSE 0.6 at G = 3, and every later grid keeps
        it), the other 3 reach 1.3e-2. So when the model is exactly as its
        constructor drew it (``model.is_initial()``), ``n_init > 1`` and
        ``steps >= 20``, fit first trains ``n_init`` draws for ``init_steps``
        steps each, with this call's options (no log or callback): the model's
        own draw and ``n_init - 1`` others made with its constructor settings
        and seeds derived from ``model.seed`` (so the result stays a function of
        the seed). The one with the lowest training objective on the whole
        training set (loss + lamb * reg) is installed in the model, and the
        fit's ``steps`` continue from it; ``model.fit_start`` records the seeds,
        their objectives and the one chosen. This costs ``n_init *
        init_steps`` extra steps once per model (12 with the defaults, chosen by
        measurement: benchmarks/RESULTS.md, "Restarts and grid margin"); a
        model that was trained, pruned, refined, loaded or edited by hand is
        never re-drawn.
        ``n_init=1`` trains the model's own draw, as pykan does.
    loss_fn : callable or None
        ``loss_fn(pred, target) -> (loss, dloss/dpred)`` on host arrays; None
        is the mean squared error (run by the backend).
    log : int
        Refresh the progress line (loss, reg, steps per second, on stderr)
        every ``log`` steps; 0 turns it off.
    callback : callable or None
        ``callback(step, results)`` after every step (``step`` counts from 1);
        returning True, or raising ``StopIteration`` (as a scipy.optimize
        callback may), stops the fit, which returns normally with the
        results up to that step. Any other exception is an error (below).

    Returns
    -------
    dict of lists, one entry per step: ``train_loss`` and ``test_loss``
    (pykan's names for the square root of the loss: the RMSE for the default
    loss, on the step's training batch and a test batch of the same size)
    and ``reg``. With the default loss the same lists are also under the
    names that say what they are, ``train_rmse`` and ``test_rmse``.

    Ctrl-C (KeyboardInterrupt) stops the fit, keeps the parameters of the step
    with the lowest training objective seen so far (all of that one step: the
    saved copy is built whole before it replaces the previous one) and returns
    the results up to there, with a warning.

    A diverging fit stops where a NaN or inf first appears, before it is
    used: a parameter after an Adam update or in an L-BFGS iterate (in the
    model's dtype), a hidden layer's outputs, the objective (checked before
    the backward pass), the gradient (L-BFGS). (A grid update keeps the knots
    of an input whose samples are not finite; the objective then stops the fit.)
    It then returns the results up to there, with a RuntimeWarning, and the
    model has the last parameters whose objective was finite (those of
    before the call if no step got that far). The parameters and knots
    must be finite when ``fit`` is called (ValueError otherwise).

    Any other error leaves the model as it was before the call (parameters,
    knots, ``model.grads`` and the input kept for ``model.backward``) and is
    raised again. After a fit that returns, the training inputs are the
    model's data (``model.cache_data``, pykan's cached data), so
    ``attribute``, ``prune`` and ``auto_symbolic`` called without ``x`` use them.

    What crosses the host boundary on a device (device="cuda")
    ---------------------------------------------------------
    Once per fit: the data set is uploaded (each whole split once), and the
    saved parameters (at the start, the last finite, the best) are device
    arrays refreshed with device-to-device copies.
    Per Adam step, with the defaults (mean squared error, ``lamb == 0``, no
    grid update at that step, no symbolic edge): three numbers come back, the
    training loss, one combined finiteness flag over every trained parameter
    (after the update), and the test loss; nothing goes to the device when ``batch == -1``, and
    with ``batch > 0`` the step's minibatch (train and test inputs and labels,
    gathered on the host) is uploaded. Parameters, gradients, Adam moments
    and predictions stay on the device.
    Extra traffic when asked for: ``lamb > 0`` brings each layer's (I, O) and
    (I,) regulariser moments to the host per evaluation (the penalty's maths
    runs there) and sends their (I, O) and (I,) gradients back;
    ``lamb_coef``/``lamb_coefdiff`` also copy each layer's coef and dcoef
    through the host; a ``loss_fn`` gets the predictions on the host (train
    and test) and sends its gradient back; a grid-update step refits the
    grids on the host; symbolic edges are evaluated on the host.
    L-BFGS keeps its flat float64 parameter vector and history on the host
    (scipy): every evaluation uploads the parameters and brings the gradient
    back, and each L-BFGS run copies the knots to the host once.
    """
    # -- validate everything before touching the model ------------------------
    (opt, steps, lr, update_grid, grid_update_num, start_grid_update_step, stop_grid_update_step,
     grid_margin, log, beta1, beta2, eps) = check_options(
        opt, steps, lr, update_grid, grid_update_num, start_grid_update_step, stop_grid_update_step,
        grid_margin, log, beta1, beta2, eps)
    n_init = v.check_int("n_init", n_init, 1)
    init_steps = v.check_int("init_steps", init_steps, 1)
    batch = v.check_int("batch", batch, -1)
    if batch == 0:
        raise ValueError("batch must be -1 (the whole training set) or >= 1, got 0")
    weights = check_weights(lamb, lamb_l1, lamb_entropy, lamb_coef, lamb_coefdiff)
    lamb, weights = weights[0], weights[1:]
    for name, fn in (("loss_fn", loss_fn), ("callback", callback)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable or None, got {type(fn).__name__}")
    data = check_dataset(dataset, model.width[0], model.width[-1])
    n_train, n_test = data["train_input"].shape[0], data["test_input"].shape[0]
    bs = n_train if batch == -1 or batch > n_train else batch
    bs_test = n_test if batch == -1 or batch > n_test else batch
    if lamb > 0 and bs < 2:
        raise ValueError(f"lamb > 0 needs batches of at least 2 samples (the regulariser uses "
                         f"batch standard deviations), got batch={batch} with {n_train} training samples")

    freq = max(1, stop_grid_update_step // grid_update_num)

    def grid_step(s):
        return (update_grid and s % freq == 0 and start_grid_update_step <= s < stop_grid_update_step)

    # a grid update places knots at sample quantiles, which needs 2 samples:
    # checked here, naming batch, rather than by update_grid at its step
    if bs < 2 and any(grid_step(s) for s in range(min(steps, stop_grid_update_step))):
        raise ValueError(f"the grid updates (update_grid=True) need batches of at least 2 samples, "
                         f"got batch={batch} with {n_train} training samples; pass batch >= 2 "
                         "or update_grid=False")
    _check_model_finite(model)
    if opt == "LBFGS" and lr not in (None, 1.0):
        warnings.warn(f"lr={lr} is ignored by opt='LBFGS': its line search picks the step length",
                      stacklevel=3)
    if lr is None:
        lr = ADAM_LR

    rng = np.random.default_rng(model.seed)

    def draw():
        """(train ids, test ids) of one step; None means the whole split, in order."""
        tr = None if bs == n_train else rng.choice(n_train, bs, replace=False)
        te = None if bs_test == n_test else rng.choice(n_test, bs_test, replace=False)
        return tr, te

    take = _Data(model, data).backend

    results = {"train_loss": [], "test_loss": [], "reg": []}
    if loss_fn is None:  # the same lists, under names that say what they hold
        results["train_rmse"], results["test_rmse"] = results["train_loss"], results["test_loss"]
    progress = _Progress(steps, log)
    kept = _Kept(model)
    start = _Snapshot(model)
    st = _State(model, start)

    def record(train_loss, reg, test_ids):
        """Book-keeping at the end of a step; returns True when the callback asks to stop."""
        _, ty, txd, tyd = take("test", test_ids)
        test = _eval_rmse(model, txd, tyd, ty, loss_fn)
        train = float(np.sqrt(train_loss)) if train_loss >= 0 else float("nan")
        results["train_loss"].append(train)
        results["test_loss"].append(test)
        results["reg"].append(float(reg))
        obj = train_loss + lamb * reg
        if obj < st.best_obj:
            st.save_best(model, obj)
        step = len(results["train_loss"])
        progress.update(step, (("train", train), ("test", test), ("reg", reg)), force=step == steps)
        if callback is None:
            return False
        try:
            return bool(callback(step, results))
        except StopIteration:  # scipy.optimize's way for a callback to stop a run
            return True

    def trial(candidate):
        return fit(candidate, dataset, opt=opt, steps=init_steps, lr=None if opt == "LBFGS" else lr,
                   batch=batch, lamb=lamb, lamb_l1=weights[0], lamb_entropy=weights[1], lamb_coef=weights[2],
                   lamb_coefdiff=weights[3], update_grid=update_grid, grid_update_num=grid_update_num,
                   start_grid_update_step=start_grid_update_step,
                   stop_grid_update_step=stop_grid_update_step, loss_fn=loss_fn, log=0,
                   beta1=beta1, beta2=beta2, eps=eps, grid_margin=grid_margin, n_init=1)

    try:
        with _single_thread_blas():
            if n_init > 1 and steps >= MIN_RESTART_STEPS and model.is_initial():
                _choose_start(model, n_init, trial, take, lamb, weights, loss_fn)
            if opt == "LBFGS":
                _fit_lbfgs(model, steps, draw, take, grid_step, lamb, weights, loss_fn, record, st,
                           grid_margin)
            else:
                _fit_adam(model, steps, draw, take, grid_step, lamb, weights, loss_fn, record, st,
                          grid_margin, lr, beta1, beta2, eps)
    except KeyboardInterrupt:
        (st.best if st.best is not None else start).restore(model)
        progress.close()
        warnings.warn(f"fit interrupted after {len(results['train_loss'])} of {steps} steps; the model "
                      "keeps the parameters with the lowest training objective seen", stacklevel=2)
        return results
    except _NonFinite as exc:
        st.restore_last_finite(model)
        progress.close()
        warnings.warn(f"fit stopped at step {len(results['train_loss']) + 1} of {steps}: {exc}; "
                      "restored the last finite parameters (the last whose objective was finite)",
                      RuntimeWarning, stacklevel=2)
        return results
    except BaseException:
        start.restore(model)
        kept.restore(model)
        progress.close()
        raise
    progress.close()
    return results


def restart_seeds(seed, n_init):
    """The seeds of fit's restarts: the model's own, then n_init - 1 derived from it."""
    return [seed] + [int(np.random.SeedSequence([seed, j]).generate_state(1)[0])
                     for j in range(1, n_init)]


def _choose_start(model, n_init, trial, take, lamb, weights, loss_fn):
    """fit's restarts (see ``fit``, n_init): train each draw with ``trial`` and
    install the arrays of the one with the lowest objective on the whole
    training set into ``model``'s layers."""
    x, y, xd, yd = take("train", None)
    seeds = restart_seeds(model.seed, n_init)
    best, objectives = None, []
    for j, seed in enumerate(seeds):
        cand = model.copy() if j == 0 else model._redraw(seed)
        with warnings.catch_warnings():  # a draw that diverges is just not chosen
            warnings.simplefilter("ignore")
            trial(cand)
        try:
            loss, reg = Objective(cand, x, y, lamb, weights, loss_fn, xd=xd, yd=yd)()
            obj = float(loss + lamb * reg)
        except _NonFinite:
            obj = float("inf")
        objectives.append(obj)
        if np.isfinite(obj) and (best is None or obj < objectives[best[0]]):
            best = (j, cand)
    # no draw stayed finite (best None): the fit trains the model's own
    model._take_start(None if best is None else best[1],
                      {"seeds": seeds, "objectives": objectives,
                       "chosen": None if best is None else best[0]})


def _check_model_finite(model):
    """ValueError naming the first parameter or knot array with a NaN or inf:
    fit's guards keep a fit finite, so it must start finite."""
    be = model.backend
    arrays = [(f"layers.{l}.{n}", getattr(L, n)) for l, L in enumerate(model.layers)
              for n in ("knots",) + tuple(L.param_names())]
    if be.all_finite(*(a for _, a in arrays)):
        return
    name = next(n for n, a in arrays if not be.all_finite(a))
    raise ValueError(f"the model's {name} has NaN or inf values; fit needs finite parameters "
                     "and knots to start from")


def _single_thread_blas():
    """One BLAS thread while fitting.

    Everything fit hands to BLAS/LAPACK is small (the L-BFGS two-loop and its
    small dense factorisations, the per-input least squares of a grid update):
    extra BLAS threads only add synchronisation, which costs 20x on a busy
    2-core machine (measured: 1.8 ms against 0.08 ms per L-BFGS-B iteration).
    """
    global _BLAS
    if ThreadpoolController is None:
        return contextlib.nullcontext()
    if _BLAS is None:
        # finding the loaded libraries reads the process's memory map (2 ms, as long as
        # a 1-step fit of a small model): once, at the first fit; numpy's and scipy's
        # BLAS are loaded by then (numkan imports both)
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


_BLAS = None  # the ThreadpoolController of _single_thread_blas


class _State:
    """What fit keeps across steps: the best and the last finite parameters.

    ``best`` and ``last_finite`` are ``_Snapshot``s (backend arrays, allocated
    once and refreshed in place), or ``last_finite`` is (flat, theta, grids)
    during an L-BFGS run (a copy of the host vector per iteration is cheaper
    than a snapshot).
    """

    def __init__(self, model, start):
        self.best, self.best_obj = None, np.inf
        self._spare = None  # the previous best, refreshed into the next one
        self.last_finite = start
        self._last = None  # Adam's last-finite snapshot, reused every step

    def save_best(self, model, obj):
        """Save the model as the best so far, atomically for a Ctrl-C.

        The copy is made in full in a spare snapshot while ``best`` still
        holds the previous step, and one reference assignment publishes it:
        an interrupt anywhere in here leaves ``best`` one whole step.
        """
        new = self._spare
        if new is None:
            new = _Snapshot(model)
        else:
            new.capture(model)
        old, self.best = self.best, new
        self._spare = old
        self.best_obj = obj

    def save_last_finite(self, model):
        if self._last is None:
            self._last = _Snapshot(model)
        else:
            self._last.capture(model)
        self.last_finite = self._last

    def restore_last_finite(self, model):
        if isinstance(self.last_finite, tuple):
            flat, theta, grids = self.last_finite
            flat.set(theta)
            be = model.backend
            for L, g in zip(model.layers, grids):
                L.knots = be.asarray(g, L.dtype)
        else:
            self.last_finite.restore(model)


def _grid_update(model, x, y, xd, yd, lamb, weights, loss_fn, margin, s, before=None):
    """The grid update scheduled at step s; returns (objective before, after, kept).
    ``before``: the objective at the model's parameters, when the caller has it.

    Moving knots re-fits every spline by least squares on the step's samples,
    which keeps the network's function only up to that fit's error; where the
    splines cannot follow the new knots closely, the objective rises and the
    optimiser spends its next steps winning back what training had reached.
    So the new knots are kept only when the objective on the step's batch
    does not rise (beyond rounding); otherwise the old knots and coefficients
    are put back, and the next scheduled update tries again.

    At the run's first step only the first layer is adapted
    (``update_grid(hidden=False)``): the hidden layers' inputs are then those
    of a network this run has not trained yet, and knots placed on them lock
    the hidden values at their initial, narrow spread. Except where a hidden
    layer's inputs have outgrown its grid (``outside_grids``): then every
    layer is adapted, and the update is kept even if the objective rises.
    With only the guarded updates, a hidden layer keeps the grid it was
    created with: on hellokan's ladder 30-50% of its inputs end beyond it, and
    ``refine`` then loses much of what the coarser grid had reached
    (benchmarks/RESULTS.md).
    """
    return guarded_grid_update(model, Objective(model, x, y, lamb, weights, loss_fn, xd=xd, yd=yd),
                               lamb, x, margin, s, before)


def outside_grids(model, points):
    """Whether some hidden layer (any layer but the first) has an input, for the
    samples ``points`` (host, (N, width[0])), outside its grid's interior: below its
    knot t[k] or above t[G + k], where its splines have fewer than k + 1 bases."""
    be = model.backend
    h = be.asarray(points, model.dtype)
    for l, L in enumerate(model.layers[:-1]):
        h = L.forward(h, keep=False)
        nxt = model.layers[l + 1]
        x, t = be.to_host(h), be.to_host(nxt.knots)
        with np.errstate(invalid="ignore"):  # a NaN sample is no evidence either way
            if ((x < t[:, nxt.k]) | (x > t[:, -nxt.k - 1])).any():
                return True
    return False


def guarded_grid_update(model, obj, lamb, points, margin, s, before=None):
    """``_grid_update``'s rule for any objective: ``update_grid`` on ``points``
    (host, (N, width[0])) at step s, kept only when ``obj()``'s ``loss + lamb * reg``
    does not rise beyond rounding, or when it is a first step's update of every layer
    because a hidden layer's inputs have outgrown its grid (``outside_grids``; then
    kept whenever the objective is finite); returns (before, after, kept). ``before``:
    that objective at the model's current parameters, when the caller has just
    evaluated it (L-BFGS has), else evaluated here."""
    if before is None:
        loss, reg = obj()
        before = loss + lamb * reg
    saved = [(L.knots, L.coef) for L in model.layers]  # update_grid installs new arrays
    forced = s == 0 and outside_grids(model, points)
    _update_grid(model, points, margin, hidden=s > 0 or forced)
    try:
        loss, reg = obj()
        after = loss + lamb * reg
    except _NonFinite:
        after = np.inf
    # (a loss_fn may be negative)
    kept = (forced and np.isfinite(after)) or after <= before + GRID_UPDATE_RTOL * abs(before)
    if not kept:
        for L, (g, c) in zip(model.layers, saved):
            L.knots, L.coef = g, c
    return before, after, kept


def _fit_adam(model, steps, draw, take, grid_step, lamb, weights, loss_fn, record, st,
              grid_margin, lr, beta1, beta2, eps):
    kept = {}  # the whole training set's objective, one for every step (its fixed input is reused)

    def step(s):
        tr, te = draw()
        x, y, xd, yd = take("train", tr)
        if grid_step(s):
            _grid_update(model, x, y, xd, yd, lamb, weights, loss_fn, grid_margin, s)
        if tr is not None:  # a new batch at every step
            return Objective(model, x, y, lamb, weights, loss_fn, xd=xd, yd=yd), te
        if kept.get("x") is not xd:
            kept.update(x=xd, obj=Objective(model, x, y, lamb, weights, loss_fn, xd=xd, yd=yd))
        return kept["obj"], te

    adam_loop(model, steps, step, record, st, lr, beta1, beta2, eps)


def adam_loop(model, steps, step, record, st, lr, beta1, beta2, eps):
    """Adam's steps: ``step(s)`` makes step s's grid update and returns (objective,
    test ids); ``record(loss, reg, test ids)`` returns True to stop."""
    be = model.backend
    names = [trainable_names(model, L) for L in model.layers]
    m = {(l, n): be.zeros(getattr(L, n).shape, model.dtype)
         for l, L in enumerate(model.layers) for n in names[l]}
    vv = {key: be.zeros(a.shape, model.dtype) for key, a in m.items()}
    for s in range(steps):
        obj, te = step(s)
        loss, reg = obj()  # raises _NonFinite before its backward pass
        # the parameters were checked after the last update (or at the start)
        # and the objective at them is finite: the step to return to
        st.save_last_finite(model)
        for l, L in enumerate(model.layers):
            for n in names[l]:
                be.adam_step(getattr(L, n), getattr(L, "d" + n), m[l, n], vv[l, n],
                             lr, beta1, beta2, eps, s + 1)
        # checked right after the update that may have made them (one flag
        # comes back), before any forward pass uses them
        if not be.all_finite(*(getattr(L, n) for l, L in enumerate(model.layers)
                               for n in names[l])):
            raise _NonFinite(f"the Adam update of step {s + 1} made a parameter not finite")
        if record(loss, reg, te):
            return


def _fit_lbfgs(model, steps, draw, take, grid_step, lamb, weights, loss_fn, record, st,
               grid_margin):
    flat = _Flat(model)
    s, updated = 0, None  # updated: a step whose grid update the last run already made
    while s < steps:
        tr, te = draw()
        x, y, xd, yd = take("train", tr)

        def update(step, before=None):  # the guarded grid update scheduled at step; True when kept
            return _grid_update(model, x, y, xd, yd, lamb, weights, loss_fn, grid_margin, step, before)[2]

        if grid_step(s) and updated != s:
            update(s)
        obj = Objective(model, x, y, lamb, weights, loss_fn, xd=xd, yd=yd)
        if tr is None:  # the whole training set: one run, which only a kept grid update ends
            s, stop, updated = _lbfgs_run(model, flat, obj, lamb, s, steps - s, te, draw, record, st,
                                          grid_step, update)
        else:  # a new minibatch, a new objective, at every step
            s, stop, updated = _lbfgs_run(model, flat, obj, lamb, s, 1, te, draw, record, st)
        if stop:
            return


def _lbfgs_run(model, flat, obj, lamb, s, n, test_ids, draw, record, st, grid_step=None, update=None):
    """Up to n steps of 20 L-BFGS iterations on one objective; returns (next step, stop,
    the step whose grid update ended the run or None).

    At the start of each later step s' with ``grid_step(s')`` it calls ``update(s', f)`` (the
    guarded grid update, at the run's current point, where the objective is f). An update that was kept changed
    the objective: the run ends there, and the caller starts the next one at s'. One that
    was put back changed nothing, and the run goes on with its curvature history: ending
    it would throw away what L-BFGS has learnt of the objective's curvature and restart
    from a gradient step (torch's LBFGS, which pykan runs, keeps its history across
    grid updates, kept or not)."""
    cache = {}

    def fun(theta):
        flat.set(theta)  # raises _NonFinite for a non-finite iterate (in the model's dtype)
        loss, reg = obj()  # raises _NonFinite before its backward pass
        f = loss + lamb * reg
        g = flat.grad()
        if not np.isfinite(g).all():
            raise _NonFinite("the gradient is not finite")
        if "theta" not in cache and np.array_equal(theta, theta0):
            accept(theta)  # the run's start point, now known to be finite (scipy evaluates it first)
        cache.update(theta=theta.copy(), loss=loss, reg=reg, f=f, g=g)
        return f, g

    # scipy's objective and its gradient as two functions over the one evaluation: scipy
    # asks for the gradient at the point it has just evaluated (with jac=True its own
    # memoisation compares and copies the point twice per evaluation: 5 us of 150)
    def value(theta):
        return fun(theta)[0]

    def gradient(theta):
        if "theta" not in cache or not np.array_equal(cache["theta"], theta):
            fun(theta)
        return cache["g"]

    def at(theta):
        """(loss, reg) at theta, with the model's parameters set to theta."""
        if "theta" not in cache or not np.array_equal(cache["theta"], theta):
            fun(theta)
        return cache["loss"], cache["reg"]

    state = {"iters": 0, "step": s, "stop": False, "test_ids": test_ids, "updated": None}
    theta0 = flat.get()
    snap_grids = [model.backend.to_host(L.knots) for L in model.layers]

    def accept(theta):
        st.last_finite = (flat, np.array(theta, dtype=np.float64), snap_grids)

    def end_step(theta):
        """Record the step that ends at theta; then the next step's grid update, if one is
        scheduled; True when the run goes on."""
        loss, reg = at(theta)
        state["step"] += 1
        if record(loss, reg, state["test_ids"]):
            state["stop"] = True
        if state["stop"] or state["step"] - s >= n:
            return False
        nxt = state["step"]
        if grid_step is not None and grid_step(nxt):
            loss, reg = at(theta)  # the model at the run's point (the last evaluation may be a trial point)
            if update(nxt, loss + lamb * reg):
                state["updated"] = nxt
                return False
            cache.clear()  # the update's evaluations left the model's buffers elsewhere
            at(theta)
        state["test_ids"] = draw()[1]  # the next step's test batch, as if drawn at its start
        return True

    def callback(intermediate_result):
        theta = intermediate_result.x
        accept(theta)
        state["iters"] += 1
        if state["iters"] % LBFGS_ITERS_PER_STEP == 0 and not end_step(theta):
            raise StopIteration

    def running():
        return state["step"] - s < n and not state["stop"] and state["updated"] is None

    # last_finite moves to this run's points only once they are evaluated:
    # until then it stays where it was (the start of fit, or a point of the
    # previous run with that run's knots)
    while running():
        remaining = n - (state["step"] - s)
        state["iters"] = 0
        res = minimize(value, flat.get(), jac=gradient, method="L-BFGS-B", callback=callback,
                       options=dict(maxiter=LBFGS_ITERS_PER_STEP * remaining, maxcor=LBFGS_HISTORY,
                                    ftol=0.0, gtol=0.0, maxls=20,
                                    maxfun=3 * LBFGS_ITERS_PER_STEP * remaining))
        if state["updated"] is not None:  # a kept grid update ended the run: the model is its own
            break
        at(res.x)  # leave the model at scipy's final point
        accept(res.x)
        if not running():
            break
        # scipy stopped inside a step (converged, or the line search could make no
        # more progress): close that step; the next run starts a fresh history.
        if state["iters"] % LBFGS_ITERS_PER_STEP:
            end_step(res.x)
        elif state["iters"] == 0:
            # not even one iteration: more runs cannot move either, so the
            # remaining steps repeat the numbers (as torch's LBFGS does)
            while end_step(res.x):
                pass
    return state["step"], state["stop"], state["updated"]
