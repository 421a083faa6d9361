"""The library of named one-variable functions that symbolic edges use.

``SYMBOLIC_LIB`` maps a name ("sin", "x^2", ...) to a ``SymbolicFunction``:
a sympy expression with its NumPy value and derivative generated from it, so
the two cannot disagree. ``add_symbolic`` adds an entry. The library is built
on first use, so ``import numkan`` does not import sympy.

Safety. Singular functions are evaluated on a clipped argument: 1/x^n, log,
1/sqrt(x), tan, arctanh... are cut off where their value would pass
``Y_MAX = 1e4`` (and the argument of exp at 50, of powers at 1e4), with the
derivative of the clipped function (0 where the clip is active). So a symbolic
edge never produces NaN or inf, and value and derivative always agree. Inside
those bounds every function is exactly its formula.
"""
from collections.abc import MutableMapping

import numpy as np

from . import _validate as v


Y_MAX = 1e4          # singular functions are cut off where |f| would exceed this
_F_MAX = 1e30        # last-resort cap on any library value (finite in float32 too)
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


def lookup(name, argname="name"):
    """SYMBOLIC_LIB[name], or a ValueError naming ``argname`` and the library."""
    if not isinstance(name, str) or name not in SYMBOLIC_LIB:
        raise ValueError(f"{argname} must be a function in SYMBOLIC_LIB ({', '.join(SYMBOLIC_LIB)}), "
                         f"got {name!r}")
    return SYMBOLIC_LIB[name]


def is_zero_function(fun):
    return fun.expr == 0
