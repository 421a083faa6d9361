"""Symbolic edges: a library of named functions, fitting, the symbolic branch, formulas.

Every edge (i -> o) of a layer has two parts, as in pykan:

    phi[i,o](x) = mask[i,o] * spline_edge(x)  +  symbolic_mask[i,o] * (c * f(a*x + b) + d)

with ``(a, b, c, d) = symbolic_affine[i, o]`` and ``f = SYMBOLIC_LIB[symbolic_names[i][o]]``.
``fix_symbolic`` switches an edge from its spline to a formula (mask 0,
symbolic_mask 1); ``unfix_symbolic`` switches it back. The affine parameters
are trained with the splines: the model exposes them as
``"layers.{l}.symbolic_affine"`` (I, O, 4) in ``params``/``grads`` on every
layer that has a symbolic edge. Their gradients are written by hand below
(``branch_backward``), next to the forward rule they differentiate.

The symbolic branch runs in float64 NumPy on the host, through the backend's
``to_host``/``asarray``, and only on layers where some edge is symbolic: a
spline-only model never touches this module's evaluation code (nor imports
sympy).

Safety. Singular functions are evaluated on a clipped argument: 1/x^n, log,
1/sqrt(x), tan, arctanh... are cut off where their value would pass
``Y_MAX = 1e4`` (and the argument of exp at 50, of powers at 1e4), with the
derivative of the clipped function (0 where the clip is active). So the
symbolic branch never produces NaN or inf, and value and derivative always
agree. Inside those bounds every function is exactly its formula.
"""
import math
import warnings
from collections.abc import MutableMapping

import numpy as np

from . import _validate as v

Y_MAX = 1e4          # singular functions are cut off where |f| would exceed this
_F_MAX = 1e30        # last-resort cap on any library value (finite in float32 too)
LOW_R2 = 0.9         # fix_symbolic warns below this r^2 (as pykan prints)
_POLISH_TOP = 8      # suggest_symbolic polishes this many leading candidates
_INF = float("inf")


# ---------------------------------------------------------------------------
# one library entry
class SymbolicFunction:
    """A named one-variable function f for symbolic edges.

    Attributes: ``name``; ``expr`` (a sympy expression in one real symbol x);
    ``complexity`` (used by ``suggest_symbolic`` to prefer simple functions);
    ``domain = (lo, hi)`` (the argument is clipped into it);
    ``hole`` (for functions singular at 0: |argument| is kept >= hole, sign
    preserved); ``y_clip`` (the value is clipped to [-y_clip, y_clip]);
    ``degree`` p when f(s*u) = s^p f(u) for s > 0 (powers), else None: then
    c f(a x + b) depends on (a, b, c) only through two numbers, and fits are
    reported with |a| = 1.

    The NumPy function and its derivative are both generated from ``expr`` by
    ``sympy.lambdify`` (the derivative from ``sympy.diff``), so they cannot
    disagree. Calling the entry evaluates the safe version:

        f_safe(u)  = clip_y( f(T(u)) ),    T = clip into domain, keep out of the hole
        f_safe'(u) = f'(T(u)) * T'(u) * [value not clipped]
    """

    def __init__(self, name, expr, complexity, domain=(-_INF, _INF), hole=0.0, y_clip=None,
                 degree=None):
        import sympy
        x = _symbol()
        self.name = name
        self.expr = sympy.sympify(expr)
        self.complexity = complexity
        self.domain = (float(domain[0]), float(domain[1]))
        self.hole = float(hole)
        self.y_clip = None if y_clip is None else float(y_clip)
        self.degree = None if degree is None else float(degree)
        d = sympy.diff(self.expr, x)
        # sgn'(x) is 2*DiracDelta(x): zero wherever it can be evaluated
        d = d.replace(lambda e: isinstance(e, sympy.DiracDelta), lambda e: sympy.S.Zero)
        self.deriv_expr = d
        self._f = sympy.lambdify(x, self.expr, "numpy")
        self._df = sympy.lambdify(x, d, "numpy")

    @property
    def n_params(self):
        """How many of (a, b, c, d) change c*f(a*x + b) + d independently: 2 for x,
        3 for powers, exp and log (a scale or shift of the argument is absorbed by c
        or d), 4 for sin, tanh, gaussian... ``suggest_symbolic`` counts a function
        with fewer as simpler, so x^2 wins over cos(a*x + b) when both fit.

        It is the rank of the Jacobian columns d/da, d/db, d/dc, d/dd, which span
        {u f'(u), f'(u), f(u), 1} (x is affine in u = a*x + b), sampled on points
        around 0 inside the function's domain and outside its hole.
        """
        if not hasattr(self, "_n_params"):
            lo, hi = self.domain
            u = np.linspace(-0.9, 0.8, 97)  # around 0 (abs, sgn have their kink there), asymmetric
            u = u[(u > lo) & (u < hi) & (np.abs(u) >= max(self.hole, 0.05))]
            if u.size < 16:  # a domain away from [-0.9, 0.8]: sample its inner part instead
                L = lo if np.isfinite(lo) else hi - 2.0
                H = hi if np.isfinite(hi) else lo + 2.0
                u = np.linspace(L + 0.05 * (H - L), H - 0.05 * (H - L), 97)
            f, df = self.value_and_deriv(u)
            cols = np.stack([u * df, df, f, np.ones_like(u)], axis=1)
            norms = np.linalg.norm(cols, axis=0)
            cols = cols[:, norms > 0] / norms[norms > 0]
            s = np.linalg.svd(cols, compute_uv=False)
            self._n_params = int(np.sum(s > 1e-7 * s[0]))
        return self._n_params

    @property
    def is_even(self):
        """f(-u) == f(u) (checked numerically at a few points)."""
        if not hasattr(self, "_even"):
            u = np.array([0.21, 0.55, 0.93, 1.7])
            self._even = bool(np.allclose(self(u), self(-u), rtol=1e-12, atol=1e-300))
        return self._even

    # the sympy side, for formulas
    def sympy(self, arg):
        """f(arg) as a sympy expression (arg: any sympy expression)."""
        return self.expr.xreplace({_symbol(): arg})

    # the NumPy side, for the model
    def __call__(self, u):
        return self.value_and_deriv(u, deriv=False)[0]

    def deriv(self, u):
        return self.value_and_deriv(u, deriv=True)[1]

    def value_and_deriv(self, u, deriv=True):
        """(f_safe(u), f_safe'(u) or None), float64 arrays of u's shape."""
        u = np.asarray(u, dtype=np.float64)
        t, live = u, None
        lo, hi = self.domain
        if lo > -_INF or hi < _INF:
            t = np.clip(u, lo, hi)
            live = (u >= lo) & (u <= hi)
        if self.hole > 0:
            small = np.abs(t) < self.hole
            t = np.where(small, np.where(t < 0, -self.hole, self.hole), t)
            live = ~small if live is None else live & ~small
        zero = np.zeros_like(t)
        with np.errstate(all="ignore"):
            f = self._f(t) + zero  # "+ zero" broadcasts constants such as the 0 function
            df = (self._df(t) + zero) if deriv else None
        if deriv and live is not None:
            df = np.where(live, df, 0.0)
        cap = _F_MAX if self.y_clip is None else min(self.y_clip, _F_MAX)
        bad = ~np.isfinite(f) | (np.abs(f) > cap)
        if np.any(bad):
            f = np.clip(np.nan_to_num(f, nan=0.0, posinf=cap, neginf=-cap), -cap, cap)
            if deriv:
                df = np.where(bad, 0.0, df)
        if deriv:
            df = np.nan_to_num(df, nan=0.0, posinf=_F_MAX, neginf=-_F_MAX)
        return f, df

    def __repr__(self):
        return f"SymbolicFunction({self.name!r}, {self.expr}, complexity={self.complexity})"


