"""Symbolic edges: fitting formulas to edges, fixing them, and the network's formula.

Every edge (i -> o) of a layer has two parts, as in pykan:

    phi[i,o](x) = mask[i,o] * spline_edge(x)  +  symbolic_mask[i,o] * (c * f(a*x + b) + d)

with ``(a, b, c, d) = symbolic_affine[i, o]`` and ``f = SYMBOLIC_LIB[symbolic_names[i][o]]``.
``fix_symbolic`` switches an edge from its spline to a formula (mask 0,
symbolic_mask 1); ``unfix_symbolic`` switches it back. The affine parameters
are trained with the splines: the model exposes them as
``"layers.{l}.symbolic_affine"`` (I, O, 4) in ``params``/``grads`` on every
layer that has a symbolic edge. Their gradients are written by hand
in ``KANLayer`` (``numkan/layer.py``), next to the forward rule they
differentiate; the functions f come from ``numkan.functions``.

This module fits (a, b, c, d) to an edge's samples (``fit_params``), ranks
library functions for an edge (``suggest_symbolic``, ``auto_symbolic``) and
writes the network as a sympy formula (``symbolic_formula``, with optional
rounding and snapping of constants). The symbolic state is saved with the
model by ``numkan.io``.
"""
import math
import warnings

import numpy as np

from . import _validate as v
from .activations import edge_outputs, host_params, layer_inputs, model_data
from .functions import SYMBOLIC_LIB, _INF, _symbol, is_zero_function as _is_zero_function, lookup as _fun

LOW_R2 = 0.9         # fix_symbolic warns below this r^2 (as pykan prints)
_POLISH_TOP = 8      # suggest_symbolic polishes this many leading candidates


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
    return tuple(float(t) for t in _canonical(fun, p, x)), float(r2)


def _canonical(fun, p, x):
    """The same edge function c f(a x + b) + d on the samples x, with its free parameters
    fixed plainly: x: a = 1, b = 0; powers: |a| = 1; even functions: a > 0; exp: b = 0
    (c e^(a x + b) = (c e^b) e^(a x); where the search left b far from 0, c is tiny or
    huge against it, and training the edge's parameters then creeps along that valley:
    the 3-variable example's fit of them stalled at 2e-8 RMSE from b = 8)."""
    import sympy
    a, b, c, d = (float(t) for t in p)
    if fun.expr == _symbol():
        return np.array([1.0, 0.0, c * a, d + c * b])
    if fun.expr == sympy.exp(_symbol()) and b != 0.0:
        with np.errstate(over="ignore", invalid="ignore"):
            c0 = c * np.exp(b)
            # only where neither argument reaches exp's clipped domain: the same values
            same = np.all(a * x + b < fun.domain[1]) and np.all(a * x < fun.domain[1])
        if np.isfinite(c0) and same:
            b, c = 0.0, float(c0)
    if fun.degree is not None and a != 0:
        s = abs(a)
        a, b, c = a / s, b / s, c * s ** fun.degree
    if a < 0 and fun.is_even:
        a, b = -a, -b
    return np.array([a, b, c, d])


_fit = fit_params  # fix_symbolic's argument of the same name shadows it


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
    output on data (``x``, default: the model's data, ``model.cache_data``)
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
        ids = model.input_id
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
    """The network as formulas: ``(formulas, variables)``, as pykan returns them.

    ``formulas`` has one sympy expression per output, built layer by layer;
    ``variables`` lists the input symbols they are written in (so
    ``model.symbolic_formula()[0][0]`` is the first output's formula).

    Needs every live edge to be symbolic: an edge whose spline is still live
    (mask != 0) raises a ValueError naming it (fix it with ``fix_symbolic`` or
    ``auto_symbolic``, or prune it). Pruned edges contribute nothing; a
    symbolic edge contributes ``symbolic_mask * (c * f(a*x + b) + d)``, and a
    multiplication node is the product of its subnodes' sums.
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
    (B, n) are the data (default: the model's data, ``model.cache_data``, as in
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
        if layer.mult_arity:  # product nodes: their subnodes' formulas multiplied
            off = layer.offsets
            nxt = [sympy.Mul(*nxt[off[n]:off[n + 1]]) for n in range(layer.n_nodes)]
        h = nxt
    if snap:
        h = [snap_constants(e, syms, xd, None if y is None else y[:, o], snap_tol)
             for o, e in enumerate(h)]
    if floating_digit is not None:
        h = [round_floats(e, floating_digit) for e in h]
    return h, list(syms)