_X = None


def _symbol():
    global _X
    if _X is None:
        import sympy
        _X = sympy.Symbol("x", real=True)
    return _X


# ---------------------------------------------------------------------------
# the library
def _builtin_entries():
    """(name, expr, complexity, safety) rows; complexities as in pykan 0.2.x (kan/utils.py)."""
    import sympy as sp
    x = _symbol()
    Y = Y_MAX
    big = lambda p: {"domain": (-Y, Y), "degree": p}  # powers: |u| <= 1e4 keeps x^5 at 1e20
    inv = lambda n: {"hole": Y ** (-1.0 / n), "degree": -n}  # |1/x^n| <= Y
    # sqrt'(u) = 1/(2 sqrt u): start the domain at 1/Y^2 so it stays <= Y/2
    root = lambda p: {"domain": (Y ** -2, _INF), "degree": p}
    return [
        ("x", x, 1, {"degree": 1}),
        ("x^2", x ** 2, 2, big(2)),
        ("x^3", x ** 3, 3, big(3)),
        ("x^4", x ** 4, 3, big(4)),
        ("x^5", x ** 5, 3, big(5)),
        ("1/x", 1 / x, 2, inv(1)),
        ("1/x^2", x ** -2, 2, inv(2)),
        ("1/x^3", x ** -3, 3, inv(3)),
        ("1/x^4", x ** -4, 4, inv(4)),
        ("1/x^5", x ** -5, 5, inv(5)),
        ("sqrt", sp.sqrt(x), 2, root(0.5)),
        ("x^0.5", sp.sqrt(x), 2, root(0.5)),
        ("x^1.5", x ** sp.Rational(3, 2), 4, {"domain": (0.0, Y), "degree": 1.5}),
        ("1/sqrt(x)", 1 / sp.sqrt(x), 2, root(-0.5)),
        ("1/x^0.5", 1 / sp.sqrt(x), 2, root(-0.5)),
        ("exp", sp.exp(x), 2, {"domain": (-_INF, 50.0)}),
        ("log", sp.log(x), 2, {"domain": (1.0 / Y, _INF)}),
        ("abs", sp.Abs(x), 3, {"degree": 1}),
        ("sin", sp.sin(x), 2, {}),
        ("cos", sp.cos(x), 2, {}),
        ("tan", sp.tan(x), 3, {"y_clip": Y}),
        ("tanh", sp.tanh(x), 3, {}),
        ("sgn", sp.sign(x), 3, {}),
        # inverse trig: their derivatives blow up at +-1; stop 1/Y^2 short of it
        ("arcsin", sp.asin(x), 4, {"domain": (-1 + Y ** -2, 1 - Y ** -2)}),
        ("arccos", sp.acos(x), 4, {"domain": (-1 + Y ** -2, 1 - Y ** -2)}),
        ("arctan", sp.atan(x), 4, {}),
        ("arctanh", sp.atanh(x), 4, {"domain": (-1 + Y ** -2, 1 - Y ** -2)}),
        ("0", sp.S.Zero, 0, {}),
        ("gaussian", sp.exp(-x ** 2), 3, {}),
    ]


class _Library(MutableMapping):
    """name -> SymbolicFunction. Built on first use, so ``import numkan`` does not import sympy."""

    def __init__(self):
        self._d = None

    def _lib(self):
        if self._d is None:
            self._d = {}
            for name, expr, c, safety in _builtin_entries():
                self._d[name] = SymbolicFunction(name, expr, c, **safety)
        return self._d

    def __getitem__(self, name):
        return self._lib()[name]

    def __setitem__(self, name, fun):
        if not isinstance(fun, SymbolicFunction):
            raise TypeError(f"SYMBOLIC_LIB values must be SymbolicFunction (use numkan.add_symbolic), "
                            f"got {type(fun).__name__}")
        self._lib()[name] = fun

    def __delitem__(self, name):
        del self._lib()[name]

    def __iter__(self):
        return iter(self._lib())

    def __len__(self):
        return len(self._lib())

    def __repr__(self):
        return "SYMBOLIC_LIB(" + ", ".join(self._lib()) + ")"


SYMBOLIC_LIB = _Library()


def add_symbolic(name, expr, complexity=1, domain=None, hole=0.0, y_clip=None, degree=None):
    """Add (or replace) the function ``name`` in ``SYMBOLIC_LIB``.

    ``expr`` is a sympy expression in one symbol (or a string sympy parses,
    such as ``"besselj(0, x)"``); its NumPy function and derivative are
    generated from it with ``sympy.lambdify``, so they cannot disagree.
    ``domain=(lo, hi)``, ``hole`` and ``y_clip`` make a singular function
    safe (see ``SymbolicFunction``); ``degree`` marks a homogeneous function
    (f(s*u) = s^degree f(u) for s > 0; it is checked). Returns the new entry.

    >>> import sympy
    >>> t = sympy.Symbol("t")
    >>> nk.add_symbolic("softplus", sympy.log(1 + sympy.exp(t)), complexity=3)
    """
    import sympy
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    try:
        e = sympy.sympify(expr)
    except (sympy.SympifyError, TypeError) as exc:
        raise ValueError(f"expr must be a sympy expression in one variable, got {expr!r}: {exc}") from None
    free = sorted(e.free_symbols, key=str)
    if len(free) > 1:
        raise ValueError(f"expr must have one free symbol, got {free} in {e}")
    if free:  # rename the user's symbol to the library's real x
        e = e.xreplace({free[0]: _symbol()})
    complexity = v.check_float("complexity", complexity, minimum=0)
    if domain is None:
        domain = (-_INF, _INF)
    try:
        lo, hi = (float(d) for d in domain)
    except (TypeError, ValueError):
        raise ValueError(f"domain must be a pair (lo, hi), got {domain!r}") from None
    if not lo < hi:
        raise ValueError(f"domain must have lo < hi, got {domain!r}")
    hole = v.check_float("hole", hole, minimum=0)
    if y_clip is not None:
        y_clip = v.check_float("y_clip", y_clip, positive=True)
    if degree is not None:
        degree = v.check_float("degree", degree)
    fun = SymbolicFunction(name, e, complexity, domain=(lo, hi), hole=hole, y_clip=y_clip,
                           degree=degree)
    probe = np.linspace(-3, 3, 7)
    try:
        fun.value_and_deriv(probe)
    except Exception as exc:  # lambdify produced something NumPy cannot run
        raise ValueError(f"expr {e} cannot be evaluated with NumPy: {exc}") from None
    if degree is not None:
        u = np.array([0.3, 0.7, 1.3, 2.1])
        if not np.allclose(fun(2.5 * u), 2.5 ** degree * fun(u), rtol=1e-9, atol=1e-12):
            raise ValueError(f"degree={degree}: {e} is not homogeneous of that degree "
                             "(f(s*u) = s^degree f(u) for s > 0)")
    SYMBOLIC_LIB[name] = fun
    return fun


def _fun(name, argname="name"):
    if not isinstance(name, str) or name not in SYMBOLIC_LIB:
        raise ValueError(f"{argname} must be a function in SYMBOLIC_LIB ({', '.join(SYMBOLIC_LIB)}), "
                         f"got {name!r}")
    return SYMBOLIC_LIB[name]


def _is_zero_function(fun):
    return fun.expr == 0


# ---------------------------------------------------------------------------
# fitting c * f(a x + b) + d to samples of an edge
def fit_params(x, y, fun, a_range=(-10, 10), b_range=(-10, 10), grid_number=41, iteration=3,
               polish=True, max_search_points=256):
    """Fit y ~ c * f(a*x + b) + d; returns ``((a, b, c, d), r2)``.

    x, y (N,) samples; ``fun`` a ``SymbolicFunction`` or a library name.

    1. Coarse-to-fine search over (a, b): a ``grid_number``^2 grid on
       ``a_range`` x ``b_range``, scored by r^2 = corr(f(a x + b), y)^2 (the
       best r^2 a linear map c, d can reach), then ``iteration - 1`` zooms,
       11 x 11 each, on the cells around the best point; vectorised over the
       grid, on at most ``max_search_points`` samples spread over the range of x.
    2. c, d by linear least squares on all samples.
    3. ``polish``: Levenberg-Marquardt on (a, b, c, d) from there
       (``scipy.optimize.least_squares``, analytic Jacobian), kept only if it
       lowers the squared error.

    r2 = 1 - SSE / SST on all samples; 1 when y is constant (d alone fits it).
    Everything stays finite: f is evaluated safely.
    """
    if isinstance(fun, str):
        fun = _fun(fun, "fun")
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    n = x.size
    ym = y.mean()
    sst = float(np.sum((y - ym) ** 2))
    if sst <= 1e-24 * max(1.0, n * ym * ym):  # a constant edge: d carries it, r^2 = 1
        return (1.0, 0.0, 0.0, float(ym)), 1.0
    if _is_zero_function(fun):
        return (1.0, 0.0, 0.0, float(ym)), 0.0

    if n > max_search_points:  # evenly through the sorted samples: the whole range of x
        sel = np.argsort(x, kind="stable")[np.linspace(0, n - 1, max_search_points).astype(np.int64)]
        xs, ys = x[sel], y[sel]
    else:
        xs, ys = x, y
    yc = ys - ys.mean()
    (alo, ahi), (blo, bhi) = (float(a_range[0]), float(a_range[1])), (float(b_range[0]), float(b_range[1]))
    best = (1.0, 0.0)
    for it in range(iteration):
        n_grid = grid_number if it == 0 else 11  # zooms are local: a small grid suffices
        A = np.linspace(alo, ahi, n_grid)
        Bv = np.linspace(blo, bhi, n_grid)
        U = A[:, None, None] * xs[None, None, :] + Bv[None, :, None]   # (n_a, n_b, m)
        F = fun(U)
        Fc = F - F.mean(axis=2, keepdims=True)
        cov = Fc @ yc
        var = np.einsum("abm,abm->ab", Fc, Fc)
        r2 = np.where(var > 1e-300, cov * cov / np.maximum(var, 1e-300), 0.0) / max(float(yc @ yc), 1e-300)
        ia, ib = np.unravel_index(int(np.argmax(r2)), r2.shape)
        best = (A[ia], Bv[ib])
        da, db = (ahi - alo) / (n_grid - 1), (bhi - blo) / (n_grid - 1)
        alo, ahi = best[0] - da, best[0] + da
        blo, bhi = best[1] - db, best[1] + db

    def linear_cd(a, b):
        f = fun(a * x + b)
        fm = f.mean()
        var = float(np.sum((f - fm) ** 2))
        c = float(np.sum((f - fm) * (y - ym)) / var) if var > 1e-300 else 0.0
        d = float(ym - c * fm)
        return c, d

    a, b = float(best[0]), float(best[1])
    c, d = linear_cd(a, b)
    p = np.array([a, b, c, d])

    def residual(q):
        return q[2] * fun(q[0] * x + q[1]) + q[3] - y

    sse = float(np.sum(residual(p) ** 2))
    if polish and n >= 4:
        from scipy.optimize import least_squares

        def jac(q):
            f, df = fun.value_and_deriv(q[0] * x + q[1])
            return np.stack([q[2] * df * x, q[2] * df, f, np.ones_like(f)], axis=1)

        try:
            res = least_squares(residual, p, jac=jac, method="lm", xtol=1e-15, ftol=1e-15,
                                gtol=1e-15, max_nfev=200)
            q = res.x
            if np.all(np.isfinite(q)):
                q[2], q[3] = linear_cd(q[0], q[1])  # exact c, d for the final a, b
                sse_q = float(np.sum(residual(q) ** 2))
                if sse_q < sse:
                    p, sse = q, sse_q
        except (ValueError, np.linalg.LinAlgError):
            pass  # keep the search's answer
    r2 = max(0.0, 1.0 - sse / sst)
    return tuple(float(t) for t in _canonical(fun, p)), float(r2)


def _canonical(fun, p):
    """The same edge function c f(a x + b) + d with its free parameters fixed plainly:
    x: a = 1, b = 0; powers: |a| = 1; even functions: a > 0."""
    a, b, c, d = (float(t) for t in p)
    if fun.expr == _symbol():
        return np.array([1.0, 0.0, c * a, d + c * b])
    if fun.degree is not None and a != 0:
        s = abs(a)
        a, b, c = a / s, b / s, c * s ** fun.degree
    if a < 0 and fun.is_even:
        a, b = -a, -b
    return np.array([a, b, c, d])


_fit = fit_params  # fix_symbolic's argument of the same name shadows it


# ---------------------------------------------------------------------------
# the symbolic branch of a layer: forward and backward (host, float64)
def is_active(layer):
    """True when some edge of ``layer`` is symbolic (its symbolic part is evaluated)."""
    return bool(np.any(layer.symbolic_mask))


def _groups(layer):
    """(i, fun, outs) for each input i and library function used by its symbolic edges."""
    sm = layer.symbolic_mask
    for i in np.nonzero(np.any(sm != 0, axis=1))[0]:
        by_name = {}
        for o in np.nonzero(sm[i])[0]:
            by_name.setdefault(layer.symbolic_names[i][o], []).append(o)
        for name, outs in by_name.items():
            yield int(i), SYMBOLIC_LIB[name], np.asarray(outs)


def branch_values(layer, xh):
    """Symbolic part of the layer, ys (B, O) float64, from host inputs xh (B, I).

        ys[b,o] = sum_i symbolic_mask[i,o] * (c[i,o] * f[i,o](a[i,o] * x[b,i] + b[i,o]) + d[i,o])

    One (B, n) temporary per input and function, n <= O: no (B, I, O) array.
    """
    xh = np.asarray(xh, dtype=np.float64)
    aff = np.asarray(layer.backend.to_host(layer.symbolic_affine), dtype=np.float64)
    ys = np.zeros((xh.shape[0], layer.out_dim))
    for i, fun, outs in _groups(layer):
        a, b, c, d = (aff[i, outs, q] for q in range(4))
        f = fun(a * xh[:, i, None] + b)                       # (B, n)
        ys[:, outs] += layer.symbolic_mask[i, outs] * (c * f + d)
    return ys


def branch_forward(layer, x, y):
    """y + symbolic part, as a new backend array (x (B, I), y (B, O) backend arrays)."""
    be = layer.backend
    return be.asarray(be.to_host(y) + branch_values(layer, be.to_host(x)), layer.dtype)


def branch_backward(layer, x, dy, dx):
    """Gradients of the symbolic part: returns dx + its share (new backend array) and adds
    (+=, in place) into ``layer.dsymbolic_affine`` (I, O, 4).

    With g = dy, u = a*x + b, m = symbolic_mask[i,o]:
        d a[i,o]  += sum_b g[b,o] * m * c * f'(u) * x[b,i]
        d b[i,o]  += sum_b g[b,o] * m * c * f'(u)
        d c[i,o]  += sum_b g[b,o] * m * f(u)
        d d[i,o]  += sum_b g[b,o] * m
        dx[b,i]   += sum_o g[b,o] * m * c * f'(u) * a
    """
    be = layer.backend
    xh = np.asarray(be.to_host(x), dtype=np.float64)
    g = np.asarray(be.to_host(dy), dtype=np.float64)
    aff = np.asarray(be.to_host(layer.symbolic_affine), dtype=np.float64)
    daff = np.zeros(aff.shape)
    dxs = np.zeros(xh.shape)
    for i, fun, outs in _groups(layer):
        a, b, c, d = (aff[i, outs, q] for q in range(4))
        xi = xh[:, i, None]
        f, df = fun.value_and_deriv(a * xi + b)               # (B, n)
        gm = g[:, outs] * layer.symbolic_mask[i, outs]       # (B, n)
        gcf = gm * c * df
        daff[i, outs, 0] = np.sum(gcf * xi, axis=0)
        daff[i, outs, 1] = np.sum(gcf, axis=0)
        daff[i, outs, 2] = np.sum(gm * f, axis=0)
        daff[i, outs, 3] = np.sum(gm, axis=0)
        dxs[:, i] += gcf @ a
    acc = be.to_host(layer.dsymbolic_affine) + daff
    layer.dsymbolic_affine[...] = be.asarray(acc, layer.dtype)  # in place: grads stay live
    return be.asarray(be.to_host(dx) + dxs, layer.dtype)


# ---------------------------------------------------------------------------
# data: the activations fitting and attribution work on
def model_data(model, x=None, min_rows=1):
    """Host float64 inputs (B, width[0]): ``x`` if given, else the inputs of the
    model's last ``forward`` (pykan's cached data), else ``model.cache_data``."""
    if x is None:
        x0 = model.layers[0]._x
        if x0 is not None:
            x = model.backend.to_host(x0)
        elif getattr(model, "cache_data", None) is not None:
            x = model.cache_data
        else:
            raise ValueError("x is None and the model has no data: pass x (batch, "
                             f"{model.width[0]}) or call model.forward(x) first (its inputs are used, "
                             "as pykan uses its cached data)")
    x = v.check_array("x", x, model.width[0], np.float64)
    if x.shape[0] < min_rows:
        raise ValueError(f"x must have at least {min_rows} rows, got {x.shape[0]}")
    return x


def layer_inputs(model, x, upto=None):
    """[x_0, ..., x_upto] host float64 arrays: the inputs of each layer (x_L the output)."""
    be, dt = model.backend, model.dtype
    L = len(model.layers) if upto is None else upto
    xs = [np.asarray(x, dtype=np.float64)]
    h = be.asarray(x, dt)
    for layer in model.layers[:L]:
        h = layer.forward(h, keep=False)
        xs.append(np.asarray(be.to_host(h), dtype=np.float64))
    return xs


_EDGE_ARRAYS = ("grid", "coef", "scale_base", "scale_sp", "mask", "symbolic_affine")


def host_params(layer):
    """Host copies of the arrays ``edge_outputs`` reads: one transfer per layer, not per input."""
    return {n: np.asarray(layer.backend.to_host(getattr(layer, n))) for n in _EDGE_ARRAYS}


def edge_outputs(layer, xh, i, host=None):
    """(B, O) host float64: phi[i, o](xh[:, i]) for every o, spline plus symbolic part.

    ``host``: ``host_params(layer)``, when the caller evaluates many inputs.
    """
    be, dt = layer.backend, layer.dtype
    host = host_params(layer) if host is None else host
    xi = np.ascontiguousarray(np.asarray(xh)[:, i:i + 1])
    y = be.zeros((xi.shape[0], layer.out_dim), dt)
    be.spline_forward(y, be.asarray(xi, dt), *(be.asarray(host[n][i:i + 1], dt) for n in
                                                ("grid", "coef", "scale_base", "scale_sp", "mask")),
                      layer.k, layer.base_fun)
    out = np.asarray(be.to_host(y), dtype=np.float64)
    if np.any(layer.symbolic_mask[i]):
        aff = np.asarray(host["symbolic_affine"], dtype=np.float64)
        for o in np.nonzero(layer.symbolic_mask[i])[0]:
            a, b, c, d = aff[i, o]
            f = SYMBOLIC_LIB[layer.symbolic_names[i][o]](a * xh[:, i] + b)
            out[:, o] += layer.symbolic_mask[i, o] * (c * f + d)
    return out


# ---------------------------------------------------------------------------
# the model's symbolic API (bound as KAN methods)
def _check_edge(model, l, i, j):
    n_layers = len(model.layers)
    l = v.check_int("l", l, 0)
    if l >= n_layers:
        raise ValueError(f"l must be a layer index in [0, {n_layers}), got {l}")
    layer = model.layers[l]
    i = v.check_int("i", i, 0)
    if i >= layer.in_dim:
        raise ValueError(f"i must be an input index of layer {l}, in [0, {layer.in_dim}), got {i}")
    j = v.check_int("j", j, 0)
    if j >= layer.out_dim:
        raise ValueError(f"j must be an output index of layer {l}, in [0, {layer.out_dim}), got {j}")
    return l, i, j


def _set_entry(layer, attr, index, value):
    """layer.<attr>[index] = value on the layer's backend, in place (live arrays stay live)."""
    be = layer.backend
    arr = getattr(layer, attr)
    host = np.array(be.to_host(arr))
    host[index] = value
    arr[...] = be.asarray(host, layer.dtype)


def _edge_samples(model, l, i, j, x):
    xh = model_data(model, x, min_rows=2)
    xs = layer_inputs(model, xh, upto=l)[l]
    return xs[:, i], edge_outputs(model.layers[l], xs, i)[:, j]


def fix_symbolic(self, l, i, j, name, fit_params=True, a_range=(-10, 10), b_range=(-10, 10),
                 x=None, verbose=False):
    """Make edge (l, i -> j) symbolic: phi = c * f(a*x + b) + d with f = SYMBOLIC_LIB[name].

    In place: sets the edge's spline ``mask`` to 0 and its ``symbolic_mask`` to 1.

    With ``fit_params`` (default) a, b, c, d are fitted to the edge's current
    output on data (``x``, default: the inputs of the last ``model.forward``)
    by ``fit_params`` and the fit's r^2 is returned; a warning says so when
    r^2 < 0.9 (the symbolic edge then differs visibly from the spline it
    replaces). Without, (a, b, c, d) = (1, 0, 1, 0) and None is returned.
    On a bad argument nothing changes.
    """
    l, i, j = _check_edge(self, l, i, j)
    fun = _fun(name)
    a_range = v.check_range("a_range", a_range)
    b_range = v.check_range("b_range", b_range)
    layer = self.layers[l]
    if fit_params:
        xi, yi = _edge_samples(self, l, i, j, x)
        params, r2 = _fit(xi, yi, fun, a_range, b_range)
        if not all(np.isfinite(params)):  # cannot happen with safe functions; never store NaN
            raise ValueError(f"fitting {name!r} to edge ({l}, {i}, {j}) gave non-finite parameters {params}")
        if r2 < LOW_R2 and not _is_zero_function(fun):
            warnings.warn(f"fix_symbolic({l}, {i}, {j}, {name!r}): r^2 = {r2:.4g} < {LOW_R2}: the formula "
                          "fits this edge poorly; check the function (suggest_symbolic) or train more",
                          RuntimeWarning, stacklevel=2)
        if verbose:
            print(f"fix_symbolic({l}, {i}, {j}, {name!r}): r^2 = {r2:.6g}, (a, b, c, d) = "
                  + ", ".join(f"{p:.6g}" for p in params))
    else:
        params, r2 = (1.0, 0.0, 1.0, 0.0), None
    _set_entry(layer, "symbolic_affine", (i, j), params)
    _set_entry(layer, "mask", (i, j), 0.0)
    layer.symbolic_mask[i, j] = 1.0
    layer.symbolic_names[i][j] = name
    return r2


def unfix_symbolic(self, l, i, j):
    """Turn edge (l, i -> j) back into its spline, in place: mask 1, symbolic_mask 0.

    The spline's coefficients are those it had (they are not trained while
    the edge is symbolic, unless a regulariser moves them).
    """
    l, i, j = _check_edge(self, l, i, j)
    layer = self.layers[l]
    _set_entry(layer, "mask", (i, j), 1.0)
    layer.symbolic_mask[i, j] = 0.0
    layer.symbolic_names[i][j] = "0"


def _lib_names(lib):
    if lib is None:
        return list(SYMBOLIC_LIB)
    if isinstance(lib, str) or not hasattr(lib, "__iter__"):
        raise ValueError(f"lib must be a list of names from SYMBOLIC_LIB, got {lib!r}")
    names = list(lib)
    if not names:
        raise ValueError("lib must name at least one function, got an empty list")
    for n in names:
        _fun(n, "lib entry")
    return names


# Two fits count as equally good when both leave less than this fraction of the edge's
# variance unexplained (a relative RMS error of 1e-6): differences below it come from
# rounding and from the spline's own approximation error, not from the law.
_Q_FLOOR = 1e-12


def _band_ratio(weight_simple):
    """How many times more unexplained variance than the best fit a simpler function may
    leave and still be chosen: 2 ** (weight_simple / (1 - weight_simple)).

    This is pykan's exchange rate: its score weight_simple * complexity +
    (1 - weight_simple) * log2(1 - r^2) trades one unit of complexity for
    weight_simple / (1 - weight_simple) bits of 1 - r^2 (4 bits, a factor 16, at 0.8).
    """
    if weight_simple >= 1:
        return _INF
    return 2.0 ** (weight_simple / (1.0 - weight_simple))


def _rank(rows, weight_simple):
    """Sort rows (name, r2, complexity, n_params, params) best first; see ``suggest_symbolic``."""
    fitted = [1.0 - r[1] for r in rows if r[4] is not None]
    q_best = max(min(fitted), 0.0) if fitted else 1.0
    limit = _band_ratio(weight_simple) * q_best + _Q_FLOOR

    def key(r):
        name, r2, c, n_p, params = r
        q = 1.0 - r2
        if params is not None and q <= limit:   # fits as well as the best: simplest first
            return (0, c, n_p, q)
        return (1, q, c, n_p)                    # the rest: best fit first
    rows.sort(key=key)
    return rows


def _suggest(xi, yi, names, weight_simple, a_range, b_range):
    """Rows (name, r2, complexity, n_params, params) for samples xi -> yi of one edge, best first."""
    constant = float(np.ptp(yi)) <= 1e-12 * max(1.0, float(np.max(np.abs(yi))))
    rows = []
    for n in names:
        fun = SYMBOLIC_LIB[n]
        if _is_zero_function(fun) and not constant:
            # the zero function leaves only d: never a fit for a varying edge (pykan agrees)
            rows.append((n, 0.0, fun.complexity, fun.n_params, None))
            continue
        params, r2 = fit_params(xi, yi, fun, a_range, b_range, polish=False)
        rows.append((n, r2, fun.complexity, fun.n_params, params))
    # polishing raises r^2 (by orders of magnitude near 1): refine the best fits found by the
    # search, then rank again. Ranking by quality alone here keeps every candidate that can
    # join the best after polishing, simple or not.
    rows.sort(key=lambda r: (r[4] is None, -r[1]))
    for k, (n, r2, c, n_p, params) in enumerate(rows[:_POLISH_TOP]):
        if params is not None:
            params, r2 = fit_params(xi, yi, SYMBOLIC_LIB[n], a_range, b_range)
            rows[k] = (n, r2, c, n_p, params)
    return _rank(rows, weight_simple)


def suggest_symbolic(self, l, i, j, topk=5, weight_simple=0.8, lib=None, a_range=(-10, 10),
                     b_range=(-10, 10), x=None, verbose=True):
    """Rank library functions for edge (l, i -> j); returns up to ``topk`` rows
    ``(name, r2, complexity)``, best first. Does not change the model.

    Each function is fitted as in ``fix_symbolic``. The ranking is the one a
    scientist applies: the quality of the fit first, then its simplicity.

    1. Quality. With q = 1 - r^2 (the fraction of the edge's variance the fit
       leaves unexplained) and q_best the smallest q over the library, a
       function fits as well as the best when

           q <= 2 ** (weight_simple / (1 - weight_simple)) * q_best + 1e-12

       The factor is 16 at the default ``weight_simple = 0.8`` (pykan's exchange
       rate between complexity and log2(1 - r^2); 1 at 0: only the best fit
       and its equals; unbounded at 1: every function); 1e-12 (a relative RMS
       error of 1e-6) counts fits that are all exact to a spline's precision
       as equally good.
    2. Simplicity, among those: the lowest ``complexity`` (pykan's values),
       then the fewest effective parameters (``SymbolicFunction.n_params``: 3
       for x^2 = c(x + b)^2 + d, 4 for c*cos(a*x + b) + d), then the best fit.
       So x^2 wins over cos(a*x + b), which can mimic it with a small a, when
       both fit, and exp wins over tanh, which mimics exp in a limit.

    The functions that fit worse follow, best fit first. The zero function
    counts only for a constant edge. ``verbose`` prints the table, with the
    effective parameter count and ``*`` marking the functions that fit as
    well as the best.
    """
    l, i, j = _check_edge(self, l, i, j)
    topk = v.check_int("topk", topk, 1)
    weight_simple = v.check_float("weight_simple", weight_simple, minimum=0)
    if weight_simple > 1:
        raise ValueError(f"weight_simple must be in [0, 1], got {weight_simple}")
    names = _lib_names(lib)
    xi, yi = _edge_samples(self, l, i, j, x)
    rows = _suggest(xi, yi, names, weight_simple, v.check_range("a_range", a_range),
                    v.check_range("b_range", b_range))[:topk]
    if verbose:
        limit = _band_ratio(weight_simple) * max(1.0 - max(r[1] for r in rows), 0.0) + _Q_FLOOR
        print(f"edge ({l}, {i}, {j}):  {'function':<10} {'r2':>14} {'1 - r2':>9} {'complexity':>10} "
              f"{'params':>6}")
        for n, r2, c, n_p, params in rows:
            mark = "*" if params is not None and 1.0 - r2 <= limit else " "
            print(f"{'':15}{mark} {n:<10} {r2:14.10f} {1.0 - r2:9.2e} {c:10g} {n_p:6d}")
    return [(n, r2, c) for n, r2, c, _, _ in rows]


def auto_symbolic(self, lib=None, weight_simple=0.8, r2_threshold=0.0, a_range=(-10, 10),
                  b_range=(-10, 10), x=None, verbose=1):
    """Replace every live spline edge by its best library function, in place.

    For each edge with a live spline (mask != 0) and no symbolic part, the
    first function in ``suggest_symbolic``'s ranking whose r^2 >= ``r2_threshold``
    is fixed; when none reaches it, the edge keeps its spline and a warning
    names it. The ranking is by the fit's quality, then its
    simplicity: among the functions whose unexplained variance 1 - r^2 is at
    most 2 ** (weight_simple / (1 - weight_simple)) times the best one's
    (16 times at the default 0.8) plus 1e-12, the one with the lowest
    complexity, then the fewest effective parameters, wins; so x^2 is chosen
    over cos(a*x + b) when both fit (details in ``suggest_symbolic``).
    Already-symbolic and pruned edges are left alone. Fits with r^2 below
    0.9 are also reported by a warning. ``verbose >= 1`` prints one line per
    edge.

    Returns a list of rows ``(l, i, j, name, r2, complexity)`` for the edges
    that were fixed.
    """
    weight_simple = v.check_float("weight_simple", weight_simple, minimum=0)
    if weight_simple > 1:
        raise ValueError(f"weight_simple must be in [0, 1], got {weight_simple}")
    r2_threshold = v.check_float("r2_threshold", r2_threshold)
    names = _lib_names(lib)
    a_range, b_range = v.check_range("a_range", a_range), v.check_range("b_range", b_range)
    xh = model_data(self, x, min_rows=2)
    fixed, low = [], []
    for l, layer in enumerate(self.layers):
        mask = np.asarray(layer.backend.to_host(layer.mask))
        todo = (mask != 0) & (layer.symbolic_mask == 0)
        if not np.any(todo):
            continue
        xs = layer_inputs(self, xh, upto=l)[l]  # after the layers below were made symbolic
        host = host_params(layer)
        for i in range(layer.in_dim):
            if not np.any(todo[i]):
                continue
            phi = edge_outputs(layer, xs, i, host)
            for j in range(layer.out_dim):
                if not todo[i, j]:
                    continue
                rows = _suggest(xs[:, i], phi[:, j], names, weight_simple, a_range, b_range)
                # the first in ranking order that meets the threshold: when any does, the best
                # fit does, and it is in the band, so this is the simplest of the band that passes
                passing = [r for r in rows if r[4] is not None and r[1] >= r2_threshold]
                if not passing:
                    name, r2 = max(rows, key=lambda r: (r[4] is not None, r[1]))[:2]
                    warnings.warn(f"auto_symbolic: edge ({l}, {i}, {j}) kept its spline: the best fit, "
                                  f"{name!r}, has r^2 = {r2:.4g} < r2_threshold = {r2_threshold}",
                                  RuntimeWarning, stacklevel=2)
                    continue
                name, r2, c, _, params = passing[0]
                _set_entry(layer, "symbolic_affine", (i, j), params)
                _set_entry(layer, "mask", (i, j), 0.0)
                layer.symbolic_mask[i, j] = 1.0
                layer.symbolic_names[i][j] = name
                if r2 < LOW_R2 and not _is_zero_function(SYMBOLIC_LIB[name]):
                    low.append(f"({l}, {i}, {j}) {name} r^2={r2:.3g}")
                if verbose >= 1:
                    print(f"fixing ({l},{i},{j}) with {name}, r2={r2:.6g}, c={c:g}")
                fixed.append((l, i, j, name, r2, c))
    if low:
        warnings.warn("auto_symbolic: low-r^2 fits (< 0.9), check them or train more: " + "; ".join(low),
                      RuntimeWarning, stacklevel=2)
    return fixed


# ---------------------------------------------------------------------------
# formulas
def _variables(model, var):
    import sympy
    n = model.width[0]
    if var is None:
        ids = getattr(model, "input_id", None)
        ids = range(n) if ids is None else [int(t) for t in ids]
        return [sympy.Symbol(f"x_{t + 1}", real=True) for t in ids]
    if isinstance(var, str) or not hasattr(var, "__len__") or len(var) != n:
        raise ValueError(f"var must be a list of {n} names or sympy symbols, got {var!r}")
    out = []
    for t in var:
        if isinstance(t, str):
            out.append(sympy.Symbol(t, real=True))
        elif isinstance(t, sympy.Basic):
            out.append(t)
        else:
            raise ValueError(f"var entries must be strings or sympy symbols, got {t!r}")
    return out


def _normalize(expr):
    """expr with its numbers gathered, so that each constant of the law is one number.

    Powers of sums such as (a*x + b)**2 are multiplied out and products
    distributed, where that keeps the expression small, so an outer factor
    meets the inner ones; a constant term inside exp is moved out as a factor
    (c*exp(u + 6.3) -> (c*e^6.3)*exp(u)), where it meets the edge's c. The
    function is unchanged (up to rounding in the last digit).
    """
    import sympy
    try:
        expanded = sympy.expand(expr, power_exp=False, power_base=False, log=False)
        if sympy.count_ops(expanded) <= 2 * sympy.count_ops(expr) + 10:
            expr = expanded
    except (TypeError, ValueError, RecursionError):
        pass

    def has_float_term(e):
        return isinstance(e, sympy.exp) and e.args[0].is_Add and \
            isinstance(e.args[0].as_coeff_Add()[0], sympy.Float)

    def pull(e):
        const, rest = e.args[0].as_coeff_Add()
        return sympy.exp(const) * sympy.exp(rest)
    return expr.replace(has_float_term, pull)


def round_floats(expr, digits):
    """expr with its numbers rounded to ``digits`` decimals, for display.

    Numbers are first gathered (``_normalize``: powers of sums multiplied out,
    constants moved out of exp), so that a product of factors is rounded once,
    not factor by factor; then every float is rounded, integral values become
    integers, and the rounding is repeated until sympy's automatic arithmetic
    creates no new float.
    """
    import sympy
    expr = _normalize(expr)
    for _ in range(5):
        reps = {}
        for f in expr.atoms(sympy.Float):
            r = round(float(f), digits)
            reps[f] = sympy.Integer(int(r)) if r == int(r) else sympy.Float(r)
        if all(reps[f] == f and isinstance(reps[f], sympy.Float) for f in reps):
            break
        expr = expr.xreplace(reps)
    return expr


# simple values that constants snap to: p/q * base with q <= _SNAP_Q, |p| <= _SNAP_P, base 1, pi
# or e; their cost (about the digits a person writes) orders the tries, simplest first
_SNAP_Q = 12
_SNAP_P = 1000
_SNAP_BASES = ((1, 0.0), ("pi", 1.0), ("E", 1.5))


def _snap_candidates(value):
    """[(cost, sympy number)] for the float ``value``, simplest first; 0 leads."""
    import sympy
    out = [(0.0, sympy.S.Zero)]
    seen = set()
    for base, base_cost in _SNAP_BASES:
        b = sympy.S.One if base == 1 else getattr(sympy, base)
        t = value / float(b)
        for q in range(1, _SNAP_Q + 1):
            p = int(round(t * q))
            if p == 0 or abs(p) > _SNAP_P or math.gcd(abs(p), q) != 1 or (p, q, base) in seen:
                continue
            seen.add((p, q, base))
            cost = math.log2(1 + abs(p)) + math.log2(q) + base_cost
            out.append((cost + 1e-9 * abs(p / q * float(b) - value), sympy.Rational(p, q) * b))
    out.sort(key=lambda c: c[0])
    return out


def snap_constants(expr, symbols, x, y=None, tol=1e-6):
    """expr with its constants replaced by simple exact values where the data allow it.

    ``symbols`` are the expression's variables, in the column order of the
    inputs ``x`` (B, n); ``y`` (B,) are the values to fit (default: the
    expression's own values on x, so that only the change of the function
    counts). The numbers are first gathered (``_normalize``). Then each float,
    the closest to a simple value first, is replaced by the simplest value
    among 0 and p/q, p/q*pi, p/q*e (1 <= q <= 12, |p| <= 1000) that keeps

        RMSE(snapped, y) <= RMSE(unsnapped, y) + tol * RMS(y)

    on the samples where the unsnapped expression is finite, the snaps
    accepted before it included; a float that no simple value passes stays as
    it is. With exact data, tol = 1e-6 turns 3.14159265358979 into pi and
    leaves 3.1416 alone (its error shows at about 3e-6 of RMS(y)).
    """
    import sympy
    if not isinstance(expr, sympy.Basic):
        raise TypeError(f"expr must be a sympy expression, got {type(expr).__name__}")
    symbols = list(symbols)
    x = v.check_array("x", x, len(symbols), np.float64)
    if y is not None:
        y = np.asarray(y, dtype=np.float64)
        if y.shape != (x.shape[0],) or not np.all(np.isfinite(y)):
            raise ValueError(f"y must be a finite array of shape ({x.shape[0]},), got shape {y.shape}")
    tol = v.check_float("tol", tol, minimum=0)
    expr = _normalize(expr)
    floats = sorted(expr.atoms(sympy.Float), key=float)
    if not floats:
        return expr
    params = [sympy.Dummy(f"p{k}") for k in range(len(floats))]
    g = sympy.lambdify(list(symbols) + params, expr.xreplace(dict(zip(floats, params))), "numpy")
    cols = [x[:, t] for t in range(x.shape[1])]

    def values(p):
        with np.errstate(all="ignore"):
            return np.broadcast_to(np.asarray(g(*cols, *p), dtype=np.float64), (x.shape[0],))

    current = [float(f) for f in floats]
    f0 = values(current)
    ref = f0 if y is None else y
    ok = np.isfinite(f0) & np.isfinite(ref)
    if not np.any(ok):
        return expr

    def rmse(f):
        return float(np.sqrt(np.mean((f[ok] - ref[ok]) ** 2)))

    scale = float(np.sqrt(np.mean(ref[ok] ** 2))) or 1.0
    limit = rmse(f0) + tol * scale
    cands = [_snap_candidates(c) for c in current]
    # the constants nearest to a simple value go first: they use the least of the tolerance
    order = sorted(range(len(floats)), key=lambda k: min(
        abs(float(c) - current[k]) / max(abs(current[k]), 1e-300) for _, c in cands[k]))
    exact = {}
    for k in order:
        for _, c in cands[k]:
            trial = list(current)
            trial[k] = float(c)
            f = values(trial)
            if np.all(np.isfinite(f[ok])) and rmse(f) <= limit:
                current, exact[floats[k]] = trial, c
                break
    return expr.xreplace(exact)


_UNSET = object()


def symbolic_formula(self, var=None, floating_digit=None, snap=False, snap_tol=1e-6, x=None, y=None,
                     floating_digits=_UNSET):
    """One sympy expression per output of the network, built layer by layer.

    Needs every live edge to be symbolic: an edge whose spline is still live
    (mask != 0) raises a ValueError naming it (fix it with ``fix_symbolic`` or
    ``auto_symbolic``, or prune it). Pruned edges contribute nothing; a
    symbolic edge contributes ``symbolic_mask * (c * f(a*x + b) + d)``.
    Variables are ``x_1 .. x_n`` (numbered by original input after
    ``prune_input``) or the names/symbols in ``var``.

    By default the numbers are the model's own, in full precision: the
    formula is the model's function. Two options make it read as a law:

    ``snap=True`` gathers the numbers (powers of sums multiplied out, constant
    terms moved out of exp) and replaces each by a simple exact value (0, p/q,
    p/q*pi, p/q*e, 1 <= q <= 12) where that does not worsen the fit on the
    data beyond ``snap_tol``: the snapped formula's RMSE against ``y`` (B, O)
    may exceed the unsnapped one's by at most ``snap_tol * RMS(y)``, per
    output. Without ``y`` the unsnapped formula's own values are the target,
    so the function may change by at most ``snap_tol`` (relative RMS). ``x``
    (B, n) are the data (default: the inputs of the last ``forward``, as in
    ``auto_symbolic``). The default 1e-6 turns sin(3.14159265358979*x_1)
    into sin(pi*x_1) and keeps sin(3.1416*x_1). See ``snap_constants``.

    ``floating_digit`` (pykan's name) rounds the remaining numbers to that
    many decimals for display; rounding changes the function, so evaluate an
    unrounded formula when numbers matter. (``floating_digits`` is the old
    name, deprecated.)
    """
    import sympy
    if floating_digits is not _UNSET:
        warnings.warn("symbolic_formula(floating_digits=...) is deprecated: use floating_digit "
                      "(pykan's name)", DeprecationWarning, stacklevel=2)
        if floating_digit is not None:
            raise ValueError("pass floating_digit or its old name floating_digits, not both")
        floating_digit = floating_digits
    if floating_digit is not None:
        floating_digit = v.check_int("floating_digit", floating_digit, 0)
    if not isinstance(snap, (bool, np.bool_)):
        raise ValueError(f"snap must be True or False, got {snap!r}")
    snap_tol = v.check_float("snap_tol", snap_tol, minimum=0)
    if snap:
        xd = model_data(self, x)
        if y is not None:
            y = v.check_array("y", y, self.width[-1], np.float64, n_rows=xd.shape[0])
    elif x is not None or y is not None:
        raise ValueError("x and y are the data for snap=True; got them with snap=False")
    live = []
    for l, layer in enumerate(self.layers):
        mask = np.asarray(layer.backend.to_host(layer.mask))
        for i, j in zip(*np.nonzero(mask)):
            live.append((l, int(i), int(j)))
    if live:
        shown = ", ".join(map(str, live[:6])) + (" ..." if len(live) > 6 else "")
        raise ValueError(f"symbolic_formula needs every live edge to be symbolic; {len(live)} edge(s) "
                         f"(l, i, j) still have a live spline: {shown}. Call fix_symbolic/auto_symbolic "
                         "or prune them first")
    syms = _variables(self, var)
    h = syms
    for layer in self.layers:
        aff = np.asarray(layer.backend.to_host(layer.symbolic_affine), dtype=np.float64)
        nxt = []
        for o in range(layer.out_dim):
            acc = sympy.S.Zero
            for i in range(layer.in_dim):
                m = float(layer.symbolic_mask[i, o])
                if m == 0:
                    continue
                a, b, c, d = (sympy.Float(float(t)) for t in aff[i, o])  # 53 bits: the float64 exactly
                term = c * SYMBOLIC_LIB[layer.symbolic_names[i][o]].sympy(a * h[i] + b) + d
                acc += term if m == 1 else sympy.Float(m) * term
            nxt.append(acc)
        h = nxt
    if snap:
        h = [snap_constants(e, syms, xd, None if y is None else y[:, o], snap_tol)
             for o, e in enumerate(h)]
    if floating_digit is not None:
        h = [round_floats(e, floating_digit) for e in h]
    return h


# ---------------------------------------------------------------------------
# save/load: the symbolic state joins model files as the "symbolic" section (numkan.io)
def _save_state(model):
    """(meta, arrays) for ``io.save``; meta None when nothing is symbolic and no input was pruned."""
    ids = getattr(model, "input_id", None)
    if not any(np.any(layer.symbolic_mask) for layer in model.layers) and ids is None:
        return None, {}
    arrays, names = {}, []
    for l, layer in enumerate(model.layers):
        arrays[f"{l}.affine"] = np.ascontiguousarray(layer.backend.to_host(layer.symbolic_affine))
        arrays[f"{l}.mask"] = np.array(layer.symbolic_mask, dtype=np.float64)
        names.append([[int(i), int(o), layer.symbolic_names[i][o]]
                      for i, o in zip(*np.nonzero(layer.symbolic_mask))])
    meta = {"names": names, "input_id": None if ids is None else [int(t) for t in ids]}
    return meta, arrays


def _load_state(model, meta, arrays):
    """Install a saved symbolic section into a freshly loaded ``model`` (ValueError on bad content)."""
    L = len(model.layers)
    if not isinstance(meta, dict) or not isinstance(meta.get("names"), list) or len(meta["names"]) != L:
        raise ValueError(f"the symbolic section's metadata is malformed: {meta!r:.200}")
    staged = []
    for l, layer in enumerate(model.layers):
        I, O = layer.in_dim, layer.out_dim
        aff, sm = arrays.get(f"{l}.affine"), arrays.get(f"{l}.mask")
        if aff is None or sm is None:
            raise ValueError(f"the symbolic section lacks the arrays of layer {l}")
        if aff.shape != (I, O, 4) or sm.shape != (I, O):
            raise ValueError(f"symbolic arrays of layer {l} have shapes {aff.shape}, {sm.shape}; "
                             f"expected {(I, O, 4)} and {(I, O)}")
        if aff.dtype != model.dtype:
            raise ValueError(f"symbolic affine of layer {l} has dtype {aff.dtype}, expected {model.dtype}")
        if sm.dtype.kind not in "biuf" or not np.all((sm == 0) | (sm == 1)):
            raise ValueError(f"symbolic mask of layer {l} must hold only 0 and 1, got dtype {sm.dtype}, "
                             f"values {np.unique(sm)[:5]}")
        if not np.all(np.isfinite(aff)):
            raise ValueError(f"symbolic affine of layer {l} holds NaN or inf")
        names = [["0"] * O for _ in range(I)]
        for entry in meta["names"][l]:
            try:
                i, o, name = entry
            except (TypeError, ValueError):
                raise ValueError(f"bad symbolic edge entry {entry!r} in layer {l}") from None
            if not (isinstance(i, int) and isinstance(o, int) and 0 <= i < I and 0 <= o < O):
                raise ValueError(f"symbolic edge ({i}, {o}) is outside layer {l} ({I} x {O})")
            if name not in SYMBOLIC_LIB:
                raise ValueError(f"symbolic edge ({l}, {i}, {o}) uses {name!r}, which is not in "
                                 "SYMBOLIC_LIB: add it with numkan.add_symbolic before loading")
            names[i][o] = name
        missing = [(i, o) for i, o in zip(*np.nonzero(sm)) if names[i][o] == "0" and
                   [i, o, "0"] not in meta["names"][l]]
        if missing:
            raise ValueError(f"symbolic edges {missing[:5]} of layer {l} have no function name")
        staged.append((layer, aff, sm, names))
    ids = meta.get("input_id")
    if ids is not None:
        if not isinstance(ids, list) or len(ids) != model.width[0] or \
                not all(isinstance(t, int) and t >= 0 for t in ids):
            raise ValueError(f"the symbolic section's input_id {ids!r} does not match width[0] = "
                             f"{model.width[0]}")
    for layer, aff, sm, names in staged:
        layer.symbolic_affine = layer.backend.asarray(aff, layer.dtype)
        layer.symbolic_mask = np.array(sm, dtype=np.float64)  # as fix_symbolic makes it
        layer.symbolic_names = names
    if ids is not None:
        model.input_id = np.asarray(ids, dtype=np.int64)


def _register():
    from . import io
    io.register_section("symbolic", _save_state, _load_state)


_register()
